"""The export manifest: what an export holds and where it came from; written last, required by readers.

Its presence says the export is complete (every file it lists was written before it); its per-file
checksums let a reader verify what it downloaded. No timestamps: a re-run writes the same bytes.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.core import storage
from pipeline.core.layout import ExportLayout
from pipeline.core.lineage import Lineage
from pipeline.errors import ExportError, validation_summary

ExportFormat = Literal["parquet", "folders"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExportedFile(_Record):
    path: str  # relative to the export root
    bytes: int
    sha256: str
    rows: int | None = None  # Parquet files only


class SourceRun(_Record):
    """One run merged into the export, with the gate's figures that let it in."""

    run_dir: str
    run_id: str
    samples: int  # rows in its shards
    accepted: int  # of those, accepted by its gate
    exported: int  # rows that made it into the export
    duplicates: int  # rows left out because an earlier run had their sample_id
    gate_passed: bool
    forced: bool  # exported although its gate failed (--force)
    gate: dict[str, Any]  # the run's gate metrics.json as it was: figures, bounds, reference (kept as
    # written, so a manifest stays readable when the gate's own format grows), less its lineage
    lineage: Lineage | None = None  # real images behind the exported rows (donors, host frames) and, when
    # the gate chose them, its reference and probe negatives; None: the gate did not record its reference
    random_weights: bool  # its shards were made with random (test) model weights
    engines: list[str]  # what made its shards: model id (SDXL), or engine kind and donor library (transplant)
    config: dict[str, Any]  # the job config the run was made with


class ExportManifest(_Record):
    format: ExportFormat
    pipeline_version: str
    samples: int
    rejected_included: int  # samples the gate rejected, exported because of --include-rejected
    include_rejected: bool
    shard_size: int
    columns: list[str]
    runs: list[SourceRun]
    files: list[ExportedFile]

    @property
    def random_weights(self) -> bool:
        return any(run.random_weights for run in self.runs)

    @property
    def lineage(self) -> Lineage | None:
        """Every real image behind the export; None when a run's is not recorded."""
        if any(run.lineage is None for run in self.runs):
            return None
        merged = Lineage()
        for run in self.runs:
            merged = merged | run.lineage
        return merged

    def to_bytes(self) -> bytes:
        return (json.dumps(self.model_dump(mode="json"), indent=2) + "\n").encode()

    @classmethod
    def read(cls, root: str) -> ExportManifest:
        """The manifest of a finished export; an `ExportError` when there is none (half-written or not an export)."""
        url = ExportLayout(root).manifest
        try:
            data = storage.read_bytes(url)
        except FileNotFoundError:
            raise ExportError(f"{root}: not a finished export (no manifest.json; run polyp-synth export again)") from None
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise ExportError(f"{url}: invalid export manifest: {validation_summary(exc)}") from None
