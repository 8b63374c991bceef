"""Drawing from weighted axes: cumulative tables and per-axis samplers that respect the rules.

Every sample consumes the same fixed number of uniform draws, so streams are reproducible and
independent of how many samples are drawn."""

from __future__ import annotations

import itertools
import operator
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

from pipeline.plan.prompts.constraints import Rule, bits_of, excluded_by
from pipeline.plan.prompts.schema import Axis, AxisValue
from pipeline.plan.prompts.text import join_phrases

# ---------------------------------------------------------------------------- sampling

# With u in [0, 1), round-to-nearest keeps u * x below x for every positive float x, so
# `int(u * n) < n` and `bisect_right(cumulative, u * cumulative[-1]) < len(cumulative)` need no clamp.


def cumulative(weights: Sequence[float]) -> list[float]:
    return list(itertools.accumulate(weights))


def draw(cumulative: Sequence[float], u: float) -> int:
    """Index drawn with probability proportional to its weight, from one uniform in [0, 1)."""
    return bisect_right(cumulative, u * cumulative[-1])


_Table = tuple[tuple[AxisValue, ...], tuple[int, ...], list[float]]  # values, their bits, cumulative weights


class AxisSampler:
    """What the hot loop needs for one axis, with caches keyed by what constrains it.

    The excluded values depend only on the axes that the axis's rules look at, and the draw table
    only on the excluded values, so both are worked out once per situation, not once per sample.
    """

    def __init__(self, axis: Axis, rules: Sequence[Rule], at: int) -> None:
        self.name = axis.name
        self.at = at  # where this axis's uniforms start in a sample's row
        self.values = axis.values
        self.single = axis.pick is None
        self.low, self.high = axis.pick or (1, 1)
        self.width = 2 if self.single else 1 + 2 * self.high  # uniforms used per sample
        self.ids = tuple(value.id for value in axis.values)
        self.full = (1 << len(axis.values)) - 1  # every value's bit
        self.restricted = bool(rules)  # a constraint limits this axis's values
        self._rules = tuple(rules)
        context = sorted({j for rule in rules for j, _ in rule.conditions})
        self._context = operator.itemgetter(*context) if context else None
        self._excluded: dict[Any, int] = {}
        self._tables: dict[int, _Table] = {}
        self.fixed = None if self._context else self.table(0)  # the only table of an unconstrained axis

    def excluded(self, chosen: Sequence[int]) -> int:
        if self._context is None:
            return 0
        key = self._context(chosen)
        mask = self._excluded.get(key)
        if mask is None:
            mask = self._excluded[key] = excluded_by(self._rules, chosen)
        return mask

    def table(self, excluded: int) -> _Table:
        table = self._tables.get(excluded)
        if table is None:
            kept = [i for i in range(len(self.values)) if not excluded >> i & 1]
            table = (
                tuple(self.values[i] for i in kept),
                tuple(1 << i for i in kept),
                cumulative([self.values[i].weight for i in kept]),
            )
            self._tables[excluded] = table
        return table

    def draw_list(self, excluded: int, u: Sequence[float]) -> tuple[int, list[str], str]:
        """A list axis: a count, then (value, phrase) pairs; values come back in bank order."""
        at = self.at
        count = self.low + int(u[at] * (min(self.high, len(self.table(excluded)[0])) - self.low + 1))
        mask = 0
        for slot in range(count):
            _, bits, cumulative = self.table(excluded | mask)
            mask |= bits[draw(cumulative, u[at + 1 + 2 * slot])]
        picked = [self.values[i] for i in bits_of(mask)]
        phrases = [
            value.phrases[int(u[at + 2 + 2 * slot] * len(value.phrases))] for slot, value in enumerate(picked)
        ]
        return mask, [value.id for value in picked], join_phrases(phrases)


