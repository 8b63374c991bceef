"""The bins results are reported in and plans are aimed at: one definition for the evaluation (which
bins a segmenter fails in) and the plan (how many samples each bin gets).

Size is the label's area a as a share of the frame: a < 2 %, 2 % ≤ a < 8 %, a ≥ 8 % (papers of the
field report these; small polyps are where segmenters fail). Position is where the label's centroid
(cx, cy) lies in a W×H frame: r = √((2cx/W − 1)² + (2cy/H − 1)²), the centre when r < 0.5 (the inner
half of the frame's inscribed ellipse), else the periphery, where the endoscope's optics distort and
darken and lesions are cut by the field of view.
"""

from __future__ import annotations

import math

import numpy as np

SIZE_BINS = (("small", 0.0, 0.02, "<2%"), ("medium", 0.02, 0.08, "2–8%"), ("large", 0.08, 1.0, ">8%"))
"""(name, low, high, label) of each size bin; they tile [0, 1]. Tables show the labels: these are
shares of the frame, not the prompt bank's clinical size classes."""
POSITION_BINS = (("centre", 0.0, 0.5), ("periphery", 0.5, math.inf))
"""(name, low, high) of the centroid's normalised radius r."""


def size_bin(area: float) -> str:
    """The size bin of a label covering `area` of its frame."""
    return next((name for name, _, high, _ in SIZE_BINS if area < high), SIZE_BINS[-1][0])


def centroid_radius(label: np.ndarray) -> float:
    """r of the label's centroid (0 at the frame's centre, 1 on its inscribed ellipse); NaN when empty."""
    ys, xs = np.nonzero(label)
    if not len(xs):
        return float("nan")
    height, width = label.shape[:2]
    return float(math.hypot(2 * (xs.mean() + 0.5) / width - 1, 2 * (ys.mean() + 0.5) / height - 1))


def position_bin(radius: float) -> str:
    return next(name for name, _, high in POSITION_BINS if radius < high)
