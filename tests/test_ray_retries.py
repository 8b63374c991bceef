"""Shard retries in the Ray executor, with a worker that always fails on one shard."""

import json
import sys
from pathlib import Path

import pytest
import ray
from ray import cloudpickle

from pipeline.config import config_from_dict
from pipeline.core.layout import MANIFEST_FILE, SUCCESS_FILE
from pipeline.executors.ray import RayExecutor, worker_count
from pipeline.generate.runner import run_generate
from pipeline.generate.worker import ShardWorker
from pipeline.testing.data import shared_data

ROOT = Path(__file__).parents[1]
DATA = shared_data()
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import test modules


class PassThroughEngine:
    """The frames come back unchanged: shards are real, the model is not the point here."""

    identity = {"model": "pass-through"}
    prompt_used = True

    def inpaint(self, frames, masks, prompts, negatives, seeds, timer=None):
        return list(frames)


class BrokenOnShardOne(ShardWorker):
    def run(self, shard_index, rows):
        if shard_index == 1:
            raise RuntimeError("disk on fire")
        return super().run(shard_index, rows)


def broken_factory(context):
    return BrokenOnShardOne(PassThroughEngine(), context)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def test_a_shard_that_keeps_failing_is_recorded_and_the_rest_completes(local_ray, tmp_path, caplog):
    config = config_from_dict({
        "run_id": "retries", "samples": 9, "shard_size": 3, "output": str(tmp_path),
        "frames": {"source": str(DATA / "normal-mucosa"), "limit": 9},
        "prompts": {"bank": str(ROOT / "prompts/clinical.yaml")}, "masks": {"preset": str(ROOT / "masks/default.yaml")},
        "engine": {"output_resolution": 64},
        "executor": {"kind": "ray", "shard_retries": 2, "max_workers": 2},
    })
    summary = run_generate(config, RayExecutor(), factory=broken_factory)
    run = Path(config.run_dir())
    assert not summary.ok and [f.shard_index for f in summary.failed_shards] == [1]
    assert "disk on fire" in summary.line()
    assert summary.written_samples == 6 and not (run / SUCCESS_FILE).exists()
    assert sorted(p.name for p in (run / "shards").glob("*.parquet")) == ["shard-00000.parquet", "shard-00002.parquet"]
    manifest = json.loads((run / MANIFEST_FILE).read_text())
    assert not manifest["complete"] and manifest["failed_shards"][0]["shard_index"] == 1
    assert sum("shard 1 failed" in r.getMessage() for r in caplog.records) == 3  # first try + 2 retries


def test_one_worker_per_gpu_never_more_than_the_work():
    config = config_from_dict({"frames": {"source": "x"}}).executor
    assert worker_count(config, gpus_available=8, shards=100) == 8
    assert worker_count(config, gpus_available=8, shards=3) == 3
    assert worker_count(config, gpus_available=0, shards=100) == 1
    half = config_from_dict({"frames": {"source": "x"}, "executor": {"num_gpus_per_worker": 0.5}}).executor
    assert worker_count(half, gpus_available=2, shards=100) == 4
    capped = config_from_dict({"frames": {"source": "x"}, "executor": {"max_workers": 2}}).executor
    assert worker_count(capped, gpus_available=8, shards=100) == 2
