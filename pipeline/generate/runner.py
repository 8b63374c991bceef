"""A run: plan (once) → generate the shards that are missing → manifest and `_SUCCESS`.

Resuming is the same call as starting: the plan is reused when it matches the job, every shard that
exists and validates is skipped, temp files of killed writers are swept, and only the rest is
handed to the executor. The manifest and `_SUCCESS` are written last, atomically.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from dataclasses import dataclass

from pipeline import __version__
from pipeline.config import JobConfig
from pipeline.core import storage
from pipeline.core.layout import RunLayout
from pipeline.errors import ShardError
from pipeline.executors.base import (
    ExecutionReport,
    Executor,
    RunContext,
    ShardFailure,
    WorkerFactory,
)
from pipeline.generate.manifest import (
    FailedSample,
    FailedShard,
    RunManifest,
    SampleTotals,
    ShardEntry,
    Timings,
)
from pipeline.generate.shards import ShardInfo, validate_shard
from pipeline.generate.worker import make_worker
from pipeline.plan.plan import (
    Plan,
    build_plan,
    frame_catalog,
    planned_count,
    stale_inputs,
)

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    run_dir: str
    planned_samples: int
    written_samples: int
    failed_samples: int
    shards_total: int
    shards_skipped: int
    failed_shards: list[ShardFailure]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.failed_shards

    def line(self) -> str:
        text = (f"{self.run_dir}: {self.written_samples}/{self.planned_samples} samples in "
                f"{self.shards_total - len(self.failed_shards)}/{self.shards_total} shards "
                f"({self.shards_skipped} already done), {self.failed_samples} failed samples, "
                f"{self.seconds:.1f}s")
        if self.failed_shards:
            text += "; failed shards: " + ", ".join(f"{f.shard_index} ({f.error})" for f in self.failed_shards)
        return text


def engine_inputs(config: JobConfig) -> dict[str, str]:
    """Digests of what the engine reads besides frames, made ready first (a transplant job's donor
    library is built here, once, on the driver, when it is missing and has a source)."""
    if config.engine.kind != "transplant":
        return {}
    from pipeline.generate.transplant.donors import ensure_donors, library_digest

    ensure_donors(config.engine)
    return {"donors": library_digest(config.engine.donors)}


def new_plan(config: JobConfig, n: int | None) -> Plan:
    """A fresh plan of the job: its frames checked first (cheap), then the engine's inputs made ready
    (a donor library may take a minute to build), then the samples."""
    planned_count(config, n)
    catalog = frame_catalog(config)
    return build_plan(config, n, catalog, engine_inputs(config))


def load_or_build_plan(config: JobConfig, run_dir: str, n: int | None) -> Plan:
    """The run's plan: reused when it was made from this job, so a re-run regenerates the same ids."""
    wanted = planned_count(config, n)
    if storage.exists(RunLayout(run_dir).plan):
        plan = Plan.read(run_dir)
        if plan.meta.config_digest != config.plan_digest() or plan.rounds[0].samples != wanted:
            raise ShardError(f"{run_dir}: holds a plan of another job (its config or sample count differ); "
                             "use another run_id or output, or delete that run")
        changed = stale_inputs(plan.meta, config)
        if plan.meta.engine_inputs != engine_inputs(config):
            changed.append(f"the donor library {getattr(config.engine, 'donors', '')} changed")
        if changed:
            raise ShardError(f"{run_dir}: {changed[0]} since this run was planned: its samples would not be "
                             "what its plan says; use another run_id, or delete that run to plan again")
        log.info("reusing the plan in %s (%d samples in %d rounds)", run_dir, plan.num_samples, len(plan.rounds))
        return plan
    plan = new_plan(config, n)
    plan.write(run_dir)
    return plan


def run_generate(config: JobConfig, executor: Executor, n: int | None = None,
                 factory: WorkerFactory = make_worker) -> RunSummary:
    start = time.monotonic()
    run_dir = config.run_dir()
    layout = RunLayout(run_dir)
    plan = load_or_build_plan(config, run_dir, n)
    swept = storage.remove_stale_temps(layout.shard_dir)
    if swept:
        log.info("removed %d temp files left by interrupted writers", swept)
    storage.remove(layout.success)  # set again only if this attempt completes

    done: dict[int, ShardInfo] = {}
    for index in plan.shard_indices:
        info = validate_shard(layout, index, [r["sample_id"] for r in plan.shard_rows(index)])
        if info is not None:
            done[index] = info
    todo = [index for index in plan.shard_indices if index not in done]
    log.info("%d shards planned, %d already complete, %d to generate", len(plan.shard_indices), len(done), len(todo))

    if todo:  # verdicts of a run whose shards change are no longer the run's
        storage.remove(layout.gate_success)
    context = RunContext(layout=layout, config=config, run_id=plan.run_id, plan_digest=plan.digest,
                         attributes_type=plan.attributes_type, frame_axes=plan.frame_axes)
    work = {index: plan.shard_rows(index) for index in todo}
    report = executor.execute(work, context, factory) if todo else ExecutionReport()
    if storage.remove_stale_temps(layout.shard_dir):  # a worker lost mid-write (its shard was redone elsewhere)
        log.info("removed temp files left by workers that died mid-write")
    for result in report.results:
        done[result.info.shard_index] = result.info
    summary = RunSummary(
        run_dir=run_dir, planned_samples=plan.num_samples,
        written_samples=sum(info.rows for info in done.values()),
        failed_samples=sum(len(info.failed) for info in done.values()),
        shards_total=len(plan.shard_indices), shards_skipped=len(plan.shard_indices) - len(todo),
        failed_shards=report.failures, seconds=time.monotonic() - start,
    )
    _write_manifest(layout, plan, done, report, summary)
    if summary.ok:
        storage.write_bytes_atomic(layout.success, b"")
    log.info(summary.line())
    return summary


def _write_manifest(layout: RunLayout, plan: Plan, done: dict[int, ShardInfo], report: ExecutionReport,
                    summary: RunSummary) -> None:
    stage_seconds: dict[str, float] = {}
    for result in report.results:
        for stage, seconds in result.seconds.items():
            stage_seconds[stage] = stage_seconds.get(stage, 0.0) + seconds
    RunManifest(
        run_id=plan.run_id,
        plan_digest=plan.digest,
        pipeline_version=__version__,
        finished_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        complete=summary.ok,
        samples=SampleTotals(planned=summary.planned_samples, written=summary.written_samples,
                             failed=summary.failed_samples),
        shards=[ShardEntry(index=i, file=layout.shard_file(i), rows=info.rows, failed=len(info.failed),
                           bytes=info.bytes, sha256=info.sha256) for i, info in sorted(done.items())],
        failed_samples=[FailedSample(shard_index=i, **entry) for i, info in sorted(done.items())
                        for entry in info.failed],
        failed_shards=[FailedShard(shard_index=f.shard_index, error=f.error) for f in report.failures],
        timings=Timings(wall_seconds=round(summary.seconds, 3),
                        stage_seconds={k: round(v, 3) for k, v in sorted(stage_seconds.items())}),
        config=plan.meta.config,
    ).write(layout)
