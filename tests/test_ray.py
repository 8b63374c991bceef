"""The Ray executor on a real local cluster started by the test: job submission, fault injection,
and the same pixels whatever the number of workers."""

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest

from pipeline.core.images import decode_image
from pipeline.core.layout import SHARD_DIR
from pipeline.testing.cluster import account, shards_complete, smoke_job
from pipeline.testing.data import shared_data

ROOT = Path(__file__).parents[1]
DATA = shared_data()
BIN = Path(sys.executable).parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A real Ray head (with the job server) on this machine, with token authentication as Ray
    clusters have it by default; every client below (job CLI, drivers, this test) gets the token."""
    port, dashboard = free_port(), free_port()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0",
            # job entrypoints find `polyp-synth` on PATH, as on a cluster node built from the Dockerfile
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    saved = {key: os.environ.get(key) for key in auth}
    os.environ.update(auth)
    subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                    "--disable-usage-stats"], check=True, timeout=180, capture_output=True)
    yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard}"}
    subprocess.run([str(BIN / "ray"), "stop", "--force"], timeout=120, capture_output=True)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def cli(*args, address, env_extra=None):
    env = {**os.environ, "RAY_ADDRESS": address, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return [str(BIN / "polyp-synth"), *args], env


def job_args(out, model, job=str(ROOT / "jobs/smoke.yaml"), **overrides):
    return smoke_job(out, model, job, **overrides)


def assert_exactly_once(run_dir):
    assert account(str(run_dir)).exactly_once
    assert (Path(run_dir) / "_SUCCESS").exists()


def test_ray_job_submit_runs_the_smoke_job(cluster, tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    entry = ["polyp-synth", *job_args(out, tiny_model_dir, job="jobs/smoke.yaml")]  # relative: the uploaded copy
    env = {**os.environ, "RAY_ADDRESS": cluster["dashboard"]}
    done = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--working-dir", str(ROOT), "--runtime-env",
         str(ROOT / "jobs/runtime_env.yaml"), "--", *entry],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout.lower()
    assert "shards planned" in done.stdout  # the driver's log reaches `ray job logs` (its last lines may not)
    assert_exactly_once(out / "smoke")


def busy_actor_processes():
    """Worker processes with a shard in flight (Ray titles them `ray::ShardActor.run` while it runs): one
    killed then must be seen dying mid-shard, not while loading or idle once the queue is empty."""
    return [p for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] and p.info["cmdline"][0].startswith("ray::ShardActor.run")]


def test_killed_actor_is_replaced_and_its_shard_retried(cluster, tmp_path, tiny_model_dir):
    # 6 shards on 2 workers: when the first shard lands, work is still queued behind the victim.
    args, env = cli(*job_args(tmp_path, tiny_model_dir, samples=24, **{"executor.max_workers": 2}),
                    address=cluster["address"])
    driver = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    victims = []
    while not victims and time.monotonic() < deadline and driver.poll() is None:
        if list((tmp_path / "smoke" / SHARD_DIR).glob("*.parquet")):
            victims = busy_actor_processes()
        time.sleep(0.1)
    assert victims, "no worker seen before the run ended"
    victims[0].send_signal(signal.SIGKILL)
    output, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, output[-3000:]
    assert "died; replacing it" in output
    assert_exactly_once(tmp_path / "smoke")


def test_killed_driver_then_rerun_loses_nothing(cluster, tmp_path, tiny_model_dir):
    args, env = cli(*job_args(tmp_path, tiny_model_dir, samples=16), address=cluster["address"])
    driver = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = str(tmp_path / "smoke")
    deadline = time.monotonic() + 300
    while not shards_complete(run_dir) and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    partial = shards_complete(run_dir)
    assert 0 < partial < 4 and not (tmp_path / "smoke" / "_SUCCESS").exists()
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # a shard already in flight on the cluster's live actor may still land after its driver died
    done = int(re.search(r"\((\d+) already done\)", rerun.stdout).group(1))
    assert partial <= done < 4, rerun.stdout
    assert_exactly_once(tmp_path / "smoke")


def test_two_workers_make_the_same_shards_as_one(cluster, tmp_path, tiny_model_dir):
    images = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        args, env = cli(*job_args(out, tiny_model_dir, **{"executor.max_workers": workers}), address=cluster["address"])
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        manifest = json.loads((out / "smoke" / "manifest.json").read_text())
        assert manifest["complete"] and manifest["samples"]["written"] == 8
        images[workers] = {r["sample_id"]: decode_image(r["image"]["bytes"])
                           for p in sorted((out / "smoke" / SHARD_DIR).glob("*.parquet"))
                           for r in pq.read_table(p).to_pylist()}
    assert images[1].keys() == images[2].keys()
    for key, picture in images[1].items():
        assert np.array_equal(picture, images[2][key])


def test_the_gate_on_ray_decides_what_the_local_gate_decides(cluster, tmp_path):
    """`executor.kind: ray` extracts a run's features in Ray actors (the `gating` stage): verdicts and
    figures must be the local gate's, and a Ray gate is an ordinary CLI call against a cluster."""
    from pipeline.config import config_from_dict
    from pipeline.core import parquet
    from pipeline.executors.local import LocalExecutor
    from pipeline.gate.features import make_extractor
    from pipeline.gate.reference import build_reference
    from pipeline.gate.run import run_gate
    from pipeline.plan.frames import load_frame
    from pipeline.testing.gate_runs import RunSample, image_run, remove_lesion
    from pipeline.testing.runs import kvasir_pairs

    samples = []
    for image_path, mask_path in kvasir_pairs(DATA / "kvasir-seg", "test", 8):
        image = cv2.resize(load_frame(str(image_path)), (160, 128), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(load_frame(str(mask_path))[..., 0], (160, 128), interpolation=cv2.INTER_NEAREST)
        mask = np.where(mask > 127, 255, 0).astype(np.uint8)
        samples.append(RunSample(image, mask, remove_lesion(image, mask), name=image_path.stem))
    samples[1] = RunSample(cv2.GaussianBlur(samples[1].image, (0, 0), 6), samples[1].mask, samples[1].source, name="blurred")
    kvasir = DATA / "kvasir-seg"
    reference = tmp_path / "reference"
    build_reference(str(kvasir / "images"), make_extractor("efficientnet-lite0", device="cpu"), str(kvasir / "masks"),
                    str(DATA / "normal-mucosa"), limit=24, split=str(kvasir / "splits/train.txt")).save(str(reference))
    settings = {"gate.reference.path": str(reference), "gate.device": "cpu", "gate.shard_kid_max": "null"}
    for name in ("local", "ray"):
        image_run(str(tmp_path / name), samples, shard_size=4, frames_dir=str(tmp_path / "frames"))
    local = run_gate(str(tmp_path / "local"), config_from_dict(
        {"run_id": "local", "frames": {"source": "unused"}}, overrides=[f"{k}={v}" for k, v in settings.items()]),
        LocalExecutor("gating"))
    overrides = [x for k, v in {**settings, "executor.kind": "ray"}.items() for x in ("--set", f"{k}={v}")]
    args, env = cli("gate", str(tmp_path / "ray"), *overrides, address=cluster["address"])
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 1), done.stderr[-3000:]  # 1: the run failed a run-level bound, still gated
    assert f"{local.metrics.samples.accepted}/8 samples accepted" in done.stdout
    assert f"joined Ray cluster at {cluster['address']}" in done.stderr and "starting 1 worker(s)" in done.stderr

    verdicts = {name: parquet.read(str(tmp_path / name / "gate" / "verdicts.parquet")).to_pylist() for name in ("local", "ray")}
    assert [v["accepted"] for v in verdicts["ray"]] == [v["accepted"] for v in verdicts["local"]]
    assert [v["reasons"] for v in verdicts["ray"]] == [v["reasons"] for v in verdicts["local"]]
    accepted = [v["accepted"] for v in verdicts["local"]]
    assert not accepted[1] and any(accepted)  # the blurred sample is rejected: not a gate waving all through
    ray_metrics = json.loads((tmp_path / "ray" / "gate" / "metrics.json").read_text())
    assert ray_metrics["run"]["kid"] == pytest.approx(local.metrics.run.kid, abs=1e-6)



BROKEN_DRIVER = """
import sys, time
import pyarrow as pa
from pipeline.config import config_from_dict
from pipeline.core.layout import RunLayout
from pipeline.errors import ExecutorError
from pipeline.executors.base import RunContext
from pipeline.executors.ray import RayExecutor

def broken(context):
    raise RuntimeError("CUDA driver version is insufficient")

config = config_from_dict({"frames": {"source": "unused"},
                           "executor": {"kind": "ray", "address": sys.argv[1], "num_cpus_per_worker": 0.5}})
started = time.monotonic()
try:
    RayExecutor().execute({0: [{}], 1: [{}], 2: [{}]}, RunContext(RunLayout(sys.argv[2]), config, "broken", "d", pa.struct([])), broken)
except ExecutorError as exc:
    print(f"stopped after {time.monotonic() - started:.0f}s: {exc}")
"""


def test_a_worker_that_cannot_load_stops_the_run_with_its_cause(cluster, tmp_path):
    """Not retried on every node until the start budget runs out: the first load error ends the run."""
    args, env = cli(address=cluster["address"])
    done = subprocess.run([sys.executable, "-c", BROKEN_DRIVER, cluster["address"], str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert "failed to start: RuntimeError: CUDA driver version is insufficient" in done.stdout, done.stderr[-3000:]
    assert int(done.stdout.split("stopped after ")[1].split("s")[0]) < 300  # not the 900 s start budget
