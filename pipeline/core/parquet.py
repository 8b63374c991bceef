"""Parquet with provenance: tables whose schema metadata carries a JSON record of where they came from.

Plans, shards, features and verdicts all store their provenance under one metadata key, written and
read here, so a file can be traced to its run from its footer alone (a range read on object stores).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import storage

PROVENANCE_KEY = b"polyp_synth"
_FOOTER_BLOCK = 64 * 1024


def to_bytes(table: pa.Table, provenance: dict[str, Any], extra_metadata: dict[bytes, bytes] | None = None) -> bytes:
    """zstd Parquet bytes of `table` with `provenance` (and any extra schema metadata) attached."""
    metadata = {**(extra_metadata or {}), PROVENANCE_KEY: json.dumps(provenance).encode()}
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(metadata), sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def write(url: str, table: pa.Table, provenance: dict[str, Any],
          extra_metadata: dict[bytes, bytes] | None = None) -> bytes:
    """Write atomically; returns the bytes written (for sizes and checksums)."""
    data = to_bytes(table, provenance, extra_metadata)
    storage.write_bytes_atomic(url, data)
    return data


def provenance(schema: pa.Schema) -> dict[str, Any]:
    """The provenance record of a table or file schema; KeyError when it has none."""
    return json.loads((schema.metadata or {})[PROVENANCE_KEY])


def read(url: str, columns: list[str] | None = None) -> pa.Table:
    """A whole table (or some columns); raises FileNotFoundError / pa.ArrowInvalid / OSError."""
    return table_from_bytes(storage.read_bytes(url), columns)


def table_from_bytes(data: bytes, columns: list[str] | None = None) -> pa.Table:
    """The table (or some columns) of a Parquet file's bytes already in memory."""
    return pq.read_table(pa.BufferReader(data), columns=columns)


def read_footer(url: str) -> pq.ParquetFile:
    """Open a file for its footer and chosen columns only: object stores send those byte ranges, not
    the whole object. The caller reads what it needs before the handle is closed."""
    fs, path = storage.filesystem(url)
    # Small blocks: object-store files otherwise read ahead megabytes for a footer of kilobytes.
    return pq.ParquetFile(fs.open(path, "rb", block_size=_FOOTER_BLOCK))
