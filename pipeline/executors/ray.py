"""Ray executor: one long-lived actor per GPU, whole shards as the unit of work and of retry.

Actors load the model once and write shards straight to the output location; only small
`ShardResult`s travel back. The driver keeps at most one shard in flight per actor, so nothing
queues behind a dead actor, and every wait has a timeout. An actor that dies (OOM-kill, node loss,
`ray.kill`) is dropped and its shard retried elsewhere, up to `executor.shard_retries` times; the
pool follows the cluster's GPUs as they are now, so a lost node's actors are not waited for and a
node that joins mid-run gets actors of its own.

Resources are reserved explicitly (`num_gpus`, fractional `num_cpus`) so that on a small machine
the actors never hold every CPU and starve the tasks Ray itself needs.
"""

from __future__ import annotations

import itertools
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
CLUSTER_CHECK_S = 5.0  # how often the pool is sized to the cluster's GPUs
ACTOR_START_TIMEOUT_S = 900.0  # loading SDXL from a cold cache on a busy node can take minutes


class ShardActor:
    """Holds one engine; `generate` turns a shard's plan rows into a written shard."""

    def __init__(self, factory: WorkerFactory, context: RunContext):
        logsetup.configure()
        # A load error (a bad model path, a bug) is kept and raised by `ready`, so the driver stops on it
        # with its cause: a failed constructor would read as "actor died" and be retried on every node.
        self.error: Exception | None = None
        try:
            self.worker = factory(context)
        except Exception as exc:
            self.error = exc

    def ready(self) -> str:
        """The node it runs on, as progress lines name it: its address and the start of Ray's node id."""
        if self.error is not None:
            raise self.error
        return f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:6]}"

    def run(self, shard_index: int, rows: list[dict[str, Any]]) -> Any:
        return self.worker.run(shard_index, rows)  # only called once `ready` answered


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
    """One actor, where it runs, and the shard it is working on."""

    name: str
    actor: Any
    starting: Any  # the actor's `ready` call until it answers, then None
    node: str = "?"
    shard: int | None = None
    ref: Any = None
    since: float = 0.0

    @property
    def status(self) -> str:
        where = f"{self.name}@{self.node}"
        if self.starting is not None:
            return f"{where}:starting"
        return f"{where}:shard {self.shard}" if self.shard is not None else f"{where}:idle"


class RayExecutor:
    """Keeps one actor per GPU the cluster has *now*: a lost node's actors are dropped and its shards
    retried on the survivors; a node that joins (or an actor that dies) makes room for a new actor,
    which takes work once it has loaded its engine."""

    def __init__(self, description: str = "generating"):
        self.description = description

    def execute(self, work: dict[int, list[dict[str, Any]]], context: RunContext,
                factory: WorkerFactory) -> ExecutionReport:
        settings = context.config.executor
        connect(settings.address, settings.connect_timeout_s)
        num_gpus = settings.num_gpus_per_worker if _cluster_gpus() else 0.0
        # SPREAD: with fewer actors than GPUs they still land on different nodes, so losing one node
        # costs the fewest shards in flight and host CPUs (decoding, writing) are shared out.
        actor_class = ray.remote(num_gpus=num_gpus, num_cpus=settings.num_cpus_per_worker, max_restarts=0,
                                 max_concurrency=1, scheduling_strategy="SPREAD")(ShardActor)
        log.info("starting %d worker(s) with %g GPU and %g CPU each", worker_count(settings, num_gpus and
                 _cluster_gpus(), len(work)), num_gpus, settings.num_cpus_per_worker)
        slots: list[_Slot] = []
        numbers = itertools.count()

        def spawn() -> None:
            # Named (run, stage, driver, index) so operators and tests can find a run's workers; the
            # stage keeps a gate's actors clear of the names of generate's, which Ray frees lazily.
            index = next(numbers)
            name = f"{context.run_id}/{self.description}/{os.getpid()}/w{index}"
            actor = actor_class.options(name=name, namespace=NAMESPACE).remote(factory, context)
            slots.append(_Slot(f"w{index}", actor, actor.ready.remote()))

        try:
            return self._run(work, settings, num_gpus, slots, spawn)
        finally:  # also on a timeout or Ctrl-C: no actor keeps its GPU after the driver gives up
            for slot in slots:
                ray.kill(slot.actor)

    def _run(self, work: dict[int, list[dict[str, Any]]], settings: ExecutorConfig, num_gpus: float,
             slots: list[_Slot], spawn: Callable[[], None]) -> ExecutionReport:
        """Schedule shards on `slots` until all are done or given up; `slots` grows and shrinks with the cluster."""
        report = ExecutionReport()
        queue = list(work)
        attempts = {index: 0 for index in work}
        samples = sum(len(rows) for rows in work.values())
        timeout = settings.timeout_s
        failed_starts = 0
        last_ready = time.monotonic()  # when some actor was last able to take work
        gpus, checked = (_cluster_gpus() if num_gpus else 0.0), time.monotonic()

        def status() -> str:
            finished = len(report.results) + len(report.failures)
            return f"shards {finished}/{len(work)} | " + " ".join(slot.status for slot in slots)

        def retry_or_give_up(index: int, error: str, where: str) -> None:
            attempts[index] += 1
            log.warning("shard %d failed on worker %s (attempt %d): %s", index, where, attempts[index], error)
            if attempts[index] > settings.shard_retries:
                report.failures.append(ShardFailure(index, error))
                progress.update(len(work[index]), extra=status())
            else:
                queue.append(index)

        with ProgressReporter(self.description, total=samples, unit="samples") as progress:
            while queue or any(slot.shard is not None for slot in slots):
                if num_gpus and time.monotonic() - checked > CLUSTER_CHECK_S:  # a GCS call: not every shard
                    gpus, checked = _cluster_gpus(), time.monotonic()
                in_flight = sum(slot.shard is not None for slot in slots)
                for _ in range(worker_count(settings, gpus, len(queue) + in_flight) - len(slots)):
                    spawn()
                for slot in slots:
                    if slot.starting is None and slot.shard is None and queue:
                        slot.shard = queue.pop(0)
                        slot.ref = slot.actor.run.remote(slot.shard, work[slot.shard])
                        slot.since = time.monotonic()
                waiting = {slot.starting if slot.starting is not None else slot.ref: slot
                           for slot in slots if slot.starting is not None or slot.shard is not None}
                done, _ = ray.wait(list(waiting), num_returns=1, timeout=min(timeout, 10.0))
                now = time.monotonic()
                for ref, slot in waiting.items():
                    if slot.starting is not None:
                        if ref in done:
                            failed_starts += self._started(slot, slots)
                            if failed_starts > len(work) + settings.shard_retries:
                                raise ExecutorError(f"workers keep dying as they start (last: {slot.name}); "
                                                    "see the Ray logs of the nodes")
                        continue
                    if ref not in done:
                        if now - slot.since > timeout:
                            raise ExecutorError(
                                f"worker {slot.name} on node {slot.node} produced nothing for shard {slot.shard} "
                                f"in {timeout:.0f}s (executor.timeout_s); is the model stuck?")
                        continue
                    index, slot.shard = slot.shard, None
                    try:
                        result = ray.get(ref, timeout=60)
                    # Task error, actor death (node lost, OOM kill), lost object. An actor that is only
                    # unreachable (ActorUnavailableError) is killed and replaced too: if it was still
                    # writing, its shard's rename and the retry's are the same bytes under the same name.
                    except RayError as exc:
                        retry_or_give_up(index, _describe(exc), f"{slot.name}@{slot.node}")
                        if isinstance(exc, RayActorError):  # its place is taken by a new actor next round
                            log.warning("worker %s on node %s died; replacing it", slot.name, slot.node)
                            ray.kill(slot.actor)
                            slots.remove(slot)
                        continue
                    report.results.append(result)
                    log.info("shard %d done by %s@%s", index, slot.name, slot.node)
                    progress.update(len(work[index]), extra=status())
                if any(slot.starting is None for slot in slots):
                    last_ready = now
                elif now - last_ready > ACTOR_START_TIMEOUT_S:
                    raise ExecutorError(
                        f"no worker could start within {ACTOR_START_TIMEOUT_S:.0f}s: the cluster lacks the requested "
                        "resources (executor.num_gpus_per_worker / num_cpus_per_worker) or the model failed to load")
        return report

    @staticmethod
    def _started(slot: _Slot, slots: list[_Slot]) -> int:
        """Record that `slot`'s actor answered `ready`; 1 if it died instead (it is dropped), else 0.

        An error while loading (bad model path, a bug) stops the run: every other actor would hit it too.
        A worker process that dies while loading (a lost node, an OOM kill) is replaced.
        """
        try:
            slot.node = ray.get(slot.starting, timeout=60)
        except RayTaskError as exc:
            if isinstance(exc.cause, PolypSynthError):
                raise exc.cause from None
            raise ExecutorError(f"worker {slot.name} failed to start: {_describe(exc)}") from None
        except RayError as exc:
            log.warning("worker %s died while starting (%s); replacing it", slot.name, _describe(exc))
            ray.kill(slot.actor)
            slots.remove(slot)
            return 1
        slot.starting = None
        log.info("worker %s ready on node %s", slot.name, slot.node)
        return 0


def _cluster_gpus() -> float:
    """GPUs of the nodes alive now (a lost node's leave, a joining node's count)."""
    return ray.cluster_resources().get("GPU", 0.0)


def _describe(exc: Exception) -> str:
    if isinstance(exc, RayTaskError):
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        return f"{type(cause).__name__}: {str(cause).splitlines()[-1] if str(cause) else ''}"
    if isinstance(exc, RayActorError):
        return "worker process died"
    return f"{type(exc).__name__}: {exc}"
