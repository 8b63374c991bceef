"""A labelled set on disk: images/<id>.<ext> and masks/<id>.<ext> with the same ids, and split files.

The donor library, the gate's reference and the LoRA fine-tuning all read such a set (Kvasir-SEG is
one); this is the one place that pairs its files, reads its split files and says what a label is.
Folders may be local or fsspec URLs. Every problem is raised as the caller's error type, naming the
file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

import numpy as np

from pipeline.core import storage
from pipeline.core.digests import digest
from pipeline.core.images import decode_image
from pipeline.errors import PolypSynthError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_THRESHOLD = 127  # labels are often JPEG: nearly binary; above this is polyp


@dataclass(frozen=True)
class LabelledPair:
    id: str  # the file stem both share
    image: str  # URL
    mask: str  # URL


def binary_label(gray: np.ndarray) -> np.ndarray:
    """The boolean label of a (JPEG-compressed, nearly binary) mask."""
    return np.asarray(gray) > MASK_THRESHOLD


def files_by_id(folder: str, error: type[PolypSynthError], what: str = "image") -> dict[str, str]:
    """id (file stem) -> URL of the image files directly in `folder`; two files of one id are an error."""
    if not storage.exists(folder):
        raise error(f"{folder}: no such {what} folder")
    if not storage.is_folder(folder):
        raise error(f"{folder}: not a folder (a file is in its place); give the {what} folder")
    files: dict[str, str] = {}
    for name in storage.list_names(folder):
        path = PurePosixPath(name)
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in files:
            raise error(f"{folder}: {PurePosixPath(files[path.stem]).name} and {name} have the same id")
        files[path.stem] = storage.join(folder, name)
    return files


def read_split(url: str, error: type[PolypSynthError]) -> list[str]:
    """The ids a split file lists, one a line, in order, each once."""
    text = storage.read_text(url, error, "split")
    ids = list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))
    if not ids:
        raise error(f"{url}: the split file lists no ids")
    return ids


def split_digest(url: str | None, error: type[PolypSynthError]) -> str | None:
    """Identity of a split file's contents (None for no split): what a donor library or a reference
    built on first use records, so that an edited split is noticed instead of silently kept."""
    return digest(storage.read_text(url, error, "split")) if url is not None else None


@dataclass(frozen=True)
class LabelledImage:
    """One pair's pixels: RGB uint8 HxWx3, its boolean label, and the image file's bytes (for digests)."""

    rgb: np.ndarray
    label: np.ndarray
    data: bytes


def read_image(url: str, mode: Literal["color", "gray"], error: type[PolypSynthError]) -> tuple[np.ndarray, bytes]:
    """A labelled set's file decoded, and its bytes; unreadable or undecodable is one `error` line."""
    try:
        data = storage.read_bytes(url)
    except OSError as exc:
        raise error(f"{url}: unreadable ({type(exc).__name__}: {exc})") from None
    try:
        return decode_image(data, mode), data
    except ValueError as exc:
        raise error(f"{url}: not a readable image ({exc})") from None


def read_pair(pair: LabelledPair, error: type[PolypSynthError]) -> LabelledImage:
    """The pixels and label of a pair; an unreadable file, or a mask of another size than its image, is
    one `error` line naming the file."""
    rgb, data = read_image(pair.image, "color", error)
    mask, _ = read_image(pair.mask, "gray", error)
    check_same_size(pair, rgb, mask, error)
    return LabelledImage(rgb, binary_label(mask), data)


def check_same_size(pair: LabelledPair, image: np.ndarray, mask: np.ndarray, error: type[PolypSynthError]) -> None:
    """A label must cover its image pixel for pixel: one `error` line naming the mask when it does not."""
    if image.shape[:2] != mask.shape[:2]:
        raise error(f"{pair.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {pair.image} "
                    f"is {image.shape[1]}x{image.shape[0]}")


def labelled_pairs(images: str, masks: str, split: str | None, error: type[PolypSynthError]) -> list[LabelledPair]:
    """The pairs of the ids in `split` (in its order), or of every image (sorted by id); an id without
    its image or its mask is an error naming the file."""
    image_files = files_by_id(images, error, "image")
    mask_files = files_by_id(masks, error, "mask")
    if split is None:
        ids = sorted(image_files)
        if not ids:
            raise error(f"{images}: no images ({', '.join(IMAGE_SUFFIXES)})")
    else:
        ids = read_split(split, error)
    pairs = []
    for pair_id in ids:
        if pair_id not in image_files:
            where = f" (listed in {split})" if split else ""
            raise error(f"{storage.join(images, pair_id)}.*: no image for id {pair_id}{where}")
        if pair_id not in mask_files:
            raise error(f"{image_files[pair_id]}: no mask for it in {masks} (expected {pair_id}.png or .jpg)")
        pairs.append(LabelledPair(pair_id, image_files[pair_id], mask_files[pair_id]))
    return pairs
