"""The plan: (config, seed) -> one row per sample, grouped into shards. Cheap, deterministic, once.

Everything that decides *what* a sample is gets fixed here (frame, prompt and attributes, mask
parameters, generator seed), so the GPU stage only executes and a re-run regenerates the very same
samples. Each random stream is consumed sample by sample in order, so the first N samples of a
plan do not depend on how many samples were planned (`--n` is a prefix of the full job).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from pipeline import __version__
from pipeline.config import JobConfig, RealMasksConfig, config_from_dict
from pipeline.core import parquet, storage
from pipeline.core.digests import digest, seed_from
from pipeline.core.layout import RunLayout
from pipeline.core.progress import progress_bar
from pipeline.errors import ConfigError, FrameCatalogError, ShardError
from pipeline.plan.fov import FieldOfView
from pipeline.plan.frames import FrameCatalog, build_catalog, list_frames
from pipeline.plan.masks.preset import MaskPreset
from pipeline.plan.masks.real import SourceMask, load_source_masks, sample_real_mask, source_digest
from pipeline.plan.masks.sampling import sample_mask_params, size_class_at
from pipeline.plan.modality import frame_values, read_frame_metadata
from pipeline.plan.negatives import draw_negative, negative_of, negative_rng
from pipeline.plan.polyp_free import ensure_polyp_free_frames
from pipeline.plan.prompts.bank import PromptBank
from pipeline.plan.prompts.schema import PromptSample
from pipeline.plan.targets import LevelSampler, TargetsInfo, aim

log = logging.getLogger(__name__)

def sample_seed(run_seed: int, index: int) -> int:
    """Generator seed of sample `index`: a hash, so neighbouring samples get unrelated noise."""
    return seed_from(f"polyp-synth/{run_seed}/{index}")


def sample_id(frame_sha256: str, prompt: str, negative: str, mask_json: str, seed: int, engine_json: str) -> str:
    """Content hash of everything that defines a sample's pixels and label."""
    return digest("\x1f".join((frame_sha256, prompt, negative, mask_json, str(seed), engine_json)), length=32)


def planned_count(config: JobConfig, n: int | None) -> int:
    """How many samples a plan's first round holds: the job's, or its first `n` (refused beyond the
    job's size)."""
    if n is not None and n > config.first_round:
        raise ConfigError(f"--n {n}: the job plans only samples={config.first_round}; "
                          f"raise it with --set samples={n}, or ask for fewer")
    return n or config.first_round


class SkippedFrameInfo(BaseModel):
    uri: str
    reason: str


class FramesInfo(BaseModel):
    source: str
    digest: str
    usable: int
    skipped: list[SkippedFrameInfo]
    metadata: str | None = None  # the per-frame metadata CSV, if any
    decided: dict[str, dict[str, int]] = {}  # frames per value of each axis the frames decide
    listing: str = ""  # digest of the frame files the job names (`frames_listing`)
    metadata_digest: str | None = None  # digest of the metadata CSV's text


class InputInfo(BaseModel):
    path: str
    digest: str


class PlanRound(BaseModel):
    """One round of planning: the first holds the job's samples; a job that asks for accepted
    samples adds one per gate pass that fell short (`pipeline/gate/rounds.py`)."""

    index: int
    samples: int
    first_shard: int
    why: str


class PlanMeta(BaseModel):
    """The provenance a plan was made from, stored in its Parquet schema metadata."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    config: dict[str, Any]  # the job config as planned (JSON); `config_digest` identifies it
    config_digest: str
    frames: FramesInfo
    prompt_bank: InputInfo
    mask_preset: InputInfo
    pipeline_version: str
    engine_inputs: dict[str, str] = {}  # digests of what the engine reads besides frames (its donor library)
    real_masks: InputInfo | None = None  # the labels `masks.source: real` draws from (`real.source_digest`)
    targets: TargetsInfo | None = None  # the lesion-size shares the plan was aimed at, and why
    rounds: list[PlanRound] = []  # empty in plans made before rounds: one round of every sample

    def job(self) -> JobConfig:
        """The job config the plan was made from, typed again."""
        return config_from_dict(self.config, f"{self.run_id} (the plan's config)")


@dataclass(frozen=True)
class Plan:
    """The plan table plus the provenance it was made from."""

    table: pa.Table
    meta: PlanMeta

    @property
    def run_id(self) -> str:
        return self.meta.run_id

    @property
    def num_samples(self) -> int:
        return self.table.num_rows

    @property
    def rounds(self) -> list[PlanRound]:
        return self.meta.rounds or [PlanRound(index=0, samples=self.num_samples, first_shard=0,
                                              why="the samples the job asks for")]

    @cached_property
    def shard_indices(self) -> list[int]:
        return sorted(set(self.table.column("shard_index").to_pylist()))

    @cached_property
    def _rows_by_shard(self) -> dict[int, list[dict[str, Any]]]:
        grouped: dict[int, list[dict[str, Any]]] = {}
        for row in self.table.to_pylist():
            grouped.setdefault(row["shard_index"], []).append(row)
        return grouped

    def shard_rows(self, shard_index: int) -> list[dict[str, Any]]:
        return self._rows_by_shard[shard_index]

    def samples_in(self, shard_indices: list[int]) -> int:
        return sum(len(self._rows_by_shard[i]) for i in shard_indices)

    @cached_property
    def negatives(self) -> dict[str, int]:
        """Hard negatives planned, by what they show (frame, or a distractor's kind)."""
        shown = (negative_of(params) for params in self.table.column("mask_params").to_pylist())
        return dict(sorted(Counter(negative.shows for negative in shown if negative).items()))

    @property
    def attributes_type(self) -> pa.DataType:
        """The struct type of the `attributes` column: its fields are the prompt bank's axes."""
        return self.table.schema.field("attributes").type

    @cached_property
    def digest(self) -> str:
        return digest("\n".join(self.table.column("sample_id").to_pylist()))

    @property
    def frame_axes(self) -> tuple[str, ...]:
        """Prompt-bank axes the frames decide (modality, metadata columns)."""
        return tuple(sorted(self.meta.frames.decided))

    def write(self, run_dir: str) -> str:
        url = RunLayout(run_dir).plan
        parquet.write(url, self.table, self.meta.model_dump(mode="json"))
        return url

    @classmethod
    def read(cls, run_dir: str) -> Plan:
        url = RunLayout(run_dir).plan
        try:
            table = parquet.read(url)
            meta = PlanMeta.model_validate(parquet.provenance(table.schema))
        except FileNotFoundError:
            raise ShardError(f"{url}: no plan here; run `polyp-synth plan` first") from None
        except (pa.ArrowInvalid, OSError, KeyError, TypeError, ValueError) as exc:
            raise ShardError(f"{url}: unreadable plan ({type(exc).__name__}: {exc}); delete it to plan again") from None
        return cls(table.replace_schema_metadata(None), meta)


_CHUNK = 2000  # samples per mask-sampling task
_worker_state: dict[str, Any] = {}


def mask_rng(run_seed: int, index: int) -> np.random.Generator:
    """The random stream of sample `index`'s mask: its own, so samples can be drawn in any order."""
    return np.random.default_rng([run_seed, 2, index])


def _init_mask_worker(preset: MaskPreset, fovs: list[FieldOfView], real: RealMasksConfig | None,
                      sources: list[SourceMask]) -> None:
    _worker_state.update(preset=preset, fovs=fovs, real=real, sources=sources)


def _mask_params(attributes: dict[str, Any], fov: FieldOfView, rng: np.random.Generator, level: float | None) -> str:
    """One sample's mask parameters (JSON): procedural, or a real label (`masks.source`)."""
    preset, real = _worker_state["preset"], _worker_state["real"]
    if real is not None:
        sources = _worker_state["sources"]
        return json.dumps(sample_real_mask(sources, real, preset, attributes, fov, rng, level).to_dict())
    return json.dumps(sample_mask_params(preset, attributes, fov, rng, level).to_dict())


def target_rng(run_seed: int, index: int) -> np.random.Generator:
    """The random stream of sample `index`'s aimed area level (`plan.targets`)."""
    return np.random.default_rng([run_seed, 3, index])


def _mask_chunk(seed: int, start: int, attributes: list[dict[str, Any]], frames: list[int],
                levels: list[float | None], skip: list[bool]) -> list[str]:
    """Mask parameters (JSON) of samples start, start+1, …: each from its own random stream, so any
    chunk can be computed anywhere and the result does not depend on how the plan was split ("" for
    a skipped sample, a hard negative: it has no mask)."""
    fovs = _worker_state["fovs"]
    return ["" if skipped else _mask_params(attrs, fovs[frame], mask_rng(seed, start + i), level)
            for i, (attrs, frame, level, skipped) in enumerate(zip(attributes, frames, levels, skip))]


def _main_is_importable() -> bool:
    """Spawned workers re-import `__main__`; a script read from stdin cannot be, and would hang them."""
    main_file = getattr(sys.modules["__main__"], "__file__", None)
    return main_file is None or os.path.exists(main_file)


def _sample_masks(config: JobConfig, preset: MaskPreset, sources: list[SourceMask], catalog: FrameCatalog,
                  prompts: list[PromptSample], frames: list[int], levels: list[float | None], skip: list[bool],
                  offset: int) -> list[str]:
    """Mask parameters of samples offset, offset+1, … not skipped, over all cores for large plans
    (the costly part of planning)."""
    fovs = [record.fov for record in catalog.records]
    chunks = [(config.seed, offset + start, [p.attributes for p in prompts[start:start + _CHUNK]],
               frames[start:start + _CHUNK],
               levels[start:start + _CHUNK], skip[start:start + _CHUNK]) for start in range(0, len(prompts), _CHUNK)]
    workers = min(len(chunks), os.cpu_count() or 1) if _main_is_importable() else 1
    state = (preset, fovs, config.masks.real, sources)
    if workers <= 1:
        _init_mask_worker(*state)
        return [mask for chunk in progress_bar(chunks, "planning masks", len(chunks), "chunks")
                for mask in _mask_chunk(*chunk)]
    context = multiprocessing.get_context("spawn")  # no fork: the parent may hold threads (Ray, progress)
    with ProcessPoolExecutor(workers, context, initializer=_init_mask_worker, initargs=state) as pool:
        results = pool.map(_mask_chunk, *zip(*chunks))
        return [mask for chunk in progress_bar(results, "planning masks", len(chunks), "chunks") for mask in chunk]


def _frame_decided(config: JobConfig, catalog: FrameCatalog, bank: PromptBank) -> list[dict[str, str]]:
    """Per catalog frame, the prompt-bank axis values it decides (detected modality, metadata CSV),
    each checked against the bank so that a bad value names its frame before any sampling."""
    metadata = read_frame_metadata(config.frames.metadata) if config.frames.metadata else {}
    decided = []
    for record in catalog.records:
        values = {axis: value for axis, value in frame_values(record.uri, record.modality, metadata).items()
                  if axis in bank.axes}
        bank.check_given(values, f"{config.frames.metadata or 'frame'} ({record.uri})")
        decided.append(values)
    return decided


def _tally(decided: list[dict[str, str]]) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter[str]] = {}
    for values in decided:
        for axis, value in values.items():
            counts.setdefault(axis, Counter())[value] += 1
    return {axis: dict(sorted(counter.items())) for axis, counter in counts.items()}


def listing_digest(uris: list[str]) -> str:
    return digest("\n".join(sorted(uris)))


def metadata_digest(config: JobConfig) -> str | None:
    """Digest of the per-frame metadata CSV's text (None without one)."""
    if not config.frames.metadata:
        return None
    return digest(storage.read_text(config.frames.metadata, FrameCatalogError, "frames.metadata"))


def stale_inputs(meta: PlanMeta, config: JobConfig) -> list[str]:
    """What decides a plan's samples and changed since it was made, one readable phrase each: the
    prompt bank's and mask preset's content, the frame files the job names and the metadata CSV.
    Cheap (no frame is read: a frame whose bytes changed is caught when it is loaded)."""
    changed = []
    ensure_polyp_free_frames(config.frames)  # a folder cut from other ids is refused before it is listed
    bank, preset = PromptBank.load(config.prompts.bank).digest(), MaskPreset.load(config.masks.preset).digest()
    if bank != meta.prompt_bank.digest:
        changed.append(f"the prompt bank {config.prompts.bank} changed (digest {bank}, planned with {meta.prompt_bank.digest})")
    if preset != meta.mask_preset.digest:
        changed.append(f"the mask preset {config.masks.preset} changed (digest {preset}, planned with {meta.mask_preset.digest})")
    listing = listing_digest(list_frames(config.frames.source)[: config.frames.limit])
    if not meta.frames.listing:
        changed.append("the plan predates frame listings (made by an older version), so its frames cannot be checked")
    elif listing != meta.frames.listing:
        changed.append(f"the frame files of {config.frames.source} changed (added, removed or renamed)")
    metadata = metadata_digest(config)
    if metadata != meta.frames.metadata_digest:
        changed.append(f"the frame metadata {config.frames.metadata} changed")
    if real_masks_info(config) != meta.real_masks:
        changed.append(f"the labels masks.real draws from ({config.masks.real.labelled.split}) changed")
    if config.targets and meta.targets and aim(config.targets, MaskPreset.load(config.masks.preset)).digest != meta.targets.digest:
        changed.append(f"the evaluation the plan was aimed with ({meta.targets.source}) changed")
    return changed


def real_masks_info(config: JobConfig) -> InputInfo | None:
    """Which labels a real-mask job draws from (None for procedural masks)."""
    if config.masks.real is None:
        return None
    source = config.masks.real.labelled
    return InputInfo(path=source.split or source.masks, digest=source_digest(source))


def frame_catalog(config: JobConfig) -> FrameCatalog:
    """The job's frames (cut from a labelled set first when the job says so), read and checked
    (decoding and detection release the GIL: threads)."""
    ensure_polyp_free_frames(config.frames)
    return build_catalog(config.frames.source, config.frames.min_size, config.frames.limit, progress=True,
                         workers=min(8, os.cpu_count() or 1))


@dataclass(frozen=True)
class PlanInputs:
    """What every round of a job's plan draws from: its frames, bank, preset, aim and real masks,
    read once for all the rounds of a run."""

    config: JobConfig
    catalog: FrameCatalog
    bank: PromptBank
    preset: MaskPreset
    decided: list[dict[str, str]]  # per catalog frame, the axis values it decides
    targets: TargetsInfo | None
    engine_json: str
    sources: list[SourceMask]  # the labels `masks.source: real` draws from (none for procedural masks)

    @classmethod
    def load(cls, config: JobConfig, catalog: FrameCatalog, engine_inputs: dict[str, str]) -> PlanInputs:
        bank, preset = PromptBank.load(config.prompts.bank), MaskPreset.load(config.masks.preset)
        targets = aim(config.targets, preset) if config.targets else None
        if targets is not None and "size" not in bank.axes:
            raise ConfigError(f"targets: the prompt bank {config.prompts.bank} has no size axis to aim")
        engine_json = json.dumps({**config.engine.pixel_settings(), **engine_inputs}, sort_keys=True)
        sources = load_source_masks(config.masks.real.labelled) if config.masks.real else []
        return cls(config, catalog, bank, preset, _frame_decided(config, catalog, bank), targets, engine_json, sources)

    def rows(self, start: int, count: int, round_index: int, first_shard: int) -> pa.Table:
        """Samples start … start+count−1 of the job, in shards first_shard, first_shard+1, …: each
        sample is drawn from streams of its own index, so they are the same whatever came before."""
        config, catalog, seed = self.config, self.catalog, self.config.seed
        indices = range(start, start + count)
        order = np.random.default_rng([seed, 1]).permutation(len(catalog.records))
        frames = [int(order[index % len(order)]) for index in indices]
        given = [self.decided[frame] for frame in frames]
        levels: list[float | None] = [None] * count
        if self.targets is not None:  # the area level first; the prompt's size class is the one that level is in
            sampler = LevelSampler.of(self.targets, self.preset)
            levels = [sampler.draw(target_rng(seed, index)) for index in indices]
            given = [{**values, "size": size_class_at(level, self.preset)} for values, level in zip(given, levels)]
        prompts = self.bank.sample_many(count, seed, given, start=start)
        negatives = [draw_negative(config.negatives, negative_rng(seed, index), catalog.records[frame].fov)
                     for index, frame in zip(indices, frames)] if config.negatives else [None] * count
        masks = _sample_masks(config, self.preset, self.sources, catalog, prompts, frames, levels,
                              [n is not None for n in negatives], start)
        for i, negative in enumerate(negatives):  # an empty label and no prompt: nothing is painted
            if negative is not None:
                masks[i] = json.dumps(negative.to_dict())
                prompts[i] = dataclasses.replace(prompts[i], text="", negative="")

        rows: dict[str, list[Any]] = {name: [] for name in _COLUMNS}
        for i, (index, prompt, mask_json) in enumerate(zip(indices, prompts, masks)):
            frame = catalog.records[frames[i]]
            noise_seed = sample_seed(seed, index)
            for name, value in (
                ("sample_id", sample_id(frame.sha256, prompt.text, prompt.negative, mask_json, noise_seed,
                                        self.engine_json)),
                ("plan_index", index), ("round", round_index),
                ("shard_index", first_shard + i // config.shard_size), ("seed", noise_seed),
                ("source_frame", frame.uri), ("source_sha256", frame.sha256),
                ("frame_width", frame.width), ("frame_height", frame.height),
                ("prompt", prompt.text), ("negative_prompt", prompt.negative),
                ("attributes", prompt.attributes), ("mask_params", mask_json),
            ):
                rows[name].append(value)
        return pa.table({name: pa.array(values, type=_COLUMNS[name]) for name, values in rows.items()})


def build_plan(config: JobConfig, n: int | None = None, catalog: FrameCatalog | None = None,
               engine_inputs: dict[str, str] | None = None) -> Plan:
    """Turn a job config into its plan (its first round, for a job that asks for accepted samples);
    `n` plans only the first n samples of the job. `engine_inputs` are digests of what the engine
    reads (a donor library): part of every sample's identity."""
    total = planned_count(config, n)
    catalog = catalog or frame_catalog(config)
    inputs = PlanInputs.load(config, catalog, engine_inputs or {})
    if inputs.targets is not None:
        for name, why in inputs.targets.why.items():
            log.info("targets: %s: %s", name, why)
    table = inputs.rows(0, total, 0, 0)
    meta = PlanMeta(
        run_id=config.resolved_run_id(),
        config=config.model_dump(mode="json"),
        config_digest=config.plan_digest(),
        frames=FramesInfo(source=catalog.source, digest=catalog.digest(), usable=len(catalog.records),
                          skipped=[SkippedFrameInfo(uri=s.uri, reason=s.reason) for s in catalog.skipped],
                          metadata=config.frames.metadata, decided=_tally(inputs.decided),
                          listing=listing_digest([*(r.uri for r in catalog.records), *(s.uri for s in catalog.skipped)]),
                          metadata_digest=metadata_digest(config)),
        prompt_bank=InputInfo(path=config.prompts.bank, digest=inputs.bank.digest()),
        mask_preset=InputInfo(path=config.masks.preset, digest=inputs.preset.digest()),
        pipeline_version=__version__,
        engine_inputs=engine_inputs or {},
        targets=inputs.targets,
        real_masks=real_masks_info(config),
        rounds=[PlanRound(index=0, samples=total, first_shard=0, why="the samples the job asks for")],
    )
    log.info("planned %d samples in %d shards from %d frames", total,
             -(-total // config.shard_size), len(catalog.records))
    return Plan(table, meta)


def round_inputs(plan: Plan, config: JobConfig) -> PlanInputs:
    """What a run's later rounds draw from: the frames it was planned with (refused when they changed)."""
    catalog = frame_catalog(config)
    if catalog.digest() != plan.meta.frames.digest:
        raise ShardError(f"{config.run_dir()}: the frames of {config.frames.source} changed since this run was "
                         "planned; its new round would be drawn from other frames: use another run_id")
    return PlanInputs.load(config, catalog, plan.meta.engine_inputs)


def extend_plan(plan: Plan, inputs: PlanInputs, count: int, why: str) -> Plan:
    """The plan with one more round: `count` samples after its last (fresh seeds, the same asked
    distribution), in shards of their own so that no written shard changes."""
    round_ = PlanRound(index=len(plan.rounds), samples=count, first_shard=max(plan.shard_indices) + 1, why=why)
    table = inputs.rows(plan.num_samples, count, round_.index, round_.first_shard)
    log.info("round %d: planned %d samples in %d shards (%s)", round_.index, count,
             -(-count // inputs.config.shard_size), why)
    return Plan(pa.concat_tables([plan.table, table], promote_options="permissive"),
                plan.meta.model_copy(update={"rounds": [*plan.rounds, round_]}))


_COLUMNS: dict[str, pa.DataType | None] = {
    "sample_id": pa.string(), "plan_index": pa.int64(), "round": pa.int32(), "shard_index": pa.int32(),
    "seed": pa.int64(),
    "source_frame": pa.string(), "source_sha256": pa.string(),
    "frame_width": pa.int32(), "frame_height": pa.int32(),
    "prompt": pa.string(), "negative_prompt": pa.string(),
    "attributes": None,  # a struct whose fields are the prompt bank's axes: inferred
    "mask_params": pa.string(),
}
