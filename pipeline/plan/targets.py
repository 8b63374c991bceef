"""Aim a plan at the lesion sizes a segmenter fails in: the closed loop from evaluation to plan.

A plan draws each lesion's area through a level u in [0, 1] of the preset's area quantile function;
u is uniform by default, so a size bin b = [a_lo, a_hi) of the frame gets its *natural* share

    n_b = u(a_hi) - u(a_lo),     u(a) = the level whose area is a (`masks.sampling.area_level`).

Aimed, the level is drawn from a density that is uniform inside each bin and gives bin b the share

    s_b = min(k · n_b, λ · w_b),   λ such that Σ s_b = 1,   k = `max_boost`

(water-filling: bins whose weight would take them past k times their natural share stop there and
the rest share what is left in proportion to their weights). From an evaluation, w_b = n_b · (1 − D_b)
with D_b the bin's Dice pooled over the report's labelled sets (weighted by their image counts): a bin
twice as far from a perfect Dice gets twice the boost of the other, up to k times its natural share. A bin no evaluated image falls in
keeps the mean deficit. Inside a bin the preset's shapes are unchanged; only how often each size
comes up moves, and the prompt's size class follows the drawn level.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from pipeline.config import TargetsConfig
from pipeline.core import storage
from pipeline.core.digests import json_digest
from pipeline.core.lesion_bins import SIZE_BINS, size_bin
from pipeline.errors import ConfigError
from pipeline.plan.masks.preset import MaskPreset
from pipeline.plan.masks.sampling import area_level
from pipeline.plan.negatives import is_negative

BIN_NAMES = tuple(name for name, *_ in SIZE_BINS)


class TargetsInfo(BaseModel):
    """What a plan was aimed at and why, stored in its metadata (`preview` and the gate report show it)."""

    model_config = ConfigDict(frozen=True)

    source: str  # the evaluation report, or "targets.size"
    digest: str  # of the report's figures (or of the weights): a changed report is a changed plan
    natural: dict[str, float]
    asked: dict[str, float]
    why: dict[str, str]


def bin_levels(preset: MaskPreset) -> dict[str, tuple[float, float]]:
    """Each size bin's interval of area levels under the preset."""
    return {name: (area_level(low, preset) if low > 0 else 0.0, area_level(high, preset) if high < 1 else 1.0)
            for name, low, high, _ in SIZE_BINS}


def natural_shares(preset: MaskPreset) -> dict[str, float]:
    """n_b: how often each size bin comes up in a plan that is not aimed."""
    return {name: high - low for name, (low, high) in bin_levels(preset).items()}


def water_fill(natural: dict[str, float], weights: dict[str, float], max_boost: float) -> dict[str, float]:
    """s_b = min(k · n_b, λ · w_b) with Σ s_b = 1 (the module's formula). When every weighted bin is
    capped, what is left goes to the bins of zero weight in proportion to their natural shares (each
    stays below its natural share); no weight at all leaves the natural shares."""
    free = [b for b in natural if weights.get(b, 0) > 0]
    shares: dict[str, float] = {}
    while free:
        budget = 1.0 - sum(shares.values())
        total = sum(weights[b] for b in free)
        capped = [b for b in free if budget * weights[b] / total > max_boost * natural[b]]
        if not capped:
            shares.update({b: budget * weights[b] / total for b in free})
            return {b: shares.get(b, 0.0) for b in natural}
        shares.update({b: max_boost * natural[b] for b in capped})
        free = [b for b in free if b not in capped]
    rest = [b for b in natural if b not in shares]
    left, mass = 1.0 - sum(shares.values()), sum(natural[b] for b in rest)
    shares.update({b: left * natural[b] / mass if mass else 0.0 for b in rest})
    return {b: shares[b] for b in natural}


def pooled_dice(report: dict, source: str) -> dict[str, tuple[int, float | None]]:
    """(images, Dice) per size bin over every labelled set of an `evaluate --json` report."""
    sets = [s for s in report.get("sets", []) if "bins" in s]
    if not sets:
        raise ConfigError(f"targets.from_evaluation: {source}: no labelled set with per-bin results "
                          "(write it with `polyp-synth evaluate CHECKPOINT --data DIR[:SPLIT] --json FILE`)")
    pooled = {}
    for name in BIN_NAMES:
        figures = [f for f in (s["bins"].get("size", {}).get(name) or {} for s in sets) if f.get("n")]
        n = sum(f["n"] for f in figures)
        pooled[name] = (n, sum(f["n"] * f["dice"] for f in figures) / n if n else None)
    if not any(n for n, _ in pooled.values()):
        raise ConfigError(f"targets.from_evaluation: {source}: no evaluated image in any size bin")
    return pooled


def aim(config: TargetsConfig, preset: MaskPreset) -> TargetsInfo:
    """The asked share of each size bin, and one line per bin saying why."""
    natural = natural_shares(preset)
    if config.size is not None:
        weights = {b: float(config.size.get(b, 0.0)) for b in BIN_NAMES}
        why = {b: f"weight {weights[b]:g}" for b in BIN_NAMES}
        source, digest = "targets.size", json_digest(weights)
    else:
        source = config.from_evaluation
        try:
            report = json.loads(storage.read_text(source, ConfigError, "evaluation report"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"targets.from_evaluation: {source}: not JSON ({exc})") from None
        pooled = pooled_dice(report, source)
        deficits = {b: 1.0 - dice for b, (_, dice) in pooled.items() if dice is not None}
        mean_deficit = float(np.mean(list(deficits.values())))
        weights = {b: natural[b] * deficits.get(b, mean_deficit) for b in BIN_NAMES}
        why = {b: (f"Dice {pooled[b][1]:.3f} on {pooled[b][0]} images" if b in deficits
                   else "no evaluated image in this bin: the mean deficit") for b in BIN_NAMES}
        digest = json_digest(pooled)
    asked = water_fill(natural, weights, config.max_boost)
    for b in BIN_NAMES:
        boost = asked[b] / natural[b] if natural[b] else 0.0
        capped = " (capped)" if boost >= config.max_boost - 1e-9 else ""
        why[b] += f" → ×{boost:.2f} its natural share{capped}"
    return TargetsInfo(source=source, digest=digest, natural=natural, asked=asked, why=why)


@dataclass(frozen=True)
class LevelSampler:
    """Draws area levels with the asked share per bin, uniform inside each bin."""

    asked: tuple[float, ...]
    intervals: tuple[tuple[float, float], ...]

    @classmethod
    def of(cls, info: TargetsInfo, preset: MaskPreset) -> LevelSampler:
        levels = bin_levels(preset)
        return cls(tuple(info.asked[b] for b in BIN_NAMES), tuple(levels[b] for b in BIN_NAMES))

    def draw(self, rng: np.random.Generator) -> float:
        b = int(np.searchsorted(np.cumsum(self.asked), rng.random() * sum(self.asked), side="right"))
        low, high = self.intervals[min(b, len(self.intervals) - 1)]
        return low + (high - low) * rng.random()


def size_shares(areas: list[float]) -> dict[str, float]:
    """The share of each size bin among lesions of these areas (fractions of the frame)."""
    counts = {name: 0 for name in BIN_NAMES}
    for area in areas:
        counts[size_bin(area)] += 1
    return {name: count / max(1, len(areas)) for name, count in counts.items()}


def planned_areas(table: pa.Table) -> list[float]:
    """The mask area (fraction of the frame) of every polyp row of a plan or shard table (a negative
    has no lesion)."""
    rows = (json.loads(params) for params in table.column("mask_params").to_pylist())
    return [row["area_fraction"] for row in rows if not is_negative(row)]


def shares_table(info: TargetsInfo, columns: dict[str, dict[str, float]]) -> str:
    """Natural, asked and each of `columns` (e.g. planned, accepted) per size bin, and why: Markdown."""
    labels = {name: label for name, _, _, label in SIZE_BINS}
    lines = [f"lesion sizes aimed with {info.source}", "",
             "| size | natural | asked | " + " | ".join(columns) + " | why |",
             "| --- | --- | --- | " + " | ".join("---" for _ in columns) + " | --- |"]
    for name in BIN_NAMES:
        lines.append(f"| {labels[name]} | {info.natural[name]:.3f} | {info.asked[name]:.3f} | "
                     + " | ".join(f"{shares[name]:.3f}" for shares in columns.values()) + f" | {info.why[name]} |")
    return "\n".join(lines)
