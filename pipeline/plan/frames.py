"""The source-frame catalog: which normal frames a run may paint polyps into, and where.

Frames come from a local folder, a glob pattern or an fsspec URL (`s3://bucket/prefix/`,
`s3://bucket/prefix/*.jpg`); storage options come from the environment as for every other URL of
the pipeline (see `pipeline.core.storage`: e.g. `AWS_ENDPOINT_URL` for S3-compatible servers, fsspec's
`FSSPEC_S3_*` variables). Every frame is read once, hashed, decoded and checked, and its field of
view is detected, so that planning never meets a broken frame mid-run: unusable files are skipped
with a reason, and only a source with nothing usable is an error.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
from fsspec.implementations.local import LocalFileSystem
from PIL import Image, UnidentifiedImageError

from pipeline.core import storage
from pipeline.core.digests import digest, sha256_hex
from pipeline.core.images import cut_short
from pipeline.core.progress import progress_bar
from pipeline.errors import FrameCatalogError
from pipeline.plan.fov import FieldOfView, detect_fov
from pipeline.plan.modality import detect_modality

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_CONVERTIBLE_MODES = {"1", "L", "LA", "La", "P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}


@dataclass(frozen=True)
class FrameRecord:
    uri: str  # absolute local path or full URL
    sha256: str
    width: int
    height: int
    fov: FieldOfView
    modality: str  # detected from the frame's colours: "wli" or "nbi" (see plan.modality)


@dataclass(frozen=True)
class SkippedFrame:
    uri: str
    reason: str  # "<kind>: <detail>", e.g. "truncated: image file is truncated"


@dataclass(frozen=True)
class FrameCatalog:
    source: str
    records: tuple[FrameRecord, ...]
    skipped: tuple[SkippedFrame, ...]

    def digest(self) -> str:
        """Hash of the frames in use (URIs and contents), recorded in a plan's provenance."""
        listing = "".join(f"{r.uri}\t{r.sha256}\n" for r in self.records)
        return digest(listing)


class _Unusable(Exception):
    """A frame that is skipped; the message is the reason."""


def list_frames(source: str) -> list[str]:
    """URIs of the image files in a folder, matching a glob pattern, or the one file named, sorted."""
    fs, path = storage.filesystem(source)
    try:
        fs.invalidate_cache()  # a catalog is a fresh look at the source: no stale object listings
        if any(char in path for char in "*?["):
            paths = fs.glob(path)
        elif fs.isdir(path):
            paths = fs.find(path, maxdepth=1)
        elif fs.isfile(path):
            paths = [path]
        else:
            raise FrameCatalogError(f"frame source {source} does not exist (no such folder, file or URL)")
    except FrameCatalogError:
        raise
    except Exception as error:  # any backend's failure (permissions, network, credentials)
        raise FrameCatalogError(f"cannot list frame source {source}: {_describe(error)}") from error
    images = [p for p in paths if PurePosixPath(p).suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(p if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(p) for p in images)


def build_catalog(
    source: str, min_size: int = 128, limit: int | None = None, progress: bool = False, workers: int = 1
) -> FrameCatalog:
    """Read, hash, check and find the field of view of every frame of `source` (the first `limit`
    by URI); `workers` threads decode in parallel (decoding and detection release the GIL)."""
    uris = list_frames(source)[:limit]
    if not uris:
        raise FrameCatalogError(f"frame source {source} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results: Iterator[FrameRecord | SkippedFrame] = pool.map(lambda uri: _inspect(uri, min_size), uris)
        if progress:
            results = progress_bar(results, "reading frames", total=len(uris), unit="frames")
        inspected = list(results)
    records = tuple(r for r in inspected if isinstance(r, FrameRecord))
    skipped = tuple(r for r in inspected if isinstance(r, SkippedFrame))
    for frame in skipped:
        log.warning("skipping frame %s: %s", frame.uri, frame.reason)
    if not records:
        raise FrameCatalogError(
            f"frame source {source} has no usable frames: all {len(uris)} skipped ({_reason_summary(skipped)})"
        )
    if skipped:
        log.warning("skipped %d of %d frames of %s (%s)", len(skipped), len(uris), source, _reason_summary(skipped))
    log.info("frame catalog: %d usable frames from %s", len(records), source)
    return FrameCatalog(source, records, skipped)


def load_frame(uri: str, sha256: str | None = None) -> np.ndarray:
    """The RGB uint8 HxWx3 pixels of one frame; any failure is a `FrameCatalogError` naming it. With
    `sha256` (what the plan recorded), a frame whose bytes changed since is refused: a sample is
    never made from other pixels than its provenance says."""
    try:
        data = _read(uri)
    except Exception as error:  # any backend's failure (missing file, permissions, network)
        raise FrameCatalogError(f"cannot load frame {uri}: {_describe(error)}") from error
    if sha256 is not None and sha256_hex(data) != sha256:
        raise FrameCatalogError(f"frame {uri} changed since the run was planned (its sha256 is {sha256_hex(data)[:12]}…, "
                                f"the plan's {sha256[:12]}…); plan the run again")
    try:
        return np.array(_decode(data, uri, min_size=1))
    except _Unusable as error:
        raise FrameCatalogError(f"cannot load frame {uri}: {error}") from None


def _inspect(uri: str, min_size: int) -> FrameRecord | SkippedFrame:
    try:
        data = _read(uri)
    except Exception as error:  # a file that vanished or cannot be read is skipped like a broken one
        return SkippedFrame(uri, f"unreadable: {_describe(error)}")
    try:
        rgb = _decode(data, uri, min_size)
    except _Unusable as error:
        return SkippedFrame(uri, str(error))
    fov = detect_fov(rgb)
    if not fov.grid.any():
        return SkippedFrame(uri, "no tissue: nothing in the frame is visible tissue to paint on")
    height, width = rgb.shape[:2]
    return FrameRecord(uri, sha256_hex(data), width, height, fov, detect_modality(rgb, fov))


def _read(uri: str) -> bytes:
    fs, path = storage.filesystem(uri)
    return fs.cat_file(path)


def _decode(data: bytes, uri: str, min_size: int) -> np.ndarray:
    """Decode fully (a truncated file fails here instead of coming back grey-padded) to RGB."""
    if cut_short(data):
        raise _Unusable("truncated: the file ends before its image data does")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise _Unusable("not an image: unrecognised file format") from None
    except Exception as error:  # PIL raises many types on malformed headers
        raise _Unusable(f"corrupt: {error}") from None
    if min(image.size) < min_size:
        raise _Unusable(f"too small: {image.width}x{image.height} is under {min_size} px on a side")
    try:
        image.load()
    except OSError as error:
        kind = "truncated" if "truncated" in str(error) or "broken data stream" in str(error) else "corrupt"
        raise _Unusable(f"{kind}: {error}") from None
    except Exception as error:  # decoders raise ValueError, SyntaxError, DecompressionBombError, ...
        raise _Unusable(f"corrupt: {error}") from None
    if image.mode != "RGB":
        if image.mode not in _CONVERTIBLE_MODES:
            raise _Unusable(f"unsupported pixel mode: {image.mode}")
        log.info("frame %s: converted %s pixels to RGB", uri, image.mode)
        image = image.convert("RGB")
    return np.asarray(image)


def _reason_summary(skipped: tuple[SkippedFrame, ...]) -> str:
    kinds = Counter(frame.reason.split(":", 1)[0] for frame in skipped)
    return ", ".join(f"{kind}: {count}" for kind, count in kinds.most_common())


def _describe(error: Exception) -> str:
    """`FileNotFoundError: bucket/key` says more than the bare `bucket/key` it prints as."""
    return f"{type(error).__name__}: {error}"
