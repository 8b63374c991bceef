"""Paired comparisons of two experiment arms over the same seeds.

Two arms trained with the same seed share the decoder's initial weights, the order in which each
epoch visits the real pairs and each pair's augmentation in each epoch (`data.dataset`), so much of
what makes one seed differ from another cancels in their difference: d_s = arm_s − control_s (the
batches still differ: synthetic pairs fill some of their places). The claim is about the mean
difference d̄ with its 95 % t interval d̄ ± t(0.975, n−1) · s_d / √n (scipy's paired t-test); no
claim is made when the interval covers 0, nor with fewer than `MIN_SEEDS` seeds.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy import stats

Verdict = Literal["better", "worse", "no claim"]
MIN_SEEDS = 5
"""Fewer paired seeds than this make no claim, whatever the interval (two seeds that happen to move
alike give a zero-width interval)."""


class Difference(BaseModel):
    """Mean paired difference (arm − control) over `n` seeds and its 95 % confidence interval."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int
    mean: float
    low: float
    high: float

    def verdict(self, higher_is_better: bool = True) -> Verdict:
        """`better` or `worse` only when the interval excludes 0, over at least `MIN_SEEDS` seeds."""
        if self.n < MIN_SEEDS:
            return "no claim"
        if self.low > 0:
            return "better" if higher_is_better else "worse"
        if self.high < 0:
            return "worse" if higher_is_better else "better"
        return "no claim"


def paired_difference(arm: Sequence[float], control: Sequence[float], confidence: float = 0.95) -> Difference | None:
    """d̄ = mean(arm_s − control_s) and its t interval over the seeds (values in seed order, one per
    seed in both); None with fewer than 2 pairs (no interval)."""
    a, b = np.asarray(arm, np.float64), np.asarray(control, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in number: {a.shape} and {b.shape}")
    if a.size < 2:
        return None
    differences = a - b
    if np.ptp(differences) == 0:  # every seed moved by the same amount: the interval is that point
        low = high = float(differences[0])
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # scipy's note on nearly equal samples
            low, high = stats.ttest_rel(a, b).confidence_interval(confidence)
    return Difference(n=int(a.size), mean=float(differences.mean()), low=float(low), high=float(high))
