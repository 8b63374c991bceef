"""A Ray cluster of several nodes on one machine, and an account of what a run wrote.

Ray's `cluster_utils.Cluster` starts a head and worker nodes as separate raylets. The worker nodes
advertise GPUs they do not have: engines run on CPU there, but Ray places actors and tasks exactly as
on a GPU cluster, so placement, losing a node and a node joining can be tested (and measured, in
`bench/bench_node_loss.py`) without one.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.cluster_utils import Cluster

from pipeline.core import parquet, storage
from pipeline.core.layout import DONE_SUFFIX, SHARD_DIR, RunLayout
from pipeline.core.storage import TEMP_PREFIX
from pipeline.plan.plan import Plan


@dataclass
class SimulatedCluster:
    """`with SimulatedCluster(gpu_nodes=2) as cluster:` a head without GPUs and `gpu_nodes` nodes of
    `gpus_per_node` GPUs each; `address` is what drivers join (`RAY_ADDRESS`)."""

    gpu_nodes: int = 2
    gpus_per_node: int = 2
    cpus_per_node: int = 2
    cluster: Cluster | None = None
    nodes: list[Any] = field(default_factory=list)  # the GPU nodes alive, in the order they joined

    def __enter__(self) -> SimulatedCluster:
        # The head keeps one CPU for drivers' tasks and Ray's own; it has no GPU, so no actor asking
        # for one can land there (as on a cluster whose head is a small CPU machine).
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
        for _ in range(self.gpu_nodes):
            self.add_gpu_node()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.cluster is not None
        self.cluster.shutdown()

    @property
    def address(self) -> str:
        assert self.cluster is not None
        return self.cluster.address

    def add_gpu_node(self) -> str:
        """Start one more GPU node and wait until the cluster sees it; its Ray node id."""
        assert self.cluster is not None
        node = self.cluster.add_node(num_cpus=self.cpus_per_node, num_gpus=self.gpus_per_node)
        self.cluster.wait_for_nodes(timeout=120)  # a lost node counts as alive until its health check fails
        self.nodes.append(node)
        return node.node_id

    def lose_node(self, node_id: str) -> None:
        """Kill a node as a power cut would: its raylet and every worker on it, without warning."""
        assert self.cluster is not None
        node = next(n for n in self.nodes if n.node_id == node_id)
        self.cluster.remove_node(node, allow_graceful=False)
        self.nodes.remove(node)

    def node_of(self, short: str) -> str:
        """The full id of the node whose id starts with `short` (as progress lines name nodes)."""
        assert self.cluster is not None
        every = [self.cluster.head_node, *self.nodes]
        return next(n.node_id for n in every if n.node_id.startswith(short))


@dataclass(frozen=True)
class SampleAccount:
    """What a run holds against what it planned."""

    asked: int
    written: int  # distinct planned ids in the shards
    duplicated: int  # rows beyond the first of an id
    lost: int  # planned ids in no shard
    temp_files: int  # partial writes left behind

    @property
    def exactly_once(self) -> bool:
        return self.written == self.asked and not self.duplicated and not self.lost and not self.temp_files


def account(run_dir: str) -> SampleAccount:
    """Count a run's samples: every planned id once, none twice, no partial file (local or s3://)."""
    layout = RunLayout(run_dir)
    planned = set(Plan.read(run_dir).table.column("sample_id").to_pylist())
    names = storage.list_names(layout.shard_dir)
    counts = Counter(sample for name in names if name.endswith(".parquet")
                     for sample in parquet.read(storage.join(layout.shard_dir, name), ["sample_id"])
                     .column("sample_id").to_pylist())
    return SampleAccount(asked=len(planned), written=len(planned & set(counts)),
                         duplicated=sum(n - 1 for n in counts.values()), lost=len(planned - set(counts)),
                         temp_files=sum(name.startswith(TEMP_PREFIX) for name in names))


SMOKE_JOB = Path(__file__).parents[2] / "jobs" / "smoke.yaml"


def set_args(settings: dict[str, object]) -> list[str]:
    """`--set key=value` for each setting, as the CLI takes them."""
    return [x for key, value in settings.items() for x in ("--set", f"{key}={value}")]


def smoke_job(out: str, model: object, job: object = SMOKE_JOB, **settings: object) -> list[str]:
    """`run JOB --out OUT --executor ray` on the tiny model and the shared mucosa frames, plus `settings`
    (the arguments after `polyp-synth`)."""
    from pipeline.testing.data import shared_data

    return ["run", str(job), "--out", str(out), "--executor", "ray",
            *set_args({"frames.source": shared_data() / "normal-mucosa", "engine.model": model, **settings})]


READY = re.compile(r"worker (w\d+) ready on node [^/\s]+/(\w+)")  # the Ray executor's log lines
DONE_BY = re.compile(r"shard \d+ done by w\d+@[^/\s]+/(\w+)")
FAILED_ON = re.compile(r"shard \d+ failed on worker w\d+@[^/\s]+/(\w+)")


def shards_complete(run_dir: str) -> int:
    """Shards with their completion record: a Parquet file whose writer died before its record is not
    complete, and a rerun makes it again."""
    return sum(name.endswith(DONE_SUFFIX) for name in storage.list_names(storage.join(run_dir, SHARD_DIR)))


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.2)


@dataclass(frozen=True)
class NodeLoss:
    """What happened in `lose_a_node_then_the_driver`: logs of both drivers and the nodes involved."""

    victim: str  # the node lost mid-run
    joined: str  # the node added while the same command ran again
    partial: int  # shards complete when the first driver was killed
    finished: bool  # whether the first driver had completed the run before it was killed (too little work)
    first_log: str
    second_log: str
    second_rc: int
    seconds: float  # from the first start to the second driver's end


def lose_a_node_then_the_driver(cluster: SimulatedCluster, args: list[str], env: dict[str, str], run_dir: str,
                                logs: Path, after_shards: int = 1) -> NodeLoss:
    """Start the driver `args`; once `after_shards` shards are written, kill the node of its first
    worker, then (when the driver has seen it) the driver itself; run the same command again and
    add a GPU node while it starts its workers."""
    start = time.monotonic()
    first, second = logs / "first.log", logs / "second.log"
    with open(first, "w") as sink:
        driver = subprocess.Popen(args, env=env, stdout=sink, stderr=subprocess.STDOUT)
        wait_for(lambda: shards_complete(run_dir) >= after_shards, f"{after_shards} shard(s)")
        victim = cluster.node_of(READY.findall(first.read_text())[0][1])
        cluster.lose_node(victim)
        wait_for(lambda: "died; replacing" in first.read_text(), "the driver to see the node go")
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    time.sleep(2.0)  # Ray reaps the dead driver's actors; one mid-write may still land after this count
    partial = shards_complete(run_dir)
    finished = storage.exists(RunLayout(run_dir).success)
    with open(second, "w") as sink:
        driver = subprocess.Popen(args, env=env, stdout=sink, stderr=subprocess.STDOUT)
        wait_for(lambda: "starting" in second.read_text(), "the rerun to start its workers")
        joined = cluster.add_gpu_node()
        rc = driver.wait(timeout=900)
    return NodeLoss(victim, joined, partial, finished, first.read_text(), second.read_text(), rc,
                    time.monotonic() - start)
