"""Which real images reached a data set, and by which path: what makes "no evaluation image reaches
training" a check instead of a promise.

A real image is known by the SHA-256 of its file's bytes: a copy under another name is the same
image, and two datasets that both name their files `1.png … 612.png` (CVC-ClinicDB, ETIS, the
mucosa frames) do not collide. Its id (the file stem) is kept beside it to name it in messages.
A synthetic set's `Lineage` lists them per path: the images its donor lesions were cut from, its
host frames (or, for frames cut by `frames polyp-free`, the labelled frames they were cut from),
the images whose labels became its masks (`masks.source: real`), and the real images of whatever
chose it: the gate's reference and probe negatives, and the images its label-check segmenter was
trained and calibrated on.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class ImageKeys(BaseModel):
    """Real images: SHA-256 of the file → its id (file stem)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    files: dict[str, str] = {}

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> ImageKeys:
        """From (id, SHA-256) pairs; pairs without a SHA-256 are left out (nothing to match on)."""
        return cls(files={sha: image_id for image_id, sha in sorted(pairs, key=lambda p: p[1]) if sha})

    def __or__(self, other: ImageKeys) -> ImageKeys:
        return ImageKeys(files={**self.files, **other.files})

    def __bool__(self) -> bool:
        return bool(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def shared_with(self, other: ImageKeys) -> list[str]:
        """The images both hold (same bytes), named by this side's ids, sorted."""
        return sorted(self.files[sha] or f"sha256:{sha[:12]}" for sha in self.files.keys() & other.files.keys())

    def outside(self, other: ImageKeys) -> list[str]:
        """The images this holds and `other` does not, named by ids, sorted."""
        return sorted(self.files[sha] or f"sha256:{sha[:12]}" for sha in self.files.keys() - other.files.keys())


def stem(uri: str) -> str:
    """The id of an image file: its name without folders and extension."""
    return PurePosixPath(uri.split("://", 1)[-1]).stem


class Lineage(BaseModel):
    """Every real image that reached a synthetic set, by path. `gated` is True when a gate chose its
    samples (then `reference`, `negatives` and `segmenter` are what it measured them with)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    donors: ImageKeys = ImageKeys()
    hosts: ImageKeys = ImageKeys()
    masks: ImageKeys = ImageKeys()
    reference: ImageKeys = ImageKeys()
    negatives: ImageKeys = ImageKeys()
    segmenter: ImageKeys = ImageKeys()
    gated: bool = False

    PATHS: ClassVar[dict[str, str]] = {
        "donors": "the images its donor lesions were cut from", "hosts": "its host frames",
        "masks": "the images whose labels it reused as masks (masks.source: real)",
        "reference": "the gate's reference images", "negatives": "the gate's probe negatives",
        "segmenter": "the images the gate's label-check segmenter was trained or calibrated on"}

    def __or__(self, other: Lineage) -> Lineage:
        return Lineage(**{path: getattr(self, path) | getattr(other, path) for path in self.PATHS},
                       gated=self.gated or other.gated)

    def overlaps(self, keys: ImageKeys) -> dict[str, list[str]]:
        """Per path (its description), the images it shares with `keys`; only paths that do."""
        found = {path: getattr(self, path).shared_with(keys) for path in self.PATHS}
        return {self.PATHS[path]: shared for path, shared in found.items() if shared}
