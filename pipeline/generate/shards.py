"""Parquet shards of image–mask pairs: schema, encoding, atomic write, read and validation.

A shard is the unit of work, retry and idempotency. It is written whole (see `storage`) and carries
in its schema metadata the run config, the Hugging Face `features` (so `datasets` decodes `image`
and `mask` as images with no glue) and the samples of its plan that failed, with their reasons:
planned ids = rows + failed, which is what `validate_shard` checks on resume.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import parquet, storage
from pipeline.core.digests import digest, sha256_hex
from pipeline.core.images import encode_png
from pipeline.core.layout import RunLayout
from pipeline.errors import ShardError


def mask_geometry(mask: np.ndarray) -> tuple[float, list[int]]:
    """Foreground fraction and bounding box [x0, y0, x1, y1] (exclusive ends) of a label."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return 0.0, [0, 0, 0, 0]
    return float(len(xs) / mask.size), [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def shard_table(rows: list[dict[str, Any]], attributes_type: pa.DataType) -> pa.Table:
    """Rows (plan row + `image`, `mask` arrays + `engine`, `run_id`, `pipeline_version`) → shard table."""
    columns: dict[str, list[Any]] = {name: [] for name in _SHARD_TYPES}
    for row in rows:
        area, bbox = mask_geometry(row["mask"])
        height, width = row["mask"].shape
        values = {
            **{name: row[name] for name in _FROM_PLAN},
            "image": {"bytes": encode_png(row["image"]), "path": f"{row['sample_id']}.png"},
            "mask": {"bytes": encode_png(row["mask"]), "path": f"{row['sample_id']}_mask.png"},
            "width": width, "height": height, "mask_area": area, "bbox": bbox,
            "window": row.get("window"),  # the part of the frame the model painted; null when none
            "donor_id": row.get("donor_id"),  # the real lesion a transplant sample is made from; null for SDXL
            "prompt_used": row.get("prompt_used"),  # false: the engine never read the prompt (transplant)
            "engine": row["engine"],
            "run_id": row["run_id"], "pipeline_version": row["pipeline_version"],
        }
        for name in columns:
            columns[name].append(values[name])
    types = {**_SHARD_TYPES, "attributes": attributes_type, "engine": ENGINE_TYPE}
    return pa.table({name: pa.array(values, type=types[name]) for name, values in columns.items()})


# Fixed, so every shard of every run has one schema even where a setting is unset (null).
ENGINE_TYPE = pa.struct([
    ("model", pa.string()), ("revision", pa.string()), ("variant", pa.string()), ("vae", pa.string()),
    ("lora", pa.string()), ("unet_in_channels", pa.int32()), ("scheduler", pa.string()),
    ("scheduler_class", pa.string()), ("steps", pa.int32()), ("guidance_scale", pa.float64()),
    ("strength", pa.float64()), ("resolution", pa.int32()), ("output_resolution", pa.int32()),
    ("dtype", pa.string()), ("device", pa.string()), ("mask_dilation", pa.int32()), ("mask_feather", pa.int32()),
    ("region", pa.string()), ("crop_context", pa.float64()), ("crop_min", pa.int32()), ("crop_resolution", pa.int32()),
    ("random_weights", pa.bool_()), ("diffusers_version", pa.string()), ("torch_version", pa.string()),
    ("kind", pa.string()), ("donors", pa.string()), ("donors_sha256", pa.string()), ("blend", pa.string()),
    ("colour_transfer", pa.bool_()), ("candidates", pa.int32()),
])
_FROM_PLAN = (
    "sample_id", "plan_index", "shard_index", "seed", "source_frame", "source_sha256",
    "prompt", "negative_prompt", "attributes", "mask_params",
)
_SHARD_TYPES: dict[str, pa.DataType | None] = {
    "sample_id": pa.string(), "image": _IMAGE, "mask": _IMAGE,
    "width": pa.int32(), "height": pa.int32(),
    "source_frame": pa.string(), "source_sha256": pa.string(),
    "prompt": pa.string(), "negative_prompt": pa.string(), "attributes": None,
    "mask_params": pa.string(), "mask_area": pa.float32(), "bbox": pa.list_(pa.int32(), 4),
    "window": pa.list_(pa.int32(), 4), "donor_id": pa.string(), "prompt_used": pa.bool_(),
    "seed": pa.int64(), "engine": None,
    "run_id": pa.string(), "shard_index": pa.int32(), "plan_index": pa.int64(), "pipeline_version": pa.string(),
}


def hf_metadata(schema: pa.Schema) -> dict[bytes, bytes]:
    """Hugging Face `features` for this schema, with `image` and `mask` declared as images."""
    features = datasets.Features.from_arrow_schema(schema)
    features["image"] = datasets.Image()
    features["mask"] = datasets.Image()
    return dict(features.arrow_schema.metadata)


RANDOM_WEIGHTS_WARNING = (
    "made with RANDOM model weights (testing/tiny-random or another test model): the painted regions are "
    "noise, not polyps; never train on them"
)


def made_with_random_weights(engine: dict[str, Any] | None) -> bool:
    """Whether a shard row's `engine` provenance says its model had random (test) weights."""
    return bool(engine and engine.get("random_weights"))


@dataclass(frozen=True)
class ShardInfo:
    """What the driver needs to know of a written shard (no pixels); also its completion record."""

    shard_index: int
    rows: int
    failed: list[dict[str, str]]
    bytes: int
    sha256: str
    ids_digest: str  # digest of the planned ids it accounts for (rows + failed), sorted

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()


def ids_digest(sample_ids: list[str]) -> str:
    return digest("\n".join(sorted(sample_ids)))


def write_shard(layout: RunLayout, shard_index: int, table: pa.Table, failed: list[dict[str, str]],
                provenance: dict[str, Any]) -> ShardInfo:
    """Write a shard atomically, then its completion record. `failed` lists {sample_id, reason} of
    planned samples left out. A crash between the two leaves a shard without a record: regenerated."""
    meta = {"shard_index": shard_index, "failed": failed, **provenance}
    data = parquet.write(layout.shard(shard_index), table, meta, hf_metadata(table.schema))
    ids = table.column("sample_id").to_pylist() + [entry["sample_id"] for entry in failed]
    info = ShardInfo(shard_index, table.num_rows, failed, len(data), sha256_hex(data), ids_digest(ids))
    storage.write_bytes_atomic(layout.shard_done(shard_index), info.to_json())
    return info


@contextlib.contextmanager
def shard_footer(url: str) -> Iterator[pq.ParquetFile]:
    """A shard opened for its footer and chosen columns (`parquet.read_footer`); a `ShardError`
    naming it when it is missing or not a readable Parquet file."""
    try:
        with parquet.read_footer(url) as footer:
            yield footer
    except FileNotFoundError:
        raise ShardError(f"{url}: no such shard") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise ShardError(f"{url}: unreadable shard ({exc})") from None


def read_shard(url: str) -> pa.Table:
    try:
        return parquet.read(url)
    except FileNotFoundError:
        raise ShardError(f"{url}: no such shard") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise ShardError(f"{url}: unreadable shard ({exc})") from None


def validate_shard(layout: RunLayout, shard_index: int, planned_ids: list[str]) -> ShardInfo | None:
    """The shard's info if it is complete and holds exactly its planned samples; None if it must be
    (re)generated. Never reads the shard's pixels: its completion record (a few hundred bytes), its
    size (object metadata) and its Parquet footer (a range read) are enough, so resuming a run of
    1,000 shards on object storage costs kilobytes per shard, not the run."""
    url = layout.shard(shard_index)
    try:
        info = ShardInfo(**json.loads(storage.read_bytes(layout.shard_done(shard_index))))
        fs, path = storage.filesystem(url)
        if fs.size(path) != info.bytes or info.ids_digest != ids_digest(planned_ids):
            return None
        with parquet.read_footer(url) as footer:
            meta = parquet.provenance(footer.schema_arrow)
            complete = footer.metadata.num_rows == info.rows and len(meta.get("failed", [])) == len(info.failed)
    except (FileNotFoundError, pa.ArrowInvalid, OSError, KeyError, TypeError, ValueError):
        return None
    return info if complete else None
