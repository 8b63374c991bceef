"""Field of view on real frames: borderless crops are whole, and in Kvasir frames the black
surround, the burnt-in text and the green inset box are never marked visible."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.plan.fov import (
    GRID_SIDE,
    FieldOfView,
    detect_fov,
    grid_shape,
    position_in_view,
)
from pipeline.testing.data import shared_data

DATA = shared_data()
KVASIR = DATA / "kvasir-seg" / "images"

# Frames with text over tissue, and where that text is (x0, y0, x1, y1 at full resolution, by eye).
TEXT = {
    "cju0qkwl35piu0993l0dewei2": [(5, 145, 110, 235), (95, 215, 125, 235)],  # date..Q:N, the ⊞:A5 label
    "cjyzu3reghjya0794w7pwoi50": [(50, 85, 125, 280)],  # ID, Name, Sex, D.O.B., date, clock
    "cju2lz8vqktne0993fuym6drw": [(5, 83, 110, 257)],
    "cju5x00l6m5j608503k78ptee": [(5, 145, 105, 237), (93, 215, 137, 237)],  # partly over glare
}
GREEN_BOX = [
    "cjyzu3reghjya0794w7pwoi50", "cjyzk8qieoboa0848ogj51wwm", "cjyzuio1qgh040763k56deohv",
    "ck2395w2mb4vu07480otsu6tw", "ck2bxqz3evvg20794iiyv5v2m",
]
BORDERED = sorted({*TEXT, *GREEN_BOX, "cju1f79yhsb5w0993txub59ol", "cju2rga4psq9n09881z519xx0",
                   "cju85rkbnlo1c08503uxcpax1", "cju2i6acqvo6l0799u20fift8"})


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def visible_mask(rgb: np.ndarray) -> np.ndarray:
    return detect_fov(rgb).to_mask(rgb.shape[1], rgb.shape[0])


def surround(rgb: np.ndarray) -> np.ndarray:
    """The black surround: large areas of near-black pixels that reach the edge of the image (not
    the few dark lumen pixels where tissue itself meets the edge)."""
    dark = (rgb.max(axis=2) <= 25).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, [k for k in edge if k and stats[k, cv2.CC_STAT_AREA] > 0.005 * dark.size])


def test_borderless_frames_are_whole():
    paths = sorted((DATA / "normal-mucosa").glob("*.jpg"))[::20]
    assert len(paths) >= 50, f"expected the 2000 mucosa crops under {DATA}, found {len(paths) * 20}"
    for path in paths:
        fraction = detect_fov(read_rgb(path)).visible_fraction()
        assert fraction > 0.98, f"{path.name}: only {fraction:.3f} visible"


@pytest.mark.parametrize("name", BORDERED)
def test_black_surround_is_never_visible(name):
    rgb = read_rgb(KVASIR / f"{name}.jpg")
    black = surround(rgb)
    assert black.mean() > 0.03, "the test frame should have a black surround"
    visible = visible_mask(rgb)
    assert not (visible & black).any()
    assert (rgb[visible].max(axis=1) <= 25).mean() < 0.01  # hardly anything dark is visible
    assert 0.4 <= detect_fov(rgb).visible_fraction() <= 0.95


@pytest.mark.parametrize("name", GREEN_BOX)
def test_green_inset_box_is_never_visible(name):
    rgb = read_rgb(KVASIR / f"{name}.jpg")
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    green = ((hsv[..., 0] > 35) & (hsv[..., 0] < 100) & (hsv[..., 1] > 100) & (hsv[..., 2] > 80)).astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(green)
    x, y, w, h, area = stats[1 + np.argmax(stats[1:, cv2.CC_STAT_AREA])]
    assert area > 0.02 * green.size, "the test frame should have a green box"
    assert not visible_mask(rgb)[y : y + h, x : x + w].any()  # the whole box, with the picture it shows


@pytest.mark.parametrize("name", sorted(TEXT))
def test_overlay_text_is_never_visible(name):
    rgb = read_rgb(KVASIR / f"{name}.jpg")
    visible = visible_mask(rgb)
    for x0, y0, x1, y1 in TEXT[name]:
        assert rgb[y0:y1, x0:x1].max(axis=2).mean() > 60, "the text box should lie over tissue, not black"
        assert not visible[y0:y1, x0:x1].any(), f"text at {(x0, y0, x1, y1)} is marked visible"


def test_grid_keeps_the_aspect_ratio_and_maps_back_to_full_resolution():
    rgb = read_rgb(KVASIR / "cju0qkwl35piu0993l0dewei2.jpg")  # 622x529
    fov = detect_fov(rgb)
    assert fov.grid.shape == grid_shape(622, 529) == (54, 64)
    mask = fov.to_mask(622, 529)
    assert mask.shape == (529, 622)
    assert abs(mask.mean() - fov.visible_fraction()) < 0.02
    assert grid_shape(1920, 1080) == (36, GRID_SIDE)
    assert FieldOfView.full().to_mask(300, 200).all()


def test_equality_and_immutability():
    fov = detect_fov(read_rgb(KVASIR / "cjyzu3reghjya0794w7pwoi50.jpg"))
    again = FieldOfView(fov.grid.copy())
    assert again == fov and hash(again) == hash(fov)
    assert again != FieldOfView.full()
    with pytest.raises(ValueError):
        fov.grid[0, 0] = True


def test_rejects_anything_but_rgb_uint8():
    with pytest.raises(ValueError, match="RGB"):
        detect_fov(np.zeros((64, 64), dtype=np.uint8))
    with pytest.raises(ValueError, match="RGB"):
        detect_fov(np.zeros((64, 64, 3), dtype=np.float32))


def test_position_in_view_is_centre_near_the_views_centroid_and_periphery_at_its_edge():
    view = np.zeros((100, 120), bool)
    view[10:90, 20:100] = True  # an 80×80 view centred at (50, 60); equivalent radius √(6400/π) ≈ 45
    label = np.zeros_like(view)
    label[45:55, 55:65] = True
    assert position_in_view(label, view) == "centre"
    label[:] = False
    label[12:20, 22:30] = True  # a corner: 43 px from the centroid, beyond half the radius
    assert position_in_view(label, view) == "periphery"
    assert position_in_view(np.zeros_like(view), view) == "periphery"
