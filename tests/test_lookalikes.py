"""Polyp look-alikes (hard negatives) drawn on a real polyp-free frame: where, what, how reproducibly."""

import json
import math

import cv2
import numpy as np
import pytest

from pipeline.config import LOOKALIKE_KINDS as KINDS
from pipeline.core.images import decode_image
from pipeline.generate.lookalikes import draw_distractor
from pipeline.plan.negatives import Distractor, sample_distractor
from pipeline.testing.data import shared_data

FRAME = decode_image((shared_data() / "normal-mucosa" / "1500.jpg").read_bytes(), "color")
SCALES = {"specular": 0.08, "bubble": 0.08, "fold": 0.25, "stool": 0.1}


def distance_from(center, shape):
    """Each pixel's distance (in pixels) from a normalised centre."""
    h, w = shape[:2]
    ys, xs = np.indices((h, w))
    return np.hypot(xs + 0.5 - center[0] * w, ys + 0.5 - center[1] * h)


def hsv_of_mean(pixels):
    """OpenCV's HSV (hue 0..180: red 0, yellow 30, green 60) of the mean colour of some RGB pixels."""
    return cv2.cvtColor(np.rint(pixels.mean(axis=0)).astype(np.uint8)[None, None], cv2.COLOR_RGB2HSV)[0, 0].astype(int)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_paints_near_its_centre_and_leaves_the_input_alone(kind):
    before = FRAME.copy()
    for seed in range(10):
        distractor = Distractor(kind, (0.45, 0.55), SCALES[kind], seed)
        out = draw_distractor(FRAME, distractor)
        assert np.array_equal(FRAME, before)
        size = distractor.scale * math.sqrt(FRAME.shape[0] * FRAME.shape[1])
        changed = (out != FRAME).any(axis=2)
        distance = distance_from(distractor.center, FRAME.shape)
        assert changed[distance <= 1.5 * size].mean() > 0.03  # something visible where it was put
        assert not changed[distance > 2 * size + 3].any()  # and nothing farther (the box drawn in reaches 2.5 sizes)


def test_same_distractor_same_bytes_other_seed_other_bytes():
    for kind in KINDS:
        distractor = Distractor(kind, (0.5, 0.5), SCALES[kind], seed=11)
        first = draw_distractor(FRAME, distractor)
        assert np.array_equal(first, draw_distractor(FRAME.copy(), Distractor.from_dict(distractor.to_dict())))
        assert not np.array_equal(first, draw_distractor(FRAME, Distractor(kind, (0.5, 0.5), SCALES[kind], seed=12)))


def test_round_trip_through_json_and_unknown_kinds_refused():
    rng = np.random.default_rng(0)
    for _ in range(20):
        distractor = sample_distractor(rng)
        assert Distractor.from_dict(json.loads(json.dumps(distractor.to_dict()))) == distractor
    record = {"kind": "polyp", "center": [0.5, 0.5], "scale": 0.05, "seed": 1}
    with pytest.raises(ValueError, match=r"'polyp'.*specular, bubble, fold, stool"):
        Distractor.from_dict(record)


@pytest.mark.parametrize("side", [64, 512])
def test_drawn_at_small_and_large_sizes(side):
    frame = cv2.resize(FRAME, (side, side), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(side)
    for kind in KINDS:
        small = Distractor(kind, (0.5, 0.5), 0.03, int(rng.integers(2**31)))  # radii of about 2 px at 64²
        for distractor in (small, sample_distractor(rng, (kind,))):
            out = draw_distractor(frame, distractor)
            assert out.shape == frame.shape and out.dtype == np.uint8
            assert (out != frame).any()


def test_sampling_kinds_centres_and_reproducibility():
    bubbles = [sample_distractor(np.random.default_rng(seed), ("bubble",)) for seed in range(50)]
    assert {d.kind for d in bubbles} == {"bubble"}
    assert all(0.03 <= d.scale <= 0.10 for d in bubbles)
    mixed = [sample_distractor(rng) for rng in [np.random.default_rng(1)] for _ in range(200)]
    assert {d.kind for d in mixed} == set(KINDS)
    assert all(0.2 <= c <= 0.8 for d in mixed for c in d.center)
    assert all(0.15 <= d.scale <= 0.35 for d in mixed if d.kind == "fold")
    again = [sample_distractor(rng) for rng in [np.random.default_rng(1)] for _ in range(200)]
    assert again == mixed


def test_specular_brightens_and_stool_turns_yellow_brown():
    center = (0.55, 0.45)
    near = distance_from(center, FRAME.shape) <= 0.1 * math.sqrt(FRAME.shape[0] * FRAME.shape[1])
    gray = cv2.cvtColor(FRAME, cv2.COLOR_RGB2GRAY)
    assert gray[near].max() < 235  # no highlight there yet
    for seed in range(5):
        glints = cv2.cvtColor(draw_distractor(FRAME, Distractor("specular", center, 0.08, seed)), cv2.COLOR_RGB2GRAY)
        assert glints[near].max() >= 245

        out = draw_distractor(FRAME, Distractor("stool", center, 0.08, seed))
        changed = np.abs(out.astype(int) - FRAME).sum(axis=2) > 30
        assert changed.sum() > 100
        hue, _, value = hsv_of_mean(FRAME[changed])
        stool_hue, _, stool_value = hsv_of_mean(out[changed])
        assert hue < 12  # pinkish red mucosa ...
        assert hue + 5 <= stool_hue <= 35 and stool_value < value  # ... turned a darker orange to yellow brown


def test_every_kind_has_a_painter_and_a_size():
    from pipeline.generate.lookalikes import _PAINTERS
    from pipeline.plan.negatives import _SCALES

    assert set(_PAINTERS) == set(_SCALES) == set(KINDS)


def test_distractors_land_inside_the_field_of_view_with_room():
    """A round view in a black surround (the endoscope's): every centre is on tissue, 1.5 sizes inside;
    a fold too long for that goes to the most interior place, the view's centre."""
    from pipeline.plan.fov import FieldOfView

    grid = np.zeros((48, 64), bool)
    grid[np.hypot(*np.indices(grid.shape) - np.array([24, 32])[:, None, None]) < 20] = True
    fov, rng = FieldOfView(grid), np.random.default_rng(0)
    for _ in range(200):
        d = sample_distractor(rng, fov=fov)
        row, col = d.center[1] * 48, d.center[0] * 64
        room, off_centre = 1.5 * d.scale * np.sqrt(48 * 64), np.hypot(row - 24, col - 32)
        assert (off_centre + room <= 20 + 1.5) if room < 19 else off_centre <= 1.5, d
