"""Local paths and fsspec URLs behind one small API, with all-or-nothing writes.

A file written here appears completely or not at all: locally through a temp file in the same
directory and an atomic rename; on object stores through a single PUT (which object stores make
atomic). Readers therefore never see half a shard, even after a SIGKILL mid-write.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

TEMP_PREFIX = ".tmp-"


@functools.cache
def _umask() -> int:
    """The process umask: mkstemp creates files 0600, finished files get the usual permissions.
    Read from /proc where it can be (no flip that a concurrent thread could see), once per process."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for `url` and the path inside it (storage options come from the environment,
    e.g. `AWS_ENDPOINT_URL` for S3-compatible servers)."""
    return fsspec.core.url_to_fs(url)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def write_bytes_atomic(url: str, data: bytes) -> None:
    fs, path = filesystem(url)
    if isinstance(fs, LocalFileSystem):
        directory = Path(path).parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), 0o666 & ~_umask())
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    else:
        fs.pipe_file(path, data)


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    return fs.cat_file(path)


def read_text(url: str, error: type[Exception], what: str) -> str:
    """A text file the user named (local path or URL); missing or unreadable is one `error` line
    naming it and what it was for (`what`: "config", "split", …)."""
    try:
        return read_bytes(url).decode("utf-8")
    except FileNotFoundError:
        raise error(f"{url}: no such {what} file") from None
    except (OSError, UnicodeDecodeError) as exc:  # a folder, no permission, not text
        raise error(f"{url}: cannot read the {what} file ({type(exc).__name__}: {exc})") from None


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def remove(url: str) -> None:
    """Delete a file if it exists."""
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path)


def is_folder(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.isdir(path)


def list_names(url: str) -> list[str]:
    """File names directly under a directory URL (empty when it does not exist), as they are now:
    other processes write there (s3fs would otherwise answer from its listing cache)."""
    fs, path = filesystem(url)
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return []
    return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(path, detail=False))


def remove_stale_temps(url: str) -> int:
    """Delete temp files left by writers that were killed mid-write; returns how many."""
    stale = [n for n in list_names(url) if n.startswith(TEMP_PREFIX)]
    for name in stale:
        remove(join(url, name))
    return len(stale)
