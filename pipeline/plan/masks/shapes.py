"""Procedural polyp masks: presets, parameter sampling, placement in the field of view, drawing.

A lesion is an ellipse whose radius is perturbed by a few low-order Fourier harmonics (smooth but
irregular outlines), optionally with a stalk (pedunculated shapes), rotated and scaled to a target
area. The harmonics' strength is solved per lesion to give its outline a target solidity, so dents
are as deep as the preset asks whatever the random harmonic mix. A preset stores the quantile
functions of area fraction, base-ellipse eccentricity and outline solidity, fitted so that drawn
masks match real ones (`pipeline.plan.masks.fit`).

Attributes pick *bands* of those quantile functions. Each size class owns a band of the area
quantiles as wide as its share, so giant polyps are the largest and the marginal area distribution
stays the reference's whatever the mix; each morphology leans on a band of the eccentricity and of
the solidity quantiles (flat lesions: elongated and irregular; pedunculated: the stalk's low
solidity), again as wide as its share, so the marginals stay fitted too.

`MaskParams` hold everything needed to redraw a mask, in resolution-free units (centres in
normalised image coordinates, sizes relative to sqrt(W*H)), so `draw_mask` is deterministic and cheap.
"""

from __future__ import annotations

import functools
import math
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from pipeline.core import storage
from pipeline.core.digests import json_digest
from pipeline.core.yamlio import load_model
from pipeline.errors import MaskPresetError

_MIN_RADIUS = 0.3  # of the base radius: keeps every outline star-shaped and free of pinches
_PROBE, _MAX_STRENGTH = 3.0, 8.0  # harmonic strengths tried / allowed, in multiples of the convex limit
_STALK_TAPER = 0.75  # stalk width at the tip over width at the base
_STALK_POINTS = 6  # centre-line points of a stalk outline
_STALK_STEPS = np.linspace(0.0, 1.0, _STALK_POINTS)
_MIN_STALK = 0.05  # head radii: a stalk cut shorter than this (to reach a high solidity) is dropped
_SHRINK = 0.85  # scale factor per placement retry
_MAX_SHRINKS = 16
_CANDIDATES = 24  # positions tried per scale before shrinking
_SECOND_TRIES = 8  # directions tried for a second lesion before dropping it
_SURE_MARGIN = 3.5  # grid cells of clearance beyond which a disc around the shape certainly fits
_MARGIN_KERNEL = np.ones((5, 5), np.uint8)  # keeps outlines two grid cells off anything invisible


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Range = tuple[float, float]


def _check_range(value: Range, low: float, high: float) -> Range:
    if not low <= value[0] <= value[1] <= high:
        raise ValueError(f"must be [min, max] with {low} <= min <= max <= {high}")
    return value


def _unit_band(value: Range) -> Range:
    return _check_range(value, 0.0, 1.0)


class SizeClass(_Model):
    band: Range = Field(description="band [lo, hi] of the area quantiles this size class draws from")

    check_band = field_validator("band")(_unit_band)


class StalkSpec(_Model):
    probability: float = Field(ge=0, le=1, description="chance that a lesion of this morphology has a stalk")
    length: Range = Field(description="stalk length beyond the head's rim, in head radii")
    width: Range = Field(description="stalk width at the head, in head radii")

    @field_validator("length", "width")
    @classmethod
    def _positive(cls, value: Range) -> Range:
        return _check_range(value, 0.0, 4.0)


class Morphology(_Model):
    eccentricity_band: Range = Field(description="band of the eccentricity quantiles it leans on (low = round)")
    solidity_band: Range = Field(description="band of the solidity quantiles it leans on (low = smooth)")
    stalk: StalkSpec | None = None

    check_bands = field_validator("eccentricity_band", "solidity_band")(_unit_band)


class SecondLesion(_Model):
    probability: float = Field(ge=0, le=1)
    area_ratio: Range = Field(description="second lesion's area over the first's")
    gap: Range = Field(description="clearance between the two, in sums of their radii")

    @field_validator("area_ratio")
    @classmethod
    def _ratio(cls, value: Range) -> Range:
        return _check_range(value, 0.001, 1.0)

    @field_validator("gap")
    @classmethod
    def _gap(cls, value: Range) -> Range:
        return _check_range(value, 0.0, 10.0)


class Harmonics(_Model):
    orders: tuple[int, int] = Field(description="lowest and highest Fourier order of the outline")
    decay: float = Field(ge=0, description="amplitude of order k falls as k**-decay")

    @field_validator("orders")
    @classmethod
    def _orders(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 2 <= value[0] <= value[1] <= 32:
            raise ValueError("must be [lowest, highest] with 2 <= lowest <= highest <= 32")
        return value


def _tiles_unit_interval(bands: list[Range]) -> bool:
    edges = sorted(bands)
    joins = all(abs(a[1] - b[0]) < 1e-6 for a, b in zip(edges, edges[1:]))
    return bool(edges) and joins and abs(edges[0][0]) < 1e-6 and abs(edges[-1][1] - 1) < 1e-6


_HEADER = (
    "polyp-synth mask preset (read by pipeline/masks.py, written by `polyp-synth masks fit`).\n\n"
    "Quantile functions are lists of values at evenly spaced probabilities 0..1 (first = minimum, last ="
    " maximum); a lesion draws a level u in [0, 1] and interpolates (area: in log space). Bands are [lo, hi]"
    " ranges of u. The bands of the size classes, and each kind of band of the morphologies, tile [0, 1]"
    " with widths equal to the class shares in the prompt bank, so the marginal distributions stay the"
    " fitted ones."
)
_QUANTILE_LIMITS = {"area_fraction": (1e-6, 1.0), "eccentricity": (0.0, 0.999), "outline_solidity": (0.2, 1.0)}


class MaskPreset(_Model):
    """Everything that decides the distribution of mask shapes; checked in as YAML under masks/."""

    version: Literal[1] = Field(1, description="preset format version")
    fitted_on: str = Field("", description="where the distributions were fitted, and how well they match")
    area_fraction: tuple[float, ...] = Field(
        description="quantile function of the mask's foreground fraction (all lesions / image area)"
    )
    eccentricity: tuple[float, ...] = Field(
        description="quantile function of the base ellipse's eccentricity (before harmonics and stalk)"
    )
    outline_solidity: tuple[float, ...] = Field(
        description="quantile function of the outline polygon's solidity (head and stalk, before rasterising;"
        " 1 = convex); harmonics are scaled per lesion to reach it"
    )
    size_classes: dict[str, SizeClass] = Field(
        description="size ids of the prompt bank; larger classes own higher area bands"
    )
    morphologies: dict[str, Morphology] = Field(
        description="Paris classes of the prompt bank: the shape bands they lean on, and an optional stalk"
    )
    band_strength: float = Field(
        ge=0, le=1, description="chance that a lesion's shape is drawn from its morphology's bands, not from all"
    )
    second_lesion: SecondLesion = Field(description="an occasional second, separate lesion")
    harmonics: Harmonics = Field(description="Fourier orders that perturb the outline")
    vertices: int = Field(96, ge=16, le=1024, description="outline points per lesion")

    @field_validator("area_fraction", "eccentricity", "outline_solidity")
    @classmethod
    def _quantile_function(cls, value: tuple[float, ...], info: Any) -> tuple[float, ...]:
        low, high = _QUANTILE_LIMITS[info.field_name]
        if len(value) < 2 or any(b < a for a, b in zip(value, value[1:])):
            raise ValueError("must be a non-decreasing list of at least 2 values")
        if value[0] < low or value[-1] > high:
            raise ValueError(f"values must lie in [{low}, {high}]")
        return value

    @model_validator(mode="after")
    def _bands_tile(self) -> MaskPreset:
        groups = {
            "size_classes.*.band": [entry.band for entry in self.size_classes.values()],
            "morphologies.*.eccentricity_band": [entry.eccentricity_band for entry in self.morphologies.values()],
            "morphologies.*.solidity_band": [entry.solidity_band for entry in self.morphologies.values()],
        }
        for name, bands in groups.items():
            if not _tiles_unit_interval(bands):
                raise ValueError(f"{name}: bands must tile [0, 1] without gaps or overlaps")
        return self

    @classmethod
    def load(cls, path: str | Path) -> MaskPreset:
        """Read and validate a preset; every problem is a one-line `MaskPresetError`."""
        return load_model(path, cls, MaskPresetError, "mask preset")

    def save(self, path: str | Path) -> None:
        """YAML with each field's description as a comment, so the checked-in file explains itself."""
        data = self.model_dump(mode="json")
        parts = [_comment(_HEADER) + "\n"]
        for name, field in type(self).model_fields.items():
            flow = None if isinstance(data[name], (dict, list)) else False  # lists of numbers on one line
            parts.append(_comment(field.description or ""))
            parts.append(yaml.safe_dump({name: data[name]}, sort_keys=False, default_flow_style=flow, width=100))
        storage.write_bytes_atomic(str(path), "\n".join(parts).encode())  # all or nothing, parent created

    def digest(self) -> str:
        """Stable hash of the preset, recorded in plans to tell which shapes a run used."""
        return json_digest(self.model_dump(mode="json"))


def _comment(text: str) -> str:
    lines = [line for paragraph in text.splitlines() for line in (textwrap.wrap(paragraph, 98) or [""])]
    return "\n".join(f"# {line}".rstrip() for line in lines)


@dataclass(frozen=True)
class Stalk:
    """Pedunculated lesions: a tapered, slightly bent stalk leaving the head."""

    angle: float  # direction in the head's own frame, radians
    length: float  # beyond the head's rim, in head radii
    width: float  # at the head, in head radii
    bend: float  # sideways bow of the tip, in stalk lengths


@dataclass(frozen=True)
class Lesion:
    """One lesion: a perturbed ellipse (and stalk), placed and sized."""

    center: tuple[float, float]  # normalised (x, y) image coordinates
    scale: float  # head radius (major semi-axis) / sqrt(W*H)
    aspect: float  # minor / major semi-axis of the base ellipse
    rotation: float  # radians
    harmonics: tuple[tuple[int, float, float], ...]  # (order, relative amplitude, phase)
    stalk: Stalk | None = None


@dataclass(frozen=True)
class MaskParams:
    """Everything needed to redraw a mask at any resolution; the first lesion is the main one."""

    lesions: tuple[Lesion, ...]
    morphology: str
    size: str
    area_fraction: float  # polygon area of all lesions / image area (the drawn mask is within a pixel rim)
    vertices: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, built by hand: plans call this once per sample, 100,000 times."""
        return {
            "lesions": [
                {
                    "center": [float(lesion.center[0]), float(lesion.center[1])],
                    "scale": float(lesion.scale),
                    "aspect": float(lesion.aspect),
                    "rotation": float(lesion.rotation),
                    "harmonics": [[int(k), float(a), float(p)] for k, a, p in lesion.harmonics],
                    "stalk": {key: float(value) for key, value in vars(lesion.stalk).items()} if lesion.stalk else None,
                }
                for lesion in self.lesions
            ],
            "morphology": self.morphology,
            "size": self.size,
            "area_fraction": float(self.area_fraction),
            "vertices": int(self.vertices),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MaskParams:
        lesions = tuple(
            Lesion(
                center=(float(lesion["center"][0]), float(lesion["center"][1])),
                scale=float(lesion["scale"]),
                aspect=float(lesion["aspect"]),
                rotation=float(lesion["rotation"]),
                harmonics=tuple((int(k), float(a), float(p)) for k, a, p in lesion["harmonics"]),
                stalk=Stalk(**{key: float(v) for key, v in lesion["stalk"].items()}) if lesion["stalk"] else None,
            )
            for lesion in d["lesions"]
        )
        return cls(lesions, str(d["morphology"]), str(d["size"]), float(d["area_fraction"]), int(d["vertices"]))


# ---------------------------------------------------------------------------------------- geometry


@functools.lru_cache(maxsize=8)
def _angles(vertices: int) -> np.ndarray:
    return np.linspace(0.0, 2.0 * np.pi, vertices, endpoint=False)


@functools.lru_cache(maxsize=8)
def _circle(vertices: int) -> np.ndarray:
    """(vertices, 2) unit circle points."""
    phi = _angles(vertices)
    return np.stack([np.cos(phi), np.sin(phi)], axis=1)


def _radius(harmonics: tuple[tuple[int, float, float], ...], vertices: int) -> np.ndarray:
    orders, amplitudes, phases = np.array(harmonics).T
    return np.maximum(1.0 + np.cos(np.outer(_angles(vertices), orders) + phases) @ amplitudes, _MIN_RADIUS)


def _local_polygons(radius: np.ndarray, aspect: float, stalk: Stalk | None) -> list[np.ndarray]:
    """Head (and stalk) polygons in the lesion's own frame, in units of its scale."""
    head = _circle(radius.size) * radius[:, None]
    head[:, 1] *= aspect
    return [head] if stalk is None else [head, _stalk_outline(head, stalk)]


def _stalk_outline(head: np.ndarray, stalk: Stalk) -> np.ndarray:
    """A tapered band from mid-head to past the rim in direction `stalk.angle`."""
    direction = np.array([math.cos(stalk.angle), math.sin(stalk.angle)])
    normal = np.array([-direction[1], direction[0]])
    lengths = np.hypot(head[:, 0], head[:, 1])
    rim = float(lengths[int(np.argmax(head @ direction / lengths))])  # the head's radius towards the stalk
    start, stop = 0.5 * rim, rim + stalk.length
    along = start + _STALK_STEPS * (stop - start)
    side = stalk.bend * stalk.length * _STALK_STEPS**2
    half = 0.5 * stalk.width * (1 - (1 - _STALK_TAPER) * _STALK_STEPS)
    across = np.concatenate([side + half, (side - half)[::-1]])
    return np.outer(np.concatenate([along, along[::-1]]), direction) + np.outer(across, normal)


def _turn(rotation: float) -> np.ndarray:
    """Right-multiplying (n, 2) points by this rotates them by `rotation`."""
    c, s = math.cos(rotation), math.sin(rotation)
    return np.array([[c, s], [-s, c]])


def _outlines(lesion: Lesion, vertices: int) -> list[np.ndarray]:
    """Head (and stalk) polygons in units of the lesion's scale, centred on the lesion, rotated."""
    polygons = _local_polygons(_radius(lesion.harmonics, vertices), lesion.aspect, lesion.stalk)
    return [polygon @ _turn(lesion.rotation) for polygon in polygons]


def _area(polygons: list[np.ndarray], stalk: Stalk | None) -> float:
    """Area of the head plus the part of the stalk outside it."""
    area = cv2.contourArea(polygons[0].astype(np.float32))
    return area if stalk is None else area + stalk.length * stalk.width * (1 + _STALK_TAPER) / 2


def _hull(polygons: list[np.ndarray]) -> np.ndarray:
    """(n, 2) float32 convex hull of all the polygons' points."""
    return cv2.convexHull(np.concatenate(polygons).astype(np.float32)).reshape(-1, 2)


def _solidity(polygons: list[np.ndarray], stalk: Stalk | None) -> float:
    return _area(polygons, stalk) / max(cv2.contourArea(_hull(polygons)), 1e-12)


def draw_mask(params: MaskParams, width: int, height: int) -> np.ndarray:
    """uint8 HxW mask, 255 inside the lesions, 0 elsewhere; a pure function of the parameters."""
    mask = np.zeros((height, width), dtype=np.uint8)
    unit = math.sqrt(width * height)
    for lesion in params.lesions:
        origin = np.array([lesion.center[0] * width, lesion.center[1] * height]) - 0.5  # pixel centres
        for polygon in _outlines(lesion, params.vertices):
            points = np.round((origin + polygon * (lesion.scale * unit)) * 16).astype(np.int32)
            cv2.fillPoly(mask, [points], 255, lineType=cv2.LINE_8, shift=4)
    return mask


# ---------------------------------------------------------------------------------------- sampling


def _quantile(knots: tuple[float, ...], u: float) -> float:
    position = u * (len(knots) - 1)
    i = min(int(position), len(knots) - 2)
    return knots[i] + (position - i) * (knots[i + 1] - knots[i])


def _log_quantile(knots: tuple[float, ...], u: float) -> float:
    position = u * (len(knots) - 1)
    i = min(int(position), len(knots) - 2)
    return knots[i] * (knots[i + 1] / knots[i]) ** (position - i)


def _in_band(band: Range, rng: np.random.Generator) -> float:
    return band[0] + (band[1] - band[0]) * rng.random()


def _lookup(entries: Mapping[str, Any], attributes: Mapping[str, object], key: str) -> str | None:
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
    return k, k.astype(float) ** -decay, k.astype(float) ** 2 + 1, np.outer(_angles(vertices), k)


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
        return _local_polygons(np.maximum(1.0 + strength * shape, _MIN_RADIUS), aspect, stalk)

    def deficit(strength: float, stalk: Stalk | None) -> float:
        return 1.0 - _solidity(polygons(strength, stalk), stalk)

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
    u_ecc = _in_band(family.eccentricity_band, rng) if lean else rng.random()
    u_solidity = 1.0 - (_in_band(family.solidity_band, rng) if lean else rng.random())
    aspect = math.sqrt(1.0 - _quantile(preset.eccentricity, u_ecc) ** 2)
    stalk = None
    if family is not None and family.stalk is not None and rng.random() < family.stalk.probability:
        stalk = Stalk(
            angle=float(rng.uniform(0.0, 2.0 * np.pi)),
            length=_in_band(family.stalk.length, rng),
            width=_in_band(family.stalk.width, rng),
            bend=float(rng.uniform(-0.3, 0.3)),
        )
    rotation = float(rng.uniform(0.0, np.pi))
    harmonics, stalk, polygons = _outline(preset, _quantile(preset.outline_solidity, u_solidity), aspect, stalk, rng)
    lesion = Lesion((0.0, 0.0), 1.0, aspect, rotation, harmonics, stalk)
    return lesion, _area(polygons, stalk), _hull(polygons) @ _turn(rotation), u_ecc, u_solidity


def sample_mask_params(
    preset: MaskPreset, attributes: Mapping[str, object], fov: Any, rng: np.random.Generator
) -> MaskParams:
    """Mask parameters following the sample's morphology and size, placed inside `fov.grid`.

    Missing attributes are drawn from the preset's own mix. A lesion that fits nowhere is shrunk
    until it does; the grid's aspect ratio is taken as the image's.
    """
    return sample_with_levels(preset, attributes, fov, rng)[0]


def sample_with_levels(
    preset: MaskPreset, attributes: Mapping[str, object], fov: Any, rng: np.random.Generator
) -> tuple[MaskParams, tuple[float, float, float]]:
    """`sample_mask_params`, plus the main lesion's quantile levels (area, eccentricity, outline solidity).

    The fit needs the levels to move each quantile knot by what the masks drawn near it got wrong.
    """
    size = _lookup(preset.size_classes, attributes, "size")
    u_area = _in_band(preset.size_classes[size].band, rng) if size else rng.random()
    size = size or _owner({name: entry.band for name, entry in preset.size_classes.items()}, u_area)
    morphology = _lookup(preset.morphologies, attributes, "morphology") or _owner(
        {name: entry.eccentricity_band for name, entry in preset.morphologies.items()}, rng.random()
    )
    total = _log_quantile(preset.area_fraction, u_area)

    main, area, hull, u_ecc, u_solidity = _shape(preset, preset.morphologies[morphology], rng)
    second = preset.second_lesion
    ratio = _in_band(second.area_ratio, rng) if rng.random() < second.probability else 0.0
    field = _Field.of(np.asarray(fov.grid, dtype=bool))
    center, scale = field.place(hull, math.sqrt(total / (1.0 + ratio) / area), rng)
    lesions = [replace(main, center=center, scale=scale)]
    if ratio > 0:
        extra, extra_area, extra_hull = _shape(preset, None, rng)[:3]
        extra_scale = scale * math.sqrt(ratio * area / extra_area)
        gap = _in_band(second.gap, rng)
        extra_center = field.place_beside(hull * scale, extra_hull * extra_scale, center, gap, rng)
        if extra_center is not None:
            lesions.append(replace(extra, center=extra_center, scale=extra_scale))
    fraction = area * scale**2 * (1.0 + (ratio if len(lesions) > 1 else 0.0))
    return MaskParams(tuple(lesions), morphology, size, float(fraction), preset.vertices), (u_area, u_ecc, u_solidity)


# --------------------------------------------------------------------------------------- placement


@dataclass(frozen=True, eq=False)
class _Field:
    """A visibility grid prepared for placement: cell units, distance of each cell to the invisible."""

    visible: np.ndarray  # bool (rows, cols)
    clearance: np.ndarray  # float32 distance (cells) from each cell centre to the nearest invisible cell or the edge
    full: bool

    @staticmethod
    def of(grid: np.ndarray) -> _Field:
        return _prepared(grid.shape, grid.tobytes())

    @property
    def unit(self) -> float:
        """Grid cells per sqrt(W*H)."""
        return math.sqrt(self.visible.shape[0] * self.visible.shape[1])

    def _to_normalised(self, cells: np.ndarray) -> tuple[float, float]:
        return float(cells[0]) / self.visible.shape[1], float(cells[1]) / self.visible.shape[0]

    def place(self, outline: np.ndarray, scale: float, rng: np.random.Generator) -> tuple[tuple[float, float], float]:
        """Centre (normalised) and final scale for a lesion with this scale-1 convex outline."""
        for _ in range(_MAX_SHRINKS):
            cells = outline * (scale * self.unit)
            center = self._full_center(cells, rng) if self.full else self._fitted_center(cells, rng)
            if center is not None:
                return self._to_normalised(center), scale
            scale *= _SHRINK
        return self._last_resort(outline, scale)

    def _full_center(self, cells: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """Uniform over the positions that keep the outline one cell inside the image."""
        rows, cols = self.visible.shape
        low = 1.0 - cells.min(axis=0)
        high = np.array([cols, rows]) - 1.0 - cells.max(axis=0)
        if np.any(high < low):
            return None
        return low + rng.random(2) * (high - low)

    def _fitted_center(self, cells: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """A visible position: anywhere far enough from the invisible, else where the footprint erodes to."""
        reach = float(np.hypot(cells[:, 0], cells[:, 1]).max())
        sure = np.flatnonzero(self.clearance.ravel() > reach + _SURE_MARGIN)
        if sure.size:
            return self._jittered(int(sure[rng.integers(sure.size)]), rng)
        half = math.ceil(reach) + 3
        kernel = _footprint(cells + half + 0.5, (2 * half + 1, 2 * half + 1))
        valid = cv2.erode(self.visible.view(np.uint8), kernel, anchor=(half, half),
                          borderType=cv2.BORDER_CONSTANT, borderValue=0)
        options = np.flatnonzero(valid.ravel())
        for index in rng.permutation(options)[:_CANDIDATES]:  # the kernel is for the cell centre: check the jitter
            center = self._jittered(int(index), rng)
            if self.fits(cells + center):
                return center
        return None

    def _jittered(self, index: int, rng: np.random.Generator) -> np.ndarray:
        row, col = divmod(index, self.visible.shape[1])
        return np.array([col, row], dtype=float) + rng.random(2)

    def fits(self, cells: np.ndarray) -> bool:
        """Whether an outline (grid coordinates, cell edges at integers) keeps off invisible cells."""
        rows, cols = self.visible.shape
        if cells.min() < 1.0 or np.any(cells.max(axis=0) > np.array([cols, rows]) - 1.0):
            return False
        return self.full or not np.any(_footprint(cells, self.visible.shape).view(bool) & ~self.visible)

    def place_beside(self, first: np.ndarray, second: np.ndarray, center: tuple[float, float], gap: float,
                     rng: np.random.Generator) -> tuple[float, float] | None:
        """Centre for a second lesion clear of the first (convex outlines in sqrt(W*H) units), or None."""
        reach = float(np.hypot(first[:, 0], first[:, 1]).max() + np.hypot(second[:, 0], second[:, 1]).max())
        origin = np.array(center) * np.array([self.visible.shape[1], self.visible.shape[0]])
        for angle in rng.uniform(0.0, 2.0 * np.pi, _SECOND_TRIES):
            offset = reach * (1.0 + gap) * np.array([math.cos(angle), math.sin(angle)]) * self.unit
            if self.fits(second * self.unit + origin + offset):
                return self._to_normalised(origin + offset)
        return None

    def _last_resort(self, outline: np.ndarray, scale: float) -> tuple[tuple[float, float], float]:
        """The most interior cell, with the lesion shrunk to fit its clearance."""
        index = int(np.argmax(self.clearance))
        if self.clearance.ravel()[index] <= 0:
            raise ValueError("field of view has no visible cell to place a polyp in")
        row, col = divmod(index, self.visible.shape[1])
        reach = float(np.hypot(outline[:, 0], outline[:, 1]).max()) * self.unit
        room = max(float(self.clearance.ravel()[index]) - _SURE_MARGIN, 0.25)
        center = np.array([col + 0.5, row + 0.5])
        return self._to_normalised(center), min(scale, room / reach)


def _footprint(cells: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """uint8 0/1 grid of the cells an outline touches, grown by a safety margin of two cells."""
    footprint = np.zeros(shape, dtype=np.uint8)
    points = [np.round((cells - 0.5) * 16).astype(np.int32)]
    cv2.fillPoly(footprint, points, 1, shift=4)
    cv2.polylines(footprint, points, True, 1, thickness=1, shift=4)
    return cv2.dilate(footprint, _MARGIN_KERNEL)


@functools.lru_cache(maxsize=64)
def _prepared(shape: tuple[int, int], cells: bytes) -> _Field:
    visible = np.frombuffer(cells, dtype=bool).reshape(shape)
    padded = np.pad(visible, 1).astype(np.uint8)
    clearance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    return _Field(visible, clearance, bool(visible.all()))
