"""`polyp-synth inspect RUN_DIR`: what a run holds, read from the shards themselves.

It reads Parquet footers and metadata, not pixels, so it is quick on large runs and on object stores.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import ShardError
from pipeline.plan import PLAN_FILE, Plan
from pipeline.runner import MANIFEST_FILE, SUCCESS_FILE
from pipeline.shards import SHARD_DIR


def summarise_run(run_dir: str) -> str:
    names = storage.list_names(run_dir)
    if PLAN_FILE not in names:
        raise ShardError(f"{run_dir}: not a run directory (no {PLAN_FILE})")
    plan = Plan.read(run_dir)
    shard_names = [n for n in storage.list_names(storage.join(run_dir, SHARD_DIR)) if n.endswith(".parquet")]

    rows = failed = size = 0
    engine: dict = {}
    for name in shard_names:
        data = storage.read_bytes(storage.join(run_dir, SHARD_DIR, name))
        footer = pq.ParquetFile(pa.BufferReader(data))
        rows += footer.metadata.num_rows
        size += len(data)
        failed += len(json.loads(footer.schema_arrow.metadata[b"polyp_synth"])["failed"])
        if not engine and footer.metadata.num_rows:
            engine = footer.read_row_group(0, columns=["engine"]).column("engine")[0].as_py()

    status = "complete" if SUCCESS_FILE in names else "incomplete (run it again to resume)"
    config = plan.meta["config"]
    lines = [
        f"run        {plan.run_id}  ({run_dir})",
        f"status     {status}",
        f"plan       {plan.num_samples} samples in {len(plan.shard_indices)} shards, seed {config['seed']}, "
        f"digest {plan.digest}",
        f"frames     {plan.meta['frames']['usable']} usable from {plan.meta['frames']['source']}, "
        f"{len(plan.meta['frames']['skipped'])} skipped",
        f"shards     {len(shard_names)} written, {rows} samples, {failed} failed samples, {size / 1e6:.1f} MB",
    ]
    if engine:
        lines.append("engine     " + ", ".join(
            f"{key}={engine[key]}" for key in ("model", "scheduler", "steps", "guidance_scale", "strength",
                                               "resolution", "dtype", "device") if key in engine))
    if MANIFEST_FILE in names:
        manifest = json.loads(storage.read_bytes(storage.join(run_dir, MANIFEST_FILE)))
        lines.append(f"timings    {manifest['timings']['wall_seconds']}s wall; "
                     + ", ".join(f"{k} {v}s" for k, v in manifest["timings"]["stage_seconds"].items()))
        for failure in manifest["failed_shards"]:
            lines.append(f"FAILED     shard {failure['shard_index']}: {failure['error']}")
    return "\n".join(lines)
