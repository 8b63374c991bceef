"""Experiment: the arms it trains (real only once per seed; each synthetic set at each ratio at equal
epochs and equal steps), resume from trials.jsonl, table and plot, and the fairness check on donors."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.images import decode_png, encode_png
from pipeline.errors import TrainError
from pipeline.export.export import ExportOptions, export_runs
from pipeline.testing.data import shared_data
from pipeline.testing.runs import kvasir_pairs, write_gated_run
from pipeline.train.experiment import (
    ExperimentSpec,
    check_fair,
    donor_sources,
    run_experiment,
)
from pipeline.train.segment import TrainSettings

KVASIR = shared_data() / "kvasir-seg"


def test_a_small_experiment_trains_every_arm_once_and_resumes(tmp_path):
    run = str(tmp_path / "run")
    write_gated_run(run, kvasir_pairs(KVASIR, "test", 4), "syn", size=64)
    export_runs([run], ExportOptions(out=str(tmp_path / "ex"), format="folders"))
    spec = ExperimentSpec(
        real=f"{KVASIR}:train", synthetic={"kvasir": str(tmp_path / "ex")}, evals=[str(tmp_path / "ex")],
        ratios=[0, 1], seeds=1, real_n=2, out=str(tmp_path / "exp"),
        settings=TrainSettings(size=32, epochs=1, batch_size=2),
    )
    results = run_experiment(spec)
    arms = {(r.trial.synthetic, r.trial.ratio, r.trial.budget): r for r in results}
    assert set(arms) == {(None, 0.0, "epochs"), (None, 1.0, "compute"), ("kvasir", 1.0, "epochs"),
                         ("kvasir", 1.0, "steps")}
    assert arms[(None, 0.0, "epochs")].steps == 1 and arms[("kvasir", 1.0, "steps")].steps == 1
    assert arms[(None, 1.0, "compute")].steps == 2 and arms[(None, 1.0, "compute")].synthetic_per_epoch == 0
    assert arms[("kvasir", 1.0, "epochs")].steps == 2 and arms[("kvasir", 1.0, "epochs")].synthetic_per_epoch == 2
    first_two = (KVASIR / "splits" / "train.txt").read_text().split()[:2]
    assert all(r.real_ids == sorted(first_two) for r in results)
    summary = json.loads((tmp_path / "exp" / "summary.json").read_text())
    assert {(row["synthetic"], row["budget"]) for row in summary} == {
        ("real only", "epochs"), ("real only", "steps"), ("real only", "compute"), ("kvasir", "epochs"),
        ("kvasir", "steps")}
    assert "± " in (tmp_path / "exp" / "table.md").read_text() and (tmp_path / "exp" / "plot.png").stat().st_size > 0
    lines = (tmp_path / "exp" / "trials.jsonl").read_text()
    assert run_experiment(spec) == results and (tmp_path / "exp" / "trials.jsonl").read_text() == lines  # resumed
    other = ExperimentSpec(**{**vars(spec), "settings": TrainSettings(size=64, epochs=1, batch_size=2)})
    with pytest.raises(TrainError, match="holds trials of another experiment"):
        run_experiment(other)  # never answered from results trained at another size
    (tmp_path / "exp" / "trials.jsonl").write_text(lines + lines.splitlines()[0][:40])  # killed mid-append
    assert run_experiment(spec) == results
    image = min((tmp_path / "ex" / "images").iterdir())
    image.write_bytes(encode_png(255 - decode_png(image.read_bytes())))  # regenerated at the same path
    with pytest.raises(TrainError, match="holds trials of another experiment"):
        run_experiment(spec)  # never answered from results trained on the old pixels


def test_donors_outside_the_real_subset_are_refused(tmp_path):
    table = pa.table({"sample_id": ["a", "b"], "donor_id": ["img1/0", "img2/1"],
                      "image": pa.array([{"bytes": b"", "path": ""}] * 2), "mask": pa.array([{"bytes": b"", "path": ""}] * 2)})
    pq.write_table(table, tmp_path / "shard.parquet")
    assert donor_sources([str(tmp_path / "shard.parquet")]) == {"img1", "img2"}
    check_fair("t", str(tmp_path / "shard.parquet"), {"img1", "img2", "img3"}, {"img9"})
    with pytest.raises(TrainError, match="not among the trial's real images"):
        check_fair("t", str(tmp_path / "shard.parquet"), {"img1"}, set())
    with pytest.raises(TrainError, match="1 donor images are evaluation images"):  # without --real-n too
        check_fair("t", str(tmp_path / "shard.parquet"), None, {"img2", "img7"})


def test_trials_run_as_ray_tasks(tmp_path):
    import ray

    run = str(tmp_path / "run")
    write_gated_run(run, kvasir_pairs(KVASIR, "test", 2), "ray", size=32)
    spec = ExperimentSpec(real=f"{KVASIR}:train", synthetic={"kvasir": run}, evals=[run], ratios=[0], seeds=2,
                          real_n=2, out=str(tmp_path / "exp"), settings=TrainSettings(size=32, epochs=1, batch_size=2),
                          executor="ray", ray_address="local")  # never another test's cluster
    try:
        results = run_experiment(spec)
    finally:
        ray.shutdown()
    assert [(r.trial.key, r.steps) for r in results] == [("real-r0-s0-epochs", 1), ("real-r0-s1-epochs", 1)]
    assert (tmp_path / "exp" / "checkpoints" / "real-r0-s1-epochs.safetensors").exists()
