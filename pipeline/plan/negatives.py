"""Hard negatives in the plan: which samples have an empty label, and what each one shows.

A segmenter trained only on frames that hold a polyp learns that every frame holds one; polyp-free
frames and frames with polyp-like distractors (highlights, bubbles, folds, stool) teach it where not
to fire. Whether sample i is a negative, and of which kind, is drawn from its own random stream, so
the first N samples of a plan stay the same whatever the plan's size.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from pipeline.config import LOOKALIKE_KINDS, NEGATIVE_KINDS, NegativesConfig
from pipeline.plan.fov import FieldOfView

_SCALES = {"specular": (0.03, 0.10), "bubble": (0.03, 0.10), "fold": (0.15, 0.35), "stool": (0.04, 0.12)}
"""Plausible sizes (relative to sqrt(W*H)): highlights, bubbles and stool fragments are small, folds long."""


@dataclass(frozen=True)
class Distractor:
    """One look-alike (`pipeline.generate.lookalikes` draws it): what it is, where, how big, and the
    seed of its finer details."""

    kind: str  # one of LOOKALIKE_KINDS
    center: tuple[float, float]  # normalised (x, y) image coordinates
    scale: float  # size / sqrt(W*H)
    seed: int  # np.random.default_rng(seed) draws every detail of the drawing

    def __post_init__(self) -> None:
        if self.kind not in LOOKALIKE_KINDS:
            raise ValueError(f"unknown distractor kind {self.kind!r}; known kinds: {', '.join(LOOKALIKE_KINDS)}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "center": [float(self.center[0]), float(self.center[1])],
                "scale": float(self.scale), "seed": int(self.seed)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Distractor:
        return cls(str(d["kind"]), (float(d["center"][0]), float(d["center"][1])), float(d["scale"]), int(d["seed"]))


def sample_distractor(rng: np.random.Generator, kinds: Sequence[str] = LOOKALIKE_KINDS,
                      fov: FieldOfView | None = None) -> Distractor:
    """A kind drawn uniformly from `kinds`, a size plausible for it, and a centre inside the frame's
    field of view with room for it (the most interior place when none has room; without a field of
    view, within 0.2..0.8 of the frame)."""
    if not kinds:
        raise ValueError("no distractor kinds to sample from")
    kind = kinds[int(rng.integers(len(kinds)))]
    scale = float(rng.uniform(*_SCALES[kind]))
    center = _inside(fov, scale, rng) if fov is not None else tuple(float(v) for v in rng.uniform(0.2, 0.8, 2))
    return Distractor(kind, center, scale, int(rng.integers(2**31)))


def _inside(fov: FieldOfView, scale: float, rng: np.random.Generator) -> tuple[float, float]:
    """A normalised point of a visible grid cell at least 1.5 sizes from anything invisible (the
    distractors stay within about that of their centre)."""
    grid = np.pad(fov.grid, 1).astype(np.uint8)  # the image's edge counts as invisible
    clearance = cv2.distanceTransform(grid, cv2.DIST_L2, 5)[1:-1, 1:-1]
    cells = np.argwhere(clearance >= 1.5 * scale * np.sqrt(clearance.size))
    if not len(cells):
        cells = np.argwhere(clearance == clearance.max())
    row, col = cells[int(rng.integers(len(cells)))] + rng.random(2)
    return float(col / clearance.shape[1]), float(row / clearance.shape[0])


@dataclass(frozen=True)
class Negative:
    """A sample with an empty label: the frame as it is, or with a distractor painted in."""

    kind: str  # frame | lookalike
    distractor: Distractor | None = None

    @property
    def shows(self) -> str:
        """What the sample shows, as its `negative` attribute says: frame, or the distractor's kind."""
        return self.distractor.kind if self.distractor else self.kind

    def to_dict(self) -> dict[str, Any]:
        return {"negative": self.kind, "distractor": self.distractor.to_dict() if self.distractor else None}

    def __post_init__(self) -> None:
        if self.kind not in NEGATIVE_KINDS or (self.kind == "lookalike") != (self.distractor is not None):
            raise ValueError(f"a negative is a frame, or a lookalike with its distractor; not {self.to_dict()}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Negative:
        return cls(str(d["negative"]), Distractor.from_dict(d["distractor"]) if d.get("distractor") else None)


def negative_rng(run_seed: int, index: int) -> np.random.Generator:
    """The random stream deciding whether sample `index` is a negative, and what it shows."""
    return np.random.default_rng([run_seed, 4, index])


def draw_negative(config: NegativesConfig, rng: np.random.Generator, fov: FieldOfView | None = None) -> Negative | None:
    """None (a polyp sample) with probability 1 − ratio / (1 + ratio), else a negative of a kind
    drawn uniformly from `config.kinds` (a lookalike's distractor from `config.lookalikes`)."""
    if rng.random() >= config.share:
        return None
    kind = config.kinds[int(rng.integers(len(config.kinds)))]
    return Negative(kind, sample_distractor(rng, config.lookalikes, fov) if kind == "lookalike" else None)


def is_negative(params: Mapping[str, Any]) -> bool:
    """Whether parsed `mask_params` describe a negative (else a lesion's: procedural or real)."""
    return "negative" in params


def negative_of(mask_params: str) -> Negative | None:
    """The negative a plan row's `mask_params` (JSON) describes; None for a polyp sample."""
    params = json.loads(mask_params)
    return Negative.from_dict(params) if is_negative(params) else None
