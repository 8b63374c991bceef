"""Sampling mask parameters for a sample's attributes, inside its frame's field of view.

Attributes pick *bands* of the preset's quantile functions: each size class owns a band of the area
quantiles, each morphology leans on a band of the eccentricity and solidity quantiles (flat lesions:
elongated and irregular; pedunculated: the stalk's low solidity). The harmonics' strength is solved
per lesion to give its outline the drawn solidity, so dents are as deep as the preset asks whatever
the random harmonic mix. Missing attributes are drawn from the preset's own mix.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from pipeline.errors import MaskPresetError
from pipeline.plan.masks.params import Lesion, MaskParams, Stalk
from pipeline.plan.masks.placement import VisibleField
from pipeline.plan.masks.preset import MaskPreset, Morphology, Range
from pipeline.plan.masks.shapes import (
    MIN_RADIUS,
    angles,
    convex_hull,
    local_polygons,
    outline_area,
    outline_solidity,
    turn,
)

_PROBE, _MAX_STRENGTH = 3.0, 8.0  # harmonic strengths tried / allowed, in multiples of the convex limit
_MIN_STALK = 0.05  # head radii: a stalk cut shorter than this (to reach a high solidity) is dropped


def _quantile(knots: tuple[float, ...], u: float) -> float:
    position = u * (len(knots) - 1)
    i = min(int(position), len(knots) - 2)
    return knots[i] + (position - i) * (knots[i + 1] - knots[i])


def log_quantile(knots: tuple[float, ...], u: float) -> float:
    position = u * (len(knots) - 1)
    i = min(int(position), len(knots) - 2)
    return knots[i] * (knots[i + 1] / knots[i]) ** (position - i)


def in_band(band: Range, rng: np.random.Generator) -> float:
    return band[0] + (band[1] - band[0]) * rng.random()


def area_level(area_fraction: float, preset: MaskPreset) -> float:
    """The level u whose area this is: the inverse of how sampling turns a level into an area,
    u = interp(log a, log knots, evenly spaced levels) (0 below the smallest knot, 1 above the largest)."""
    knots = np.log(np.asarray(preset.area_fraction))
    return float(np.interp(np.log(max(area_fraction, 1e-9)), knots, np.linspace(0.0, 1.0, len(knots))))


def size_class_at(u: float, preset: MaskPreset) -> str:
    """The size class whose band of area levels holds u."""
    return _owner({name: entry.band for name, entry in preset.size_classes.items()}, u)


def size_class_of(area_fraction: float, preset: MaskPreset) -> str:
    """The size class whose band of area quantiles holds this area."""
    return size_class_at(area_level(area_fraction, preset), preset)


def lookup(entries: Mapping[str, Any], attributes: Mapping[str, object], key: str) -> str | None:
    value = attributes.get(key)
    if value is not None and value not in entries:
        raise MaskPresetError(f"mask preset has no {key} {value!r} (it knows {', '.join(entries)})")
    return None if value is None else str(value)


def _owner(bands: Mapping[str, Range], u: float) -> str:
    """The name whose band holds u (bands tile [0, 1])."""
    return next((name for name, (low, high) in bands.items() if low <= u <= high), next(iter(bands)))


@functools.lru_cache(maxsize=8)
def _basis(orders: tuple[int, int], decay: float, vertices: int) -> tuple[np.ndarray, ...]:
    """Per-preset constants of the harmonics: orders, k**-decay, k^2+1, and k*phi for every vertex."""
    k = np.arange(orders[0], orders[1] + 1)
    return k, k.astype(float) ** -decay, k.astype(float) ** 2 + 1, np.outer(angles(vertices), k)


def _outline(
    preset: MaskPreset, solidity: float, aspect: float, stalk: Stalk | None, rng: np.random.Generator
) -> tuple[tuple[tuple[int, float, float], ...], Stalk | None, list[np.ndarray]]:
    """Random harmonics (and the stalk, shortened if need be) giving the outline the wanted solidity.

    Also returns the outline's polygons in the lesion's own frame.

    With weights w normalised to sum (k^2+1)|w_k| = 1, strength rho keeps the head convex up to
    rho_convex = 1 / max(h'' - h) >= 1; beyond it the solidity deficit grows about quadratically in
    rho - rho_convex, which two convex hulls pin down. A stalk alone may already cost more solidity
    than wanted: its deficit grows about linearly with its length, so it is cut to fit.
    """
    orders, decay, bend, phase_grid = _basis(preset.harmonics.orders, preset.harmonics.decay, preset.vertices)
    weights = rng.standard_normal(orders.size) * decay
    weights /= max(float(np.abs(weights) @ bend), 1e-12)
    phases = rng.uniform(0.0, 2.0 * np.pi, orders.size)
    waves = np.cos(phase_grid + phases)
    shape = waves @ weights
    convex = 1.0 / max(float((waves @ (weights * -bend)).max()), 1e-6)

    def polygons(strength: float, stalk: Stalk | None) -> list[np.ndarray]:
        return local_polygons(np.maximum(1.0 + strength * shape, MIN_RADIUS), aspect, stalk)

    def deficit(strength: float, stalk: Stalk | None) -> float:
        return 1.0 - outline_solidity(polygons(strength, stalk), stalk)

    wanted = 1.0 - solidity
    base = 0.0 if stalk is None else deficit(convex, stalk)
    for _ in range(2):
        if stalk is None or base <= wanted:
            break
        stalk = replace(stalk, length=stalk.length * wanted / base)
        base = deficit(convex, stalk)
    if stalk is not None and stalk.length < _MIN_STALK:
        stalk, base = None, 0.0
    strength = convex
    if wanted > base:
        probe = _PROBE * convex
        for _ in range(2):  # deficit = base + c (rho - rho_convex)^2 through the probe, then through the guess
            curve = max((deficit(probe, stalk) - base) / (probe - convex) ** 2, 1e-9)
            strength = probe = min(convex + math.sqrt((wanted - base) / curve), _MAX_STRENGTH * convex)
    harmonics = tuple(zip(orders.tolist(), (strength * weights).tolist(), phases.tolist()))
    return harmonics, stalk, polygons(strength, stalk)


def _shape(
    preset: MaskPreset, family: Morphology | None, rng: np.random.Generator
) -> tuple[Lesion, float, np.ndarray, float, float]:
    """A lesion at scale 1 centred at the origin, its area and convex hull, and its quantile levels.

    The levels are those of eccentricity and solidity. Band levels run from round and smooth to
    elongated and irregular, so solidity is read at 1 - level.
    """
    lean = family is not None and rng.random() < preset.band_strength
    u_ecc = in_band(family.eccentricity_band, rng) if lean else rng.random()
    u_solidity = 1.0 - (in_band(family.solidity_band, rng) if lean else rng.random())
    aspect = math.sqrt(1.0 - _quantile(preset.eccentricity, u_ecc) ** 2)
    stalk = None
    if family is not None and family.stalk is not None and rng.random() < family.stalk.probability:
        stalk = Stalk(
            angle=float(rng.uniform(0.0, 2.0 * np.pi)),
            length=in_band(family.stalk.length, rng),
            width=in_band(family.stalk.width, rng),
            bend=float(rng.uniform(-0.3, 0.3)),
        )
    rotation = float(rng.uniform(0.0, np.pi))
    harmonics, stalk, polygons = _outline(preset, _quantile(preset.outline_solidity, u_solidity), aspect, stalk, rng)
    lesion = Lesion((0.0, 0.0), 1.0, aspect, rotation, harmonics, stalk)
    return lesion, outline_area(polygons, stalk), convex_hull(polygons) @ turn(rotation), u_ecc, u_solidity


def sample_mask_params(
    preset: MaskPreset, attributes: Mapping[str, object], fov: Any, rng: np.random.Generator,
    u_area: float | None = None,
) -> MaskParams:
    """Mask parameters following the sample's morphology and size, placed inside `fov.grid`.

    Missing attributes are drawn from the preset's own mix; `u_area` is the area's level when the plan
    aims at lesion sizes (`plan.targets`; it lies in the band of the sample's size class). A lesion that
    fits nowhere is shrunk until it does; the grid's aspect ratio is taken as the image's.
    """
    return sample_with_levels(preset, attributes, fov, rng, u_area)[0]


def sample_with_levels(
    preset: MaskPreset, attributes: Mapping[str, object], fov: Any, rng: np.random.Generator,
    u_area: float | None = None,
) -> tuple[MaskParams, tuple[float, float, float]]:
    """`sample_mask_params`, plus the main lesion's quantile levels (area, eccentricity, outline solidity).

    The fit needs the levels to move each quantile knot by what the masks drawn near it got wrong.
    """
    size = lookup(preset.size_classes, attributes, "size")
    if u_area is None:
        u_area = in_band(preset.size_classes[size].band, rng) if size else rng.random()
    size = size or size_class_at(u_area, preset)
    morphology = lookup(preset.morphologies, attributes, "morphology") or _owner(
        {name: entry.eccentricity_band for name, entry in preset.morphologies.items()}, rng.random()
    )
    total = log_quantile(preset.area_fraction, u_area)

    main, area, hull, u_ecc, u_solidity = _shape(preset, preset.morphologies[morphology], rng)
    second = preset.second_lesion
    ratio = in_band(second.area_ratio, rng) if rng.random() < second.probability else 0.0
    field = VisibleField.of(np.asarray(fov.grid, dtype=bool))
    center, scale = field.place(hull, math.sqrt(total / (1.0 + ratio) / area), rng)
    lesions = [replace(main, center=center, scale=scale)]
    if ratio > 0:
        extra, extra_area, extra_hull = _shape(preset, None, rng)[:3]
        extra_scale = scale * math.sqrt(ratio * area / extra_area)
        gap = in_band(second.gap, rng)
        extra_center = field.place_beside(hull * scale, extra_hull * extra_scale, center, gap, rng)
        if extra_center is not None:
            lesions.append(replace(extra, center=extra_center, scale=extra_scale))
    fraction = area * scale**2 * (1.0 + (ratio if len(lesions) > 1 else 0.0))
    return MaskParams(tuple(lesions), morphology, size, float(fraction), preset.vertices), (u_area, u_ecc, u_solidity)
