"""Shape statistics of binary polyp masks, and how far a generated set is from a real one.

The statistics are scikit-image `regionprops` definitions (solidity and eccentricity of the largest
component, foreground fraction of the whole image), computed here from OpenCV contours and moments
because regionprops' convex-hull image is an order of magnitude slower on full-size masks (the fit
measures thousands); `tests/test_masks.py` checks that the two agree. Components smaller than `SPECK_FRACTION` of the image are JPEG noise, not
lesions, and are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from scipy.stats import ks_2samp

from pipeline.core.labelled import binary_label
from pipeline.errors import MaskPresetError

SPECK_FRACTION = 0.0005
"""Components below this fraction of the image are ignored when counting lesions."""

KS_STATS = ("area_fraction", "solidity", "eccentricity")
"""The statistics compared between generated and reference masks."""

MASK_SUFFIXES = (".png", ".jpg", ".jpeg")
_DIAMOND = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, -0.5], [0.0, 0.5]])
_EPS = 1e-9


def without_specks(label: np.ndarray) -> np.ndarray:
    """A boolean label without its components below `SPECK_FRACTION` of the image (JPEG noise: a stray
    pixel in a corner would otherwise count as part of the lesion)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(label.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= SPECK_FRACTION * label.size
    keep[0] = False  # the background
    return keep[labels]


def mask_stats(mask: np.ndarray) -> dict[str, float]:
    """area_fraction, solidity, eccentricity, components, second_area_ratio of a mask (>127 = polyp).

    `second_area_ratio` is the second largest lesion's area over the largest's (0 for one lesion);
    solidity and eccentricity are NaN for an empty mask.
    """
    binary = binary_label(mask).astype(np.uint8)
    count, labels = cv2.connectedComponents(binary, connectivity=8)  # ~10x faster than ...WithStats
    areas = np.bincount(labels.ravel(), minlength=count)[1:] if count > 2 else np.array([cv2.countNonZero(binary)])
    lesions = np.sort(areas[areas >= SPECK_FRACTION * binary.size])[::-1]
    stats = {
        "area_fraction": float(areas.sum() / binary.size),
        "solidity": float("nan"),
        "eccentricity": float("nan"),
        "components": float(lesions.size),
        "second_area_ratio": float(lesions[1] / lesions[0]) if lesions.size > 1 else 0.0,
    }
    if count > 1:
        largest = 1 + int(np.argmax(areas))
        component = binary if count == 2 else (labels == largest).astype(np.uint8)
        x, y, w, h = cv2.boundingRect(component)
        component = component[y : y + h, x : x + w]
        stats["solidity"] = float(areas[largest - 1] / _convex_area(component))
        stats["eccentricity"] = _eccentricity(component)
    return stats


def _convex_area(component: np.ndarray) -> int:
    """Pixel count of regionprops' convex image: pixel centres inside or on the hull of pixel edges.

    skimage takes the hull of every pixel's four edge midpoints (the "diamond" offsets) and keeps
    the pixel centres on or inside it; the hull of the diamonds is the hull of the diamonds around
    the pixel hull's vertices, and its lattice points are counted row by row.
    """
    contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    corners = cv2.convexHull(np.concatenate(contours)).reshape(-1, 2).astype(np.float64)
    grown = (corners[:, None, :] + _DIAMOND[None]).reshape(-1, 2).astype(np.float32)
    hull = cv2.convexHull(grown).reshape(-1, 2).astype(np.float64)
    start, end = hull, np.roll(hull, -1, axis=0)
    rows = np.arange(np.ceil(hull[:, 1].min()), np.floor(hull[:, 1].max()) + 1)
    dy = end[:, 1] - start[:, 1]
    sloped = np.abs(dy) > _EPS
    t = (rows[:, None] - start[None, sloped, 1]) / dy[None, sloped]
    x = start[None, sloped, 0] + t * (end[None, sloped, 0] - start[None, sloped, 0])
    crosses = (t >= -_EPS) & (t <= 1 + _EPS)
    left = np.where(crosses, x, np.inf).min(axis=1)
    right = np.where(crosses, x, -np.inf).max(axis=1)
    counts = np.floor(right + _EPS) - np.ceil(left - _EPS) + 1
    return int(np.clip(counts, 0, None).sum())


def _eccentricity(component: np.ndarray) -> float:
    """Eccentricity of the ellipse with the same second moments (regionprops' definition)."""
    m = cv2.moments(component, binaryImage=True)
    a, b, c = m["mu20"] / m["m00"], m["mu11"] / m["m00"], m["mu02"] / m["m00"]
    spread = np.hypot((a - c) / 2, b)
    major, minor = (a + c) / 2 + spread, (a + c) / 2 - spread
    return float(np.sqrt(1 - minor / major)) if major > 0 else 0.0


def _read_stats(path: Path) -> dict[str, float]:
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise MaskPresetError(f"{path}: not a readable image")
    return {**mask_stats(mask), "width": float(mask.shape[1]), "height": float(mask.shape[0])}


def load_reference_stats(folder: str | Path) -> dict[str, np.ndarray]:
    """Statistics of every mask image in a folder (*.png, *.jpg, *.jpeg), one array per statistic,
    plus each mask's `width` and `height`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MaskPresetError(f"{folder}: reference mask folder not found")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in MASK_SUFFIXES)
    if not paths:
        raise MaskPresetError(f"{folder}: no mask images (*.png, *.jpg) in the reference folder")
    with ThreadPoolExecutor(max_workers=4) as pool:  # OpenCV decodes and labels without the GIL
        rows = list(pool.map(_read_stats, paths))
    return {key: np.array([row[key] for row in rows]) for key in rows[0]}


def drawing_sizes(reference: Mapping[str, np.ndarray], n: int, seed: int) -> list[tuple[int, int]]:
    """`n` (width, height) pairs drawn from the reference masks' own sizes.

    Solidity and eccentricity depend on the pixel grid a mask is drawn on, so generated masks are
    compared with a reference only when drawn at the sizes the reference has.
    """
    sizes = np.stack([reference["width"], reference["height"]], axis=1).astype(int)
    picks = np.random.default_rng([seed, 11]).integers(0, len(sizes), n)
    return [(int(w), int(h)) for w, h in sizes[picks]]


def stats_table(masks: Iterable[np.ndarray]) -> dict[str, np.ndarray]:
    """`mask_stats` of many masks, one array per statistic."""
    rows = [mask_stats(mask) for mask in masks]
    return {key: np.array([row[key] for row in rows]) for key in rows[0]}


def ks_report(generated: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Two-sample Kolmogorov–Smirnov statistic per shape statistic (NaNs of empty masks dropped)."""
    report = {}
    for key in KS_STATS:
        a, b = np.asarray(generated[key], float), np.asarray(reference[key], float)
        report[key] = float(ks_2samp(a[~np.isnan(a)], b[~np.isnan(b)]).statistic)
    return report
