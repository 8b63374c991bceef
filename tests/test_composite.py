"""Pure pixel maths of the engine, on real frames and real polyp masks."""


import cv2
import numpy as np
import pytest

from pipeline.core.images import resize_image, resize_mask
from pipeline.generate.composite import composite, repaint_region
from pipeline.testing.data import shared_data

DATA = shared_data()


def load_frame(n: int) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(DATA / "normal-mucosa" / f"{n}.jpg")), cv2.COLOR_BGR2RGB)


def load_polyp_mask(index: int, size=(256, 256)) -> np.ndarray:
    """A real Kvasir-SEG polyp outline as a {0,255} label at `size`."""
    path = sorted((DATA / "kvasir-seg" / "masks").glob("*.jpg"))[index]
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    return resize_mask(np.where(mask > 127, 255, 0).astype(np.uint8), size)


@pytest.mark.parametrize("size", [(128, 128), (64, 64), (512, 512), (300, 200)])
def test_resized_mask_stays_a_label_both_ways(size):
    mask = load_polyp_mask(3)
    there = resize_mask(mask, size)
    back = resize_mask(there, (256, 256))
    for label in (there, back):
        assert label.dtype == np.uint8
        assert set(np.unique(label)) == {0, 255}
    assert there.shape == (size[1], size[0])
    # the label keeps its area (within a one-pixel rim) and its place
    assert abs((there > 0).mean() - (mask > 0).mean()) < 0.02
    assert ((back > 0) == (mask > 0)).mean() > 0.97


def test_any_cover_contains_half_cover():
    mask = load_polyp_mask(5)
    half = resize_mask(mask, (64, 64), cover="half") > 0
    anyc = resize_mask(mask, (64, 64), cover="any") > 0
    assert np.all(anyc[half])
    assert anyc.sum() > half.sum()


def test_resize_image_keeps_colours_and_type():
    frame = load_frame(1)
    small = resize_image(frame, (128, 128))
    large = resize_image(frame, (512, 384))
    assert small.shape == (128, 128, 3) and large.shape == (384, 512, 3)
    assert small.dtype == large.dtype == np.uint8
    np.testing.assert_allclose(small.mean(axis=(0, 1)), frame.mean(axis=(0, 1)), atol=1.0)
    assert np.array_equal(resize_image(frame, (256, 256)), frame)


def test_repaint_region_against_brute_force_distances():
    mask = np.zeros((61, 61), np.uint8)
    mask[30, 30] = 255
    alpha = repaint_region(mask, dilation_px=8, feather_px=4)
    distance = np.hypot(*np.mgrid[-30:31, -30:31])
    assert alpha.dtype == np.float32
    assert np.all(alpha[distance <= 8] == 1.0)
    assert np.all(alpha[distance >= 12] == 0.0)
    band = (distance > 8) & (distance < 12)
    assert np.all((alpha[band] > 0) & (alpha[band] < 1))
    np.testing.assert_allclose(alpha[band], (12 - distance[band]) / 4, atol=0.02)


def test_repaint_region_is_one_on_every_label_pixel():
    mask = load_polyp_mask(7)
    for dilation, feather in [(0, 0), (0, 6), (8, 4), (3, 0)]:
        alpha = repaint_region(mask, dilation, feather)
        assert np.all(alpha[mask > 0] == 1.0)
        assert alpha.min() >= 0.0 and alpha.max() <= 1.0
        grown = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * (dilation + feather) + 3,) * 2))
        assert np.all(alpha[grown == 0] == 0.0)
    assert np.array_equal(repaint_region(mask, 0, 0) > 0, mask > 0)
    assert not repaint_region(np.zeros((32, 32), np.uint8), 8, 4).any()


def test_composite_is_exact_outside_and_inside():
    source, generated = load_frame(10), load_frame(500)
    alpha = repaint_region(load_polyp_mask(0), 8, 4)
    out = composite(source, generated, alpha)
    assert out.dtype == np.uint8 and out.shape == source.shape
    assert np.array_equal(out[alpha == 0], source[alpha == 0])
    assert np.array_equal(out[alpha == 1], generated[alpha == 1])
    seam = (alpha > 0) & (alpha < 1)
    expected = alpha[seam, None] * generated[seam] + (1 - alpha[seam, None]) * source[seam].astype(np.float32)
    assert np.abs(out[seam].astype(np.float32) - expected).max() <= 0.5 + 1e-4


def test_composite_rejects_mismatched_sizes():
    frame = load_frame(2)
    with pytest.raises(ValueError, match="differ in size"):
        composite(frame, frame[:128], np.zeros((256, 256), np.float32))
