"""The gate's label check: does a segmenter trained on real polyps find the polyp where the label says?

PolypInpainter keeps a synthetic polyp only when a segmenter's prediction on it aligns with the
intended mask (IoU ≥ 0.8); FreeMask found unfiltered synthetic masks-to-images no better than real
only. The score is IoU(prediction, label) per sample; the gate's `label_mismatch` reason fails it
below `gate.label_iou_min` when `gate.segmenter` names a checkpoint (`polyp-synth train`).
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


class LabelIoUScorer:
    """IoU of the segmenter's prediction on a sample's image with its label (the model loads once).
    A gate pixel scorer: called with a shard's samples; `identity` (the checkpoint's checksum) keys
    the gate's cache, so another segmenter is never answered from it."""

    def __init__(self, checkpoint: str, device: str = "auto"):
        self.checkpoint, self.device_name = checkpoint, device
        self.identity = sha256_hex(storage.read_bytes(checkpoint)) if storage.exists(checkpoint) else checkpoint

    @functools.cached_property
    def _model(self) -> tuple[torch.nn.Module, int, torch.device]:
        """Loaded on first use: a re-gate answered from the cache never pays for the model."""
        model, record = load_checkpoint(self.checkpoint)
        device = resolve_device(self.device_name, "gate.device", GateError)
        return model.to(device), record.size, device

    def score(self, image: np.ndarray, mask: np.ndarray) -> float:
        model, size, device = self._model
        return segment_metrics(predict(model, image, size, device), mask > 0).iou

    def __call__(self, samples: list) -> np.ndarray:  # gate `Sample`s: image RGB uint8, mask {0, 255}
        return np.array([self.score(s.image, s.mask) for s in samples], np.float64)
