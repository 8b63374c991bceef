"""In-process executor: one engine, shards one after another. For one machine, tests and debugging."""

from __future__ import annotations

import logging

from pipeline.config import JobConfig
from pipeline.generate.worker import WorkerFactory, make_worker
from pipeline.plan.plan import Plan
from pipeline.core.progress import ProgressReporter
from pipeline.generate.runner import ExecutionReport, ShardFailure, run_meta

log = logging.getLogger(__name__)


class LocalExecutor:
    def __init__(self, worker_factory: WorkerFactory = make_worker):
        self.worker_factory = worker_factory

    def execute(self, plan: Plan, shard_indices: list[int], config: JobConfig, run_dir: str) -> ExecutionReport:
        worker = self.worker_factory(config, run_dir, run_meta(plan), plan.attributes_type)
        report = ExecutionReport()
        samples = plan.samples_in(shard_indices)
        with ProgressReporter("generating", total=samples, unit="samples") as progress:
            for index in shard_indices:
                rows = plan.shard_rows(index)
                try:
                    result = worker.run(index, rows)
                except Exception as exc:  # a shard that breaks must not cost the others
                    log.exception("shard %d failed", index)
                    report.failures.append(ShardFailure(index, f"{type(exc).__name__}: {exc}"))
                else:
                    report.results.append(result)
                progress.update(len(rows), extra=f"shards {len(report.results) + len(report.failures)}/{len(shard_indices)}")
        return report
