"""Per-sample checks: a small registry of typed checks, each a named reason when it fails.

A check reads one score column and compares it with one bound from `GateConfig` (None disables it).
Scores come from two places:
- *pixel scorers* run in the feature worker, on each sample's pixels (image, label, source frame,
  repaint region), and are cached with the features;
- *feature scores* (`realism`, `lesion_score`, `duplicate_similarity`, `features_finite`) are computed
  by the gate from the cached features and the reference.

- *shard scores* (`shard_kid`: the lesion-crop KID of the sample's shard) are computed by the gate
  per shard and given to each of its samples.

Adding a check means adding a `CheckSpec` with its scorer to `CHECKS`; the gate's loop, the cache
and the report pick it up (`label_mismatch` runs the segmentation checkpoint of `gate.segmenter`; a
scorer with an `identity` attribute, such as that checkpoint's checksum, is part of the cache key).

Gates fail closed: a check that is on but cannot score a sample (its source frame cannot be read,
its features are not finite) rejects it as `unscored`, unless `gate.unscored_allowed` names the
check. Only `shard_kid` has polyp samples it does not apply to (a shard with fewer than two has no KID).

Hard negatives (samples the plan made with an empty label) are judged by what they are: the checks
of a painted lesion (unpainted, leaked, no_lesion, unrealistic, near_duplicate, label_mismatch,
shard_kid) do not apply to them,
and `lesion_in_negative` applies to them alone: with `gate.segmenter`, no lesion may be found where
the label has none. (The lesion probe cannot judge them: it learned Kvasir-SEG lesion crops against
another dataset's mucosa, and calls a whole Kvasir-SEG framing a polyp: `bench/bench_probe_frames.py`.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import cv2
import numpy as np

from pipeline.config import GateConfig
from pipeline.errors import GateError
from pipeline.gate.metrics import ms_ssim

MS_SSIM_SIDE = 176  # repaint windows are resized to this (MS-SSIM's five scales need at least 161)
CHANGED_LEVELS = 2  # a pixel outside the repaint region "changed" when a channel differs by more


@dataclass(frozen=True)
class Sample:
    """What a pixel scorer sees of one sample."""

    sample_id: str
    image: np.ndarray  # RGB uint8 HxWx3
    mask: np.ndarray  # label, uint8 HxW {0, 255}
    source: np.ndarray | None  # the source frame at the image's size; None when it cannot be read
    repaint: np.ndarray | None  # bool HxW: where the engine may change pixels (alpha > 0)
    row: dict[str, Any]  # the shard row's other columns (attributes, engine, …)


class PixelScorer(Protocol):
    """Scores a shard's samples from their pixels (batched: a model or MS-SSIM runs once per shard);
    NaN where the score does not apply (no source frame)."""

    def __call__(self, samples: list[Sample]) -> np.ndarray: ...


def each(score: Callable[[Sample], float]) -> PixelScorer:
    """A scorer from a function of one sample."""
    return lambda samples: np.array([score(s) for s in samples], np.float64)


def _window(region: np.ndarray) -> tuple[slice, slice]:
    x, y, w, h = cv2.boundingRect(region.astype(np.uint8))
    return slice(y, y + h), slice(x, x + w)


def unpainted_ms_ssim(samples: list[Sample]) -> np.ndarray:
    """MS-SSIM between the repaint window of each image and of its source frame (≈ 1: nothing painted);
    0 where there was nothing to paint (an empty label), NaN where the source frame is missing."""
    scores = np.array([np.nan if s.source is None else 0.0 for s in samples])
    usable = [i for i, s in enumerate(samples) if s.source is not None and s.repaint is not None and s.repaint.any()]
    if not usable:
        return scores
    size = (MS_SSIM_SIDE, MS_SSIM_SIDE)
    pairs = []
    for i in usable:
        rows, cols = _window(samples[i].repaint)
        pairs.append((cv2.resize(samples[i].image[rows, cols], size, interpolation=cv2.INTER_CUBIC),
                      cv2.resize(samples[i].source[rows, cols], size, interpolation=cv2.INTER_CUBIC)))
    scores[usable] = ms_ssim(np.stack([a for a, _ in pairs]), np.stack([b for _, b in pairs]))
    return scores


def leaked_fraction(sample: Sample) -> float:
    """Fraction of the pixels outside the repaint region that differ from the source frame."""
    if sample.source is None or sample.repaint is None:
        return float("nan")
    outside = ~sample.repaint
    if not outside.any():
        return 0.0
    changed = (np.abs(sample.image.astype(np.int16) - sample.source.astype(np.int16)).max(axis=2) > CHANGED_LEVELS)
    return float(changed[outside].mean())


def grey_std(sample: Sample) -> float:
    """Standard deviation of the grey levels: about 0 for a blank (single-colour) image."""
    return float(cv2.cvtColor(sample.image, cv2.COLOR_RGB2GRAY).std())


def saturated_fraction(sample: Sample) -> float:
    """Fraction of the lit pixels (grey > 16, so the endoscope's black surround does not count) that
    have a channel clipped at 255, or all channels at 0."""
    grey = cv2.cvtColor(sample.image, cv2.COLOR_RGB2GRAY)
    lit = grey > 16
    if not lit.any():
        return 1.0
    clipped = (sample.image == 255).any(axis=2) | (sample.image == 0).all(axis=2)
    return float(clipped[lit].mean())


@dataclass(frozen=True)
class CheckSpec:
    """One named reason: it fails a sample when `score` is below (`fail_below`) or above its bound."""

    reason: str
    score: str
    fail_below: bool
    bound: Callable[[GateConfig], float | None]
    scorer: Callable[[GateConfig], PixelScorer] | None = None  # None: a feature or shard score, computed by the gate
    nan_applies: bool = True  # False: a NaN score means the check does not apply (not that it could not score)
    applies: Literal["all", "lesions", "negatives"] = "all"  # samples with a label, with an empty one, or both

    def judged(self, negative: np.ndarray) -> np.ndarray:
        """Which samples this check judges, given which have an empty label."""
        return {"all": np.ones_like(negative), "lesions": ~negative, "negatives": negative}[self.applies]

    def failed(self, values: np.ndarray, config: GateConfig) -> np.ndarray:
        """Where the bound fails (NaN never does: see `unscored`)."""
        bound = self.bound(config)
        if bound is None:
            return np.zeros(len(values), bool)
        with np.errstate(invalid="ignore"):
            return values < bound if self.fail_below else values > bound

    def unscored(self, values: np.ndarray, config: GateConfig) -> np.ndarray:
        """Where the check is on but has no score: the sample cannot be judged by it."""
        if self.bound(config) is None or not self.nan_applies or self.reason in config.unscored_allowed:
            return np.zeros(len(values), bool)
        return np.isnan(values)


def label_iou(config: GateConfig) -> PixelScorer:
    """IoU of `gate.segmenter`'s prediction with each label (NaN, never failing, without a segmenter)."""
    if config.segmenter is None:
        return lambda samples: np.full(len(samples), np.nan)
    from pipeline.gate.label_check import LabelIoUScorer

    return LabelIoUScorer(config.segmenter, config.device)


def predicted_area(config: GateConfig) -> PixelScorer:
    """The share of each hard negative's image `gate.segmenter` marks as lesion (NaN, never failing,
    without a segmenter, and for labelled samples)."""
    if config.segmenter is None:
        return lambda samples: np.full(len(samples), np.nan)
    from pipeline.gate.label_check import PredictedAreaScorer

    return PredictedAreaScorer(config.segmenter, config.device)


def label_bound(config: GateConfig) -> float | None:
    """`gate.label_iou_min` where a segmenter is set; `auto` must have been resolved (`resolve_label_bound`)."""
    if config.segmenter is None or config.label_iou_min is None:
        return None
    if config.label_iou_min == "auto":
        raise GateError("gate.label_iou_min is auto: resolve it from the segmenter's checkpoint first")
    return config.label_iou_min


def resolve_label_bound(config: GateConfig) -> tuple[GateConfig, str | None]:
    """The gate settings with an automatic `label_iou_min` turned into the segmenter's own figure (the
    10th percentile of its IoU on held-out real images: a real image fails as rarely as 1 in 10), and
    a sentence saying so for the report; unchanged otherwise."""
    if config.segmenter is None or config.label_iou_min != "auto":
        return config, None
    from pipeline.segmenter.model import read_record

    held = read_record(config.segmenter).holdout
    if held is None:
        raise GateError(f"gate.label_iou_min is auto, but {config.segmenter} records no IoU on held-out real images: "
                        "train it with --holdout DIR[:SPLIT], or set gate.label_iou_min to a number")
    note = (f"label_iou_min {held.iou_p10:.3f}: the IoU that 90 % of {held.n} held-out real images ({held.data}) "
            f"reach with the segmenter {config.segmenter} (its mean there: {held.iou_mean:.3f})")
    return config.model_copy(update={"label_iou_min": held.iou_p10}), note


def _fixed(scorer: PixelScorer) -> Callable[[GateConfig], PixelScorer]:
    """A scorer that needs no settings."""
    return lambda config: scorer


CHECKS: tuple[CheckSpec, ...] = (
    CheckSpec("non_finite", "features_finite", True, lambda c: 0.5),
    CheckSpec("blank", "grey_std", True, lambda c: c.blank_std_min, _fixed(each(grey_std))),
    CheckSpec("saturated", "saturated_fraction", False, lambda c: c.saturated_fraction_max, _fixed(each(saturated_fraction))),
    CheckSpec("unpainted", "unpainted_ms_ssim", False, lambda c: c.unpainted_ms_ssim_max, _fixed(unpainted_ms_ssim),
              applies="lesions"),
    CheckSpec("leaked", "leaked_fraction", False, lambda c: c.leaked_fraction_max, _fixed(each(leaked_fraction)),
              applies="lesions"),
    CheckSpec("no_lesion", "lesion_score", True, lambda c: c.lesion_score_min, applies="lesions"),
    CheckSpec("unrealistic", "realism", True, lambda c: c.realism_min, applies="lesions"),
    CheckSpec("near_duplicate", "duplicate_similarity", False, lambda c: c.duplicate_similarity_max,
              applies="lesions"),
    CheckSpec("label_mismatch", "label_iou", True, lambda c: label_bound(c), label_iou, applies="lesions"),
    CheckSpec("shard_kid", "shard_kid", False, lambda c: c.shard_kid_max, nan_applies=False, applies="lesions"),
    CheckSpec("lesion_in_negative", "negative_lesion_area", False,
              lambda c: c.negative_lesion_max if c.segmenter else None, predicted_area, applies="negatives"),
)
UNSCORED = "unscored"
"""The reason of a sample that an enabled check could not score."""


def pixel_scorers(config: GateConfig, checks: tuple[CheckSpec, ...] = CHECKS) -> dict[str, PixelScorer]:
    """Score column → scorer, for every check measured on pixels."""
    return {spec.score: spec.scorer(config) for spec in checks if spec.scorer is not None}


def judge(scores: dict[str, np.ndarray], config: GateConfig, negative: np.ndarray,
          checks: tuple[CheckSpec, ...] = CHECKS) -> list[list[str]]:
    """The failed reasons of each sample (`negative`: which have an empty label), in registry order,
    then `unscored` where an enabled check that judges it had no score (empty: accepted)."""
    negative = np.asarray(negative, bool)
    reasons: list[list[str]] = [[] for _ in range(len(negative))]
    unscored = np.zeros(len(negative), bool)
    for spec in checks:
        values = np.asarray(scores[spec.score], np.float64)
        judged = spec.judged(negative)
        for i in np.flatnonzero(spec.failed(values, config) & judged):
            reasons[i].append(spec.reason)
        unscored |= spec.unscored(values, config) & judged
    for i in np.flatnonzero(unscored):
        reasons[i].append(UNSCORED)
    return reasons


SURPLUS = "surplus"
"""The reason of an accepted sample beyond the N a job asked for (`samples: {accepted: N}`)."""


def keep_first(reasons: list[list[str]], keep: int) -> list[list[str]]:
    """The verdicts with every accepted sample after the first `keep` (in plan order) rejected as
    `surplus`: a job that asks for N accepted samples gets N, the earliest planned."""
    surplus = set(np.flatnonzero([not r for r in reasons])[keep:].tolist())
    return [[SURPLUS] if i in surplus else r for i, r in enumerate(reasons)]
