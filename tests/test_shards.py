"""Shards: schema, lossless labels, all-or-nothing writes, validation, and readers with no glue."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core import parquet, storage
from pipeline.core.images import decode_image
from pipeline.core.layout import RunLayout
from pipeline.generate import shards

RUN_META = {"run_id": "t", "pipeline_version": "0", "plan_digest": "d", "config": {"seed": 1}}
ATTRS = pa.struct([("size", pa.string()), ("modifiers", pa.list_(pa.string()))])


def _rows(n, rng):
    rows = []
    for i in range(n):
        mask = np.zeros((48, 64), np.uint8)
        mask[10:20 + i, 5:30] = 255
        rows.append({
            "sample_id": f"id{i}", "plan_index": i, "shard_index": 0, "seed": 10 + i,
            "source_frame": f"/frames/{i}.jpg", "source_sha256": "ab" * 32,
            "prompt": f"a polyp {i}", "negative_prompt": "blurry",
            "attributes": {"size": "small", "modifiers": ["mucus"] if i % 2 else []},
            "mask_params": '{"r": 1}', "image": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), "mask": mask,
            "engine": {"model": "tiny", "steps": 2}, "run_id": "t", "pipeline_version": "0",
        })
    return rows


@pytest.fixture()
def table():
    return shards.shard_table(_rows(3, np.random.default_rng(0)), ATTRS)


def test_round_trip_is_lossless(tmp_path, table):
    rows = _rows(3, np.random.default_rng(0))
    info = shards.write_shard(RunLayout(str(tmp_path)), 0, table, [{"sample_id": "id9", "reason": "bad frame"}], RUN_META)
    back = shards.read_shard(RunLayout(str(tmp_path)).shard(0))
    assert back.num_rows == info.rows == 3
    assert pq.ParquetFile(RunLayout(str(tmp_path)).shard(0)).metadata.row_group(0).column(0).compression == "ZSTD"
    for original, stored in zip(rows, back.to_pylist()):
        assert np.array_equal(decode_image(stored["image"]["bytes"]), original["image"])
        mask = decode_image(stored["mask"]["bytes"])
        assert mask.ndim == 2 and set(np.unique(mask)) <= {0, 255} and np.array_equal(mask, original["mask"])
        assert stored["mask_area"] == pytest.approx((original["mask"] > 0).mean())
        ys, xs = np.nonzero(original["mask"])
        assert stored["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert (stored["width"], stored["height"]) == (64, 48)
    assert parquet.provenance(back.schema)["failed"] == [{"sample_id": "id9", "reason": "bad frame"}]


def test_datasets_decodes_images_with_no_glue(tmp_path, table):
    import datasets

    shards.write_shard(RunLayout(str(tmp_path)), 0, table, [], RUN_META)
    ds = datasets.load_dataset("parquet", data_files=RunLayout(str(tmp_path)).shard(0), split="train",
                               cache_dir=str(tmp_path / "cache"))
    first = ds[0]
    assert first["image"].mode == "RGB" and first["image"].size == (64, 48)
    assert first["mask"].mode == "L" and set(np.unique(np.asarray(first["mask"]))) <= {0, 255}
    assert first["attributes"]["size"] == "small"


def test_validation_accepts_only_complete_planned_shards(tmp_path, table):
    run = RunLayout(str(tmp_path))
    assert shards.validate_shard(run, 0, ["id0", "id1", "id2"]) is None  # missing
    shards.write_shard(run, 0, table, [{"sample_id": "id3", "reason": "x"}], RUN_META)
    assert shards.validate_shard(run, 0, ["id0", "id1", "id2", "id3"]).rows == 3
    assert shards.validate_shard(run, 0, ["id0", "id1", "id2"]) is None  # plan disagrees
    url = run.shard(0)
    data = storage.read_bytes(url)
    storage.write_bytes_atomic(url, data[: len(data) // 2])  # corrupt: truncated
    assert shards.validate_shard(run, 0, ["id0", "id1", "id2", "id3"]) is None
    storage.write_bytes_atomic(url, data)
    assert shards.validate_shard(run, 0, ["id0", "id1", "id2", "id3"]) is not None
    storage.remove(run.shard_done(0))  # killed between the shard and its completion record
    assert shards.validate_shard(run, 0, ["id0", "id1", "id2", "id3"]) is None


def test_validation_reads_no_pixels(tmp_path, table, monkeypatch):
    """Resume must not download the run: validating touches the record, the size and the footer only."""
    run = RunLayout(str(tmp_path))
    shards.write_shard(run, 0, table, [], RUN_META)
    whole_reads = []
    real_read = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda url: whole_reads.append(url) or real_read(url))
    assert shards.validate_shard(run, 0, ["id0", "id1", "id2"]) is not None
    assert whole_reads == [run.shard_done(0)]


def test_write_leaves_no_temp_file_and_sweeps_stale_ones(tmp_path, table):
    run = RunLayout(str(tmp_path))
    shards.write_shard(run, 1, table, [], RUN_META)
    shard_dir = tmp_path / "shards"
    assert sorted(p.name for p in shard_dir.iterdir()) == ["shard-00001.parquet", "shard-00001.parquet.done"]
    (shard_dir / f"{storage.TEMP_PREFIX}killed").write_bytes(b"half a shard")
    assert storage.remove_stale_temps(str(shard_dir)) == 1
    assert sorted(p.name for p in shard_dir.iterdir()) == ["shard-00001.parquet", "shard-00001.parquet.done"]


def test_shards_on_s3(s3_server, table):
    import boto3

    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket="shards")
    run = RunLayout("s3://shards/runs/r1")
    info = shards.write_shard(run, 0, table, [], RUN_META)
    assert storage.list_names(run.shard_dir) == ["shard-00000.parquet", "shard-00000.parquet.done"]
    assert shards.validate_shard(run, 0, ["id0", "id1", "id2"]).sha256 == info.sha256
    assert shards.read_shard(run.shard(0)).num_rows == 3


def test_bytes_that_are_not_an_image_are_a_value_error_not_a_crash():
    with pytest.raises(ValueError, match="not a decodable image"):
        decode_image(b"garbage")
