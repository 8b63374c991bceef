"""Real-mask mode (`masks.source: real`): Kvasir-SEG labels of a training split, flipped, turned,
scaled to the planned size and placed inside the field of view; drawn exactly, checked by content,
and traced into the lineage that experiments check."""

import json
import math
import shutil

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import cli
from pipeline.config import RealMasksConfig, config_from_dict
from pipeline.core.images import decode_image, resize_image
from pipeline.core.labelled import binary_label
from pipeline.errors import ConfigError, MaskPresetError, ShardError
from pipeline.executors.local import LocalExecutor
from pipeline.generate.lineage import sample_lineage
from pipeline.generate.runner import run_generate
from pipeline.plan.fov import FieldOfView, detect_fov
from pipeline.plan.masks.preset import MaskPreset
from pipeline.plan.masks.real import RealMask, draw_real_mask, load_source_masks, sample_real_mask, turned
from pipeline.plan.masks.sampling import size_class_of
from pipeline.plan.plan import build_plan
from pipeline.testing.data import shared_data

DATA = shared_data()
KVASIR = DATA / "kvasir-seg"
ROOT = cli.__file__.rsplit("/pipeline/", 1)[0]
TRAIN = (KVASIR / "splits" / "train.txt").read_text().split()
LABELLED = {"images": str(KVASIR / "images"), "masks": str(KVASIR / "masks")}


def iou(a, b):
    a, b = a > 0, b > 0
    return (a & b).sum() / max((a | b).sum(), 1)


def kvasir_label(image_id):
    return binary_label(decode_image((KVASIR / "masks" / f"{image_id}.jpg").read_bytes(), "gray"))


def placed(image_id, **changes):
    """The label of `image_id` placed as itself: its own centroid and area, unturned."""
    label = kvasir_label(image_id)
    rows, cols = np.nonzero(label)
    path = KVASIR / "masks" / f"{image_id}.jpg"
    params = dict(id=image_id, mask=str(path), mask_sha256=_sha(path), image_sha256="", flip=False, rotation=0.0,
                  center=((cols.mean() + 0.5) / label.shape[1], (rows.mean() + 0.5) / label.shape[0]),
                  scale=math.sqrt(label.mean()), size="large")
    return RealMask(**{**params, **changes}), label


def _sha(path):
    from pipeline.core.digests import sha256_hex

    return sha256_hex(path.read_bytes())


def test_a_label_placed_as_itself_is_drawn_as_itself_and_flips_and_turns_exactly():
    params, label = placed(TRAIN[3])
    height, width = label.shape
    assert iou(draw_real_mask(params, width, height), label) > 0.98
    centred = RealMask(**{**vars(params), "center": (0.5, 0.5)})
    side = 320
    plain = draw_real_mask(centred, side, side)
    assert abs((plain > 0).mean() - label.mean()) < 0.01  # the area fraction is kept at any size
    flipped = draw_real_mask(RealMask(**{**vars(centred), "flip": True}), side, side)
    assert iou(flipped, plain[:, ::-1]) > 0.95
    turned = draw_real_mask(RealMask(**{**vars(centred), "rotation": math.pi / 2}), side, side)
    assert iou(turned, np.rot90(plain, k=-1)) > 0.95  # +90° turns clockwise on screen (y points down)
    assert set(np.unique(turned)) <= {0, 255}


def test_the_outline_placement_fits_is_the_label_that_is_drawn(tmp_path):
    """`sample_real_mask` places a label by its turned hull; `draw_real_mask` must draw it there, for
    any flip and turn."""
    split = tmp_path / "ids.txt"
    split.write_text("\n".join(TRAIN[:6]) + "\n")
    settings = RealMasksConfig(labelled={**LABELLED, "split": str(split)})
    sources = load_source_masks(settings.labelled)
    preset = MaskPreset.load(f"{ROOT}/masks/default.yaml")
    width, height = 320, 256
    rng = np.random.default_rng(0)
    for _ in range(12):
        placed_mask = sample_real_mask(sources, settings, preset, {}, FieldOfView.full(width, height), rng)
        source = next(m for m in sources if m.id == placed_mask.id)
        side = placed_mask.scale * math.sqrt(width * height)
        hull = turned(source.hull, placed_mask.flip, placed_mask.rotation) * side
        hull += np.array(placed_mask.center) * (width, height)
        outline = np.zeros((height, width), np.uint8)
        cv2.fillPoly(outline, [np.round(hull * 16).astype(np.int32)], 255, shift=4)
        drawn = draw_real_mask(placed_mask, width, height) > 0
        inside = cv2.dilate(outline, np.ones((5, 5), np.uint8)) > 0
        assert (drawn & ~inside).sum() <= 0.005 * drawn.sum()  # the label lies within its hull
        own = np.zeros_like(outline)  # the drawn label's own hull is the placed one
        cv2.fillPoly(own, [cv2.convexHull(cv2.findNonZero(drawn.astype(np.uint8)))], 255)
        assert iou(own, outline) > 0.9


def job(tmp_path, split_ids, samples=24, **changes):
    split, donors = tmp_path / "masks.txt", tmp_path / "donors.txt"
    split.write_text("\n".join(split_ids) + "\n")
    donors.write_text("\n".join(TRAIN[:10]) + "\n")
    return config_from_dict({
        "run_id": "real", "seed": 3, "samples": samples, "shard_size": 12, "output": str(tmp_path),
        "frames": {"source": str(KVASIR / "images"), "limit": 6},  # real framings: a field of view to stay in
        "prompts": {"bank": f"{ROOT}/prompts/clinical.yaml"}, "masks": {
            "preset": f"{ROOT}/masks/default.yaml", "source": "real",
            "real": {"labelled": {**LABELLED, "split": str(split)}, "rotate": 30}},
        "engine": {"kind": "transplant", "donors": str(tmp_path / "donors.parquet"), "output_resolution": 160,
                   "donors_source": {**LABELLED, "split": str(donors)}},
        **changes,
    })


def test_the_plan_draws_split_labels_at_the_planned_size_inside_the_field_of_view(tmp_path):
    ids = TRAIN[:10]
    config = job(tmp_path, ids)
    plan = build_plan(config)
    preset = MaskPreset.load(config.masks.preset)
    params = [json.loads(p) for p in plan.table.column("mask_params").to_pylist()]
    attributes = plan.table.column("attributes").to_pylist()
    assert {p["real"]["id"] for p in params} <= set(ids) and len({p["real"]["id"] for p in params}) > 5
    assert 0.2 < np.mean([p["flip"] for p in params]) < 0.8
    assert max(abs(math.degrees(p["rotation"])) for p in params) <= 30
    assert all(p["size"] == a["size"] for p, a in zip(params, attributes))  # the prompt's size class was asked
    # and reached, but where a label had to shrink to fit the field of view (as procedural masks do)
    assert sum(size_class_of(p["area_fraction"], preset) == p["size"] for p in params) >= 0.75 * len(params)
    assert build_plan(config).table.equals(plan.table)  # deterministic
    # a procedural job of the same seed plans other masks, and its digest says so
    masks = config.masks.model_copy(update={"source": "procedural", "real": None})
    procedural = config.model_copy(update={"masks": masks})
    assert procedural.plan_digest() != config.plan_digest()


def test_generated_samples_carry_the_placed_label_and_its_source_image_in_their_lineage(tmp_path):
    config = job(tmp_path, TRAIN[:10], samples=12)
    assert run_generate(config, LocalExecutor()).ok
    (tmp_path / "masks.txt").write_text("\n".join(TRAIN[:9]) + "\n")  # an edited split is not resumed
    with pytest.raises(ShardError, match="the labels masks.real draws from"):
        run_generate(config, LocalExecutor())
    rows = [row for path in sorted((tmp_path / "real" / "shards").glob("*.parquet"))
            for row in pq.read_table(path).to_pylist()]
    catalog = {frame.name: frame for frame in KVASIR.glob("images/*.jpg")}
    outside = []
    for row in rows:
        params = RealMask.from_dict(json.loads(row["mask_params"]))
        mask = decode_image(row["mask"]["bytes"])
        assert np.array_equal(mask, draw_real_mask(params, row["width"], row["height"]))
        assert row["mask_area"] == pytest.approx(params.area_fraction, rel=0.1)
        frame = decode_image(catalog[row["source_frame"].rsplit("/", 1)[1]].read_bytes())
        view = detect_fov(resize_image(frame, (row["width"], row["height"]))).to_mask(row["width"], row["height"])
        outside.append(((mask > 0) & ~view).sum() / max((mask > 0).sum(), 1))
    assert max(outside) < 0.05  # placed inside the endoscope's field of view
    lineage = sample_lineage([], [], [row["mask_params"] for row in rows])
    used = {json.loads(row["mask_params"])["real"]["id"] for row in rows}
    assert sorted(lineage.masks.files.values()) == sorted(used)
    assert set(lineage.masks.files) == {_sha(KVASIR / "images" / f"{i}.jpg") for i in used}  # the images' bytes


def test_bad_real_mask_settings_and_changed_masks_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="masks"):
        config_from_dict({"frames": {"source": "x"}, "masks": {"source": "real"}})
    with pytest.raises(ConfigError, match="masks.real.rotate"):
        config_from_dict({"frames": {"source": "x"}, "masks": {"source": "real", "real": {
            "labelled": LABELLED, "rotate": 270}}})
    with pytest.raises(MaskPresetError, match="no-such-id"):
        build_plan(job(tmp_path, [TRAIN[0], "no-such-id"]))
    copy = tmp_path / "masks"
    shutil.copytree(KVASIR / "masks", copy, ignore=lambda d, names: [n for n in names if n[:-4] not in TRAIN[:3]])
    params, _ = placed(TRAIN[0], mask=str(copy / f"{TRAIN[0]}.jpg"))
    (copy / f"{TRAIN[0]}.jpg").write_bytes((KVASIR / "masks" / f"{TRAIN[1]}.jpg").read_bytes())
    with pytest.raises(MaskPresetError, match="changed since it was planned"):
        draw_real_mask(params, 64, 64)
