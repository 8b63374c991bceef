"""The closed loop from evaluation to plan: bins measured by `evaluate`, weights bounded by ×k their
natural share, the plan drawn to them (and saying why), the sizes shown where people look."""

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.config import TargetsConfig, config_from_dict
from pipeline.errors import ConfigError
from pipeline.plan.frames import build_catalog
from pipeline.plan.masks.preset import MaskPreset
from pipeline.plan.masks.sampling import area_level
from pipeline.plan.plan import build_plan
from pipeline.plan.targets import aim, natural_shares, planned_areas, pooled_dice, size_shares, water_fill
from pipeline.segmenter.metrics import ImageMetrics, by_bins
from pipeline.testing.data import shared_data
from pipeline.train.evaluate import SetReport

ROOT = Path(__file__).parents[1]
DATA = shared_data()
PRESET = MaskPreset.load(ROOT / "masks/default.yaml")


def test_water_filling_caps_a_bin_at_k_times_its_natural_share_and_shares_the_rest():
    natural = {"small": 0.05, "medium": 0.3, "large": 0.65}
    shares = water_fill(natural, {"small": 10.0, "medium": 1.0, "large": 1.0}, 3.0)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["small"] == pytest.approx(0.15)  # capped: 3 × 0.05
    assert shares["medium"] == pytest.approx(shares["large"]) == pytest.approx(0.425)  # equal weights share the rest
    assert water_fill(natural, natural, 3.0) == pytest.approx(natural)  # natural weights: nothing moves
    only_small = water_fill(natural, {"small": 1.0, "medium": 0.0, "large": 0.0}, 1.5)
    assert sum(only_small.values()) == pytest.approx(1.0) and only_small["small"] == pytest.approx(0.075)
    assert only_small["medium"] / only_small["large"] == pytest.approx(0.3 / 0.65)  # the rest, by natural share
    assert water_fill(natural, {}, 3.0) == pytest.approx(natural)


def test_natural_shares_are_the_preset_levels_of_the_bin_edges():
    natural = natural_shares(PRESET)
    assert sum(natural.values()) == pytest.approx(1.0)
    assert natural["small"] == pytest.approx(area_level(0.02, PRESET))
    assert natural["small"] < natural["medium"] < natural["large"]  # Kvasir-SEG: mostly large lesions


def image(area: float, dice: float) -> ImageMetrics:
    return ImageMetrics(dice, dice, dice, dice, 0.0, area, 0.2)


def report(items: dict[str, ImageMetrics]) -> dict:
    sets = [SetReport("real:test", len(items), {}, 0.0, by_bins(items), items).to_json()]
    return {"checkpoint": "model.safetensors", "sets": sets}


def test_an_evaluation_aims_the_plan_at_its_weakest_bins(tmp_path):
    items = {"a": image(0.01, 0.2), "b": image(0.015, 0.4), "c": image(0.05, 0.6), "d": image(0.3, 0.9)}
    pooled = pooled_dice(report(items), "eval.json")
    assert pooled == {"small": (2, pytest.approx(0.3)), "medium": (1, 0.6), "large": (1, 0.9)}
    (tmp_path / "eval.json").write_text(json.dumps(report(items)))
    info = aim(TargetsConfig(from_evaluation=str(tmp_path / "eval.json")), PRESET)
    natural = natural_shares(PRESET)
    boost = {b: info.asked[b] / natural[b] for b in natural}
    assert boost["small"] > boost["medium"] > 1 > boost["large"] and max(boost.values()) <= 3 + 1e-9
    assert sum(info.asked.values()) == pytest.approx(1.0)
    assert "Dice 0.300 on 2 images" in info.why["small"] and info.source.endswith("eval.json")


def test_a_bin_no_image_falls_in_keeps_the_mean_deficit(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps(report({"c": image(0.05, 0.5), "d": image(0.3, 0.9)})))
    info = aim(TargetsConfig(from_evaluation=str(tmp_path / "eval.json")), PRESET)
    assert "no evaluated image" in info.why["small"]


def test_bad_targets_are_refused_naming_the_field_or_file(tmp_path):
    with pytest.raises(ConfigError, match="targets"):
        config_from_dict({"frames": {"source": "x"}, "targets": {"size": {"tiny": 1}}})
    with pytest.raises(ConfigError, match="targets"):
        config_from_dict({"frames": {"source": "x"}, "targets": {"size": {"small": 1}, "from_evaluation": "e.json"}})
    with pytest.raises(ConfigError, match="max_boost"):
        config_from_dict({"frames": {"source": "x"}, "targets": {"size": {"small": 1}, "max_boost": 0.5}})
    (tmp_path / "negatives.json").write_text(json.dumps({"sets": [{"data": "free", "fp_rate": 0.1}]}))
    with pytest.raises(ConfigError, match="negatives.json: no labelled set with per-bin results"):
        aim(TargetsConfig(from_evaluation=str(tmp_path / "negatives.json")), PRESET)
    empty = {"sets": [{"data": "x", "bins": {"size": {"small": {"n": 0}, "medium": {"n": 0}}}}]}
    (tmp_path / "empty.json").write_text(json.dumps(empty))
    with pytest.raises(ConfigError, match="empty.json: no evaluated image in any size bin"):
        aim(TargetsConfig(from_evaluation=str(tmp_path / "empty.json")), PRESET)
    with pytest.raises(ConfigError, match="missing.json: no such evaluation report"):
        aim(TargetsConfig(from_evaluation=str(tmp_path / "missing.json")), PRESET)


@pytest.fixture(scope="module")
def mucosa():
    return build_catalog(str(DATA / "normal-mucosa"), limit=30)


def job(tmp_path, **overrides):
    data = {"run_id": "aimed", "seed": 5, "samples": 1500, "shard_size": 500, "output": str(tmp_path),
            "frames": {"source": str(DATA / "normal-mucosa"), "limit": 30}}
    return config_from_dict(data, overrides=[f"{k}={v}" for k, v in overrides.items()])


def test_an_aimed_plan_holds_the_asked_sizes_and_says_why(tmp_path, mucosa):
    natural = build_plan(job(tmp_path), catalog=mucosa)
    aimed = build_plan(job(tmp_path, **{"targets.size": "{small: 1, medium: 1, large: 1}"}), catalog=mucosa)
    assert natural.meta.targets is None
    info = aimed.meta.targets
    got, before = size_shares(planned_areas(aimed.table)), size_shares(planned_areas(natural.table))
    for name, share in info.asked.items():  # placement inside the field of view shrinks a few lesions
        assert abs(got[name] - share) < 0.03, (name, got, info.asked)
    assert got["small"] > 2 * before["small"]
    areas = np.array(planned_areas(aimed.table))
    assert (areas <= 0.01).sum() > 2 * (np.array(planned_areas(natural.table)) <= 0.01).sum() > 0  # diminutive
    # the prompt names the size class the lesion's level lies in: a 0.5 % lesion is never "large"
    sizes = [a["size"] for a in aimed.table.column("attributes").to_pylist()]
    assert {s for s, area in zip(sizes, areas) if area < 0.01} <= {"diminutive", "small"}
    again = build_plan(job(tmp_path, **{"targets.size": "{small: 1, medium: 1, large: 1}"}), catalog=mucosa)
    assert again.table.equals(aimed.table)  # the same config gives the same plan


def test_plan_from_an_evaluation_prints_asked_against_planned_and_refuses_a_changed_one(tmp_path, capsys):
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps(report({"a": image(0.01, 0.1), "c": image(0.05, 0.6), "d": image(0.3, 0.9)})))
    args = ["jobs/mucosa.yaml", "--set", "samples=64", "--set", "frames.limit=20", "--out", str(tmp_path),
            "--from-evaluation", str(evaluation)]
    with pytest.raises(SystemExit) as done:
        main(["plan", *args])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "| <2% |" in out and "| size | natural | asked | planned | why |" in out and "Dice 0.100 on 1 images" in out
    evaluation.write_text(json.dumps(report({"a": image(0.01, 0.5), "c": image(0.05, 0.6), "d": image(0.3, 0.9)})))
    with pytest.raises(SystemExit) as done:
        main(["generate", *args])
    assert done.value.code != 0
    assert "the evaluation the plan was aimed with" in capsys.readouterr().err
