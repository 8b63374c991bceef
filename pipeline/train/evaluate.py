"""Evaluate a checkpoint on held-out sets, the way papers of the field report it: the image is resized
to the training size, the prediction (sigmoid > 0.5) is resized back to the label's own size, and
Dice, IoU, precision, recall and HD95 are computed there per image, then averaged; plus Dice and
miss rate per bin (lesion size, position in the frame, and any column of a metadata CSV: the JSON
`plan --from-evaluation` aims a plan with), and on polyp-free frames the false-positive rate (`metrics`)."""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass

import numpy as np
import torch

from pipeline.core import storage
from pipeline.core.devices import resolve_device
from pipeline.core.lesion_bins import SIZE_BINS
from pipeline.core.progress import ProgressReporter
from pipeline.data.sources import (
    DataSpec,
    read_image,
    read_pairs,
    resolve,
    unlabelled_files,
)
from pipeline.errors import TrainError
from pipeline.segmenter.metrics import (
    METRICS,
    BinFigures,
    ImageMetrics,
    by_bins,
    false_positive,
    has_lesion,
    largest_region,
    mean_metrics,
    missed,
    segment_metrics,
)
from pipeline.segmenter.model import load_checkpoint
from pipeline.segmenter.predict import predict


@dataclass(frozen=True)
class SetReport:
    """A labelled set: means over its images, figures per bin of each axis (`size`, `position`, metadata
    columns), and every image's metrics."""

    data: str
    n: int
    mean: dict[str, float]
    miss_rate: float
    bins: dict[str, dict[str, BinFigures]]
    per_image: dict[str, ImageMetrics]

    @property
    def sizes(self) -> dict[str, BinFigures]:
        return self.bins["size"]

    def figures(self) -> dict[str, float | None]:
        """Flat figures for tables: the means, `miss_rate`, and `dice_<bin>` / `miss_<bin>` / `n_<bin>` for
        the size and position bins (small, …, centre, periphery)."""
        out: dict[str, float | None] = {**self.mean, "miss_rate": self.miss_rate}
        for name, figures in (*self.bins["size"].items(), *self.bins["position"].items()):
            out.update({f"dice_{name}": figures.dice, f"miss_{name}": figures.miss_rate, f"n_{name}": figures.n})
        return out

    def to_json(self) -> dict:
        return {"data": self.data, "n": self.n, "mean": self.mean, "miss_rate": self.miss_rate,
                "bins": {axis: {name: asdict(f) for name, f in bins.items()} for axis, bins in self.bins.items()},
                "per_image": {key: value.as_dict() for key, value in self.per_image.items()}}


@dataclass(frozen=True)
class NegativesReport:
    """Polyp-free frames: the share where the model fires (`metrics.false_positive`), and per frame the
    largest predicted region's share of it."""

    data: str
    n: int
    fp_rate: float
    largest: dict[str, float]

    def figures(self) -> dict[str, float | None]:
        return {"fp_rate": self.fp_rate, "n_frames": self.n}

    def to_json(self) -> dict:
        return {"data": self.data, "n": self.n, "fp_rate": self.fp_rate, "largest_region": self.largest}


def read_metadata(url: str) -> dict[str, dict[str, str]]:
    """A metadata CSV: an `id` column (image file stems), then one column per attribute to bin by
    (not `size` or `position`: those bins are measured from the labels)."""
    rows = list(csv.DictReader(storage.read_text(url, TrainError, "--metadata").splitlines()))
    if not rows or "id" not in rows[0]:
        raise TrainError(f"--metadata {url}: expected a CSV with an 'id' column (image file stems) and attribute columns")
    taken = sorted(set(rows[0]) & {"size", "position"})
    if taken:
        raise TrainError(f"--metadata {url}: column {taken[0]!r} names a bin measured from the labels; rename it")
    return {row.pop("id"): {k: v for k, v in row.items() if v not in (None, "")} for row in rows}


def evaluate_set(model: torch.nn.Module, size: int, device: torch.device, text: str,
                 metadata: dict[str, dict[str, str]] | None = None) -> SetReport:
    refs = resolve(DataSpec.parse(text))
    per_image: dict[str, ImageMetrics] = {}
    with ProgressReporter(f"evaluate {text}", len(refs), "images") as progress:
        for ref, image, mask in read_pairs(refs):
            per_image[ref.sample_id] = segment_metrics(predict(model, image, size, device), mask > 0)
            progress.update()
    items = list(per_image.values())
    lesions = [item for item in items if has_lesion(item)]
    miss_rate = float(np.mean([missed(i) for i in lesions])) if lesions else float("nan")
    return SetReport(text, len(items), mean_metrics(items), miss_rate, by_bins(per_image, metadata), per_image)


def evaluate_negatives(model: torch.nn.Module, size: int, device: torch.device, text: str) -> NegativesReport:
    files = unlabelled_files(text)
    largest: dict[str, float] = {}
    with ProgressReporter(f"false positives {text}", len(files), "frames") as progress:
        for key, url in files.items():
            largest[key] = largest_region(predict(model, read_image(url), size, device))
            progress.update()
    rate = float(np.mean([false_positive(value) for value in largest.values()]))
    return NegativesReport(text, len(largest), rate, largest)


def evaluate(checkpoint: str, specs: list[str], device: str = "auto", negatives: list[str] = (),
             metadata: str | None = None) -> list[SetReport | NegativesReport]:
    """Reports on each labelled set of `specs`, then on each folder of polyp-free frames of `negatives`;
    `metadata` (a CSV) adds its columns to the bins."""
    attributes = read_metadata(metadata) if metadata else None
    model, record = load_checkpoint(checkpoint)
    torch_device = resolve_device(device, "--device", TrainError)
    model.to(torch_device)
    reports: list[SetReport | NegativesReport] = [evaluate_set(model, record.size, torch_device, s, attributes)
                                                   for s in specs]
    return reports + [evaluate_negatives(model, record.size, torch_device, s) for s in negatives]


def report_table(reports: list[SetReport | NegativesReport], title: str):
    """A rich table of each set's means, miss rate and Dice per lesion size; false-positive rates."""
    from rich.table import Table

    sizes = [name for name, *_ in SIZE_BINS]
    table = Table(title=title)
    for column in ("data", "n", *METRICS, "miss rate", *(f"dice {s}" for s in sizes), "FP rate"):
        table.add_column(column, justify="left" if column == "data" else "right")
    for report in reports:
        if isinstance(report, NegativesReport):
            table.add_row(report.data, str(report.n), *[""] * (len(METRICS) + 1 + len(sizes)), f"{report.fp_rate:.3f}")
            continue
        table.add_row(report.data, str(report.n),
                      *(f"{report.mean[m]:.4f}" if m != "hd95" else f"{report.mean[m]:.2f}" for m in METRICS),
                      f"{report.miss_rate:.3f}",
                      *("–" if report.sizes[s].dice is None else f"{report.sizes[s].dice:.3f} (n={report.sizes[s].n})"
                        for s in sizes), "")
    return table
