"""The gate's results on disk, and the typed reader every later stage uses (`load_gate`).

`gate/verdicts.parquet` has one row per written sample: `sample_id` (string), `shard_index` (int32),
`accepted` (bool), `reasons` (list<string>, empty when accepted) and one float64 column per score.
`gate/metrics.json` holds `GateMetrics`: run- and shard-level figures, the bounds that judged them,
the reference they were measured against, and whether the run passed. `gate/_SUCCESS` is written last.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.core import parquet, storage
from pipeline.core.layout import RunLayout
from pipeline.core.lineage import Lineage
from pipeline.errors import GateError, validation_summary
from pipeline.generate.manifest import RunManifest

VERDICT_COLUMNS = {"sample_id": pa.string(), "shard_index": pa.int32(), "accepted": pa.bool_(),
                   "reasons": pa.list_(pa.string())}


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReferenceIdentity(_Record):
    """What a reference was built from: gate results name it, so figures are comparable only when equal."""

    digest: str  # hash of the image bytes, the extractor and the settings
    extractor: str
    images: int
    crops: int
    negatives: int
    settings: dict[str, float | int | str | None]


class SetMetrics(_Record):
    """Set-level figures of a sample set against the reference (None where n is too small)."""

    n: int
    kid: float | None
    kid_std: float | None
    fid: float | None
    precision: float | None
    recall: float | None
    density: float | None
    coverage: float | None


class ShardVerdict(_Record):
    """KID here is of the label crops against the reference's lesion crops (of whole images when the
    reference has no crops): the lesion is what was generated, whatever domain the frames come from."""

    shard_index: int
    samples: int
    accepted: int
    kid: float | None
    kid_std: float | None
    rejected_whole: bool  # the shard's KID exceeded its bound: none of its samples is accepted


class SampleCounts(_Record):
    total: int
    accepted: int
    by_reason: dict[str, int]
    negatives: int = 0  # hard negatives (empty labels) among them
    negatives_accepted: int = 0


class GateMetrics(_Record):
    """Everything `metrics.json` holds."""

    run_id: str
    plan_digest: str
    shards_digest: str  # of the run manifest's shard list when gated (see RunManifest.shards_digest)
    gated_at: str
    passed: bool
    failures: list[str]  # run-level bounds that failed, one readable line each
    extractor: str
    reference: ReferenceIdentity
    run: SetMetrics  # all written samples
    accepted: SetMetrics  # accepted samples only: what export hands to trainers
    diversity: float | None  # mean MS-SSIM over sampled pairs (lower is more diverse)
    samples: SampleCounts
    shards: list[ShardVerdict]
    random_weights: bool  # some shards were made by a model with random weights
    sizes: dict[str, dict[str, float]] = {}  # generated / accepted → share of the polyp samples per size bin
    bounds: dict[str, Any]  # the gate settings that judged (bounds resolved: e.g. an automatic label_iou_min)
    lineage: Lineage | None = None  # the reference's images and probe negatives (None: not recorded)
    notes: list[str] = []  # where a bound came from (e.g. an automatic label_iou_min), for the report


@dataclass(frozen=True)
class GateResult:
    """A gated run as export sees it."""

    run_dir: str
    metrics: GateMetrics
    accepted_ids: frozenset[str]
    rejected: dict[str, list[str]]  # sample_id -> reasons

    @property
    def passed(self) -> bool:
        return self.metrics.passed

    @property
    def reference(self) -> ReferenceIdentity:
        return self.metrics.reference


def write_metrics(layout: RunLayout, metrics: GateMetrics) -> None:
    storage.write_bytes_atomic(layout.gate_metrics, json.dumps(metrics.model_dump(mode="json"), indent=2).encode())


def verdict_table(sample_ids: list[str], shard_indices: np.ndarray, accepted: np.ndarray,
                  reasons: list[list[str]], scores: dict[str, np.ndarray]) -> pa.Table:
    columns = {"sample_id": sample_ids, "shard_index": shard_indices, "accepted": accepted, "reasons": reasons}
    arrays = {name: pa.array(values, type=VERDICT_COLUMNS[name]) for name, values in columns.items()}
    arrays.update({name: pa.array(np.asarray(values, np.float64), type=pa.float64())
                   for name, values in sorted(scores.items())})
    return pa.table(arrays)


def load_gate(run_dir: str) -> GateResult:
    """The gate's verdicts of a run; a `GateError` when it was never gated, or gated before its shards
    were last (re)generated. Does not judge: callers check `passed` themselves."""
    layout = RunLayout(run_dir)
    if not storage.exists(layout.gate_success):
        raise GateError(f"{run_dir}: never gated (no {layout.gate_success}); run `polyp-synth gate {run_dir}`")
    try:
        metrics = GateMetrics.model_validate_json(storage.read_bytes(layout.gate_metrics))
        table = parquet.read(layout.verdicts, columns=["sample_id", "accepted", "reasons"])
    except ValidationError as exc:
        raise GateError(f"{layout.gate_metrics}: not a gate metrics file ({validation_summary(exc)})") from None
    except (OSError, pa.ArrowInvalid) as exc:
        raise GateError(f"{layout.gate_dir}: unreadable gate results ({exc}); run `polyp-synth gate {run_dir}`") from None
    manifest = RunManifest.read(run_dir)
    if manifest.plan_digest != metrics.plan_digest or manifest.shards_digest() != metrics.shards_digest:
        raise GateError(f"{run_dir}: its shards changed since it was gated (plan {manifest.plan_digest}, "
                        f"gated plan {metrics.plan_digest}); run `polyp-synth gate {run_dir}` again")
    ids = table.column("sample_id").to_pylist()
    accepted = table.column("accepted").to_pylist()
    reasons = table.column("reasons").to_pylist()
    return GateResult(
        run_dir=run_dir, metrics=metrics,
        accepted_ids=frozenset(i for i, ok in zip(ids, accepted) if ok),
        rejected={i: r for i, ok, r in zip(ids, accepted, reasons) if not ok},
    )
