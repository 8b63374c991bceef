"""End to end on one machine: plan → tiny SDXL inpainting on real frames → shards → resume."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import config_from_dict
from pipeline.core.images import decode_image
from pipeline.core.layout import MANIFEST_FILE, SHARD_DIR, SUCCESS_FILE, RunLayout
from pipeline.core.timing import StageTimer
from pipeline.executors.local import LocalExecutor
from pipeline.generate.composite import repaint_region
from pipeline.generate.runner import run_generate
from pipeline.generate.worker import prepare_sample
from pipeline.plan.plan import Plan
from pipeline.testing.data import shared_data
from pipeline.tools.inspect import summarise_run

ROOT = Path(__file__).parents[1]
DATA = shared_data()


def job(out, model, frames=DATA / "normal-mucosa", **overrides):
    data = {
        "run_id": "e2e", "seed": 5, "samples": 6, "shard_size": 3, "output": str(out),
        "frames": {"source": str(frames), "limit": 6},
        "prompts": {"bank": str(ROOT / "prompts/clinical.yaml")},
        "masks": {"preset": str(ROOT / "masks/default.yaml")},
        "engine": {"model": str(model), "batch_size": 3, "resolution": 64, "output_resolution": 96, "steps": 2},
    }
    return config_from_dict(data, overrides=[f"{k}={v}" for k, v in overrides.items()])


def shard_rows(run_dir):
    return [row for path in sorted((Path(run_dir) / SHARD_DIR).glob("*.parquet"))
            for row in pq.read_table(path).to_pylist()]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_model_dir):
    config = job(tmp_path_factory.mktemp("run"), tiny_model_dir)
    summary = run_generate(config, LocalExecutor())
    return config, summary


def test_run_writes_complete_shards_with_provenance(first_run):
    config, summary = first_run
    run = Path(config.run_dir())
    assert summary.ok and summary.written_samples == 6 and summary.failed_samples == 0
    assert (run / SUCCESS_FILE).exists()
    manifest = json.loads((run / MANIFEST_FILE).read_text())
    assert [s["rows"] for s in manifest["shards"]] == [3, 3] and manifest["complete"]
    assert set(manifest["timings"]["stage_seconds"]) >= {"frame_load", "mask", "prepare", "model", "composite", "png_encode", "write"}
    rows = shard_rows(run)
    plan = Plan.read(str(run))
    assert [r["sample_id"] for r in rows] == plan.table.column("sample_id").to_pylist()
    engine = rows[0]["engine"]
    assert engine["steps"] == 2 and engine["model"] == config.engine.model
    assert engine["random_weights"] is True  # the tiny test model says so in every row…
    assert "RANDOM model weights" in summarise_run(str(run))  # …and inspect says it out loud
    assert rows[0]["run_id"] == "e2e" and rows[0]["pipeline_version"]
    assert rows[0]["donor_id"] is None and engine["kind"] == "sdxl"  # donors are the transplant engine's
    for row, planned in zip(rows, plan.table.to_pylist()):  # the model read the prompt: all it asked for
        assert row["prompt_used"] and row["attributes"] == {**planned["attributes"], "position": row["attributes"]["position"]}
        assert row["attributes"]["position"] in ("centre", "periphery")


def test_masks_are_the_planned_labels_and_pixels_outside_the_repaint_region_are_the_source(first_run):
    config, _ = first_run
    plan = {r["sample_id"]: r for r in Plan.read(config.run_dir()).table.to_pylist()}
    for row in shard_rows(config.run_dir()):
        frame, planned_mask = prepare_sample(plan[row["sample_id"]], config.engine.output_resolution, StageTimer())
        mask, image = decode_image(row["mask"]["bytes"]), decode_image(row["image"]["bytes"])
        assert set(np.unique(mask)) <= {0, 255} and np.array_equal(mask, planned_mask)
        outside = repaint_region(mask, config.engine.mask_dilation, config.engine.mask_feather) == 0
        assert outside.mean() > 0.3
        assert np.array_equal(image[outside], frame[outside])
        assert not np.array_equal(image[mask > 0], frame[mask > 0])  # the model did paint


def test_rerun_skips_valid_shards_and_regenerates_corrupt_ones_identically(first_run):
    config, _ = first_run
    first, second = RunLayout(config.run_dir()).shard(0), RunLayout(config.run_dir()).shard(1)
    before = Path(first).stat().st_mtime_ns, Path(second).read_bytes()
    Path(second).write_bytes(Path(second).read_bytes()[:500])  # a corrupt shard
    summary = run_generate(config, LocalExecutor())
    assert summary.ok and summary.shards_skipped == 1
    assert Path(first).stat().st_mtime_ns == before[0]
    regenerated = pq.read_table(second).to_pylist()
    original = pq.read_table(__import__("pyarrow").BufferReader(before[1])).to_pylist()
    assert [r["image"]["bytes"] for r in regenerated] == [r["image"]["bytes"] for r in original]


def test_batch_size_does_not_change_the_pictures(first_run, tmp_path, tiny_model_dir):
    config, _ = first_run
    single = job(tmp_path, tiny_model_dir, **{"engine.batch_size": 1})
    summary = run_generate(single, LocalExecutor())
    assert summary.ok and summary.written_samples == 6 and summary.shards_skipped == 0
    for a, b in zip(shard_rows(config.run_dir()), shard_rows(single.run_dir())):
        assert a["sample_id"] == b["sample_id"]
        diff = np.abs(decode_image(a["image"]["bytes"]).astype(int) - decode_image(b["image"]["bytes"]).astype(int))
        assert diff.max() <= 2


def test_a_frame_that_breaks_mid_run_fails_only_its_sample(tmp_path, tiny_model_dir):
    frames = tmp_path / "frames"
    frames.mkdir()
    for name in sorted(p.name for p in (DATA / "normal-mucosa").glob("*.jpg"))[:4]:
        shutil.copy(DATA / "normal-mucosa" / name, frames / name)
    config = job(tmp_path / "out", tiny_model_dir, frames, samples=4, shard_size=4)
    from pipeline.generate.runner import load_or_build_plan

    plan = load_or_build_plan(config, config.run_dir(), None)
    broken = plan.table.column("source_frame")[0].as_py()
    Path(broken).write_bytes(b"not a jpeg any more")
    summary = run_generate(config, LocalExecutor())
    assert summary.ok and summary.written_samples == 3 and summary.failed_samples == 1
    manifest = json.loads((Path(config.run_dir()) / MANIFEST_FILE).read_text())
    assert broken in manifest["failed_samples"][0]["reason"]
    assert run_generate(config, LocalExecutor()).shards_skipped == 1  # failures count as accounted for


def test_a_plan_from_another_job_is_not_silently_reused(first_run):
    from pipeline.errors import ShardError

    config, _ = first_run
    changed = config.model_copy(update={"seed": 99})
    with pytest.raises(ShardError, match="plan of another job"):
        run_generate(changed, LocalExecutor())


def test_a_run_on_object_storage(s3_server, tmp_path, tiny_model_dir):
    import boto3
    import datasets

    from pipeline.core import storage

    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket="runs")
    config = job("s3://runs/nightly", tiny_model_dir, samples=3)
    assert run_generate(config, LocalExecutor()).ok
    run = config.run_dir()
    assert storage.list_names(run) == ["_SUCCESS", "manifest.json", "plan.parquet", "shards"]
    assert run_generate(config, LocalExecutor()).shards_skipped == 1  # validated in place on S3
    local = tmp_path / "copy.parquet"
    local.write_bytes(storage.read_bytes(RunLayout(run).shard(0)))
    ds = datasets.load_dataset("parquet", data_files=str(local), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds[0]["image"].size == (96, 96) and ds[0]["mask"].mode == "L"
