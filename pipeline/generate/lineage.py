"""The real images behind generated samples, from their provenance columns: each donor lesion's
source image (looked up in the donor library the shard names), each host frame (or, for a frame
cut by `frames polyp-free`, the labelled frame it was cut from, from `cut_from.json` beside it), and
the image whose label a real mask is (its `mask_params`).

Export records this in its manifest and the experiment reads it from runs and shards, to refuse a
synthetic set that an evaluation image reached. An input it cannot find (a donor library that was
moved) leaves the lineage unknown (None), and the experiment refuses what it cannot check.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from pipeline.core import parquet, storage
from pipeline.core.layout import CUT_SOURCES_FILE
from pipeline.core.lineage import ImageKeys, Lineage, stem
from pipeline.plan.masks.real import SOURCE_KEY, is_real


def _donor_sources(library: str) -> dict[str, tuple[str, str]] | None:
    """donor_id → (source id, source SHA-256) of a donor library; None when it cannot be read."""
    try:
        table = parquet.read(library, columns=["donor_id", "source_id", "source_sha256"])
    except (OSError, KeyError, ValueError):
        return None
    columns = [table.column(name).to_pylist() for name in ("donor_id", "source_id", "source_sha256")]
    return {donor: (source, sha) for donor, source, sha in zip(*columns)}


def _cut_from(folder: str) -> dict[str, dict[str, str]]:
    """The `cut_from.json` of a folder of frames (empty when it has none)."""
    url = storage.join(folder, CUT_SOURCES_FILE)
    try:
        return json.loads(storage.read_bytes(url))
    except (FileNotFoundError, ValueError):
        return {}


def _mask_source(mask_params: str | None) -> tuple[str, str] | None:
    """(id, SHA-256) of the image whose label a sample's mask is (`masks.source: real`), else None."""
    params = json.loads(mask_params) if mask_params else {}
    return (params[SOURCE_KEY]["id"], params[SOURCE_KEY]["image_sha256"]) if is_real(params) else None


def sample_lineage(donors: Iterable[tuple[str | None, str | None]], hosts: Iterable[tuple[str, str]],
                   masks: Iterable[str | None] = ()) -> Lineage | None:
    """From (donor_id, donor library), (source_frame, source_sha256) and `mask_params` of each sample;
    None when a donor library cannot be read or does not hold a donor it is said to have given. A
    host frame is itself, or the labelled frame it was cut from."""
    libraries: dict[str, dict[str, tuple[str, str]] | None] = {}
    donor_keys = []
    for donor_id, library in donors:
        if not donor_id:
            continue
        if library not in libraries:
            libraries[library] = _donor_sources(library) if library else None
        sources = libraries[library]
        if sources is None or donor_id not in sources:
            return None
        donor_keys.append(sources[donor_id])
    folders: dict[str, dict[str, dict[str, str]]] = {}
    host_keys = []
    for frame, sha in hosts:
        folder, _, name = frame.rpartition("/")
        if folder not in folders:
            folders[folder] = _cut_from(folder) if folder else {}
        origin = folders[folder].get(name)
        host_keys.append((origin["id"], origin["sha256"]) if origin else (stem(frame), sha))
    mask_keys = [key for key in map(_mask_source, masks) if key]
    return Lineage(donors=ImageKeys.of(donor_keys), hosts=ImageKeys.of(host_keys), masks=ImageKeys.of(mask_keys))
