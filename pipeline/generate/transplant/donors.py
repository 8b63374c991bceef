"""The donor library: every lesion of a labelled real set's training split, cut out with its
surroundings and measured, in one Parquet file (`polyp-synth donors build`).

Only the ids of `--split` go in: a donor that is also in someone's test set would leak that test set
into training, and every generated sample records its `donor_id` so a trainer can exclude donors.
A row per lesion (connected component of the mask above `SPECK_FRACTION` of the image):

| column | meaning |
| --- | --- |
| `donor_id` | `<source id>/<k>`, k the lesion's number in its image (largest first) |
| `source_id`, `source_sha256`, `source_width`, `source_height` | the image it comes from |
| `image`, `mask` | PNG of the padded crop (RGB) and of this lesion's mask in it ({0, 255}) |
| `crop_box`, `bbox` | [x0, y0, x1, y1] of the crop and of the lesion in the source image |
| `area_fraction`, `solidity`, `eccentricity` | `mask_stats` of the lesion alone |
| `mean_rgb` | mean colour of the lesion |
| `ring_lab_mean`, `ring_lab_std` | Lab colour of the mucosa around it (the colour transfer's source) |
| `visible_fraction` | share of the lesion and its ring inside the frame's field of view |
| `modality` | `wli` or `nbi`, as the frame catalog detects it (`plan.modality.detect_modality`) |
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import __version__
from pipeline.config import TransplantEngineConfig
from pipeline.core import parquet, storage
from pipeline.core.digests import digest, sha256_hex
from pipeline.core.images import decode_image, encode_png, resize_image, resize_mask
from pipeline.core.labelled import (
    LabelledPair,
    labelled_pairs,
    read_pair,
    split_digest,
)
from pipeline.core.progress import progress_bar
from pipeline.errors import DonorError
from pipeline.generate.transplant.warp import (
    PROFILE_SMOOTHING,
    SPECULAR_L,
    lab_stats,
    lesion_centre,
    radial_profile,
    smooth_profile,
)
from pipeline.plan.fov import detect_fov
from pipeline.plan.masks.stats import SPECK_FRACTION, mask_stats
from pipeline.plan.modality import detect_modality

log = logging.getLogger(__name__)

PADDING = 0.3
"""Crop margin around a lesion's bounding box, as a fraction of its longer side (plus `_MIN_PAD`)."""
MAX_SIDE = 768
"""Crops are shrunk to at most this many pixels on their longer side (a lesion of up to ~500 px)."""
_MIN_PAD = 8
_RING_MIN = 6  # pixels: narrowest mucosa ring measured around a lesion


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """Float32 CIE Lab (L in [0, 100]) of an RGB uint8 image."""
    return cv2.cvtColor(rgb.astype(np.float32) * np.float32(1 / 255), cv2.COLOR_RGB2Lab)


def ring_around(lesion: np.ndarray, gap: int, width: int) -> np.ndarray:
    """Pixels more than `gap` and at most `gap + width` pixels from the lesion (bool HxW)."""
    distance = cv2.distanceTransform(np.where(lesion, 0, 255).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return (distance > gap) & (distance <= gap + width)


def ring_width(lesion_pixels: int) -> int:
    """Width of the mucosa ring measured around a lesion: a quarter of its equivalent side, at least 6 px."""
    return max(_RING_MIN, round(0.25 * float(np.sqrt(lesion_pixels))))


def mucosa_stats(rgb_pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lab mean and std of mucosa pixels (Nx3 RGB uint8), light reflections left out (unless that
    leaves almost nothing)."""
    lab = to_lab(rgb_pixels.reshape(1, -1, 3))[0]
    matte = lab[:, 0] < SPECULAR_L
    return lab_stats(lab, matte if matte.sum() >= 16 else np.ones(len(lab), bool))


# ------------------------------------------------------------------------------------------- building


def _lesions(pair: LabelledPair, padding: float, max_side: int) -> list[dict[str, Any]]:
    """The donor rows of one labelled image (one per lesion, largest first)."""
    pixels = read_pair(pair, DonorError)
    rgb, data = pixels.rgb, pixels.data
    height, width = pixels.label.shape
    binary = pixels.label.astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    keep = [k for k in range(1, count) if stats[k, cv2.CC_STAT_AREA] >= SPECK_FRACTION * binary.size]
    if not keep:
        log.warning("%s: no lesion in its mask; no donor from it", pair.mask)
        return []
    keep.sort(key=lambda k: -stats[k, cv2.CC_STAT_AREA])
    fov = detect_fov(rgb)
    visible, modality = fov.to_mask(width, height), detect_modality(rgb, fov)
    sha = sha256_hex(data)
    rows = []
    for number, k in enumerate(keep):
        x, y, w, h = (int(v) for v in stats[k, :4])
        pad = round(padding * max(w, h)) + _MIN_PAD
        x0, y0, x1, y1 = max(0, x - pad), max(0, y - pad), min(width, x + w + pad), min(height, y + h + pad)
        lesion = labels[y0:y1, x0:x1] == k
        crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        ring = ring_around(lesion, 2, ring_width(int(lesion.sum())))
        seen = visible[y0:y1, x0:x1]
        ring_mean, ring_std = mucosa_stats(crop[ring & seen if (ring & seen).sum() >= 16 else ring])
        shape = mask_stats(np.where(labels == k, 255, 0).astype(np.uint8))
        lesion_mask = np.where(lesion, 255, 0).astype(np.uint8)
        mean_rgb, visible_fraction = crop[lesion].mean(axis=0), float(seen[lesion | ring].mean())
        scale = min(1.0, max_side / max(crop.shape[:2]))
        if scale < 1.0:
            size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
            crop, lesion_mask = resize_image(crop, size), resize_mask(lesion_mask, size)
        rows.append({
            "donor_id": f"{pair.id}/{number}", "source_id": pair.id, "source_sha256": sha,
            "source_width": width, "source_height": height,
            "image": {"bytes": encode_png(crop), "path": f"{pair.id}-{number}.png"},
            "mask": {"bytes": encode_png(lesion_mask), "path": f"{pair.id}-{number}_mask.png"},
            "crop_box": [x0, y0, x1, y1], "bbox": [x, y, x + w, y + h],
            "area_fraction": shape["area_fraction"], "solidity": shape["solidity"],
            "eccentricity": shape["eccentricity"],
            "mean_rgb": [float(v) for v in mean_rgb],
            "ring_lab_mean": [float(v) for v in ring_mean], "ring_lab_std": [float(v) for v in ring_std],
            "visible_fraction": visible_fraction,
            "modality": modality,
        })
    return rows


_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_SCHEMA = pa.schema([
    ("donor_id", pa.string()), ("source_id", pa.string()), ("source_sha256", pa.string()),
    ("source_width", pa.int32()), ("source_height", pa.int32()), ("image", _IMAGE), ("mask", _IMAGE),
    ("crop_box", pa.list_(pa.int32(), 4)), ("bbox", pa.list_(pa.int32(), 4)),
    ("area_fraction", pa.float64()), ("solidity", pa.float64()), ("eccentricity", pa.float64()),
    ("mean_rgb", pa.list_(pa.float32(), 3)), ("ring_lab_mean", pa.list_(pa.float32(), 3)),
    ("ring_lab_std", pa.list_(pa.float32(), 3)), ("visible_fraction", pa.float32()), ("modality", pa.string()),
])


@dataclass(frozen=True)
class BuildSummary:
    out: str
    images: int
    donors: int

    def line(self) -> str:
        return f"{self.out}: {self.donors} donors from {self.images} images"


def build_donors(images: str | Path, masks: str | Path, out: str, split: str | Path | None = None,
                 padding: float = PADDING, max_side: int = MAX_SIDE, workers: int = 4) -> BuildSummary:
    """Cut every lesion of the (split's) labelled images into a donor library at `out` (Parquet)."""
    pairs = labelled_pairs(str(images), str(masks), str(split) if split is not None else None, DonorError)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # decoding and OpenCV release the GIL
        results = progress_bar(pool.map(lambda pair: _lesions(pair, padding, max_side), pairs), "cutting donors",
                               total=len(pairs), unit="images")
        rows = [row for lesions in results for row in lesions]
    if not rows:
        raise DonorError(f"{masks}: no lesion in any mask of the {len(pairs)} images: no donors")
    table = pa.Table.from_pylist(rows, schema=_SCHEMA)
    provenance = {
        "kind": "donor-library", "images": str(images), "masks": str(masks),
        "split": str(split) if split else None,
        "split_digest": split_digest(str(split) if split else None, DonorError),
        "source_ids_digest": digest("\n".join(pair.id for pair in pairs)),
        "padding": padding, "max_side": max_side, "pipeline_version": __version__,
        "content_digest": digest("\n".join(f"{row['donor_id']}\t{row['source_sha256']}" for row in rows)),
    }
    parquet.write(out, table, provenance)
    log.info("donor library %s: %d lesions from %d images", out, len(rows), len(pairs))
    return BuildSummary(out, len(pairs), len(rows))


def ensure_donors(config: TransplantEngineConfig) -> None:
    """Build `engine.donors` from `engine.donors_source` when the library is missing; a missing library
    without a source is an error (a misspelt path must never become a fresh library), and so is a
    library whose split is not the source's (an edited split must never keep the old donors)."""
    source = config.donors_source
    if storage.exists(config.donors):
        if source is not None:
            _check_split(config.donors, source.split)
        return
    if source is None:
        raise DonorError(f"engine.donors: {config.donors}: no such donor library; build it with `polyp-synth "
                         "donors build --images DIR --masks DIR --split TRAIN.txt --out FILE`, or set "
                         "engine.donors_source to build it on first use")
    log.info("building the donor library %s from %s (first use)", config.donors, source.images)
    build_donors(source.images, source.masks, config.donors, source.split)


def _check_split(url: str, split: str | None) -> None:
    """The library at `url` was built from `split` (its contents). The images and masks folders are
    not compared: they are named, not versioned (a changed folder needs a new library path)."""
    built = library_provenance(url)
    if built.get("split_digest") == split_digest(split, DonorError):
        return
    was = f"the split {built['split']}" if built.get("split") else "no split (every image)"
    now = f"engine.donors_source.split ({split})" if split else "no engine.donors_source.split"
    what = ("the split's contents changed since it was built" if built.get("split") == split
            else f"it was built from {was}, not from {now}")
    raise DonorError(f"engine.donors: {url}: {what}; delete the library to rebuild it, or name a new "
                     "engine.donors file")


def library_provenance(url: str) -> dict[str, Any]:
    """The build record of a library, from its footer alone."""
    try:
        with parquet.read_footer(url) as footer:
            return parquet.provenance(footer.schema_arrow)
    except FileNotFoundError:
        raise DonorError(f"{url}: no such donor library") from None
    except (KeyError, ValueError, OSError, pa.ArrowInvalid) as exc:
        raise DonorError(f"{url}: not a donor library of this version ({type(exc).__name__}: {exc}); "
                         "build it again with `polyp-synth donors build`") from None


def library_digest(url: str) -> str:
    """What the library holds (its donors and their source images): part of every transplant sample's
    id, so a library rebuilt from other images never passes for the old one."""
    try:
        return str(library_provenance(url)["content_digest"])
    except KeyError:
        raise DonorError(f"{url}: not a donor library of this version (no content digest); "
                         "build it again with `polyp-synth donors build`") from None


# -------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Donor:
    """One lesion ready to warp: its crop, its mask, its outline's radial profile, its mucosa colour."""

    donor_id: str
    rgb: np.ndarray  # uint8 HxWx3
    mask: np.ndarray  # uint8 {0, 255}
    centre: tuple[float, float]
    profile: np.ndarray  # smoothed: a JPEG-ragged outline would shear the texture
    ring_mean: np.ndarray  # Lab
    ring_std: np.ndarray


@dataclass(frozen=True)
class DonorTraits:
    """The measured attributes donors are chosen by, one array entry per donor."""

    area_fraction: np.ndarray
    solidity: np.ndarray
    eccentricity: np.ndarray
    modality: np.ndarray
    visible_fraction: np.ndarray


class DonorLibrary:
    """A donor library read into memory; lesions are decoded on first use and kept (a few hundred)."""

    def __init__(self, table: pa.Table, url: str, sha256: str):
        self.table, self.url, self.sha256 = table, url, sha256
        self.ids: list[str] = table.column("donor_id").to_pylist()

    @classmethod
    def load(cls, url: str) -> DonorLibrary:
        try:
            data = storage.read_bytes(url)
        except FileNotFoundError:
            raise DonorError(f"{url}: no such donor library; build one with `polyp-synth donors build`") from None
        except OSError as exc:
            raise DonorError(f"{url}: unreadable donor library ({type(exc).__name__}: {exc})") from None
        try:
            table = pq.read_table(pa.BufferReader(data))
            if parquet.provenance(table.schema).get("kind") != "donor-library" or table.num_rows == 0:
                raise KeyError("no donor-library provenance, or no rows")
            table = table.select(_SCHEMA.names)
        except (pa.ArrowInvalid, KeyError, ValueError, OSError) as exc:
            raise DonorError(f"{url}: not a donor library ({type(exc).__name__}: {exc}); "
                             "build one with `polyp-synth donors build`") from None
        return cls(table, url, sha256_hex(data))

    @cached_property
    def traits(self) -> DonorTraits:
        column = self.table.column
        return DonorTraits(
            area_fraction=np.asarray(column("area_fraction").to_numpy(), np.float64),
            solidity=np.asarray(column("solidity").to_numpy(), np.float64),
            eccentricity=np.asarray(column("eccentricity").to_numpy(), np.float64),
            modality=np.asarray(column("modality").to_pylist()),
            visible_fraction=np.asarray(column("visible_fraction").to_numpy(), np.float64),
        )

    def donor(self, index: int) -> Donor:
        return self._donor(index)

    @lru_cache(maxsize=128)  # noqa: B019 - one library per process, kept for the process's life
    def _donor(self, index: int) -> Donor:
        row = self.table.slice(index, 1).to_pylist()[0]
        rgb, mask = decode_image(row["image"]["bytes"]), decode_image(row["mask"]["bytes"])
        centre = lesion_centre(mask)
        return Donor(row["donor_id"], rgb, mask, centre, smooth_profile(radial_profile(mask, centre), PROFILE_SMOOTHING),
                     np.asarray(row["ring_lab_mean"], np.float64), np.asarray(row["ring_lab_std"], np.float64))
