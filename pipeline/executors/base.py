"""What every executor is: it runs shards of a plan on workers and reports back small results.

Executors schedule; workers (made by a `WorkerFactory` from the `RunContext`, once per process) do
the work. Swapping the factory swaps the work (an engine in benchmarks, a failing worker in tests)
without touching scheduling. The run context is what every worker of a run needs besides its
shard's rows: built once by the runner (or the gate), handed to executors, which pass it (pickled,
for Ray) to each worker: where the run lives, which job it is, and the provenance every shard carries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

from pipeline import __version__
from pipeline.config import JobConfig
from pipeline.core.layout import RunLayout


@dataclass(frozen=True)
class RunContext:
    layout: RunLayout
    config: JobConfig
    run_id: str
    plan_digest: str
    attributes_type: pa.DataType  # struct of the prompt bank's axes, as the plan drew them
    frame_axes: tuple[str, ...] = ()  # axes the frames decide (modality, metadata columns): true of the frame
    pipeline_version: str = __version__

    def provenance(self) -> dict[str, Any]:
        """Copied into every shard's schema metadata."""
        return {"run_id": self.run_id, "pipeline_version": self.pipeline_version,
                "plan_digest": self.plan_digest, "config": self.config.model_dump(mode="json")}



class ShardResultLike(Protocol):
    """A worker's result: the executor only counts the samples it accounted for."""

    @property
    def samples(self) -> int: ...


class Worker(Protocol):
    def run(self, shard_index: int, rows: list[dict[str, Any]]) -> Any: ...


WorkerFactory = Callable[[RunContext], Worker]


@dataclass
class ShardFailure:
    shard_index: int
    error: str


@dataclass
class ExecutionReport:
    """Per-shard results (small stats only) and the shards that gave up."""

    results: list[Any] = field(default_factory=list)
    failures: list[ShardFailure] = field(default_factory=list)


class Executor(Protocol):
    def execute(self, work: dict[int, list[dict[str, Any]]], context: RunContext,
                factory: WorkerFactory) -> ExecutionReport: ...
