"""The run manifest (`manifest.json`): what the generate stage wrote, read by every later stage.

Written last by the runner, atomically. The gate records the digest of its shard list
(`shards_digest`), so verdicts of shards that were regenerated since are never trusted.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.core import storage
from pipeline.core.digests import json_digest
from pipeline.core.layout import RunLayout
from pipeline.errors import ShardError, validation_summary


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ShardEntry(_Record):
    index: int
    file: str  # relative to the run directory
    rows: int
    failed: int
    bytes: int
    sha256: str


class FailedSample(_Record):
    shard_index: int
    sample_id: str
    reason: str


class FailedShard(_Record):
    shard_index: int
    error: str


class SampleTotals(_Record):
    planned: int
    written: int
    failed: int


class Timings(_Record):
    wall_seconds: float
    stage_seconds: dict[str, float]


class RunManifest(_Record):
    run_id: str
    plan_digest: str
    pipeline_version: str
    finished_at: str
    complete: bool
    samples: SampleTotals
    shards: list[ShardEntry]
    failed_samples: list[FailedSample] = []
    failed_shards: list[FailedShard] = []
    timings: Timings | None = None
    config: dict[str, Any]  # the job config as planned (JSON)

    def shards_digest(self) -> str:
        """Identity of the shards' bytes: changes when any shard is regenerated differently."""
        return json_digest([[entry.index, entry.sha256] for entry in self.shards])

    def write(self, layout: RunLayout) -> None:
        storage.write_bytes_atomic(layout.manifest, self.model_dump_json(indent=2).encode())

    @classmethod
    def read(cls, run_dir: str) -> RunManifest:
        url = RunLayout(run_dir).manifest
        try:
            return cls.model_validate_json(storage.read_bytes(url))
        except FileNotFoundError:
            raise ShardError(f"{run_dir}: no {url}; generate the run first") from None
        except ValidationError as exc:
            raise ShardError(f"{url}: not a run manifest ({validation_summary(exc)})") from None
        except OSError as exc:
            raise ShardError(f"{url}: unreadable ({exc})") from None
