"""Ray as on a multi-GPU cluster, simulated on this machine: a head without GPUs and nodes that
advertise two GPUs each (pipeline.testing.cluster). Drivers are the real CLI, joined by RAY_ADDRESS.

Shown: one generation actor per GPU, spread over the nodes (fractional GPUs and `max_workers` as
the README says); the gate's actors and the experiment's trials on the GPU nodes; a node lost
mid-run (its shards retried on the survivors), then the driver lost and the same command resumed,
while a node that joins gets work; every sample exactly once and no partial file, locally and on S3.
"""

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pipeline.core import storage
from pipeline.testing.cluster import (
    DONE_BY,
    FAILED_ON,
    READY,
    SimulatedCluster,
    account,
    lose_a_node_then_the_driver,
    smoke_job,
)
from pipeline.testing.data import shared_data

ROOT = Path(__file__).parents[1]
DATA = shared_data()
BIN = Path(sys.executable).parent
SLOW = {"engine.resolution": 256, "engine.steps": 8}  # about a second a shard


@pytest.fixture(scope="module")
def gpu_cluster(s3_server):  # the S3 settings first: the nodes' workers inherit the environment
    with SimulatedCluster(gpu_nodes=2, gpus_per_node=2) as cluster:
        yield cluster


def command(out, model, samples, shard_size=2, **settings):
    return [str(BIN / "polyp-synth"), *smoke_job(out, model, samples=samples, shard_size=shard_size, **settings)]


def environment(cluster):
    return {**os.environ, "RAY_ADDRESS": cluster.address, "PYTHONUNBUFFERED": "1"}


def run(cluster, args):
    done = subprocess.run(args, env=environment(cluster), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def placement(cluster, log):
    """GPU node (full id) → how many workers became ready there."""
    return Counter(cluster.node_of(short) for _, short in READY.findall(log))


def test_one_actor_per_gpu_spread_over_the_nodes(gpu_cluster, tmp_path, tiny_model_dir):
    gpu_nodes = {node.node_id for node in gpu_cluster.nodes}
    # enough work that every worker is ready before the queue runs dry (workers take work as they come up,
    # and a worker still loading when the run ends never says where it was placed)
    log = run(gpu_cluster, command(tmp_path / "whole", tiny_model_dir, samples=64, **SLOW))
    assert "starting 4 worker(s) with 1 GPU" in log and set(placement(gpu_cluster, log).items()) == {(n, 2) for n in gpu_nodes}
    assert account(str(tmp_path / "whole" / "smoke")).exactly_once

    log = run(gpu_cluster, command(tmp_path / "capped", tiny_model_dir, samples=64, **{"executor.max_workers": 2},
                                   **SLOW))
    assert set(placement(gpu_cluster, log).items()) == {(n, 1) for n in gpu_nodes}  # spread, not packed

    log = run(gpu_cluster, command(tmp_path / "halves", tiny_model_dir, samples=128,
                                   **{"executor.num_gpus_per_worker": 0.5}, **SLOW))
    assert "starting 8 worker(s) with 0.5 GPU" in log
    assert set(placement(gpu_cluster, log).items()) == {(n, 4) for n in gpu_nodes}
    assert account(str(tmp_path / "halves" / "smoke")).exactly_once


def test_the_gate_and_the_experiment_run_on_the_gpu_nodes(gpu_cluster, tmp_path, tiny_model_dir):
    import ray

    from pipeline.testing.runs import kvasir_pairs, write_gated_run
    from pipeline.train.experiment import ExperimentSpec, run_experiment
    from pipeline.train.segment import TrainSettings

    gpu_nodes = {node.node_id for node in gpu_cluster.nodes}
    run(gpu_cluster, command(tmp_path, tiny_model_dir, samples=8))
    kvasir = DATA / "kvasir-seg"
    gated = subprocess.run(
        [str(BIN / "polyp-synth"), "gate", str(tmp_path / "smoke"), "--set", "executor.kind=ray",
         "--set", f"gate.reference.path={tmp_path / 'reference'}", "--set", f"gate.reference.images={kvasir / 'images'}",
         "--set", f"gate.reference.masks={kvasir / 'masks'}", "--set", f"gate.reference.split={kvasir / 'splits/train.txt'}",
         "--set", f"gate.reference.negatives={DATA / 'normal-mucosa'}", "--set", "gate.reference.limit=8",
         "--set", "gate.device=cpu"],
        env=environment(gpu_cluster), capture_output=True, text=True, timeout=600)
    assert gated.returncode in (0, 1), gated.stderr[-3000:]  # 1: random weights fail the gate's bounds, still gated
    assert set(placement(gpu_cluster, gated.stderr)) <= gpu_nodes and "gating" in gated.stderr

    synthetic = str(tmp_path / "synthetic")
    write_gated_run(synthetic, kvasir_pairs(kvasir, "train", 2), "syn", size=32)
    test = (kvasir / "splits/test.txt").read_text().split()[:2]
    (tmp_path / "test2.txt").write_text("\n".join(test) + "\n")
    spec = ExperimentSpec(real=f"{kvasir}:train", synthetic={"syn": synthetic}, evals=[f"{kvasir}:{tmp_path / 'test2.txt'}"],
                          ratios=[1], seeds=1, real_n=2, out=str(tmp_path / "exp"), executor="ray",
                          ray_address=gpu_cluster.address, settings=TrainSettings(size=32, epochs=1, batch_size=2))
    try:
        results = run_experiment(spec)
    finally:
        ray.shutdown()
    assert len(results) == 4 and {r.node for r in results} <= gpu_nodes


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_lost_node_then_a_lost_driver_then_the_same_command(gpu_cluster, tmp_path, tiny_model_dir, where):
    out = str(tmp_path) if where == "local" else f"s3://lost-node-{os.getpid()}"
    if where == "s3":
        storage.filesystem(out)[0].mkdir(out.removeprefix("s3://"))
    run_dir = storage.join(out, "smoke")
    # 64 shards of about a second: work left for every step, and for the node that joins the rerun
    loss = lose_a_node_then_the_driver(gpu_cluster, command(out, tiny_model_dir, samples=128, **SLOW),
                                       environment(gpu_cluster), run_dir, tmp_path)
    assert 1 <= loss.partial < 64 and not loss.finished, loss.first_log[-3000:]
    assert loss.victim[:6] in FAILED_ON.findall(loss.first_log), loss.first_log[-3000:]  # its shards were retried
    assert loss.second_rc == 0, loss.second_log[-3000:]
    # a shard in flight on an actor of the killed driver may still land before Ray reaps the actor
    complete = int(re.search(r"(\d+) already complete", loss.second_log).group(1))
    assert loss.partial <= complete < 64, loss.second_log[-3000:]
    assert loss.joined[:6] in DONE_BY.findall(loss.second_log), loss.second_log[-3000:]  # the new node got work
    assert account(run_dir).exactly_once, account(run_dir)
