"""In-process executor: one worker, shards one after another. For one machine, tests and debugging."""

from __future__ import annotations

import logging
from typing import Any

from pipeline.core.progress import ProgressReporter
from pipeline.executors.base import (
    ExecutionReport,
    RunContext,
    ShardFailure,
    WorkerFactory,
)

log = logging.getLogger(__name__)


class LocalExecutor:
    def __init__(self, description: str = "generating"):
        self.description = description

    def execute(self, work: dict[int, list[dict[str, Any]]], context: RunContext,
                factory: WorkerFactory) -> ExecutionReport:
        worker = factory(context)
        report = ExecutionReport()
        samples = sum(len(rows) for rows in work.values())
        with ProgressReporter(self.description, total=samples, unit="samples") as progress:
            for index, rows in work.items():
                try:
                    result = worker.run(index, rows)
                except Exception as exc:  # a shard that breaks must not cost the others
                    log.exception("shard %d failed", index)
                    report.failures.append(ShardFailure(index, f"{type(exc).__name__}: {exc}"))
                else:
                    report.results.append(result)
                progress.update(len(rows), extra=f"shards {len(report.results) + len(report.failures)}/{len(work)}")
        return report
