"""The plan: deterministic, a prefix-stable function of (config, seed), masks inside the field of view."""

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import config_from_dict
from pipeline.core.timing import StageTimer
from pipeline.plan.frames import build_catalog
from pipeline.plan.masks.params import MaskParams
from pipeline.plan.masks.shapes import draw_mask
from pipeline.plan.plan import Plan, build_plan
from pipeline.testing.data import shared_data

ROOT = Path(__file__).parents[1]
DATA = shared_data()


def job(tmp_path, **overrides):
    data = {
        "run_id": "t", "seed": 3, "samples": 40, "shard_size": 8, "output": str(tmp_path),
        "frames": {"source": str(DATA / "normal-mucosa"), "limit": 30},
        "prompts": {"bank": str(ROOT / "prompts/clinical.yaml")},
        "masks": {"preset": str(ROOT / "masks/default.yaml")},
    }
    return config_from_dict(data, overrides=[f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="module")
def mucosa():
    return build_catalog(str(DATA / "normal-mucosa"), limit=30)


def test_same_config_same_plan_and_prefix_stable(tmp_path, mucosa):
    config = job(tmp_path)
    full = build_plan(config, catalog=mucosa)
    assert full.table.equals(build_plan(config, catalog=mucosa).table)
    assert build_plan(config, 13, catalog=mucosa).table.equals(full.table.slice(0, 13))
    ids = full.table.column("sample_id").to_pylist()
    assert len(set(ids)) == len(ids) == 40
    assert full.shard_indices == [0, 1, 2, 3, 4]
    other = build_plan(job(tmp_path, seed=4), catalog=mucosa)
    assert not set(ids) & set(other.table.column("sample_id").to_pylist())


def test_engine_settings_change_identity_but_batch_size_does_not(tmp_path, mucosa):
    base = build_plan(job(tmp_path), catalog=mucosa).table.column("sample_id")
    assert build_plan(job(tmp_path, **{"engine.batch_size": 1}), catalog=mucosa).table.column("sample_id").equals(base)
    assert not build_plan(job(tmp_path, **{"engine.steps": 5}), catalog=mucosa).table.column("sample_id").equals(base)


def test_rows_carry_everything_a_sample_needs(tmp_path, mucosa):
    rows = build_plan(job(tmp_path), catalog=mucosa).table.to_pylist()
    uses = {}
    for row in rows:
        assert row["prompt"] and row["negative_prompt"] and row["source_sha256"]
        assert {"morphology", "size"} <= set(row["attributes"])
        MaskParams.from_dict(json.loads(row["mask_params"]))
        uses[row["source_frame"]] = uses.get(row["source_frame"], 0) + 1
    assert max(uses.values()) - min(uses.values()) <= 1  # frames are used evenly


def test_write_and_read_back(tmp_path, mucosa):
    config = job(tmp_path)
    plan = build_plan(config, catalog=mucosa)
    plan.write(config.run_dir())
    back = Plan.read(config.run_dir())
    assert back.table.equals(plan.table) and back.meta.config_digest == config.plan_digest()
    assert back.shard_rows(1)[0]["plan_index"] == 8


def test_masks_stay_inside_the_field_of_view_of_bordered_frames(tmp_path):
    config = job(tmp_path, **{"frames.source": str(DATA / "kvasir-seg/images"), "frames.limit": 12, "samples": 36})
    plan = build_plan(config)
    catalog = {r.uri: r for r in build_catalog(str(DATA / "kvasir-seg/images"), limit=12).records}
    for row in plan.table.to_pylist():
        frame = catalog[row["source_frame"]]
        mask = draw_mask(MaskParams.from_dict(json.loads(row["mask_params"])), frame.width, frame.height)
        visible = frame.fov.to_mask(frame.width, frame.height)
        assert mask.any() and not np.any((mask > 0) & ~visible), row["source_frame"]


def test_an_input_edited_in_place_is_refused_on_resume_naming_it(tmp_path):
    """Identity is content: the bank, the preset, the frame files and their metadata, not their paths."""
    import shutil

    from pipeline.errors import FrameCatalogError, ShardError
    from pipeline.generate.runner import load_or_build_plan
    from pipeline.generate.worker import prepare_sample

    frames = tmp_path / "frames"
    frames.mkdir()
    for n in range(1, 4):
        shutil.copy(DATA / "normal-mucosa" / f"{n}.jpg", frames)
    shutil.copy(ROOT / "prompts/clinical.yaml", tmp_path / "bank.yaml")
    shutil.copy(ROOT / "masks/default.yaml", tmp_path / "preset.yaml")
    (tmp_path / "meta.csv").write_text("frame,location\n1.jpg,cecum\n")
    config = job(tmp_path, **{"frames.source": frames, "frames.limit": "null", "prompts.bank": tmp_path / "bank.yaml",
                              "masks.preset": tmp_path / "preset.yaml", "frames.metadata": tmp_path / "meta.csv",
                              "samples": 6})
    plan = load_or_build_plan(config, config.run_dir(), None)
    assert load_or_build_plan(config, config.run_dir(), None).digest == plan.digest  # unchanged inputs: reused

    def refused(edit, undo, match):
        edit()
        with pytest.raises(ShardError, match=match):
            load_or_build_plan(config, config.run_dir(), None)
        undo()
        assert load_or_build_plan(config, config.run_dir(), None).digest == plan.digest

    bank = (tmp_path / "bank.yaml").read_text()
    refused(lambda: (tmp_path / "bank.yaml").write_text(bank.replace("{id: 0-Ip, weight: 0.143", "{id: 0-Ip, weight: 90.10")),
            lambda: (tmp_path / "bank.yaml").write_text(bank), "the prompt bank .*bank.yaml changed")
    preset = (tmp_path / "preset.yaml").read_text()
    refused(lambda: (tmp_path / "preset.yaml").write_text(preset.replace("vertices: 96", "vertices: 80")),
            lambda: (tmp_path / "preset.yaml").write_text(preset), "the mask preset .*preset.yaml changed")
    refused(lambda: shutil.copy(DATA / "normal-mucosa" / "7.jpg", frames), lambda: (frames / "7.jpg").unlink(),
            "the frame files of .* changed")
    refused(lambda: (tmp_path / "meta.csv").write_text("frame,location\n1.jpg,rectum\n"),
            lambda: (tmp_path / "meta.csv").write_text("frame,location\n1.jpg,cecum\n"), "the frame metadata .* changed")

    row = plan.table.to_pylist()[0]  # a frame whose bytes changed since planning never makes a sample
    shutil.copy(DATA / "normal-mucosa" / "8.jpg", row["source_frame"])
    with pytest.raises(FrameCatalogError, match="changed since the run was planned"):
        prepare_sample(row, 64, StageTimer())
