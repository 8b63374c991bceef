"""The typed reader of gate results that export relies on."""

import json

import numpy as np
import pyarrow as pa
import pytest

from pipeline.core import parquet, storage
from pipeline.core.layout import RunLayout
from pipeline.errors import GateError
from pipeline.gate.verdicts import (
    GateMetrics,
    ReferenceIdentity,
    SampleCounts,
    SetMetrics,
    load_gate,
    verdict_table,
    write_metrics,
)


def _metrics(plan_digest: str, passed: bool) -> GateMetrics:
    figures = SetMetrics(n=3, kid=0.01, kid_std=0.002, fid=None, precision=0.9, recall=0.8, density=1.0, coverage=0.7)
    return GateMetrics(
        run_id="r", plan_digest=plan_digest, gated_at="2026-01-01T00:00:00+00:00", passed=passed,
        failures=[] if passed else ["kid 0.2 > 0.05"], extractor="efficientnet-lite0",
        reference=ReferenceIdentity(digest="abc", extractor="efficientnet-lite0", images=3, crops=3, negatives=0,
                                    settings={"size": 224}),
        run=figures, accepted=figures, diversity=0.2,
        samples=SampleCounts(total=3, accepted=2, by_reason={"blank": 1}), shards=[], random_weights=False,
        bounds={"kid_max": 0.05},
    )


def _gated_run(tmp_path, plan_digest="p1", manifest_digest="p1"):
    layout = RunLayout(str(tmp_path))
    storage.write_bytes_atomic(layout.manifest, json.dumps({"plan_digest": manifest_digest}).encode())
    table = verdict_table(["a", "b", "c"], np.array([0, 0, 1]), np.array([True, False, True]),
                          [[], ["blank"], []], {"realism": np.array([1.2, 0.1, 1.0])})
    parquet.write(layout.verdicts, table, {"run_id": "r"})
    write_metrics(layout, _metrics(plan_digest, passed=True))
    storage.write_bytes_atomic(layout.gate_success, b"")
    return layout


def test_load_gate_reads_verdicts_and_metrics(tmp_path):
    _gated_run(tmp_path)
    result = load_gate(str(tmp_path))
    assert result.passed and result.accepted_ids == {"a", "c"}
    assert result.rejected == {"b": ["blank"]}
    assert result.reference.digest == "abc" and result.metrics.run.kid == 0.01
    schema = parquet.read(RunLayout(str(tmp_path)).verdicts).schema
    assert schema.field("reasons").type.value_type == pa.string() and schema.field("shard_index").type == pa.int32()


def test_never_gated_is_a_one_line_error(tmp_path):
    with pytest.raises(GateError, match=r"never gated .* run `polyp-synth gate"):
        load_gate(str(tmp_path))


def test_gate_of_an_older_plan_is_refused(tmp_path):
    _gated_run(tmp_path, plan_digest="old", manifest_digest="new")
    with pytest.raises(GateError, match="gated for plan old, but its shards are of plan new"):
        load_gate(str(tmp_path))
