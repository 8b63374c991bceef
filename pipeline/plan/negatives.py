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

import numpy as np

from pipeline.config import LOOKALIKE_KINDS, NegativesConfig

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


def sample_distractor(rng: np.random.Generator, kinds: Sequence[str] = LOOKALIKE_KINDS) -> Distractor:
    """A kind drawn uniformly from `kinds`, a size plausible for it, and a centre within 0.2..0.8 so it
    lies inside the round field of view of an endoscope frame."""
    if not kinds:
        raise ValueError("no distractor kinds to sample from")
    kind = kinds[int(rng.integers(len(kinds)))]
    x, y = rng.uniform(0.2, 0.8, 2)
    return Distractor(kind, (float(x), float(y)), float(rng.uniform(*_SCALES[kind])), int(rng.integers(2**31)))


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

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Negative:
        return cls(str(d["negative"]), Distractor.from_dict(d["distractor"]) if d.get("distractor") else None)


def negative_rng(run_seed: int, index: int) -> np.random.Generator:
    """The random stream deciding whether sample `index` is a negative, and what it shows."""
    return np.random.default_rng([run_seed, 4, index])


def draw_negative(config: NegativesConfig, rng: np.random.Generator) -> Negative | None:
    """None (a polyp sample) with probability 1 − ratio / (1 + ratio), else a negative of a kind
    drawn uniformly from `config.kinds` (a lookalike's distractor from `config.lookalikes`)."""
    if rng.random() >= config.share:
        return None
    kind = config.kinds[int(rng.integers(len(config.kinds)))]
    return Negative(kind, sample_distractor(rng, config.lookalikes) if kind == "lookalike" else None)


def negative_of(mask_params: str) -> Negative | None:
    """The negative a plan row's `mask_params` describes; None for a polyp sample."""
    params = json.loads(mask_params)
    return Negative.from_dict(params) if "negative" in params else None
