"""Real-mask mode (`masks.source: real`): labels taken from a labelled set's training split, flipped,
rotated, scaled and shifted into the frame's field of view, the practice of the published seeds
(Siamese-Diffusion reuses real masks with flip, scale and shift).

A real outline carries what procedural masks only imitate (lobes, flat spreads, the odd second
polyp). The plan picks a mask per sample from its own random stream and scales it to the area the
sample's size class (or the plan's aim, `targets:`) asks for, so the size distribution is the job's,
whatever the source set holds; the morphology a prompt names is not matched. A sample records the
mask's file and SHA-256 (its pixels are checked when drawn) and the id and SHA-256 of the image the
label belongs to, so an experiment can refuse masks of its evaluation images (`Lineage.masks`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from pipeline.config import LabelledSetConfig, RealMasksConfig
from pipeline.core import storage
from pipeline.core.digests import digest, sha256_hex
from pipeline.core.labelled import binary_label, files_by_id, labelled_pairs, read_image, read_split
from pipeline.core.progress import progress_bar
from pipeline.errors import MaskPresetError
from pipeline.plan.masks.placement import VisibleField
from pipeline.plan.masks.preset import MaskPreset
from pipeline.plan.masks.sampling import in_band, log_quantile, lookup, size_class_at
from pipeline.plan.masks.stats import without_specks

SOURCE_KEY = "real"
"""The key of a real mask's parameters: `mask_params` holding it describe a real mask."""


@dataclass(frozen=True)
class SourceMask:
    """A label of the source set, as the plan needs it: where it is, whose it is, and its outline."""

    id: str  # the file stem it shares with its image
    mask: str  # URL of the mask file
    mask_sha256: str
    image_sha256: str  # of the image the label belongs to: the lineage's key
    hull: np.ndarray  # (k, 2) convex hull about the label's centroid, in units of sqrt(its pixel count)


def _read_label(url: str) -> tuple[np.ndarray, bytes]:
    """The label of a mask file without its JPEG specks, and the file's bytes."""
    gray, data = read_image(url, "gray", MaskPresetError)
    return without_specks(binary_label(gray)), data


def _centred(label: np.ndarray) -> tuple[np.ndarray, float]:
    """The label's centroid (x, y) and sqrt of its pixel count."""
    rows, cols = np.nonzero(label)
    return np.array([cols.mean(), rows.mean()]), math.sqrt(rows.size)


def _source_mask(pair_id: str, image: str, mask: str) -> SourceMask | None:
    label, data = _read_label(mask)
    if not label.any():
        return None
    centre, unit = _centred(label)
    points = cv2.findNonZero(label.astype(np.uint8))
    hull = cv2.convexHull(points).reshape(-1, 2).astype(np.float64)
    image_sha = sha256_hex(storage.read_bytes(image))
    return SourceMask(pair_id, mask, sha256_hex(data), image_sha, (hull - centre) / unit)


def load_source_masks(source: LabelledSetConfig) -> list[SourceMask]:
    """Every non-empty label of the source set's split (its order), read once per plan."""
    pairs = labelled_pairs(source.images, source.masks, source.split, MaskPresetError)
    with ThreadPoolExecutor(4) as pool:  # decoding releases the GIL
        found = list(progress_bar(pool.map(lambda p: _source_mask(p.id, p.image, p.mask), pairs),
                                  "reading real masks", len(pairs), "masks"))
    masks = [mask for mask in found if mask is not None]
    if not masks:
        raise MaskPresetError(f"masks.real: {source.masks}: no label in the split holds a polyp")
    return masks


def source_digest(source: LabelledSetConfig) -> str:
    """Identity of which labels a job may draw: its split's contents (every mask file's name without
    a split). Cheap, so a resumed run can check it; each sample's own mask is checked by content."""
    ids = (read_split(source.split, MaskPresetError) if source.split
           else sorted(files_by_id(source.masks, MaskPresetError, "mask")))
    return digest("\n".join(ids))


def turned(hull: np.ndarray, flip: bool, rotation: float) -> np.ndarray:
    """The outline mirrored left-right (when `flip`), then turned by `rotation` radians."""
    c, s = math.cos(rotation), math.sin(rotation)
    return (hull * np.array([-1.0 if flip else 1.0, 1.0])) @ np.array([[c, s], [-s, c]])


@dataclass(frozen=True)
class RealMask:
    """A placed real mask: which label, how it is turned, where it goes and how large it is."""

    id: str
    mask: str
    mask_sha256: str
    image_sha256: str
    flip: bool
    rotation: float  # radians
    center: tuple[float, float]  # normalised (x, y) image coordinates of the label's centroid
    scale: float  # sqrt(area fraction): the label's side, relative to sqrt(W*H)
    size: str  # the size class of that area

    @property
    def area_fraction(self) -> float:
        return self.scale**2

    def to_dict(self) -> dict[str, Any]:
        return {SOURCE_KEY: {"id": self.id, "mask": self.mask, "mask_sha256": self.mask_sha256,
                             "image_sha256": self.image_sha256},
                "flip": self.flip, "rotation": float(self.rotation),
                "center": [float(self.center[0]), float(self.center[1])], "scale": float(self.scale),
                "size": self.size, "area_fraction": float(self.area_fraction)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RealMask:
        source = d[SOURCE_KEY]
        return cls(str(source["id"]), str(source["mask"]), str(source["mask_sha256"]), str(source["image_sha256"]),
                   bool(d["flip"]), float(d["rotation"]), (float(d["center"][0]), float(d["center"][1])),
                   float(d["scale"]), str(d["size"]))


def is_real(params: Mapping[str, Any]) -> bool:
    """Whether parsed `mask_params` describe a real mask."""
    return SOURCE_KEY in params


def sample_real_mask(masks: list[SourceMask], settings: RealMasksConfig, preset: MaskPreset,
                     attributes: Mapping[str, object], fov: Any, rng: np.random.Generator,
                     u_area: float | None = None) -> RealMask:
    """A label drawn uniformly from `masks`, flipped with probability ½ (`settings.flip`), turned by up to
    ±`settings.rotate` degrees, scaled to an area of the sample's size class (or of the aimed level
    `u_area`) by the preset's area quantiles, and centred inside the field of view (shrunk if it fits
    nowhere, as procedural masks are)."""
    source = masks[int(rng.integers(len(masks)))]
    flip = settings.flip and bool(rng.random() < 0.5)
    rotation = math.radians(float(rng.uniform(-settings.rotate, settings.rotate)))
    size = lookup(preset.size_classes, attributes, "size")
    if u_area is None:
        u_area = in_band(preset.size_classes[size].band, rng) if size else rng.random()
    field = VisibleField.of(np.asarray(fov.grid, dtype=bool))
    side = math.sqrt(log_quantile(preset.area_fraction, u_area))
    center, scale = field.place(turned(source.hull, flip, rotation), side, rng)
    return RealMask(source.id, source.mask, source.mask_sha256, source.image_sha256, flip, rotation, center, scale,
                    size or size_class_at(u_area, preset))


def draw_real_mask(params: RealMask, width: int, height: int) -> np.ndarray:
    """The placed label at width x height, uint8 {0, 255}: the source label mapped by one affine warp
    (its centroid to `center`, mirrored, turned, and scaled to `scale`² of the frame)."""
    label, data = _read_label(params.mask)
    if sha256_hex(data) != params.mask_sha256:
        raise MaskPresetError(f"{params.mask}: the mask changed since it was planned (SHA-256 differs); "
                              "plan the run again")
    centre, unit = _centred(label)
    k = params.scale * math.sqrt(width * height) / unit
    c, s = math.cos(params.rotation), math.sin(params.rotation)
    linear = k * np.array([[c, -s], [s, c]]) @ np.diag([-1.0 if params.flip else 1.0, 1.0])
    target = np.array([params.center[0] * width, params.center[1] * height])
    affine = np.hstack([linear, (target - 0.5 - linear @ centre)[:, None]])  # pixel i's centre is at i + 0.5
    warped = cv2.warpAffine(label.astype(np.uint8) * 255, affine, (width, height), flags=cv2.INTER_LINEAR,
                            borderValue=0)
    return np.where(warped > 127, 255, 0).astype(np.uint8)
