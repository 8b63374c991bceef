"""Experiment: the arms it trains (real only once per seed; each synthetic set at each ratio at equal
epochs and equal steps; the compute control at the same steps and samples seen), paired differences
in the table, resume from trials.jsonl, and every path by which an evaluation image could reach
training refused before any trial: real ids, synthetic samples, donors, host frames, the gate's
reference and probe negatives. One test runs the real chain: frames polyp-free → donors → generate
→ gate (a reference built on first use) → export → experiment."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.cli import main
from pipeline.core.images import decode_image, encode_png
from pipeline.core.lineage import ImageKeys, Lineage, stem
from pipeline.errors import TrainError
from pipeline.export.export import ExportOptions, export_runs
from pipeline.testing.data import shared_data
from pipeline.testing.runs import kvasir_pairs, write_gated_run
from pipeline.train.experiment import ExperimentSpec, run_experiment, trials
from pipeline.train.segment import TrainSettings

DATA = shared_data()
KVASIR = DATA / "kvasir-seg"
TRAIN = (KVASIR / "splits" / "train.txt").read_text().split()
TEST = (KVASIR / "splits" / "test.txt").read_text().split()
TINY = TrainSettings(size=32, epochs=1, batch_size=2)


def ids_file(path, ids):
    path.write_text("\n".join(ids) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    """Four Kvasir-SEG test images and four polyp-free mucosa frames, as `--eval` and `--eval-negatives`."""
    root = tmp_path_factory.mktemp("eval")
    return (f"{KVASIR}:{ids_file(root / 'test4.txt', TEST[:4])}",
            f"{DATA / 'normal-mucosa'}:{ids_file(root / 'mucosa4.txt', ['1500', '1600', '1700', '1800'])}")


def spec_for(tmp_path, synthetic, evaluation, **changes):
    evals, negatives = evaluation
    fields = dict(real=f"{KVASIR}:train", synthetic=synthetic, evals=[evals], negatives=[negatives], ratios=[0, 1],
                  seeds=2, real_n=2, out=str(tmp_path / "exp"), settings=TINY)
    return ExperimentSpec(**{**fields, **changes})


def test_a_small_experiment_trains_every_arm_once_compares_by_seed_and_resumes(tmp_path, evaluation):
    run = str(tmp_path / "run")
    write_gated_run(run, kvasir_pairs(KVASIR, "train", 3), "syn", size=64)  # hosts: train images only
    export_runs([run], ExportOptions(out=str(tmp_path / "ex"), format="folders"))
    spec = spec_for(tmp_path, {"kvasir": str(tmp_path / "ex")}, evaluation)
    results = run_experiment(spec)
    arms = {(r.trial.synthetic, r.trial.ratio, r.trial.budget, r.trial.seed): r for r in results}
    assert {key[:3] for key in arms} == {(None, 0.0, "epochs"), (None, 1.0, "compute"), ("kvasir", 1.0, "epochs"),
                                         ("kvasir", 1.0, "steps")}
    for seed in (0, 1):
        real, compute = arms[(None, 0.0, "epochs", seed)], arms[(None, 1.0, "compute", seed)]
        epochs, steps = arms[("kvasir", 1.0, "epochs", seed)], arms[("kvasir", 1.0, "steps", seed)]
        assert (real.steps, real.samples_seen) == (steps.steps, steps.samples_seen) == (1, 2)
        # the compute control: the same steps *and* samples seen as the arm it controls
        assert (compute.steps, compute.samples_seen) == (epochs.steps, epochs.samples_seen) == (2, 4)
        assert compute.synthetic_per_epoch == 0 and epochs.synthetic_per_epoch == 2
    assert all(r.real_ids == sorted(TRAIN[:2]) for r in results)
    evals, negatives = evaluation
    figures = results[0].metrics
    assert {"dice", "iou", "hd95", "miss_rate", "dice_small", "dice_medium", "dice_large", "n_small"} <= set(figures[evals])
    assert set(figures[negatives]) == {"fp_rate", "n_frames"} and figures[negatives]["n_frames"] == 4
    summary = json.loads((tmp_path / "exp" / "summary.json").read_text())
    assert "full batch" in summary["rule"]
    pairs = {(c["arm"], c["control"]) for c in summary["comparisons"] if c["figure"] == "dice" and c["data"] == evals}
    assert pairs == {("kvasir r1, equal epochs", "real only"), ("kvasir r1, equal epochs", "real only, as long as ratio 1"),
                     ("kvasir r1, equal steps", "real only"), ("real only, as long as ratio 1", "real only")}
    first = next(c for c in summary["comparisons"] if c["figure"] == "dice")
    assert first["difference"]["n"] == 2 and first["difference"]["low"] <= first["difference"]["mean"] <= first["difference"]["high"]
    table = (tmp_path / "exp" / "table.md").read_text()
    assert "Budget rule" in table and "95 % CI" in table and "FP rate" in table and "samples seen" in table
    assert (tmp_path / "exp" / "plot.png").stat().st_size > 0

    lines = (tmp_path / "exp" / "trials.jsonl").read_text()
    assert run_experiment(spec) == results and (tmp_path / "exp" / "trials.jsonl").read_text() == lines  # resumed
    other = spec_for(tmp_path, spec.synthetic, evaluation, settings=TrainSettings(size=64, epochs=1, batch_size=2))
    with pytest.raises(TrainError, match="holds trials of another experiment"):
        run_experiment(other)  # never answered from results trained at another size
    (tmp_path / "exp" / "trials.jsonl").write_text(lines + lines.splitlines()[0][:40])  # killed mid-append
    assert run_experiment(spec) == results
    image = min((tmp_path / "ex" / "images").iterdir())
    image.write_bytes(encode_png(255 - decode_image(image.read_bytes())))  # regenerated at the same path
    with pytest.raises(TrainError, match="holds trials of another experiment"):
        run_experiment(spec)  # never answered from results trained on the old pixels


def test_equal_epoch_steps_count_full_batches():
    spec = ExperimentSpec(real="r", synthetic={"s": "s"}, evals=["e"], ratios=[0, 0.5, 2], seeds=1, real_n=None,
                          out="o", settings=TrainSettings(epochs=3, batch_size=8))
    steps = {(t.synthetic, t.ratio, t.budget): t.steps for t in trials(spec, 50)}
    # ⌈3 · (50 + 25) / 8⌉ = 29 and ⌈3 · (50 + 100) / 8⌉ = 57: what the synthetic arms train at equal epochs
    assert steps[(None, 0.5, "compute")] == 29 and steps[(None, 2.0, "compute")] == 57
    assert steps[("s", 2.0, "steps")] == 19  # ⌈3 · 50 / 8⌉: the real-only arm's


def _donor_run(tmp_path, name, donor_ids):
    """Shards of a transplant-like run whose samples name donors of a real library cut from `donor_ids`."""
    from pipeline.generate.transplant.donors import build_donors

    split = ids_file(tmp_path / f"{name}.txt", donor_ids)
    library = str(tmp_path / f"{name}-donors.parquet")
    build_donors(KVASIR / "images", KVASIR / "masks", library, split)
    frames = [DATA / "normal-mucosa" / f"{i}.jpg" for i in range(1, len(donor_ids) + 1)]
    table = pa.table({"sample_id": [f"{name}{i}" for i in range(len(donor_ids))],
                      "donor_id": [f"{source}/0" for source in donor_ids],
                      "source_frame": [str(f) for f in frames], "source_sha256": [_sha(f) for f in frames],
                      "engine": [{"kind": "transplant", "donors": library}] * len(donor_ids),
                      "image": pa.array([{"bytes": encode_png(np.full((8, 8, 3), i, np.uint8)), "path": ""}
                                         for i in range(len(donor_ids))]),
                      "mask": pa.array([{"bytes": encode_png(np.zeros((8, 8), np.uint8)), "path": ""}] * len(donor_ids))})
    pq.write_table(table, tmp_path / f"{name}.parquet")
    return str(tmp_path / f"{name}.parquet")


def _masks_run(tmp_path, name, mask_ids):
    """Shards of a run whose masks are real labels (`masks.source: real`) of `mask_ids`."""
    from pipeline.plan.masks.real import RealMask

    frames = [DATA / "normal-mucosa" / f"{i}.jpg" for i in range(1, len(mask_ids) + 1)]
    params = [json.dumps(RealMask(i, str(KVASIR / "masks" / f"{i}.jpg"), "", _sha(KVASIR / "images" / f"{i}.jpg"),
                                  False, 0.0, (0.5, 0.5), 0.2, "small").to_dict()) for i in mask_ids]
    table = pa.table({"sample_id": [f"{name}{i}" for i in range(len(mask_ids))],
                      "source_frame": [str(f) for f in frames], "source_sha256": [_sha(f) for f in frames],
                      "mask_params": params,
                      "image": pa.array([{"bytes": encode_png(np.full((8, 8, 3), i, np.uint8)), "path": ""}
                                         for i in range(len(mask_ids))]),
                      "mask": pa.array([{"bytes": encode_png(np.zeros((8, 8), np.uint8)), "path": ""}]
                                       * len(mask_ids))})
    pq.write_table(table, tmp_path / f"{name}.parquet")
    return str(tmp_path / f"{name}.parquet")


def _sha(path):
    from pipeline.core.digests import sha256_hex

    return sha256_hex(path.read_bytes())


def _key(image_id, folder="images"):
    return (image_id, _sha(KVASIR / folder / f"{image_id}.jpg"))


def test_every_path_of_an_evaluation_image_into_training_is_refused(tmp_path, evaluation):
    test_pairs = kvasir_pairs(KVASIR, "test", 2)

    def refused(synthetic, match, **changes):
        with pytest.raises(TrainError, match=match):
            run_experiment(spec_for(tmp_path, synthetic, evaluation, **changes))
        assert not (tmp_path / "exp" / "trials.jsonl").exists()  # refused before any training

    with pytest.raises(TrainError, match=f"2 training images are evaluation images \\({min(TEST[:2])}"):
        run_experiment(spec_for(tmp_path, {}, evaluation, real=f"{KVASIR}:{ids_file(tmp_path / 'r.txt', TEST[:2])}"))

    same = str(tmp_path / "same")  # a synthetic set identical to the evaluation set
    write_gated_run(same, test_pairs, "same", size=32)
    refused({"s": same}, "samples are evaluation images", evals=[same], negatives=[])

    hosts = str(tmp_path / "hosts")  # painted on evaluation frames
    write_gated_run(hosts, test_pairs, "hosts", size=32)
    refused({"s": hosts}, f"host frames include 2 evaluation images \\({', '.join(sorted(TEST[:2]))}\\)")

    refused({"s": _donor_run(tmp_path, "d1", [TRAIN[0], TEST[3]])},
            f"donor lesions were cut from include 1 evaluation images \\({TEST[3]}\\)", real_n=None)
    refused({"s": _donor_run(tmp_path, "d2", [TRAIN[0], TRAIN[5]])}, "not among the trial's real images")
    refused({"s": _masks_run(tmp_path, "m1", [TRAIN[0], TEST[3]])},
            f"reused as masks \\(masks.source: real\\) include 1 evaluation images \\({TEST[3]}\\)", real_n=None)
    refused({"s": _masks_run(tmp_path, "m2", [TRAIN[0], TRAIN[5]])},
            "images whose labels are its masks are not among the trial's real images")

    for name, lineage, match in (
        ("reference", Lineage(reference=ImageKeys.of([_key(TEST[2])]), gated=True), "the gate's reference images include"),
        ("negatives", Lineage(negatives=ImageKeys.of([("1500", _sha(DATA / "normal-mucosa" / "1500.jpg"))]), gated=True),
         "probe negatives include"),
        ("segmenter", Lineage(segmenter=ImageKeys.of([_key(TEST[1])]), gated=True), "label-check segmenter"),
        ("unrecorded", None, "is not known"),
    ):
        run = str(tmp_path / name)
        write_gated_run(run, kvasir_pairs(KVASIR, "train", 2), name, size=32, reference=lineage)
        export_runs([run], ExportOptions(out=str(tmp_path / f"{name}-export"), format="folders"))
        refused({"s": str(tmp_path / f"{name}-export")}, match)
        if lineage is not None:  # all samples exported, the gate chose none: what judged them is not their lineage
            export_runs([run], ExportOptions(out=str(tmp_path / f"{name}-all"), include_rejected=True))
            manifest = json.loads((tmp_path / f"{name}-all" / "manifest.json").read_text())
            assert not manifest["runs"][0]["lineage"]["gated"]
            # an export's files read without its manifest: its gate is not known
            refused({"s": str(tmp_path / f"{name}-all" / "data" / "*.parquet")}, "is not known")

    plain = tmp_path / "plain"  # a folder of pairs: no provenance at all
    shutil.copytree(tmp_path / "reference-export", plain, ignore=shutil.ignore_patterns("*.json", "*.parquet", "README.md"))
    refused({"s": str(plain)}, "is not known")


def test_images_are_matched_by_content_not_by_name(tmp_path, evaluation):
    """Datasets that name their files alike (1.png … in CVC-ClinicDB and ETIS) do not collide; a copy of
    an evaluation image under another name is still refused."""
    evals, negatives = evaluation
    real = tmp_path / "real"
    for sub in ("images", "masks"):
        (real / sub).mkdir(parents=True)
        shutil.copy(KVASIR / sub / f"{TRAIN[0]}.jpg", real / sub / f"{TEST[0]}.jpg")  # an eval id, other bytes
        shutil.copy(KVASIR / sub / f"{TRAIN[1]}.jpg", real / sub / f"{TRAIN[1]}.jpg")
    spec = spec_for(tmp_path, {}, evaluation, real=str(real), real_n=None, seeds=1, ratios=[0])
    assert [r.trial.key for r in run_experiment(spec)] == ["real-r0-s0-epochs"]
    for sub in ("images", "masks"):
        shutil.copy(KVASIR / sub / f"{TEST[1]}.jpg", real / sub / "renamed.jpg")  # an eval image under another name
    with pytest.raises(TrainError, match="1 training images are evaluation images \\(renamed\\)"):
        run_experiment(spec_for(tmp_path, {}, evaluation, real=str(real), real_n=None, seeds=1, ratios=[0],
                                out=str(tmp_path / "exp2")))


def test_the_real_chain_gate_export_experiment(tmp_path, evaluation):
    """Nothing fabricated: host frames cut by `frames polyp-free`, a donor library, a transplant run, a
    gate whose reference is built on first use, an export, and the experiment on it."""
    evals, negatives = evaluation
    subset = ids_file(tmp_path / "subset.txt", TRAIN[:9])  # two of them have a polyp-free side
    for command in (["frames", "polyp-free", "--split", subset, "--out", str(tmp_path / "hosts")],
                    ["donors", "build", "--split", subset, "--out", str(tmp_path / "donors.parquet")]):
        with pytest.raises(SystemExit) as done:
            main([*command, "--images", str(KVASIR / "images"), "--masks", str(KVASIR / "masks")])
        assert done.value.code == 0
    job = {
        "run_id": "chain", "seed": 1, "samples": 8, "shard_size": 4, "output": str(tmp_path),
        "frames": {"source": str(tmp_path / "hosts"), "min_size": 64},
        "prompts": {"bank": "prompts/clinical.yaml"}, "masks": {"preset": "masks/default.yaml"},
        "engine": {"kind": "transplant", "donors": str(tmp_path / "donors.parquet"), "output_resolution": 128},
        "gate": {"device": "cpu", "shard_kid_max": None, "acceptance_min": None,
                 "reference": {"path": str(tmp_path / "reference"), "images": str(KVASIR / "images"),
                               "masks": str(KVASIR / "masks"), "negatives": str(DATA / "normal-mucosa"),
                               "split": ids_file(tmp_path / "ref.txt", TRAIN[10:16]), "limit": 6}},
    }
    (tmp_path / "job.yaml").write_text(json.dumps(job))
    with pytest.raises(SystemExit) as done:
        main(["run", str(tmp_path / "job.yaml")])
    assert done.value.code == 0
    with pytest.raises(SystemExit) as done:
        main(["export", str(tmp_path / "chain"), "--out", str(tmp_path / "ex")])
    assert done.value.code == 0
    lineage = Lineage.model_validate(json.loads((tmp_path / "ex" / "manifest.json").read_text())["runs"][0]["lineage"])
    assert set(lineage.donors.files.values()) <= set(TRAIN[:9])
    assert lineage.hosts.files == dict([tuple(reversed(_key(TRAIN[4]))), tuple(reversed(_key(TRAIN[8])))])  # cut from
    assert sorted(lineage.reference.files.values()) == sorted(TRAIN[10:16]) and len(lineage.negatives) == 6

    results = run_experiment(spec_for(tmp_path, {"transplant": str(tmp_path / "ex")}, evaluation, seeds=1, real_n=9))
    assert {r.trial.key for r in results} == {"real-r0-s0-epochs", "real-r1-s0-compute", "transplant-r1-s0-epochs",
                                              "transplant-r1-s0-steps"}
    gate_negatives = f"{DATA / 'normal-mucosa'}:{ids_file(tmp_path / 'n.txt', [stem(str(p)) for p in sorted((DATA / 'normal-mucosa').glob('*.jpg'))[:1]])}"
    with pytest.raises(TrainError, match="probe negatives include 1 evaluation images"):
        run_experiment(spec_for(tmp_path, {"transplant": str(tmp_path / "ex")}, evaluation, seeds=1, real_n=9,
                                negatives=[gate_negatives], out=str(tmp_path / "exp2")))


def test_trials_with_a_synthetic_arm_run_as_ray_tasks(tmp_path, evaluation):
    import ray

    run = str(tmp_path / "run")
    write_gated_run(run, kvasir_pairs(KVASIR, "train", 2), "ray", size=32)
    spec = spec_for(tmp_path, {"kvasir": run}, evaluation, seeds=1, executor="ray", ray_address="local")
    try:
        results = run_experiment(spec)  # a local Ray of its own: never another test's cluster
    finally:
        ray.shutdown()
    assert sorted((r.trial.key, r.steps) for r in results) == [
        ("kvasir-r1-s0-epochs", 2), ("kvasir-r1-s0-steps", 1), ("real-r0-s0-epochs", 1), ("real-r1-s0-compute", 2)]
    assert (tmp_path / "exp" / "checkpoints" / "kvasir-r1-s0-epochs.safetensors").exists()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a Ray task of one CPU runs: the same sums in the same order
    try:
        local = run_experiment(spec_for(tmp_path, {"kvasir": run}, evaluation, seeds=1, out=str(tmp_path / "local")))
    finally:
        torch.set_num_threads(threads)
    # the same trials in-process: Ray changes where trials run, not what they learn
    assert {r.trial.key: r.metrics for r in results} == {r.trial.key: r.metrics for r in local}


def _result(synthetic, budget, seed, dice, miss_small):
    """A finished trial with the figures a summary compares (no training: the summary's maths alone)."""
    from pipeline.train.trial import Trial, TrialResult

    return TrialResult(trial=Trial(synthetic=synthetic, ratio=0.0 if synthetic is None else 1.0, seed=seed,
                                   budget=budget), real_ids=[], synthetic_per_epoch=0, steps=1, samples_seen=1,
                       epochs=1, seconds=0.0,
                       metrics={"eval": {"dice": dice, "miss_rate": 0.1, "dice_small": dice / 2,
                                         "miss_small": miss_small}})


def test_each_generator_is_held_against_the_first_named_at_the_same_ratio_and_budget():
    """Paired by seed: the second set against the reference set, never against itself or across budgets."""
    from pipeline.train.summary import summarise, summary_markdown

    seeds = range(5)
    results = [_result(None, "epochs", s, 0.5 + s / 100, 0.5) for s in seeds]
    for budget in ("epochs", "steps"):
        results += [_result("untargeted", budget, s, 0.6 + s / 100, 0.5) for s in seeds]
        results += [_result("targeted", budget, s, 0.62 + s / 100 + (s % 2) / 1000, 0.5 - 0.1 * (s % 3 + 1))
                    for s in seeds]
    summary = summarise(results, reference="untargeted")
    against = {(c.arm, c.figure): c for c in summary.comparisons if c.control.startswith("untargeted")}
    assert {arm for arm, _ in against} == {"targeted r1, equal epochs", "targeted r1, equal steps"}
    dice = against[("targeted r1, equal epochs", "dice")]
    assert dice.control == "untargeted r1, equal epochs" and dice.verdict == "better"
    assert abs(dice.difference.mean - 0.0204) < 1e-9
    miss = against[("targeted r1, equal steps", "miss_small")]
    assert miss.verdict == "better" and abs(miss.difference.mean + 0.18) < 1e-9  # fewer small polyps missed
    assert "| targeted r1, equal steps | untargeted r1, equal steps |" in summary_markdown(summary)
    assert "miss <2%" in summary_markdown(summary)
    assert not any(c.control.startswith("untargeted") for c in summarise(results).comparisons)  # no reference named


def test_the_plot_grows_with_its_comparisons(tmp_path):
    """Many synthetic sets make many paired rows: the panel grows so that each keeps its height."""
    from PIL import Image

    from pipeline.train.summary import plot, summarise

    def height(sets: int) -> tuple[int, int]:
        results = [_result(None, "epochs", s, 0.5 + s / 100, 0.5) for s in range(5)]
        results += [_result(f"set{k}", budget, s, 0.55 + (s * k % 7) / 100, 0.4)
                    for k in range(sets) for budget in ("epochs", "steps") for s in range(5)]
        summary = summarise(results, reference="set0")
        plot(summary, tmp_path / f"{sets}.png")
        return Image.open(tmp_path / f"{sets}.png").height, len({(c.arm, c.control) for c in summary.comparisons})

    (few, _), (many, rows) = height(1), height(8)
    assert rows == 2 * 8 + 2 * 7  # each arm against real only, and each other set's against set0's
    assert few < many and many >= 0.4 * rows * 110 * 0.9  # about 0.4 in a row at the plot's 110 dpi


def test_experiments_pool_only_when_their_shared_trials_agree(tmp_path):
    """bench/pool_experiments.py pairs two runs' synthetic arms seed by seed when the trials both ran
    (real only) came out identical, and refuses, naming the trial, when they did not."""
    def run(name: str, synthetic: str, real_dice: float) -> Path:
        results = [_result(None, "epochs", s, real_dice + s / 100, 0.5) for s in range(5)]
        results += [_result(synthetic, "epochs", s, 0.6 + s / 100 + (synthetic == "b") * s / 1000, 0.4)
                    for s in range(5)]
        folder = tmp_path / name
        folder.mkdir()
        (folder / "trials.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in results))
        return folder

    def pool(*runs: Path) -> subprocess.CompletedProcess:
        script = Path(__file__).parents[1] / "bench" / "pool_experiments.py"
        return subprocess.run([sys.executable, str(script), "--reference", "a", "--out", str(tmp_path / "pooled"),
                               *map(str, runs)], capture_output=True, text=True, timeout=120)

    first, second = run("first", "a", 0.5), run("second", "b", 0.5)
    pooled = pool(first, second)
    assert pooled.returncode == 0, pooled.stderr
    assert "15 trials from 2 runs" in pooled.stdout
    table = (tmp_path / "pooled" / "table.md").read_text()
    assert "| b r1, equal epochs | a r1, equal epochs | **+0.002 [" in table  # b − a, paired by seed
    refused = pool(first, run("other", "b", 0.51))
    assert refused.returncode != 0 and "trial real-r0-s0-epochs differs between" in refused.stderr
    renamed = pool(first, second, run("third", "b", 0.5))  # the same name, maybe other data
    assert renamed.returncode != 0 and "synthetic set 'b' is in both" in renamed.stderr
