"""Hard negatives (`negatives:`): planned on their own random stream, written with an empty label and
never painted by the engine; the polyp samples of a job are the same samples with or without them."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import cli
from pipeline.config import config_from_dict
from pipeline.core.images import decode_image, resize_image
from pipeline.errors import ConfigError
from pipeline.executors.local import LocalExecutor
from pipeline.generate.runner import run_generate
from pipeline.generate.transplant.donors import build_donors
from pipeline.plan.frames import load_frame
from pipeline.plan.plan import build_plan
from pipeline.plan.targets import planned_areas
from pipeline.testing.data import shared_data

DATA = shared_data()
KVASIR = DATA / "kvasir-seg"
ROOT = cli.__file__.rsplit("/pipeline/", 1)[0]


def job(tmp_path, run_id="neg", samples=12, negatives=None, **engine):
    data = {
        "run_id": run_id, "seed": 5, "samples": samples, "shard_size": 6, "output": str(tmp_path),
        "frames": {"source": str(DATA / "normal-mucosa"), "limit": 12},
        "prompts": {"bank": f"{ROOT}/prompts/clinical.yaml"}, "masks": {"preset": f"{ROOT}/masks/default.yaml"},
        "engine": {"kind": "transplant", "donors": "never-read.parquet", "output_resolution": 128, **engine},
        **({"negatives": negatives} if negatives else {}),
    }
    return config_from_dict(data)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("donors")
    split = root / "ids.txt"
    split.write_text("\n".join((KVASIR / "splits" / "train.txt").read_text().split()[:8]) + "\n")
    build_donors(KVASIR / "images", KVASIR / "masks", str(root / "donors.parquet"), split)
    return str(root / "donors.parquet")


def test_the_plan_draws_negatives_at_the_asked_share_as_a_prefix(tmp_path):
    config = job(tmp_path, samples=400, negatives={"ratio": 0.25})
    plan = build_plan(config)
    rows = plan.table.to_pylist()
    negatives = [row for row in rows if "negative" in json.loads(row["mask_params"])]
    assert 0.15 < len(negatives) / len(rows) < 0.25  # 1 in 5 asked; binomial spread at n = 400 is ±0.02
    assert all(row["prompt"] == "" and row["negative_prompt"] == "" for row in negatives)
    assert set(plan.negatives) == {"frame", "specular", "bubble", "fold", "stool"}
    assert sum(plan.negatives.values()) == len(negatives)
    assert len(planned_areas(plan.table)) == len(rows) - len(negatives)  # lesion sizes count lesions only
    first = build_plan(config, n=40).table
    assert first.column("sample_id").to_pylist() == plan.table.column("sample_id").to_pylist()[:40]
    only_frames = build_plan(job(tmp_path, samples=400, negatives={"ratio": 0.25, "kinds": ["frame"]}))
    assert set(only_frames.negatives) == {"frame"}
    assert job(tmp_path, samples=400).plan_digest() != config.plan_digest()  # negatives change the plan


def test_bad_negative_settings_are_one_line_errors(tmp_path):
    for negatives, field in (({"ratio": 0}, "negatives.ratio"),
                             ({"ratio": 0.2, "kinds": ["shadow"]}, "negatives.kinds"),
                             ({"ratio": 0.2, "lookalikes": []}, "negatives.lookalikes")):
        with pytest.raises(ConfigError, match=field):
            job(tmp_path, negatives=negatives)


def test_negatives_are_written_unpainted_with_an_empty_label_and_polyp_samples_do_not_change(tmp_path, library):
    plain = job(tmp_path, "plain", donors=library)
    mixed = job(tmp_path, "mixed", negatives={"ratio": 1.0}, donors=library)
    assert run_generate(plain, LocalExecutor()).ok and run_generate(mixed, LocalExecutor()).ok

    def rows(config):
        return [row for path in sorted((tmp_path / config.run_id / "shards").glob("*.parquet"))
                for row in pq.read_table(path).to_pylist()]

    before = {row["sample_id"]: row for row in rows(plain)}
    seen = set()
    for row in rows(mixed):
        shows = row["attributes"]["negative"]
        if shows is None:  # a polyp sample: the very sample the job makes without negatives
            assert row["image"]["bytes"] == before[row["sample_id"]]["image"]["bytes"]
            continue
        seen.add(shows)
        image, mask = decode_image(row["image"]["bytes"]), decode_image(row["mask"]["bytes"])
        assert not mask.any() and row["mask_area"] == 0 and row["donor_id"] is None and row["prompt_used"] is False
        assert row["attributes"]["size"] is None and row["attributes"]["modality"]
        frame = resize_image(load_frame(row["source_frame"], row["source_sha256"]), (128, 128))
        changed = np.abs(image.astype(int) - frame.astype(int)).max(axis=2) > 2
        if shows == "frame":
            assert not changed.any()  # the polyp-free frame as it is
        else:
            assert 0 < changed.mean() < 0.5, shows  # a distractor drawn in, not a repainted frame
    assert "frame" in seen and len(seen) >= 2
