"""`samples: {accepted: N, max_attempts}`: rounds of generate → gate with replacement plans until N
are accepted, on real transplants and a real gate; resumable mid-round, deterministic, and a spent
budget is a non-zero exit that says why."""

import json
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from pipeline import cli
from pipeline.config import config_from_dict
from pipeline.errors import ConfigError, ShardError
from pipeline.executors.local import LocalExecutor
from pipeline.gate.checks import keep_first
from pipeline.gate.rounds import replacements, run_until_accepted
from pipeline.gate.verdicts import load_gate
from pipeline.generate.worker import make_worker
from pipeline.plan.plan import Plan, build_plan
from pipeline.testing.data import shared_data
from pipeline.tools.inspect import summarise_run

DATA = shared_data()
KVASIR = DATA / "kvasir-seg"
ASKED = 8


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Split files for the donors and the gate's reference (disjoint train ids); both are built on first use."""
    root = tmp_path_factory.mktemp("rounds")
    train = (KVASIR / "splits" / "train.txt").read_text().split()
    (root / "reference.txt").write_text("\n".join(train[:40]) + "\n")
    (root / "donors.txt").write_text("\n".join(train[40:48]) + "\n")
    return root


def job(inputs, out, run_id="acc", max_attempts=3.0, **gate):
    labelled = {"images": str(KVASIR / "images"), "masks": str(KVASIR / "masks")}
    return config_from_dict({
        "run_id": run_id, "seed": 5, "samples": {"accepted": ASKED, "max_attempts": max_attempts}, "shard_size": 4,
        "output": str(out), "frames": {"source": str(DATA / "normal-mucosa"), "limit": 12},
        "engine": {"kind": "transplant", "donors": str(inputs / "donors.parquet"), "output_resolution": 128,
                   "donors_source": {**labelled, "split": str(inputs / "donors.txt")}},
        "gate": {"device": "cpu", "shard_kid_max": None, "acceptance_min": 0.99,  # superseded by max_attempts
                 "reference": {"path": str(inputs / "reference"), **labelled, "split": str(inputs / "reference.txt"),
                               "negatives": str(DATA / "normal-mucosa")}, **gate},
    })


def executors(description):
    return LocalExecutor(description)


def exit_code(argv):
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    return done.value.code


def accepted_ids(run_dir):
    return set(load_gate(str(run_dir)).accepted_ids)


def test_replacements_are_what_is_missing_over_the_acceptance_in_whole_shards_within_the_budget():
    assert replacements(asked=100, accepted=60, planned=100, budget=200, shard_size=1) == 67  # 40 / 0.6
    assert replacements(asked=100, accepted=60, planned=100, budget=200, shard_size=25) == 75  # whole shards
    assert replacements(asked=100, accepted=60, planned=100, budget=150, shard_size=1) == 50  # budget-bound
    assert replacements(asked=100, accepted=0, planned=100, budget=150, shard_size=1) == 50  # nothing to go by
    assert replacements(asked=100, accepted=90, planned=150, budget=150, shard_size=1) == 0  # spent
    assert replacements(asked=100, accepted=100, planned=120, budget=150, shard_size=1) == 0  # done


def test_the_first_n_accepted_are_kept_and_the_rest_are_surplus():
    reasons = [[], ["realism"], [], [], ["no_lesion"], []]
    assert keep_first(reasons, 2) == [[], ["realism"], [], ["surplus"], ["no_lesion"], ["surplus"]]
    assert keep_first(reasons, 10) == reasons


def test_rounds_reach_exactly_n_accepted_and_record_each_round(inputs, tmp_path):
    config = job(inputs, tmp_path)
    outcome = run_until_accepted(config, executors)
    assert outcome.ok, outcome.line()
    assert outcome.accepted == ASKED  # the first N accepted; any more are surplus
    plan = Plan.read(config.run_dir())
    assert len(plan.rounds) >= 2, "the default gate rejects about half of these transplants: replacements were planned"
    assert plan.rounds[0].samples == ASKED and plan.num_samples == sum(r.samples for r in plan.rounds)
    assert plan.num_samples <= config.samples.budget
    rows = plan.table.to_pylist()
    for before, after in zip(plan.rounds, plan.rounds[1:]):  # each round in shards of its own, after the last
        assert after.first_shard > max(row["shard_index"] for row in rows if row["round"] == before.index)
        assert "accepted after round" in after.why
    # replacements are the job's next samples: fresh seeds, the plan a bigger job would have drawn
    bigger = build_plan(config.model_copy(update={"samples": plan.num_samples}), engine_inputs=plan.meta.engine_inputs)
    assert plan.table.column("sample_id").to_pylist() == bigger.table.column("sample_id").to_pylist()
    assert len(set(plan.table.column("seed").to_pylist())) == plan.num_samples
    written = [sid for path in sorted((tmp_path / "acc" / "shards").glob("*.parquet"))
               for sid in pq.read_table(path, columns=["sample_id"]).column("sample_id").to_pylist()]
    assert sorted(written) == sorted(plan.table.column("sample_id").to_pylist())  # every sample once
    assert len(accepted_ids(config.run_dir())) == ASKED
    gate = json.loads((tmp_path / "acc" / "gate" / "metrics.json").read_text())
    assert set(gate["sizes"]) == {"generated", "accepted"}  # asked against accepted, per size bin
    assert "acceptance" not in " ".join(gate["failures"])  # max_attempts bounds rejection, not acceptance_min
    report = (tmp_path / "acc" / "gate" / "report.html").read_text()
    assert "<h2>Rounds</h2>" in report and plan.rounds[1].why in report.replace("&#x27;", "'")
    summary = summarise_run(config.run_dir())
    assert f"asked      {ASKED} accepted" in summary and f"round 1    {plan.rounds[1].samples} samples" in summary
    # a second run of the same job takes the same rounds and accepts the same samples
    again = run_until_accepted(config.model_copy(update={"run_id": "again"}), executors)
    assert accepted_ids(again.run_dir) == accepted_ids(config.run_dir())


def test_a_run_killed_mid_round_resumes_to_the_same_accepted_set(inputs, tmp_path):
    whole = job(inputs, tmp_path, run_id="whole")
    assert run_until_accepted(whole, executors).ok
    killed = job(inputs, tmp_path, run_id="killed")
    first_round = -(-ASKED // killed.shard_size)

    def dies_after_round_0(context):  # a node lost while round 1 was being generated
        worker = make_worker(context)
        real = worker.run

        def run(shard_index, rows):
            if shard_index >= first_round:
                raise RuntimeError("node lost")
            return real(shard_index, rows)
        worker.run = run
        return worker

    broken = run_until_accepted(killed, executors, factory=dies_after_round_0)
    assert not broken.ok and broken.gate is None and len(broken.rounds) == 2
    resumed = run_until_accepted(killed, executors)
    assert resumed.ok
    assert accepted_ids(resumed.run_dir) == accepted_ids(whole.run_dir())
    assert Plan.read(resumed.run_dir).rounds == Plan.read(whole.run_dir()).rounds

    # the process itself killed (SIGKILL) as soon as round 1 is planned, then the same command again
    shot = job(inputs, tmp_path, run_id="shot")
    path = tmp_path / "shot.yaml"
    path.write_text(json.dumps(shot.model_dump(mode="json")))
    command = [sys.executable, "-m", "pipeline", "run", str(path)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if len(Plan.read(shot.run_dir()).rounds) > 1:
                break
        except ShardError:  # not planned yet
            pass
        time.sleep(0.05)
    process.kill()
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the run finished before round 1 was planned: nothing was killed"
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert accepted_ids(shot.run_dir()) == accepted_ids(whole.run_dir())
    written = [sid for p in sorted((tmp_path / "shot" / "shards").glob("*.parquet"))
               for sid in pq.read_table(p, columns=["sample_id"]).column("sample_id").to_pylist()]
    assert len(written) == len(set(written)) == Plan.read(shot.run_dir()).num_samples  # each sample once


def test_a_spent_budget_is_a_non_zero_exit_that_says_why(inputs, tmp_path, capsys):
    config = job(inputs, tmp_path, run_id="tight", max_attempts=1.0, lesion_score_min=0.9)
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(config.model_dump(mode="json")))
    assert exit_code(["run", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"of {ASKED} asked" in out and "budget of attempts is spent" in out and "no_lesion" in out
    failures = json.loads((tmp_path / "tight" / "gate" / "metrics.json").read_text())["failures"]
    assert any(f"< samples.accepted {ASKED}" in failure for failure in failures)  # so export refuses it
    assert len(Plan.read(config.run_dir()).rounds) == 1  # max_attempts 1: no replacement fits the budget


def test_accepted_jobs_refuse_what_cannot_work(inputs, tmp_path):
    with pytest.raises(ConfigError, match="gate.enabled"):
        job(inputs, tmp_path, enabled=False)
    with pytest.raises(ConfigError, match="samples.accepted: Input should be greater than 0"):
        config_from_dict({"frames": {"source": "x"}, "samples": {"accepted": 0}})
    with pytest.raises(ConfigError, match="samples.max_attempts: Input should be greater than or equal to 1"):
        config_from_dict({"frames": {"source": "x"}, "samples": {"accepted": 10, "max_attempts": 0.5}})
    with pytest.raises(ConfigError, match="samples.max_attempt: unknown key"):
        config_from_dict({"frames": {"source": "x"}, "samples": {"accepted": 10, "max_attempt": 2}})
    more = job(inputs, tmp_path, max_attempts=4.0)  # raising the budget to finish a run keeps its plan
    assert more.plan_digest() == job(inputs, tmp_path).plan_digest()
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(job(inputs, tmp_path).model_dump(mode="json")))
    assert exit_code(["run", str(path), "--n", "4"]) == 2  # later rounds depend on every sample before them
