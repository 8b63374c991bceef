"""Segmentation metrics of one prediction against its label, through MONAI.

Dice = 2TP / (2TP + FP + FN), IoU = TP / (TP + FP + FN), precision = TP / (TP + FP),
recall = TP / (TP + FN), HD95 = the 95th percentile of the symmetric boundary distances (pixels).
Empty sets (what MONAI leaves NaN): both empty is a perfect answer (1, HD95 0); exactly one empty
scores 0 and HD95 the image diagonal, the largest distance there is, so means stay finite and an
empty prediction is never better than a poor one.

What papers of the field add, because small polyps are where segmenters fail: results by lesion
size (the label's area as a share of the frame: < 2 %, 2–8 %, > 8 %), the miss rate (share of
images with IoU < 0.1) and, on polyp-free frames, the false-positive rate (share of frames where
the prediction holds a connected region of at least 0.1 % of the frame).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch
from monai.metrics import (
    compute_confusion_matrix_metric,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
    get_confusion_matrix,
)

from pipeline.core.lesion_bins import POSITION_BINS, SIZE_BINS, centroid_radius, position_bin, size_bin

METRICS = ("dice", "iou", "precision", "recall", "hd95")
MISS_IOU = 0.1
"""An image whose prediction overlaps its label with IoU below this is a missed lesion."""
FALSE_POSITIVE_AREA = 0.001
"""On a polyp-free frame, a predicted connected region of at least this share of the frame is a false positive."""


@dataclass(frozen=True)
class ImageMetrics:
    dice: float
    iou: float
    precision: float
    recall: float
    hd95: float
    area: float = float("nan")  # the label's foreground share of the frame
    radius: float = float("nan")  # where its centroid lies (`lesion_bins.centroid_radius`)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def segment_metrics(prediction: np.ndarray, label: np.ndarray) -> ImageMetrics:
    """Metrics of a boolean HxW prediction against a boolean HxW label (same size)."""
    if prediction.shape != label.shape:
        raise ValueError(f"prediction {prediction.shape} and label {label.shape} differ in size")
    pred = torch.from_numpy(np.ascontiguousarray(prediction, dtype=bool)).float()[None, None]
    true = torch.from_numpy(np.ascontiguousarray(label, dtype=bool)).float()[None, None]
    pred_empty, true_empty = not pred.any(), not true.any()
    area, radius = float(true.mean()), centroid_radius(label)
    if pred_empty or true_empty:
        both = float(pred_empty and true_empty)
        return ImageMetrics(both, both, both, both, 0.0 if both else math.hypot(*label.shape), area, radius)
    confusion = get_confusion_matrix(pred, true, include_background=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI's deprecation notes about its own arguments
        hd95 = compute_hausdorff_distance(pred, true, include_background=True, percentile=95).item()
    return ImageMetrics(
        dice=compute_dice(pred, true, include_background=True).item(),
        iou=compute_iou(pred, true, include_background=True).item(),
        precision=compute_confusion_matrix_metric("precision", confusion).item(),
        recall=compute_confusion_matrix_metric("recall", confusion).item(),
        hd95=hd95,
        area=area,
        radius=radius,
    )


def mean_metrics(items: list[ImageMetrics]) -> dict[str, float]:
    return {name: float(np.mean([getattr(item, name) for item in items])) for name in METRICS}


def has_lesion(item: ImageMetrics) -> bool:
    """Whether the image's label shows a polyp (a labelled set may hold polyp-free frames)."""
    return item.area > 0


def missed(item: ImageMetrics) -> bool:
    return item.iou < MISS_IOU


@dataclass(frozen=True)
class BinFigures:
    """Figures of the images of one bin: how many, mean Dice and IoU, miss rate (None when empty)."""

    n: int
    dice: float | None
    iou: float | None
    miss_rate: float | None


def bin_figures(items: list[ImageMetrics]) -> BinFigures:
    if not items:
        return BinFigures(0, None, None, None)
    return BinFigures(len(items), float(np.mean([i.dice for i in items])), float(np.mean([i.iou for i in items])),
                      float(np.mean([missed(i) for i in items])))


def by_bins(per_image: Mapping[str, ImageMetrics],
            attributes: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, dict[str, BinFigures]]:
    """Figures per bin of each axis: `size` and `position` (every bin listed, n = 0 where the set has
    none), then each column of `attributes` (image id → column → value, a metadata CSV) by its values.
    Polyp-free frames are in no bin (they have no lesion to size, place, find or miss)."""
    lesions = {key: item for key, item in per_image.items() if has_lesion(item)}
    bins = {"size": {name: bin_figures([i for i in lesions.values() if size_bin(i.area) == name])
                     for name, *_ in SIZE_BINS},
            "position": {name: bin_figures([i for i in lesions.values() if position_bin(i.radius) == name])
                         for name, *_ in POSITION_BINS}}
    columns = sorted({column for row in (attributes or {}).values() for column in row})
    for column in columns:
        values = sorted({row[column] for row in attributes.values() if column in row})
        bins[column] = {value: bin_figures([item for key, item in lesions.items()
                                            if attributes.get(key, {}).get(column) == value]) for value in values}
    return bins


def largest_region(prediction: np.ndarray) -> float:
    """Area of the largest 8-connected predicted region, as a share of the frame (0 when none)."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(prediction.astype(np.uint8), connectivity=8)
    return float(stats[1:, cv2.CC_STAT_AREA].max() / prediction.size) if count > 1 else 0.0


def false_positive(largest: float) -> bool:
    """Whether a polyp-free frame whose largest predicted region covers `largest` of it is a false positive."""
    return largest >= FALSE_POSITIVE_AREA
