"""The gate's label check: does a segmenter trained on real polyps find the polyp where the label says?

PolypInpainter keeps a synthetic polyp only when a segmenter's prediction on it aligns with the
intended mask (IoU ≥ 0.8); FreeMask found unfiltered synthetic masks-to-images no better than real
only. The score is IoU(prediction, label) per sample; the gate's `label_mismatch` reason fails it
below `gate.label_iou_min` when `gate.segmenter` names a checkpoint (`polyp-synth train`). A hard
negative's label is empty: there the same segmenter must find nothing (`lesion_in_negative`).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from pipeline.core import storage
from pipeline.core.devices import resolve_device
from pipeline.core.digests import sha256_hex
from pipeline.errors import GateError
from pipeline.segmenter.metrics import segment_metrics
from pipeline.segmenter.model import load_checkpoint
from pipeline.segmenter.predict import predict


@functools.lru_cache(maxsize=2)
def _load(checkpoint: str, device_name: str, identity: str) -> tuple[torch.nn.Module, int, torch.device]:
    """The segmenter, once per process for both scorers that use it (keyed by its checksum too: a
    checkpoint rewritten at the same path is another model)."""
    model, record = load_checkpoint(checkpoint)
    device = resolve_device(device_name, "gate.device", GateError)
    return model.to(device), record.size, device


class _SegmenterScorer:
    """A gate pixel scorer that runs `gate.segmenter` (loaded on first use: a re-gate answered from the
    cache never pays for the model); `identity`, the checkpoint's checksum, keys the gate's cache, so
    another segmenter is never answered from it."""

    def __init__(self, checkpoint: str, device: str = "auto"):
        self.checkpoint, self.device_name = checkpoint, device
        self.identity = sha256_hex(storage.read_bytes(checkpoint)) if storage.exists(checkpoint) else checkpoint

    @property
    def _model(self) -> tuple[torch.nn.Module, int, torch.device]:
        return _load(self.checkpoint, self.device_name, self.identity)

    def prediction(self, image: np.ndarray) -> np.ndarray:
        model, size, device = self._model
        return predict(model, image, size, device)


class LabelIoUScorer(_SegmenterScorer):
    """IoU of the segmenter's prediction on a sample's image with its label; NaN for an empty label
    (a hard negative: `PredictedAreaScorer` judges it)."""

    def __call__(self, samples: list) -> np.ndarray:  # gate `Sample`s: image RGB uint8, mask {0, 255}
        return np.array([segment_metrics(self.prediction(s.image), s.mask > 0).iou if s.mask.any() else np.nan
                         for s in samples], np.float64)


class PredictedAreaScorer(_SegmenterScorer):
    """The share of a hard negative's image the segmenter marks as lesion (0: it finds none, as the
    empty label says); NaN for a labelled sample."""

    def __call__(self, samples: list) -> np.ndarray:
        return np.array([float(self.prediction(s.image).mean()) if not s.mask.any() else np.nan
                         for s in samples], np.float64)
