"""The typed reader of gate results that export relies on."""


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
from pipeline.generate.manifest import RunManifest, SampleTotals, ShardEntry


def _manifest(plan_digest: str, shard_sha256: str) -> RunManifest:
    return RunManifest(run_id="r", plan_digest=plan_digest, pipeline_version="0", finished_at="", complete=True,
                       samples=SampleTotals(planned=3, written=3, failed=0), config={},
                       shards=[ShardEntry(index=0, file="shards/shard-00000.parquet", rows=3, failed=0, bytes=1,
                                          sha256=shard_sha256)])


def _metrics(plan_digest: str, passed: bool) -> GateMetrics:
    figures = SetMetrics(n=3, kid=0.01, kid_std=0.002, fid=None, precision=0.9, recall=0.8, density=1.0, coverage=0.7)
    return GateMetrics(
        run_id="r", plan_digest=plan_digest, shards_digest=_manifest(plan_digest, "s1").shards_digest(), gated_at="2026-01-01T00:00:00+00:00", passed=passed,
        failures=[] if passed else ["kid 0.2 > 0.05"], extractor="efficientnet-lite0",
        reference=ReferenceIdentity(digest="abc", extractor="efficientnet-lite0", images=3, crops=3, negatives=0,
                                    settings={"size": 224}),
        run=figures, accepted=figures, diversity=0.2,
        samples=SampleCounts(total=3, accepted=2, by_reason={"blank": 1}), shards=[], random_weights=False,
        bounds={"kid_max": 0.05},
    )


def _gated_run(tmp_path, plan_digest="p1", manifest_digest="p1", shard_sha256="s1"):
    layout = RunLayout(str(tmp_path))
    _manifest(manifest_digest, shard_sha256).write(layout)
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
    with pytest.raises(GateError, match=r"its shards changed since it was gated \(plan new, gated plan old\)"):
        load_gate(str(tmp_path))


def test_verdicts_of_a_shard_regenerated_since_are_refused(tmp_path):
    """Same plan, but a shard was lost and regenerated with other bytes: its verdicts are stale."""
    _gated_run(tmp_path, shard_sha256="s2")
    with pytest.raises(GateError, match="its shards changed since it was gated"):
        load_gate(str(tmp_path))
