"""What every executor is: it runs shards of a plan on workers and reports back small results.

Executors schedule; workers (made by a `WorkerFactory` from the `RunContext`, once per process) do
the work. Swapping the factory swaps the work (an engine in benchmarks, a failing worker in tests)
without touching scheduling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.core.run import RunContext


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
