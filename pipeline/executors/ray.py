"""Ray executor: one long-lived actor per GPU, whole shards as the unit of work and of retry.

Actors load the model once and write shards straight to the output location; only small
`ShardResult`s travel back. The driver keeps at most one shard in flight per actor, so nothing
queues behind a dead actor, and every wait has a timeout. An actor that dies (OOM-kill, node loss,
`ray.kill`) is replaced and its shard retried elsewhere, up to `executor.shard_retries` times.

Resources are reserved explicitly (`num_gpus`, fractional `num_cpus`) so that on a small machine
the actors never hold every CPU and starve the tasks Ray itself needs.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from pipeline.config import ExecutorConfig
from pipeline.core import logsetup
from pipeline.core.progress import ProgressReporter
from pipeline.errors import ExecutorError, PolypSynthError
from pipeline.executors.base import (
    ExecutionReport,
    RunContext,
    ShardFailure,
    WorkerFactory,
)

log = logging.getLogger(__name__)

NAMESPACE = "polyp-synth"
ACTOR_START_TIMEOUT_S = 900.0  # loading SDXL from a cold cache on a busy node can take minutes


class ShardActor:
    """Holds one engine; `generate` turns a shard's plan rows into a written shard."""

    def __init__(self, factory: WorkerFactory, context: RunContext):
        logsetup.configure()
        # A user error (bad model path…) is kept and raised by `ready`, so the driver can print it as
        # it is instead of a bare "actor died".
        self.error: PolypSynthError | None = None
        try:
            self.worker = factory(context)
        except PolypSynthError as exc:
            self.error = exc

    def ready(self) -> str:
        if self.error is not None:
            raise self.error
        return f"{ray.util.get_node_ip_address()} pid {os.getpid()}"

    def run(self, shard_index: int, rows: list[dict[str, Any]]) -> Any:
        # Replacement actors are not awaited through `ready`: report their load error, not a missing `worker`.
        if self.error is not None:
            raise self.error
        return self.worker.run(shard_index, rows)


def _answers(address: str, timeout_s: float) -> bool:
    """Whether something accepts a TCP connection at `host:port` within `timeout_s`; True for
    addresses that are not host:port (ray://, cluster files), which Ray's own client checks."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return True
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


def connect(address: str | None, timeout_s: float = 60.0) -> None:
    """Join the cluster (`address`, `RAY_ADDRESS`, or 'auto'); start a local Ray when there is none.

    Ray's GCS client retries a silent address forever, so a named address is first probed for up to
    `timeout_s` (`executor.connect_timeout_s`): one that does not answer is a one-line error.
    """
    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS") or "auto"
    where = "executor.address" if address else "RAY_ADDRESS"
    unreachable = ExecutorError(f"{where}: no Ray cluster answers at {target!r} (waited up to {timeout_s:.0f}s)")
    if target != "auto" and not _answers(target, timeout_s):
        raise unreachable
    try:
        ray.init(address=target, log_to_driver=True, logging_level=logging.WARNING)
        log.info("joined Ray cluster at %s", target)
    except ConnectionError:
        if target != "auto":  # an address the user named: starting a local Ray instead would hide the mistake
            raise unreachable from None
        ray.init(logging_level=logging.WARNING)
        log.info("no Ray cluster found; started a local one (%s)", ray.cluster_resources())


def worker_count(config: ExecutorConfig, gpus_available: float, shards: int) -> int:
    """One actor per GPU the cluster has (or one CPU actor), never more than there is work for."""
    per_worker = config.num_gpus_per_worker
    if config.max_workers:
        wanted = config.max_workers
    elif gpus_available and per_worker:
        wanted = int(gpus_available // per_worker)
    else:
        wanted = 1
    return max(1, min(wanted, shards))


@dataclass
class _Slot:
    """One actor and the shard it is working on."""

    name: str
    actor: Any
    shard: int | None = None
    ref: Any = None
    since: float = 0.0
    status: str = "starting"


class RayExecutor:
    def __init__(self, description: str = "generating"):
        self.description = description

    def execute(self, work: dict[int, list[dict[str, Any]]], context: RunContext,
                factory: WorkerFactory) -> ExecutionReport:
        settings = context.config.executor
        connect(settings.address, settings.connect_timeout_s)
        gpus = ray.cluster_resources().get("GPU", 0.0)
        num_gpus = settings.num_gpus_per_worker if gpus else 0.0
        count = worker_count(settings, gpus, len(work))
        actor_class = ray.remote(num_gpus=num_gpus, num_cpus=settings.num_cpus_per_worker,
                                 max_restarts=0, max_concurrency=1)(ShardActor)
        log.info("starting %d worker(s) with %g GPU and %g CPU each", count, num_gpus, settings.num_cpus_per_worker)

        def spawn(i: int) -> _Slot:
            # Named (run, stage, driver, index) so operators and tests can find a run's workers; the
            # stage keeps a gate's actors clear of the names of generate's, which Ray frees lazily.
            name = f"{context.run_id}/{self.description}/{os.getpid()}/w{i}"
            actor = actor_class.options(name=name, namespace=NAMESPACE).remote(factory, context)
            return _Slot(f"w{i}", actor)

        slots = [spawn(i) for i in range(count)]
        try:
            return self._run(work, settings, slots, spawn)
        finally:  # also on a timeout or Ctrl-C: no actor keeps its GPU after the driver gives up
            for slot in slots:
                ray.kill(slot.actor)

    def _run(self, work: dict[int, list[dict[str, Any]]], settings: ExecutorConfig, slots: list[_Slot],
             spawn: Callable[[int], _Slot]) -> ExecutionReport:
        """Schedule shards on `slots` (replaced in place when an actor dies) until all are done or given up."""
        self._wait_ready(slots)
        report = ExecutionReport()
        queue = list(work)
        attempts = {index: 0 for index in work}
        samples = sum(len(rows) for rows in work.values())
        spawned = len(slots)
        timeout = settings.timeout_s

        def status() -> str:
            finished = len(report.results) + len(report.failures)
            return f"shards {finished}/{len(work)} | " + " ".join(f"{s.name}:{s.status}" for s in slots)

        with ProgressReporter(self.description, total=samples, unit="samples") as progress:
            while queue or any(slot.shard is not None for slot in slots):
                for slot in slots:
                    if slot.shard is None and queue:
                        slot.shard = queue.pop(0)
                        slot.ref = slot.actor.run.remote(slot.shard, work[slot.shard])
                        slot.since, slot.status = time.monotonic(), f"shard {slot.shard}"
                busy = [slot for slot in slots if slot.shard is not None]
                done, _ = ray.wait([slot.ref for slot in busy], num_returns=1, timeout=min(timeout, 10.0))
                now = time.monotonic()
                for slot in busy:
                    if slot.ref not in done:
                        if now - slot.since > timeout:
                            raise ExecutorError(
                                f"worker {slot.name} produced nothing for shard {slot.shard} in {timeout:.0f}s "
                                "(executor.timeout_s); is the cluster short of GPUs or the model stuck?"
                            )
                        continue
                    index, slot.shard = slot.shard, None
                    try:
                        result = ray.get(slot.ref, timeout=60)
                    except RayError as exc:  # task error, actor death, lost object, timeout
                        slot.status = "idle"
                        error = _describe(exc)
                        attempts[index] += 1
                        log.warning("shard %d failed on worker %s (attempt %d): %s", index, slot.name,
                                    attempts[index], error)
                        if attempts[index] > settings.shard_retries:
                            report.failures.append(ShardFailure(index, error))
                            progress.update(len(work[index]), extra=status())
                        else:
                            queue.append(index)
                        if isinstance(exc, RayActorError):
                            replacement = spawn(spawned)
                            spawned += 1
                            log.warning("worker %s died; replacing it with %s", slot.name, replacement.name)
                            ray.kill(slot.actor)
                            slots[slots.index(slot)] = replacement
                        continue
                    report.results.append(result)
                    slot.status = "idle"
                    progress.update(len(work[index]), extra=status())
        return report

    @staticmethod
    def _wait_ready(slots: list[_Slot]) -> None:
        refs = {slot.actor.ready.remote(): slot for slot in slots}
        ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=ACTOR_START_TIMEOUT_S)
        if pending:
            names = ", ".join(refs[ref].name for ref in pending)
            raise ExecutorError(
                f"workers {names} did not start within {ACTOR_START_TIMEOUT_S:.0f}s: the cluster lacks the "
                "requested resources (executor.num_gpus_per_worker / num_cpus_per_worker) or the model failed to load"
            )
        for ref in ready:
            try:
                refs[ref].status = f"ready on {ray.get(ref)}"
            except RayTaskError as exc:
                if isinstance(exc.cause, PolypSynthError):
                    raise exc.cause from None
                raise ExecutorError(f"worker {refs[ref].name} failed to start: {_describe(exc)}") from None
            except RayActorError as exc:
                raise ExecutorError(f"worker {refs[ref].name} failed to start: {_describe(exc)}") from None
            log.info("worker %s %s", refs[ref].name, refs[ref].status)


def _describe(exc: Exception) -> str:
    if isinstance(exc, RayTaskError):
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        return f"{type(cause).__name__}: {str(cause).splitlines()[-1] if str(cause) else ''}"
    if isinstance(exc, RayActorError):
        return "worker process died"
    return f"{type(exc).__name__}: {exc}"
