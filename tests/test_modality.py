"""Frame-decided attributes: a prompt never asks for a modality its frame was not taken with."""

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from pipeline.config import config_from_dict
from pipeline.errors import FrameCatalogError, PromptBankError
from pipeline.plan.fov import detect_fov
from pipeline.plan.frames import build_catalog
from pipeline.plan.modality import NARROW_BAND, WHITE_LIGHT, cool_share, detect_modality
from pipeline.plan.plan import build_plan
from pipeline.plan.prompts.bank import PromptBank
from pipeline.testing.data import shared_data

ROOT = Path(__file__).parents[1]
DATA = shared_data()
BANK = ROOT / "prompts" / "clinical.yaml"


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def narrow_band(rgb: np.ndarray) -> np.ndarray:
    """An NBI rendering of a white-light frame: NBI lights tissue with a green (540 nm) and a blue
    (415 nm) band and shows the green image in red, the blue one in green and blue, so the mucosa
    turns teal."""
    rgb = rgb.astype(np.float32)
    return np.clip(np.stack([rgb[..., 1] * 0.8, rgb[..., 2] * 1.3, rgb[..., 2] * 1.25], axis=-1), 0, 255).astype(np.uint8)


def job(tmp_path, frames, **overrides):
    data = {"run_id": "m", "seed": 5, "samples": 60, "shard_size": 20, "output": str(tmp_path),
            "frames": {"source": str(frames)}, "prompts": {"bank": str(BANK)},
            "masks": {"preset": str(ROOT / "masks/default.yaml")}}
    return config_from_dict(data, overrides=[f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """Six polyp-free crops: three as taken (white light), three rendered as NBI."""
    folder = tmp_path_factory.mktemp("frames")
    for i in range(1, 7):
        rgb = read_rgb(DATA / "normal-mucosa" / f"{i * 97}.jpg")
        cv2.imwrite(str(folder / f"{'nbi' if i > 3 else 'wli'}-{i}.png"),
                    cv2.cvtColor(narrow_band(rgb) if i > 3 else rgb, cv2.COLOR_RGB2BGR))
    return folder


def test_real_white_light_frames_are_detected_as_such():
    paths = sorted((DATA / "normal-mucosa").glob("*.jpg"))[::40] + sorted((DATA / "kvasir-seg/images").glob("*.jpg"))[::20]
    assert len(paths) >= 90
    shares = [cool_share(rgb, detect_fov(rgb)) for rgb in map(read_rgb, paths)]
    assert max(shares) < 0.05
    rgb = read_rgb(paths[0])
    assert detect_modality(rgb, detect_fov(rgb)) == WHITE_LIGHT
    assert detect_modality(narrow_band(rgb), detect_fov(rgb)) == NARROW_BAND


def test_prompts_follow_their_frames_modality(tmp_path, frames):
    plan = build_plan(job(tmp_path, frames))
    rows = plan.table.to_pylist()
    assert {Path(r["source_frame"]).name.split("-")[0] for r in rows} == {"wli", "nbi"}
    for row in rows:
        expected = Path(row["source_frame"]).name.split("-")[0]
        assert row["attributes"]["modality"] == expected, row["source_frame"]
        if expected == "wli":
            assert "narrow-band" not in row["prompt"] and "NBI" not in row["prompt"]
            assert row["attributes"]["colour"] != "brownish"  # the bank's rule still follows from the frame
    assert plan.meta.frames.decided == {"modality": {"nbi": 3, "wli": 3}}


def test_metadata_overrides_detection_and_decides_other_axes(tmp_path, frames):
    csv = tmp_path / "frames.csv"
    csv.write_text("frame,modality,location\nnbi-4.png,wli,rectum\n" + f"{frames / 'wli-1.png'},,cecum\n")
    rows = build_plan(job(tmp_path, frames, **{"frames.metadata": str(csv)})).table.to_pylist()
    by_frame = {}
    for row in rows:
        by_frame.setdefault(Path(row["source_frame"]).name, []).append(row["attributes"])
    assert {a["modality"] for a in by_frame["nbi-4.png"]} == {"wli"}  # the CSV wins over detection
    assert {a["location"] for a in by_frame["nbi-4.png"]} == {"rectum"}
    assert {a["location"] for a in by_frame["wli-1.png"]} == {"cecum"}  # matched by full path
    assert {a["modality"] for a in by_frame["wli-1.png"]} == {"wli"}  # empty cell: detection stands
    assert len({a["location"] for a in by_frame["wli-2.png"]}) > 1  # undecided: the bank draws it


def test_bad_metadata_is_one_line_naming_file_and_frame(tmp_path, frames):
    csv = tmp_path / "frames.csv"
    csv.write_text("frame,modality\nwli-2.png,infrared\n")
    with pytest.raises(PromptBankError, match=r"frames.csv \(.*wli-2.png\): modality='infrared' is not a value"):
        build_plan(job(tmp_path, frames, **{"frames.metadata": str(csv)}))
    csv.write_text("name,modality\nwli-2.png,nbi\n")
    with pytest.raises(FrameCatalogError, match="needs a header with a 'frame' column"):
        build_plan(job(tmp_path, frames, **{"frames.metadata": str(csv)}))
    with pytest.raises(FrameCatalogError, match="missing.csv: no such frames.metadata file"):
        build_plan(job(tmp_path, frames, **{"frames.metadata": str(tmp_path / "missing.csv")}))


def test_a_frame_cannot_decide_an_axis_that_a_constraint_restricts(tmp_path):
    bank = yaml.safe_load(BANK.read_text())
    bank["constraints"].append({"if": {"size": ["giant"]}, "then_not": {"modality": ["nbi"]}})
    path = tmp_path / "bank.yaml"
    path.write_text(yaml.safe_dump(bank, sort_keys=False))
    restricted = PromptBank.load(path)
    with pytest.raises(PromptBankError, match="a constraint restricts axis 'modality'"):
        restricted.sample_many(3, 0, [{"modality": "wli"}] * 3)
    free = PromptBank.load(BANK)
    given = free.sample_many(200, 0, [{"modality": "nbi"}] * 200)
    assert {s.attributes["modality"] for s in given} == {"nbi"}
    # the value draw is spent all the same: the other axes' streams do not shift
    plain = free.sample_many(200, 0)
    same = [a for a, b in zip(given, plain) if b.attributes["modality"] == "nbi"]
    assert same and all(a.attributes == b.attributes for a, b in zip(given, plain) if b.attributes["modality"] == "nbi")


def test_catalog_records_modality(tmp_path, frames):
    catalog = build_catalog(str(frames))
    assert {Path(r.uri).name: r.modality for r in catalog.records} == {
        **{f"wli-{i}.png": "wli" for i in (1, 2, 3)}, **{f"nbi-{i}.png": "nbi" for i in (4, 5, 6)}}
    shutil.rmtree(tmp_path, ignore_errors=True)
