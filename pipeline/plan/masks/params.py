"""`MaskParams`: everything needed to redraw a mask, in resolution-free units.

Centres are normalised image coordinates and sizes are relative to sqrt(W*H), so a plan stores one
small JSON record per sample and `draw_mask` renders it at any output size, deterministically.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


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
