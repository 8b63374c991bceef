"""Where image–mask pairs come from: references to them (no pixels), and reading them in bulk.

Three kinds of source, one reference type:
- a real labelled folder `DIR` with `images/<id>.*` + `masks/<id>.*` and an optional split file
  (`DIR:train` reads `DIR/splits/train.txt`; `DIR:path/to/ids.txt` any file of ids);
- an export (a folder with `manifest.json`, `README.md` or `data/`; its manifest is required, so a
  half-written export is refused), Parquet or folders;
- a run directory's `shards/`, or Parquet files by URL or glob (local or `s3://`).

Masks are labels: anything above 127 is foreground (Kvasir-SEG's masks are JPEGs, nearly binary).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.core import parquet, storage
from pipeline.core.digests import json_digest, sha256_hex
from pipeline.core.images import decode_image
from pipeline.core.labelled import binary_label, files_by_id, labelled_pairs, read_split
from pipeline.core.layout import (
    EXPORT_CARD_FILE,
    EXPORT_DATA_DIR,
    EXPORT_IMAGE_DIR,
    EXPORT_MASK_DIR,
    MANIFEST_FILE,
    SHARD_DIR,
    ExportLayout,
)
from pipeline.core.lineage import ImageKeys, Lineage
from pipeline.errors import DataError
from pipeline.export.manifest import ExportManifest
from pipeline.generate.lineage import sample_lineage


@dataclass(frozen=True)
class PairRef:
    """One image–mask pair: a row of a Parquet file (`mask` None), or two image files of a folder."""

    source: str  # Parquet file URL, or image file URL
    row: int = -1
    mask: str | None = None
    sample_id: str = ""


@dataclass(frozen=True)
class DataSpec:
    """`DIR` or `DIR:SPLIT` as users write it on the command line."""

    root: str
    split: str | None = None

    @classmethod
    def parse(cls, text: str) -> DataSpec:
        head, sep, tail = text.rpartition(":")
        if sep and head and not tail.startswith("//"):
            return cls(head, tail or None)
        return cls(text)

    def __str__(self) -> str:
        return f"{self.root}:{self.split}" if self.split else self.root


def _split_url(spec: DataSpec) -> str | None:
    """`DIR:train` names DIR/splits/train.txt; `DIR:path/to/ids.txt` names that file."""
    if spec.split is None:
        return None
    return spec.split if spec.split.endswith(".txt") else storage.join(spec.root, "splits", f"{spec.split}.txt")


def folder_refs(spec: DataSpec) -> list[PairRef]:
    """Pairs of an images/ + masks/ folder, sorted by id (or in the split file's order)."""
    pairs = labelled_pairs(storage.join(spec.root, EXPORT_IMAGE_DIR), storage.join(spec.root, EXPORT_MASK_DIR),
                           _split_url(spec), DataError)
    return [PairRef(source=pair.image, mask=pair.mask, sample_id=pair.id) for pair in pairs]


def _is_export(names: list[str]) -> bool:
    """An export's folder: its manifest, its card or its data/ (then a missing manifest means unfinished)."""
    return SHARD_DIR not in names and bool({MANIFEST_FILE, EXPORT_CARD_FILE, EXPORT_DATA_DIR} & set(names))


def parquet_files(root: str) -> list[str]:
    """The Parquet files of an export (from its manifest), a run (its shards) or a file/glob URL."""
    names = storage.list_names(root) if not root.endswith(".parquet") and "*" not in root else []
    if _is_export(names):
        manifest = ExportManifest.read(root)
        return [ExportLayout(root).url(f.path) for f in manifest.files if f.path.endswith(".parquet")]
    if SHARD_DIR in names:
        root = storage.join(root, SHARD_DIR)
        names = storage.list_names(root)
    if names:
        return [storage.join(root, n) for n in names if n.endswith(".parquet")]
    fs, path = storage.filesystem(root)
    protocol = root.split("://", 1)[0] + "://" if "://" in root else ""
    return [protocol + p for p in sorted(fs.glob(path))]


def shard_refs(spec: DataSpec) -> list[PairRef]:
    """Rows of Parquet shards (an export, a run, or files), from their footers only."""
    files = parquet_files(spec.root)
    if not files:
        raise DataError(f"{spec.root}: no Parquet files (expected an export, a run directory or *.parquet)")
    refs: list[PairRef] = []
    for url in files:
        try:
            with parquet.read_footer(url) as footer:
                ids = footer.read(columns=["sample_id"]).column("sample_id").to_pylist()
        except (OSError, pa.ArrowInvalid, KeyError) as exc:
            raise DataError(f"{url}: not a shard of image–mask pairs ({exc})") from None
        refs.extend(PairRef(source=url, row=row, sample_id=sample_id) for row, sample_id in enumerate(ids))
    split = _split_url(spec)
    if split is not None:
        wanted = set(read_split(split, DataError))
        refs = [ref for ref in refs if ref.sample_id in wanted]
    return refs


@dataclass(frozen=True)
class Fingerprint:
    """What a set is, by content: `digest` (its pixels and labels: data regenerated or re-gated at the
    same path is another set) and `keys` (its images, by id and SHA-256: for leakage checks)."""

    digest: str
    keys: ImageKeys


def fingerprint(refs: list[PairRef]) -> Fingerprint:
    """Reads every byte of the set once (about 1 s per GB here): the SHA-256 of every file it reads and
    the rows it takes make the digest; each pair's id and its image's SHA-256 make the keys."""
    files = {url for ref in refs for url in (ref.source, ref.mask) if url}
    tables = {ref.source for ref in refs if ref.mask is None}
    sha, image_sha = {}, {}
    for url in sorted(files):
        data = storage.read_bytes(url)
        sha[url] = sha256_hex(data)
        if url in tables:
            column = parquet.table_from_bytes(data, ["image"]).column("image").to_pylist()
            image_sha.update({(url, row): sha256_hex(cell["bytes"]) for row, cell in enumerate(column)})
    digest = json_digest([[sha[ref.source], ref.row, sha[ref.mask] if ref.mask else None] for ref in refs])
    keys = ImageKeys.of((ref.sample_id, sha[ref.source] if ref.mask else image_sha[(ref.source, ref.row)])
                        for ref in refs)
    return Fingerprint(digest, keys)


_PROVENANCE = ("source_frame", "source_sha256", "donor_id", "engine", "mask_params")


def lineage(spec: DataSpec | str, refs: list[PairRef]) -> Lineage | None:
    """The real images behind a synthetic set (`refs`, as `resolve` gave them), or None when its
    provenance is unknown. An export's manifest says (with what judged the samples when a gate chose
    them); a run's shards, or Parquet files with provenance columns, name their donors and host frames
    (every row is taken, so no gate chose them). Unknown: a plain images/ + masks/ folder, Parquet
    files without provenance, and an export's files read without its manifest (its gate is not known)."""
    spec = DataSpec.parse(spec) if isinstance(spec, str) else spec
    names = storage.list_names(spec.root)
    if _is_export(names):
        return ExportManifest.read(spec.root).lineage
    if EXPORT_IMAGE_DIR in names:
        return None
    rows: dict[str, set[int]] = {}
    for ref in refs:
        rows.setdefault(ref.source, set()).add(ref.row)
    donors, hosts, masks = [], [], []
    for url, keep in sorted(rows.items()):
        with parquet.read_footer(url) as footer:
            present = set(footer.schema_arrow.names)
            if not {"source_frame", "source_sha256"} <= present or "accepted" in present:
                return None
            table = footer.read(columns=[name for name in _PROVENANCE if name in present])
        column = {name: table.column(name).to_pylist() for name in table.column_names}
        for i in sorted(keep):
            engine = column["engine"][i] if "engine" in column else None
            donors.append((column["donor_id"][i] if "donor_id" in column else None, (engine or {}).get("donors")))
            hosts.append((column["source_frame"][i] or "", column["source_sha256"][i] or ""))
            masks.append(column["mask_params"][i] if "mask_params" in column else None)
    return sample_lineage(donors, hosts, masks)


def unlabelled_files(spec: DataSpec | str) -> dict[str, str]:
    """id → URL of the images directly in a folder of frames without labels (polyp-free frames), only
    the ids of its split when one is given (`DIR:ids.txt`)."""
    spec = DataSpec.parse(spec) if isinstance(spec, str) else spec
    files = files_by_id(spec.root, DataError)
    split = _split_url(spec)
    ids = read_split(split, DataError) if split is not None else sorted(files)
    missing = [i for i in ids if i not in files]
    if missing:
        raise DataError(f"{storage.join(spec.root, missing[0])}.*: no image for id {missing[0]} (listed in {split})")
    if not ids:
        raise DataError(f"{spec.root}: no images")
    return {i: files[i] for i in ids}


def files_fingerprint(files: dict[str, str]) -> Fingerprint:
    """`fingerprint` of a set of unlabelled image files (id → URL)."""
    sha = {key: sha256_hex(storage.read_bytes(url)) for key, url in files.items()}
    return Fingerprint(json_digest(sorted(sha.items())), ImageKeys.of(sha.items()))


def read_image(url: str) -> np.ndarray:
    """RGB uint8 pixels of one image file; a `DataError` naming it when it cannot be read."""
    return _decode(_read_file(url), url, False)


def resolve(spec: DataSpec | str) -> list[PairRef]:
    """Pairs of any source: an export's manifest says its format; a folder with images/ is a folder."""
    spec = DataSpec.parse(spec) if isinstance(spec, str) else spec
    names = storage.list_names(spec.root)
    if not names and "*" not in spec.root and not storage.exists(spec.root):
        raise DataError(f"{spec.root}: no such data folder, export or file")
    if _is_export(names):
        if ExportManifest.read(spec.root).format == "folders":
            return folder_refs(spec)
        return shard_refs(spec)
    if EXPORT_IMAGE_DIR in names:
        return folder_refs(spec)
    return shard_refs(spec)


def _decode(data: bytes, url: str, mask: bool) -> np.ndarray:
    """RGB uint8 image, or {0, 255} label; a `DataError` naming `url` when the bytes are not one."""
    try:
        pixels = decode_image(data, "gray" if mask else "color")
    except ValueError as exc:
        raise DataError(f"{url}: not a readable image ({exc})") from None
    return np.where(binary_label(pixels), 255, 0).astype(np.uint8) if mask else pixels


def _read_file(url: str) -> bytes:
    try:
        return storage.read_bytes(url)
    except OSError as exc:
        raise DataError(f"{url}: unreadable ({type(exc).__name__}: {exc})") from None


def _pair(ref: PairRef, image: np.ndarray, mask: np.ndarray) -> tuple[PairRef, np.ndarray, np.ndarray]:
    if image.shape[:2] != mask.shape:
        where = ref.mask if ref.mask is not None else f"{ref.source} row {ref.row} ({ref.sample_id})"
        raise DataError(f"{where}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                        f"{image.shape[1]}x{image.shape[0]}")
    return ref, image, mask


class TableCache:
    """The image and mask columns of the last few Parquet files read: pairs asked for a few at a time
    (a training batch) read each file once per run of requests, not once per request."""

    def __init__(self, keep: int = 2):
        self.keep = keep
        self._tables: dict[str, pa.Table] = {}

    def get(self, url: str) -> pa.Table:
        if url not in self._tables:
            while len(self._tables) >= self.keep:
                del self._tables[next(iter(self._tables))]
            self._tables[url] = parquet.read(url, columns=["image", "mask"])
        return self._tables[url]


def read_pairs(refs: list[PairRef], tables: TableCache | None = None) -> Iterator[tuple[PairRef, np.ndarray, np.ndarray]]:
    """(ref, RGB uint8 image, {0,255} mask) in the order of `refs`; a Parquet file is read once for
    each run of consecutive refs into it (only its image and mask columns), or once while `tables`
    keeps it."""
    tables = tables or TableCache(keep=1)
    for ref in refs:
        if ref.mask is not None:
            yield _pair(ref, _decode(_read_file(ref.source), ref.source, False),
                        _decode(_read_file(ref.mask), ref.mask, True))
            continue
        table = tables.get(ref.source)
        image = table.column("image")[ref.row].as_py()["bytes"]
        mask = table.column("mask")[ref.row].as_py()["bytes"]
        yield _pair(ref, _decode(image, ref.source, False), _decode(mask, ref.source, True))
