"""Turn one shard of the plan into a written Parquet shard. Shared by every executor.

The worker holds the engine (loaded once per process) and knows nothing of Ray: the local executor
calls it in-process, the Ray executor inside an actor. A sample whose input fails (its frame no
longer decodes) is recorded with its reason and the shard completes with the rest; a model failure
(CUDA out of memory even for one sample, a broken node) fails the whole shard, which executors retry.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from pipeline.generate import shards
from pipeline.generate.composite import resize_image
from pipeline.config import JobConfig
from pipeline.errors import PolypSynthError
from pipeline.plan.frames import load_frame
from pipeline.plan.masks.shapes import MaskParams, draw_mask
from pipeline.core.timing import StageTimer

log = logging.getLogger(__name__)


class Engine(Protocol):
    """What a shard worker needs from an engine (the SDXL engine, or a cheap one in benchmarks)."""

    identity: dict[str, Any]

    def inpaint(self, frames: list[np.ndarray], masks: list[np.ndarray], prompts: list[str],
                negatives: list[str], seeds: list[int], timer: StageTimer | None = None) -> list[np.ndarray]: ...


def output_size(row: dict[str, Any], output_resolution: int | None) -> tuple[int, int]:
    if output_resolution:
        return output_resolution, output_resolution
    return row["frame_width"], row["frame_height"]


def prepare_sample(row: dict[str, Any], output_resolution: int | None, timer: StageTimer) -> tuple[np.ndarray, np.ndarray]:
    """The source frame at output size and its planned label mask."""
    width, height = output_size(row, output_resolution)
    frame = timer.time("frame_load", lambda: resize_image(load_frame(row["source_frame"]), (width, height)))
    mask = timer.time("mask", lambda: draw_mask(MaskParams.from_dict(json.loads(row["mask_params"])), width, height))
    return frame, mask


@dataclass
class ShardResult:
    info: shards.ShardInfo
    seconds: dict[str, float]


class ShardWorker:
    """Generates whole shards with one engine. `run_meta` holds run_id, pipeline_version, config."""

    def __init__(self, engine: Engine, output_resolution: int | None, run_dir: str, run_meta: dict[str, Any],
                 attributes_type: pa.DataType):
        self.engine, self.output_resolution = engine, output_resolution
        self.run_dir, self.run_meta, self.attributes_type = run_dir, run_meta, attributes_type

    def run(self, shard_index: int, rows: list[dict[str, Any]]) -> ShardResult:
        timer = StageTimer()
        done: list[dict[str, Any]] = []
        failed: list[dict[str, str]] = []
        ready: list[tuple[dict[str, Any], np.ndarray, np.ndarray]] = []
        for row in rows:
            try:
                ready.append((row, *prepare_sample(row, self.output_resolution, timer)))
            except PolypSynthError as exc:
                log.warning("sample %s failed: %s", row["sample_id"], exc)
                failed.append({"sample_id": row["sample_id"], "reason": str(exc)})

        # The engine batches by itself; a model error fails the shard, which executors retry.
        images = self.engine.inpaint(
            [frame for _, frame, _ in ready], [mask for _, _, mask in ready],
            [row["prompt"] for row, _, _ in ready], [row["negative_prompt"] for row, _, _ in ready],
            [row["seed"] for row, _, _ in ready], timer,
        ) if ready else []
        provenance = {"engine": self.engine.identity, "run_id": self.run_meta["run_id"],
                      "pipeline_version": self.run_meta["pipeline_version"]}
        for (row, _, mask), image in zip(ready, images):
            done.append({**row, "image": image, "mask": mask, **provenance})

        table = timer.time("png_encode", lambda: shards.shard_table(done, self.attributes_type))
        info = timer.time("write", lambda: shards.write_shard(self.run_dir, shard_index, table, failed, self.run_meta))
        return ShardResult(info, dict(timer.seconds))


class Worker(Protocol):
    def run(self, shard_index: int, rows: list[dict[str, Any]]) -> ShardResult: ...


# (config, run_dir, run_meta, attributes_type) -> a worker; executors take one so benchmarks and
# tests can swap the engine without touching scheduling.
WorkerFactory = Callable[[JobConfig, str, dict[str, Any], pa.DataType], Worker]


def make_worker(config: JobConfig, run_dir: str, run_meta: dict[str, Any], attributes_type: pa.DataType) -> ShardWorker:
    """Load the configured engine (building the tiny test model first if the job asks for it)."""
    from pipeline.generate.sdxl import InpaintEngine
    from pipeline.testing.tiny_model import build_tiny_model

    if config.engine.build_tiny_if_missing and not Path(config.engine.model).exists():
        log.info("building the tiny random model at %s", config.engine.model)
        build_tiny_model(config.engine.model)
    engine = InpaintEngine(config.engine)
    return ShardWorker(engine, config.engine.output_resolution, run_dir, run_meta, attributes_type)
