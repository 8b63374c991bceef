"""Evaluate a checkpoint on held-out labelled sets, the way papers of the field report it: the image
is resized to the training size, the prediction (sigmoid > 0.5) is resized back to the label's own
size, and Dice, IoU, precision, recall and HD95 are computed there per image, then averaged."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.progress import ProgressReporter
from pipeline.data.dataset import eval_transform, to_tensors
from pipeline.data.sources import DataSpec, read_pairs, resolve
from pipeline.train.metrics import METRICS, ImageMetrics, mean_metrics, segment_metrics
from pipeline.train.model import load_checkpoint
from pipeline.train.segment import resolve_device


@dataclass(frozen=True)
class SetReport:
    data: str
    n: int
    mean: dict[str, float]
    per_image: dict[str, ImageMetrics]

    def to_json(self) -> dict:
        return {"data": self.data, "n": self.n, "mean": self.mean,
                "per_image": {key: value.as_dict() for key, value in self.per_image.items()}}


@torch.no_grad()
def predict(model: torch.nn.Module, image: np.ndarray, size: int, device: torch.device) -> np.ndarray:
    """Boolean HxW prediction at the image's own size."""
    resized = eval_transform(size)(image=image)["image"]
    tensor, _ = to_tensors(resized, np.zeros(resized.shape[:2], np.uint8))
    logits = model(tensor[None].to(device))
    logits = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
    return (logits[0, 0] > 0).cpu().numpy()


def evaluate(checkpoint: str, specs: list[str], device: str = "auto") -> list[SetReport]:
    model, record = load_checkpoint(checkpoint)
    torch_device = resolve_device(device)
    model.to(torch_device)
    reports = []
    for text in specs:
        refs = resolve(DataSpec.parse(text))
        per_image: dict[str, ImageMetrics] = {}
        with ProgressReporter(f"evaluate {text}", len(refs), "images") as progress:
            for ref, image, mask in read_pairs(refs):
                per_image[ref.sample_id] = segment_metrics(predict(model, image, record.size, torch_device), mask > 0)
                progress.update()
        reports.append(SetReport(text, len(per_image), mean_metrics(list(per_image.values())), per_image))
    return reports


def report_table(reports: list[SetReport], title: str):
    """A rich table of the mean metrics of each set."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("data")
    table.add_column("n", justify="right")
    for name in METRICS:
        table.add_column(name, justify="right")
    for report in reports:
        table.add_row(report.data, str(report.n), *(f"{report.mean[name]:.4f}" if name != "hd95" else
                                                    f"{report.mean[name]:.2f}" for name in METRICS))
    return table
