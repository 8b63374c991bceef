"""Mask presets: the fitted distributions procedural masks are drawn from (YAML, validated).

A preset stores the quantile functions of area fraction, base-ellipse eccentricity and outline
solidity, fitted so that drawn masks match real ones (`pipeline.plan.masks.fit`), plus the bands of
those quantiles that each size class and morphology owns (as wide as its share, so the marginals
stay the reference's whatever the mix).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.core import storage
from pipeline.core.digests import json_digest
from pipeline.core.yamlio import load_model
from pipeline.errors import MaskPresetError


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
