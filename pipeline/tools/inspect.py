"""`polyp-synth inspect RUN_DIR`: what a run holds, read from the shards themselves.

It reads Parquet footers and metadata, not pixels, so it is quick on large runs and on object stores.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa

from pipeline.core import parquet, storage
from pipeline.core.layout import MANIFEST_FILE, PLAN_FILE, SUCCESS_FILE, RunLayout
from pipeline.errors import ShardError
from pipeline.generate.manifest import RunManifest
from pipeline.generate.shards import RANDOM_WEIGHTS_WARNING, made_with_random_weights
from pipeline.plan.plan import Plan

log = logging.getLogger(__name__)


def _shard_footer(url: str, with_engine: bool) -> tuple[int, int, int, dict[str, Any]]:
    """(rows, failed samples, bytes, engine of the first row if asked) of a shard, read from its footer
    and one small column: opened as a file, so an object store sends those ranges, not the pixels."""
    fs, path = storage.filesystem(url)
    try:
        with parquet.read_footer(url) as footer:
            rows = footer.metadata.num_rows
            failed = len(parquet.provenance(footer.schema_arrow).get("failed", []))
            engine = {}
            if rows and with_engine:
                engine = footer.read_row_group(0, columns=["engine"]).column("engine")[0].as_py() or {}
            return rows, failed, fs.size(path), engine
    except (pa.ArrowInvalid, OSError, KeyError, TypeError, ValueError) as exc:
        raise ShardError(f"{url}: unreadable shard ({type(exc).__name__}: {exc})") from None


def summarise_run(run_dir: str) -> str:
    names = storage.list_names(run_dir)
    if PLAN_FILE not in names:
        raise ShardError(f"{run_dir}: not a run directory (no {PLAN_FILE})")
    plan = Plan.read(run_dir)
    layout = RunLayout(run_dir)
    shard_names = [n for n in storage.list_names(layout.shard_dir) if n.endswith(".parquet")]

    rows = failed = size = 0
    engine: dict[str, Any] = {}
    for name in shard_names:
        url = storage.join(layout.shard_dir, name)
        shard_rows, shard_failed, shard_size, shard_engine = _shard_footer(url, with_engine=not engine)
        rows, failed, size = rows + shard_rows, failed + shard_failed, size + shard_size
        engine = engine or shard_engine

    status = "complete" if SUCCESS_FILE in names else "incomplete (run it again to resume)"
    config = plan.meta.job()
    lines = [
        f"run        {plan.run_id}  ({run_dir})",
        f"status     {status}",
        f"plan       {plan.num_samples} samples in {len(plan.shard_indices)} shards, seed {config.seed}, "
        f"digest {plan.digest}",
        f"frames     {plan.meta.frames.usable} usable from {plan.meta.frames.source}, "
        f"{len(plan.meta.frames.skipped)} skipped",
        f"shards     {len(shard_names)} written, {rows} samples, {failed} failed samples, {size / 1e6:.1f} MB",
    ]
    if config.until_accepted:
        lines.append(f"asked      {config.until_accepted.accepted} accepted, at most {config.until_accepted.budget} "
                     "planned (samples.accepted, samples.max_attempts)")
    if len(plan.rounds) > 1:
        lines.extend(f"round {r.index:<4} {r.samples} samples from shard {r.first_shard}: {r.why}" for r in plan.rounds)
    if made_with_random_weights(engine):
        log.warning("%s: %s", run_dir, RANDOM_WEIGHTS_WARNING)
        lines.append(f"WARNING    {RANDOM_WEIGHTS_WARNING}")
    if engine:
        lines.append("engine     " + ", ".join(
            f"{key}={engine[key]}" for key in ("kind", "model", "scheduler", "steps", "guidance_scale", "strength",
                                               "resolution", "dtype", "device", "donors", "blend", "colour_transfer")
            if engine.get(key) is not None))
    if MANIFEST_FILE in names:
        manifest = RunManifest.read(run_dir)
        if manifest.timings:
            lines.append(f"timings    {manifest.timings.wall_seconds}s wall; "
                         + ", ".join(f"{k} {v}s" for k, v in manifest.timings.stage_seconds.items()))
        for failure in manifest.failed_shards:
            lines.append(f"FAILED     shard {failure.shard_index}: {failure.error}")
    return "\n".join(lines)
