"""Segmentation metrics of one prediction against its label, through MONAI.

Dice = 2TP / (2TP + FP + FN), IoU = TP / (TP + FP + FN), precision = TP / (TP + FP),
recall = TP / (TP + FN), HD95 = the 95th percentile of the symmetric boundary distances (pixels).
Empty sets (what MONAI leaves NaN): both empty is a perfect answer (1, HD95 0); exactly one empty
scores 0 and HD95 the image diagonal, the largest distance there is, so means stay finite and an
empty prediction is never better than a poor one.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
from monai.metrics import (
    compute_confusion_matrix_metric,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
    get_confusion_matrix,
)

METRICS = ("dice", "iou", "precision", "recall", "hd95")


@dataclass(frozen=True)
class ImageMetrics:
    dice: float
    iou: float
    precision: float
    recall: float
    hd95: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def segment_metrics(prediction: np.ndarray, label: np.ndarray) -> ImageMetrics:
    """Metrics of a boolean HxW prediction against a boolean HxW label (same size)."""
    if prediction.shape != label.shape:
        raise ValueError(f"prediction {prediction.shape} and label {label.shape} differ in size")
    pred = torch.from_numpy(np.ascontiguousarray(prediction, dtype=bool)).float()[None, None]
    true = torch.from_numpy(np.ascontiguousarray(label, dtype=bool)).float()[None, None]
    pred_empty, true_empty = not pred.any(), not true.any()
    if pred_empty or true_empty:
        both = float(pred_empty and true_empty)
        return ImageMetrics(both, both, both, both, 0.0 if both else math.hypot(*label.shape))
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
    )


def mean_metrics(items: list[ImageMetrics]) -> dict[str, float]:
    return {name: float(np.mean([getattr(item, name) for item in items])) for name in METRICS}
