"""Which real images reached a data set, and by which path: what makes "no evaluation image reaches
training" a check instead of a promise.

A real image is known by its id (the file stem: Kvasir-SEG's ids, the `<id>` of `<id>/<k>` donor
ids, the file a polyp-free host frame was cut from keeps its source's stem) and, where a whole file
was used, by the SHA-256 of its bytes (a copy under another name is still the same image). A
synthetic set's `Lineage` lists them per path: donors, host frames, the gate's reference images and
its probe's negatives. Two sets overlap when they share an id or a SHA-256.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class ImageKeys(BaseModel):
    """Real images as ids (file stems) and SHA-256s of whole files; both sorted, each once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ids: list[str] = []
    sha256: list[str] = []

    @classmethod
    def of(cls, ids: Iterable[str] = (), sha256: Iterable[str] = ()) -> ImageKeys:
        return cls(ids=sorted({i for i in ids if i}), sha256=sorted({s for s in sha256 if s}))

    def __or__(self, other: ImageKeys) -> ImageKeys:
        return ImageKeys.of([*self.ids, *other.ids], [*self.sha256, *other.sha256])

    def __bool__(self) -> bool:
        return bool(self.ids or self.sha256)

    def shared_with(self, other: ImageKeys) -> list[str]:
        """The images the two hold in common: by id, or where no id is shared, by the SHA-256 of files
        both hold (shortened; a copy under another name)."""
        ids = sorted(set(self.ids) & set(other.ids))
        return ids or [f"sha256:{s[:12]}" for s in sorted(set(self.sha256) & set(other.sha256))]


def stem(uri: str) -> str:
    """The id of an image file: its name without folders and extension."""
    return PurePosixPath(uri.split("://", 1)[-1]).stem


def donor_source(donor_id: str) -> str:
    """The image a donor lesion was cut from (`<id>/<k>` → `<id>`)."""
    return donor_id.split("/", 1)[0]


class Lineage(BaseModel):
    """Every real image that reached a synthetic set, by path. `gated` is False for a set no gate
    selected (then `reference` and `negatives` are empty because nothing was used, not unknown)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    donors: ImageKeys = ImageKeys()
    hosts: ImageKeys = ImageKeys()
    reference: ImageKeys = ImageKeys()
    negatives: ImageKeys = ImageKeys()
    gated: bool = False

    PATHS: ClassVar[dict[str, str]] = {"donors": "donor lesions", "hosts": "host frames", "reference": "the gate's reference images",
             "negatives": "the gate's probe negatives"}

    @classmethod
    def of_samples(cls, donor_ids: Iterable[str | None], frames: Iterable[str], frame_sha256: Iterable[str]) -> Lineage:
        """From a set's provenance columns: `donor_id`, `source_frame`, `source_sha256`."""
        return cls(donors=ImageKeys.of(donor_source(d) for d in donor_ids if d),
                   hosts=ImageKeys.of((stem(f) for f in frames), frame_sha256))

    def __or__(self, other: Lineage) -> Lineage:
        return Lineage(donors=self.donors | other.donors, hosts=self.hosts | other.hosts,
                       reference=self.reference | other.reference, negatives=self.negatives | other.negatives,
                       gated=self.gated or other.gated)

    def overlaps(self, keys: ImageKeys) -> dict[str, list[str]]:
        """Per path (its description), the images it shares with `keys`; only paths that do."""
        found = {path: getattr(self, path).shared_with(keys) for path in self.PATHS}
        return {self.PATHS[path]: shared for path, shared in found.items() if shared}
