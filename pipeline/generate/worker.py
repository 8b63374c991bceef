"""Turn one shard of the plan into a written Parquet shard. Shared by every executor.

The worker holds the engine (loaded once per process) and knows nothing of Ray: the local executor
calls it in-process, the Ray executor inside an actor. A sample whose input fails (its frame no
longer decodes) is recorded with its reason and the shard completes with the rest; a model failure
(CUDA out of memory even for one sample, a broken node) fails the whole shard, which executors retry.

A sample's `attributes` record only what its engine honoured (`honoured_attributes`): an engine that
reads the prompt was asked for every attribute the plan drew; one that does not (transplant) honours
what the frame decided, what its label measures (size class, position in the field of view) and what
it says of itself (the donor's shape). Its `prompt_used` column says which.

A hard negative (`negatives:` in the job) never reaches the engine: its image is the frame, or the
frame with its distractor drawn in, its label is empty and its `negative` attribute says what it shows.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from pipeline.core.images import resize_image
from pipeline.core.timing import StageTimer
from pipeline.errors import PolypSynthError
from pipeline.executors.base import RunContext
from pipeline.generate import shards
from pipeline.generate.lookalikes import draw_distractor
from pipeline.plan.fov import detect_fov, position_in_view
from pipeline.plan.frames import load_frame
from pipeline.plan.masks.params import MaskParams
from pipeline.plan.masks.preset import MaskPreset
from pipeline.plan.masks.real import RealMask, draw_real_mask, is_real
from pipeline.plan.masks.sampling import size_class_of
from pipeline.plan.masks.shapes import draw_mask
from pipeline.plan.negatives import Negative, is_negative

log = logging.getLogger(__name__)


class Engine(Protocol):
    """What a shard worker needs from an engine (the SDXL engine, or a cheap one in benchmarks)."""

    identity: dict[str, Any]
    prompt_used: bool  # whether the prompt decides its pixels (then every prompt attribute was asked for)

    def inpaint(self, frames: list[np.ndarray], masks: list[np.ndarray], prompts: list[str],
                negatives: list[str], seeds: list[int], timer: StageTimer | None = None) -> list[np.ndarray]: ...

    # Optional: `window(mask) -> pipeline.generate.window.Window`, the part of the frame the engine
    # paints for that label; recorded in the shard's `window` column (null for engines without one).
    # Optional: `donor_id(frame, mask, seed) -> str`, the real lesion a sample is made from; recorded
    # in the shard's `donor_id` column (null for engines without one).
    # Optional: `attribute_types` (name → Arrow type) and `own_attributes(frame, mask, seed) -> dict`:
    # what the engine measures of its own sample (e.g. the donor's shape), added to `attributes`.


MEASURED = {"size": pa.string(), "position": pa.string()}
"""Attributes measured from a sample's label: size class (the mask preset's band that holds its area)
and position in the frame's field of view (`fov.position_in_view`)."""
NEGATIVE = "negative"
"""The attribute of a job with hard negatives: what a negative shows (frame, or the distractor's
kind); null for a polyp sample."""


def attributes_type(planned: pa.StructType, frame_axes: tuple[str, ...], engine: Engine,
                    negatives: bool = False) -> pa.StructType:
    """The shards' `attributes` struct for this engine (`honoured_attributes` fills it)."""
    own = getattr(engine, "attribute_types", {})
    if engine.prompt_used:
        fields = [*planned, pa.field("position", MEASURED["position"])]
    else:
        fields = [planned.field(axis) for axis in frame_axes if planned.get_field_index(axis) >= 0]
        fields += [pa.field(name, kind) for name, kind in MEASURED.items()]
    fields += [pa.field(name, kind) for name, kind in own.items()]
    return pa.struct(fields + ([pa.field(NEGATIVE, pa.string())] if negatives else []))


def negative_attributes(planned: dict[str, Any], frame_axes: tuple[str, ...], shows: str) -> dict[str, Any]:
    """A negative's attributes: what the frame decided and what it shows; nothing of a lesion."""
    return {**{axis: planned[axis] for axis in frame_axes if axis in planned}, NEGATIVE: shows}


def honoured_attributes(planned: dict[str, Any], measured: dict[str, str], frame_axes: tuple[str, ...],
                        engine: Engine, own: dict[str, Any]) -> dict[str, Any]:
    """What a sample's `attributes` say (see the module docstring)."""
    if engine.prompt_used:
        return {**planned, "position": measured["position"], **own}
    return {**{axis: planned[axis] for axis in frame_axes if axis in planned}, **measured, **own}


def output_size(row: dict[str, Any], output_resolution: int | None) -> tuple[int, int]:
    if output_resolution:
        return output_resolution, output_resolution
    return row["frame_width"], row["frame_height"]


def prepare_sample(row: dict[str, Any], output_resolution: int | None, timer: StageTimer) -> tuple[np.ndarray, np.ndarray]:
    """The source frame at output size and its planned label mask; for a negative, the frame as it
    will be written (its distractor drawn in) and an empty label."""
    frame, mask, _ = _prepared(row, output_resolution, timer)
    return frame, mask


def _prepared(row: dict[str, Any], output_resolution: int | None,
              timer: StageTimer) -> tuple[np.ndarray, np.ndarray, Negative | None]:
    """`prepare_sample`, and the negative the row plans (None for a polyp sample)."""
    width, height = output_size(row, output_resolution)
    frame = timer.time("frame_load", lambda: resize_image(load_frame(row["source_frame"], row["source_sha256"]),
                                                          (width, height)))
    params = json.loads(row["mask_params"])
    if is_real(params):
        return frame, timer.time("mask", lambda: draw_real_mask(RealMask.from_dict(params), width, height)), None
    if not is_negative(params):
        return frame, timer.time("mask", lambda: draw_mask(MaskParams.from_dict(params), width, height)), None
    negative = Negative.from_dict(params)
    if negative.distractor is not None:
        frame = timer.time("lookalike", lambda: draw_distractor(frame, negative.distractor))
    return frame, np.zeros((height, width), np.uint8), negative


@dataclass
class ShardResult:
    info: shards.ShardInfo
    seconds: dict[str, float]

    @property
    def samples(self) -> int:
        """Planned samples this shard accounted for: written or failed."""
        return self.info.rows + len(self.info.failed)


class ShardWorker:
    """Generates whole shards of one run with one engine."""

    def __init__(self, engine: Engine, context: RunContext):
        self.engine, self.context = engine, context
        self.output_resolution = context.config.engine.output_resolution
        self.attributes_type = attributes_type(context.attributes_type, context.frame_axes, engine,
                                               negatives=context.config.negatives is not None)

    @functools.cached_property
    def preset(self) -> MaskPreset:
        return MaskPreset.load(self.context.config.masks.preset)

    def measure(self, frame: np.ndarray, mask: np.ndarray) -> dict[str, str]:
        """The `MEASURED` attributes of a sample's label."""
        label = mask > 0
        view = detect_fov(frame).to_mask(frame.shape[1], frame.shape[0])
        size = size_class_of(float(label.mean()), self.preset) if not self.engine.prompt_used else ""
        return {"size": size, "position": position_in_view(label, view)}

    def run(self, shard_index: int, rows: list[dict[str, Any]]) -> ShardResult:
        timer = StageTimer()
        done: list[dict[str, Any]] = []
        failed: list[dict[str, str]] = []
        ready: list[tuple[dict[str, Any], np.ndarray, np.ndarray]] = []
        for row in rows:
            try:
                frame, mask, negative = _prepared(row, self.output_resolution, timer)
            except PolypSynthError as exc:
                log.warning("sample %s failed: %s", row["sample_id"], exc)
                failed.append({"sample_id": row["sample_id"], "reason": str(exc)})
                continue
            if negative is None:
                ready.append((row, frame, mask))
            else:  # written as prepared: the engine paints nothing into a negative
                done.append({**row, "image": frame, "mask": mask, "prompt_used": False,
                             "attributes": negative_attributes(row["attributes"], self.context.frame_axes,
                                                               negative.shows)})

        # The engine batches by itself; a model error fails the shard, which executors retry.
        images = self.engine.inpaint(
            [frame for _, frame, _ in ready], [mask for _, _, mask in ready],
            [row["prompt"] for row, _, _ in ready], [row["negative_prompt"] for row, _, _ in ready],
            [row["seed"] for row, _, _ in ready], timer,
        ) if ready else []
        provenance = {"engine": self.engine.identity, "run_id": self.context.run_id,
                      "pipeline_version": self.context.pipeline_version}
        window = getattr(self.engine, "window", None)  # engines that paint a part of the frame say which
        donor = getattr(self.engine, "donor_id", None)  # engines that transplant real lesions say which
        own = getattr(self.engine, "own_attributes", None)  # what an engine measures of its own samples
        for (row, frame, mask), image in zip(ready, images):
            extra = {"window": window(mask).as_list()} if window else {}
            if donor:
                extra["donor_id"] = donor(frame, mask, row["seed"])
            measured = timer.time("attributes", lambda: self.measure(frame, mask))
            attributes = honoured_attributes(row["attributes"], measured, self.context.frame_axes, self.engine,
                                             own(frame, mask, row["seed"]) if own else {})
            done.append({**row, "image": image, "mask": mask, **extra, "attributes": attributes,
                         "prompt_used": self.engine.prompt_used})
        done = sorted(({**sample, **provenance} for sample in done), key=lambda sample: sample["plan_index"])

        table = timer.time("png_encode", lambda: shards.shard_table(done, self.attributes_type))
        info = timer.time("write", lambda: shards.write_shard(self.context.layout, shard_index, table, failed,
                                                              self.context.provenance()))
        return ShardResult(info, dict(timer.seconds))


def make_worker(context: RunContext) -> ShardWorker:
    """Load the configured engine (`engine.kind`) once for this process."""
    if context.config.engine.kind == "transplant":
        from pipeline.generate.transplant.engine import TransplantEngine

        return ShardWorker(TransplantEngine(context.config.engine), context)
    from pipeline.generate.sdxl import InpaintEngine

    return ShardWorker(InpaintEngine(context.config.engine), context)
