"""Derive a mask preset from a folder of real masks, so that drawn masks have the same shape statistics.

The preset's quantile functions start as the reference's own (area fraction, eccentricity, solidity)
but are shape *parameters* (polygon area, base-ellipse eccentricity, outline-polygon solidity), which
rasterising, stalks and harmonics shift a little. So they are calibrated: draw masks with common
random numbers, measure them exactly as the reference was measured, map each drawn mask's statistic
to the reference value of the same rank, and move each quantile knot by the mean correction of the
masks drawn near it. The best of a few rounds is kept. Shape families (which morphology
leans on which end of the shape quantiles, which ones have stalks) are design choices made here;
the shares of size classes and morphologies come from the prompt bank.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pipeline.errors import MaskPresetError
from pipeline.plan.fov import FieldOfView
from pipeline.plan.masks.preset import (
    Harmonics,
    MaskPreset,
    Morphology,
    SecondLesion,
    SizeClass,
    StalkSpec,
)
from pipeline.plan.masks.sampling import sample_with_levels
from pipeline.plan.masks.shapes import draw_mask
from pipeline.plan.masks.stats import (
    KS_STATS,
    drawing_sizes,
    ks_report,
    load_reference_stats,
    stats_table,
)
from pipeline.plan.prompts.bank import PromptBank

log = logging.getLogger(__name__)

_ROUND_TO_ELONGATED = ("0-Is", "0-Ip", "0-Isp", "0-IIc", "0-IIa", "0-IIb")
"""Eccentricity bands in this order: domes are round, flat lesions spread; a stalk elongates a round head."""
_SMOOTH_TO_IRREGULAR = ("0-Is", "0-IIa", "0-Isp", "0-IIc", "0-Ip", "0-IIb")
"""Solidity bands in this order: flat lesions have irregular rims, a neck or a stalk costs solidity."""

_STALKS = {
    "0-Ip": StalkSpec(probability=0.9, length=(0.5, 1.3), width=(0.3, 0.5)),  # a clear stalk
    "0-Isp": StalkSpec(probability=0.7, length=(0.1, 0.35), width=(0.55, 0.85)),  # a broad short neck
}
_BAND_STRENGTH = 0.7
_HARMONICS = Harmonics(orders=(3, 8), decay=1.0)
_GAP = (0.1, 0.8)
_KNOTS = 41
_SAMPLES = 1500
_ROUNDS = 7
_PIXEL_SOLIDITY = 0.01  # rasterising costs convex outlines about this much solidity: a starting point
_STEP = 0.8  # damping of each round's correction
_MIN_MASKS = 20


def _bands(shares: Mapping[str, float], what: str) -> dict[str, tuple[float, float]]:
    """Consecutive bands of [0, 1], as wide as the (normalised) shares, in the given order."""
    values = np.array(list(shares.values()), dtype=float)
    if not len(values) or np.any(~np.isfinite(values)) or np.any(values <= 0):
        raise MaskPresetError(f"{what} shares must be positive numbers, got {dict(shares)}")
    edges = np.concatenate([[0.0], np.cumsum(values) / values.sum()])
    edges[-1] = 1.0
    return {name: (round(float(lo), 6), round(float(hi), 6)) for name, lo, hi in zip(shares, edges, edges[1:])}


def _ordered(shares: Mapping[str, float], order: tuple[str, ...]) -> dict[str, float]:
    """Shares in the given order; morphologies it does not know go in the middle."""
    rank = {name: order.index(name) if name in order else len(order) / 2 for name in shares}
    return {name: shares[name] for name in sorted(shares, key=rank.__getitem__)}


def _round(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in np.round(values, 5))


def _preset(base: MaskPreset, area: np.ndarray, eccentricity: np.ndarray, solidity: np.ndarray,
            second: float) -> MaskPreset:
    return base.model_copy(update={
        "area_fraction": _round(area), "eccentricity": _round(eccentricity), "outline_solidity": _round(solidity),
        "second_lesion": base.second_lesion.model_copy(update={"probability": round(second, 4)}),
    })


def _simulate(preset: MaskPreset, seed: int, sizes: list[tuple[int, int]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Masks as a job draws them (attributes from the preset's own mix, full field of view), each
    at one of the reference's own sizes.

    Returns the quantile levels (N, 3: area, eccentricity, outline solidity) and the measured
    statistics; the same seed gives the same random numbers every round.
    """
    rng = np.random.default_rng([seed, 7])
    drawn = [sample_with_levels(preset, {}, FieldOfView.full(w, h), rng) for w, h in sizes]
    generated = stats_table(draw_mask(params, w, h) for (params, _), (w, h) in zip(drawn, sizes))
    return np.array([level for _, level in drawn]), generated


def _wanted(generated: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each generated value moved to the reference value of the same rank (quantile mapping)."""
    ranks = (np.argsort(np.argsort(generated)) + 0.5) / generated.size
    return np.quantile(reference, ranks)


def _per_knot(levels: np.ndarray, values: np.ndarray, knots: int) -> np.ndarray:
    """Mean of `values` near each knot's quantile level (triangular kernel one knot spacing wide)."""
    weights = np.clip(1.0 - np.abs(levels[None, :] * (knots - 1) - np.arange(knots)[:, None]), 0.0, None)
    return (weights @ values) / np.maximum(weights.sum(axis=1), 1e-9)


def _recalibrated(knots: np.ndarray, levels: np.ndarray, got: np.ndarray, reference: np.ndarray,
                  bounds: tuple[float, float], log_scale: bool = False) -> np.ndarray:
    """Knots moved by the mean rank-matching correction of the masks drawn near their levels."""
    to, back = (np.log, np.exp) if log_scale else (np.asarray, np.asarray)
    gap = to(_wanted(got, reference)) - to(got)
    return np.sort(np.clip(back(to(knots) + _STEP * _per_knot(levels, gap, knots.size)), *bounds))


def fit_preset(reference_dir: str | Path, bank: PromptBank, seed: int = 0) -> MaskPreset:
    """A preset whose masks match the reference folder's area, solidity and eccentricity distributions,
    drawn at the reference masks' own sizes.

    Each size class (in the bank's order, increasing size) and each morphology gets a band as wide as
    its share among the bank's samples. Takes ~10-20 s for 1000 reference masks.
    """
    reference = load_reference_stats(reference_dir)
    usable = ~np.isnan(reference["solidity"])
    if usable.sum() < _MIN_MASKS:
        raise MaskPresetError(f"{reference_dir}: {int(usable.sum())} non-empty masks, need at least {_MIN_MASKS}")
    reference = {key: values[usable] for key, values in reference.items()}
    shares = bank.shares("morphology")
    sizes = drawing_sizes(reference, _SAMPLES, seed)
    eccentricity_bands = _bands(_ordered(shares, _ROUND_TO_ELONGATED), "morphology")
    solidity_bands = _bands(_ordered(shares, _SMOOTH_TO_IRREGULAR), "morphology")
    multiple = reference["components"] >= 2
    ratios = reference["second_area_ratio"][multiple]
    probs = np.linspace(0.0, 1.0, _KNOTS)
    target = {key: np.quantile(reference[key], probs) for key in KS_STATS}

    area = np.clip(target["area_fraction"], 1e-5, 0.9)
    eccentricity = np.clip(target["eccentricity"], 0.0, 0.98)
    solidity = np.clip(target["solidity"] + _PIXEL_SOLIDITY, 0.2, 1.0)
    base = MaskPreset(
        area_fraction=_round(area), eccentricity=_round(eccentricity), outline_solidity=_round(solidity),
        size_classes={name: SizeClass(band=band) for name, band in _bands(bank.shares("size"), "size").items()},
        morphologies={
            name: Morphology(eccentricity_band=eccentricity_bands[name], solidity_band=solidity_bands[name],
                             stalk=_STALKS.get(name))
            for name in shares
        },
        band_strength=_BAND_STRENGTH,
        second_lesion=SecondLesion(
            probability=round(float(multiple.mean()), 4),
            area_ratio=_round(np.quantile(ratios, [0.1, 0.9])) if ratios.size >= 3 else (0.1, 0.6),
            gap=_GAP,
        ),
        harmonics=_HARMONICS,
    )
    best, best_ks, best_note = base, np.inf, ""
    second = base.second_lesion.probability
    for round_ in range(_ROUNDS):
        preset = _preset(base, area, eccentricity, solidity, second)
        levels, generated = _simulate(preset, seed, sizes)
        ks = ks_report(generated, reference)
        log.info("fit round %d: KS %s", round_, {k: round(v, 3) for k, v in ks.items()})
        if max(ks.values()) < best_ks:
            best, best_ks = preset, max(ks.values())
            best_note = ", ".join(f"{k} {v:.3f}" for k, v in ks.items())
        area = _recalibrated(area, levels[:, 0], generated["area_fraction"], reference["area_fraction"],
                             (1e-5, 0.9), log_scale=True)
        eccentricity = _recalibrated(eccentricity, levels[:, 1], generated["eccentricity"],
                                     reference["eccentricity"], (0.0, 0.98))
        solidity = _recalibrated(solidity, levels[:, 2], generated["solidity"], reference["solidity"], (0.2, 1.0))
        drawn_multiple = max(float(np.mean(generated["components"] >= 2)), 1.0 / _SAMPLES)
        second = min(second * float(multiple.mean()) / drawn_multiple, 1.0)  # some get no room, some merge
    name = "/".join(Path(reference_dir).resolve().parts[-2:])
    return best.model_copy(update={
        "fitted_on": f"{name} ({usable.sum()} masks), bank {bank.path}, seed {seed}; KS at the reference's sizes, "
                     f"{_SAMPLES} masks: {best_note}"
    })
