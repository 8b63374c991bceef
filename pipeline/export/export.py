"""Filtered export: the gate's accepted samples of one or several runs, in the formats trainers read.

Two passes over the shards, one shard in memory at a time: the first reads only `sample_id` columns
and footers (what to keep, how many output files, one schema for all of them); the second copies the
kept rows. Rows keep the runs' order (as given), then shard and row order, so the same command writes
the same bytes. Files are written atomically, stale files of an earlier export are removed, and
`manifest.json` comes last — before it exists the export is not finished and readers refuse it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipeline import __version__
from pipeline.core import parquet, storage
from pipeline.core.digests import sha256_hex
from pipeline.core.layout import (
    EXPORT_CARD_FILE,
    EXPORT_DATA_DIR,
    EXPORT_IMAGE_DIR,
    EXPORT_MASK_DIR,
    EXPORT_METADATA_FILE,
    MANIFEST_FILE,
    ExportLayout,
    RunLayout,
)
from pipeline.core.progress import ProgressReporter
from pipeline.errors import ExportError
from pipeline.export.card import render_card
from pipeline.export.manifest import (
    ExportedFile,
    ExportFormat,
    ExportManifest,
    SourceRun,
)
from pipeline.gate.verdicts import VERDICT_COLUMNS, GateResult, load_gate
from pipeline.generate.lineage import sample_lineage
from pipeline.generate.shards import (
    RANDOM_WEIGHTS_WARNING,
    hf_metadata,
    made_with_random_weights,
    read_shard,
    shard_footer,
)

log = logging.getLogger(__name__)

_EXPORT_NAMES = {MANIFEST_FILE, EXPORT_CARD_FILE, EXPORT_DATA_DIR, EXPORT_IMAGE_DIR, EXPORT_MASK_DIR, EXPORT_METADATA_FILE}
_LINEAGE_COLUMNS = ("source_frame", "source_sha256", "donor_id", "mask_params")

@dataclass(frozen=True)
class ExportOptions:
    out: str
    format: ExportFormat = "parquet"
    include_rejected: bool = False
    force: bool = False
    shard_size: int = 256

@dataclass
class _RunPlan:
    """What pass 1 decided for one run: which shards, which rows of each, and the figures."""

    layout: RunLayout
    gate: GateResult
    shard_urls: list[str]
    keep: list[list[int]] = field(default_factory=list)  # row numbers to export, per shard
    rejected_kept: int = 0  # rows exported although rejected (--include-rejected)
    schema: pa.Schema | None = None
    summary: SourceRun | None = None

def _shard_urls(layout: RunLayout) -> list[str]:
    names = [name for name in storage.list_names(layout.shard_dir) if name.endswith(".parquet")]
    if not names:
        raise ExportError(f"{layout.root}: no shards under {layout.shard_dir} (not a generated run)")
    return [storage.join(layout.shard_dir, name) for name in names]

def _engine_name(engine: dict[str, Any]) -> str:
    """What made a shard: its model (SDXL), or its engine kind and donor library (transplant)."""
    return str(engine.get("model") or " ".join(str(engine[k]) for k in ("kind", "donors") if engine.get(k)) or "unknown")


def _plan_run(run_dir: str, options: ExportOptions, seen: set[str]) -> _RunPlan:
    layout = RunLayout(run_dir.rstrip("/"))
    gate = load_gate(layout.root)
    if not gate.passed and not options.force:
        raise ExportError(f"{run_dir}: the run failed its gate ({'; '.join(gate.metrics.failures)}); "
                          "export refuses it (pass --force to export it anyway)")
    plan = _RunPlan(layout, gate, _shard_urls(layout))
    samples = accepted = duplicates = 0
    schemas, models = [], set()
    donors: list[tuple[str | None, str | None]] = []  # (donor_id, the library it names) of each exported row
    hosts: list[tuple[str, str]] = []  # (source_frame, source_sha256)
    masks: list[str | None] = []  # mask_params: a real mask names the image whose label it is
    random_weights, config, run_id = False, {}, ""
    for url in plan.shard_urls:
        with shard_footer(url) as footer:
            schema = footer.schema_arrow
            columns = footer.read(columns=["sample_id", *(c for c in _LINEAGE_COLUMNS if c in schema.names)])
            ids = columns.column("sample_id").to_pylist()
            engine = footer.read_row_group(0, columns=["engine"]).column("engine")[0].as_py() if ids else None
        provenance = parquet.provenance(schema)
        config, run_id = provenance.get("config", config), provenance.get("run_id", run_id)
        random_weights |= made_with_random_weights(engine)
        if engine:
            models.add(_engine_name(engine))
        schemas.append(schema)
        rows = []
        for row, sample_id in enumerate(ids):
            accepted_here = sample_id in gate.accepted_ids
            if not accepted_here and sample_id not in gate.rejected:
                raise ExportError(f"{url}: sample {sample_id} has no gate verdict (the shards changed after "
                                  f"gating; run polyp-synth gate {run_dir} again)")
            accepted += accepted_here
            if not (accepted_here or options.include_rejected):
                continue
            if sample_id in seen:
                duplicates += 1
                continue
            seen.add(sample_id)
            rows.append(row)
            plan.rejected_kept += not accepted_here
            value = {name: columns.column(name)[row].as_py() if name in columns.column_names else None
                     for name in _LINEAGE_COLUMNS}
            donors.append((value["donor_id"], (engine or {}).get("donors")))
            hosts.append((value["source_frame"] or "", value["source_sha256"] or ""))
            masks.append(value["mask_params"])
        samples += len(ids)
        plan.keep.append(rows)
    if random_weights:
        log.warning("%s: %s", run_dir, RANDOM_WEIGHTS_WARNING)
    plan.schema = pa.unify_schemas(schemas, promote_options="permissive")
    lineage = sample_lineage(donors, hosts, masks)
    if lineage is not None and not options.include_rejected:  # the gate chose these rows: what judged them matters
        lineage = None if gate.metrics.lineage is None else lineage | gate.metrics.lineage
    plan.summary = SourceRun(
        run_dir=layout.root, run_id=run_id, samples=samples, accepted=accepted,
        exported=sum(len(rows) for rows in plan.keep), duplicates=duplicates, gate_passed=gate.passed,
        forced=not gate.passed, gate=gate.metrics.model_dump(mode="json", exclude={"lineage"}),
        random_weights=random_weights, engines=sorted(models), config=config, lineage=lineage,
    )
    return plan

def _with_verdicts(table: pa.Table, gate: GateResult) -> pa.Table:
    ids = table.column("sample_id").to_pylist()
    table = table.append_column("accepted", pa.array([i in gate.accepted_ids for i in ids], VERDICT_COLUMNS["accepted"]))
    return table.append_column("reasons", pa.array([gate.rejected.get(i, []) for i in ids], VERDICT_COLUMNS["reasons"]))

def _kept_rows(plans: list[_RunPlan], schema: pa.Schema, progress: ProgressReporter) -> Iterator[pa.Table]:
    """The rows to export, shard by shard, cast to the export's one schema."""
    for plan in plans:
        for url, rows in zip(plan.shard_urls, plan.keep):
            if rows:
                table = _with_verdicts(read_shard(url).take(rows), plan.gate).replace_schema_metadata(None)
                yield pa.concat_tables([schema.empty_table(), table], promote_options="permissive")
            progress.update()

def _export_schema(plans: list[_RunPlan]) -> pa.Schema:
    schema = pa.unify_schemas([plan.schema for plan in plans], promote_options="permissive")
    schema = schema.remove_metadata()
    for name, type_ in ((n, VERDICT_COLUMNS[n]) for n in ("accepted", "reasons")):
        schema = schema.append(pa.field(name, type_))
    return schema

def _write(layout: ExportLayout, relative: str, data: bytes, rows: int | None = None) -> ExportedFile:
    storage.write_bytes_atomic(layout.url(relative), data)
    return ExportedFile(path=relative, bytes=len(data), sha256=sha256_hex(data), rows=rows)

def _write_parquet(layout: ExportLayout, tables: Iterator[pa.Table], schema: pa.Schema, total: int,
                   shard_size: int, provenance: dict[str, Any]) -> list[ExportedFile]:
    count = max(1, math.ceil(total / shard_size))
    files: list[ExportedFile] = []
    pending: list[pa.Table] = []
    buffered = 0

    def flush(upto: int) -> None:
        nonlocal pending, buffered
        merged = pa.concat_tables(pending) if pending else schema.empty_table()
        chunk, rest = merged.slice(0, upto), merged.slice(upto)
        relative = ExportLayout.data_path(len(files), count)
        data = parquet.to_bytes(chunk.combine_chunks(), provenance, hf_metadata(schema))
        files.append(_write(layout, relative, data, chunk.num_rows))
        pending, buffered = ([rest] if rest.num_rows else []), rest.num_rows

    for table in tables:
        pending.append(table)
        buffered += table.num_rows
        while buffered >= shard_size and len(files) < count - 1:
            flush(shard_size)
    flush(buffered)
    return files

def _write_folders(layout: ExportLayout, tables: Iterator[pa.Table], provenance: dict[str, Any]) -> list[ExportedFile]:
    """images/<id>.png and masks/<id>.png, and every other column (provenance: source frame, donor,
    attributes, engine, verdicts) in metadata.parquet, one row per sample in the same order."""
    files: list[ExportedFile] = []
    metadata: list[pa.Table] = []
    for table in tables:
        for sample_id, image, mask in zip(*(table.column(name).to_pylist() for name in ("sample_id", "image", "mask"))):
            files.append(_write(layout, ExportLayout.image_path(sample_id), image["bytes"]))
            files.append(_write(layout, ExportLayout.mask_path(sample_id), mask["bytes"]))
        metadata.append(table.drop_columns(["image", "mask"]))
    table = pa.concat_tables(metadata).combine_chunks()
    files.append(_write(layout, EXPORT_METADATA_FILE, parquet.to_bytes(table, provenance), table.num_rows))
    return files

def _check_target(layout: ExportLayout) -> None:
    """Only an empty folder or an earlier export may be written into: never someone's other files."""
    foreign = [name for name in storage.list_names(layout.root) if name not in _EXPORT_NAMES]
    if foreign:
        raise ExportError(f"{layout.root}: not an export folder (holds {', '.join(foreign[:3])}); "
                          "choose an empty or new --out")

def _remove_stale(layout: ExportLayout, files: list[ExportedFile]) -> None:
    """Files of an earlier export that this one did not write (a reader globbing data/ must not see them)."""
    wanted = {file.path for file in files}
    if EXPORT_METADATA_FILE not in wanted:
        storage.remove(layout.metadata)
    for directory in (EXPORT_DATA_DIR, EXPORT_IMAGE_DIR, EXPORT_MASK_DIR):
        for name in storage.list_names(layout.url(directory)):
            if f"{directory}/{name}" not in wanted:
                storage.remove(layout.url(f"{directory}/{name}"))

def export_runs(run_dirs: list[str], options: ExportOptions) -> ExportManifest:
    """Export the accepted samples of `run_dirs` (merged, first sample_id wins) to `options.out`."""
    if options.shard_size <= 0:
        raise ExportError(f"--shard-size {options.shard_size}: must be at least 1")
    layout = ExportLayout(options.out.rstrip("/"))
    _check_target(layout)
    seen: set[str] = set()
    plans = [_plan_run(run_dir, options, seen) for run_dir in run_dirs]
    summaries = [plan.summary for plan in plans]
    total = sum(summary.exported for summary in summaries)
    if total == 0:
        raise ExportError(f"{', '.join(run_dirs)}: no sample to export (none accepted by the gate)")
    schema = _export_schema(plans)
    storage.remove(layout.manifest)  # from here until the end the export is unfinished
    provenance = {"pipeline_version": __version__, "source_runs": [s.run_id for s in summaries]}
    shards = sum(len(plan.shard_urls) for plan in plans)
    with ProgressReporter(f"export ({options.format})", shards, "shards") as progress:
        tables = _kept_rows(plans, schema, progress)
        if options.format == "parquet":
            files = _write_parquet(layout, tables, schema, total, options.shard_size, provenance)
        else:
            files = _write_folders(layout, tables, provenance)
    _remove_stale(layout, files)
    manifest = ExportManifest(
        format=options.format, pipeline_version=__version__, samples=total,
        rejected_included=sum(plan.rejected_kept for plan in plans),
        include_rejected=options.include_rejected, shard_size=options.shard_size, columns=schema.names,
        runs=summaries, files=files,
    )
    card = _write(layout, EXPORT_CARD_FILE, render_card(manifest).encode())
    manifest = manifest.model_copy(update={"files": [*files, card]})
    storage.write_bytes_atomic(layout.manifest, manifest.to_bytes())
    if manifest.random_weights:
        log.warning("%s: %s", layout.root, RANDOM_WEIGHTS_WARNING)
    return manifest

