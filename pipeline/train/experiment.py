"""The experiment that says whether a synthetic set helps: real only against real + synthetic at each
ratio, several seeds, evaluated on held-out real sets; mean ± std per arm, a table and a plot.

Two budgets, because "more data" also means "more steps": at equal *epochs* each arm sees its real
pairs the same number of times (so larger ratios train longer); at equal *steps* every arm gets the
real-only arm's optimizer steps (so synthetic pairs replace real repetitions). A gain that only shows
at equal epochs is compute, not data — so a third, *compute* arm trains real only for as many steps
as the synthetic arms take at each ratio (at equal epochs).

Fair by construction: with `--real-n N` every trial trains on the first N ids of the real split, and a
synthetic set whose shards name their donors (`donor_id` = `<source id>/<k>`, transplant engine) is
refused unless every donor comes from those N images — otherwise the gain would measure extra real
data. Build its donors with `--split` = those N ids (`head -n N splits/train.txt`). Every trial records
the real ids it saw. Trials already in `trials.jsonl` are skipped: a killed experiment resumes.
Trials run one after another here, or as Ray tasks, one per GPU, on a cluster (`executor="ray"`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.core import storage
from pipeline.core.digests import json_digest
from pipeline.core.layout import ExperimentLayout
from pipeline.data.sources import DataSpec, PairRef, content_digest, resolve
from pipeline.errors import ExecutorError, TrainError
from pipeline.train.evaluate import evaluate
from pipeline.train.metrics import METRICS
from pipeline.train.segment import TrainSettings, train

log = logging.getLogger(__name__)

Budget = Literal["epochs", "steps", "compute"]


class Trial(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    synthetic: str | None  # name of the synthetic set; None: real only
    ratio: float
    seed: int
    budget: Budget
    steps: int | None = None  # for budget "steps"

    @property
    def key(self) -> str:
        """e.g. `gated-r1-s0-epochs`; `real-r1-s0-compute` is real only, as long as ratio 1 trains."""
        return f"{self.synthetic or 'real'}-r{self.ratio:g}-s{self.seed}-{self.budget}"


class TrialResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    trial: Trial
    experiment: str = ""  # ExperimentSpec.digest(content), stamped by run_experiment: never reused by another
    real_ids: list[str]
    synthetic_per_epoch: int
    steps: int
    epochs: int
    seconds: float
    metrics: dict[str, dict[str, float]]  # eval set → metric → mean over its images


@dataclass(frozen=True)
class ExperimentSpec:
    real: str
    synthetic: dict[str, str]  # name → export, run or shards
    evals: list[str]
    ratios: list[float]
    seeds: int
    real_n: int | None
    settings: TrainSettings
    out: str
    executor: Literal["local", "ray"] = "local"  # ray: one task per trial (a GPU each on a GPU cluster)
    ray_address: str | None = None  # None: RAY_ADDRESS, or a local Ray
    trial_timeout_s: float = 24 * 3600.0  # longest wait for the next trial to finish

    def digest(self, content: dict[str, Any]) -> str:
        """What a trial's result depends on besides the trial itself: data (named, and `content`: the
        digests of its files, so data regenerated at the same path is another experiment), evaluation
        and training settings (not where or how trials run, nor how many seeds or ratios: those only
        add trials)."""
        return json_digest({"real": self.real, "real_n": self.real_n, "synthetic": self.synthetic,
                            "evals": self.evals, "content": content,
                            "settings": self.settings.model_dump(mode="json", exclude={"device"})})


def donor_sources(files: Iterable[str]) -> set[str] | None:
    """Source image ids of the donors a synthetic set was made from; None when it names none."""
    sources: set[str] = set()
    named = False
    for url in files:
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            if "donor_id" not in parquet.schema_arrow.names:
                continue
            named = True
            ids = parquet.read(columns=["donor_id"]).column("donor_id").to_pylist()
        sources.update(i.split("/", 1)[0] for i in ids if i)
    return sources if named else None


def check_fair(name: str, source: str, real_ids: set[str] | None, eval_ids: set[str]) -> None:
    """A synthetic set may not be made from an evaluation image (that leaks the test set into
    training), nor, with `--real-n`, from a real image outside the trial's (that measures extra real
    data, not synthesis)."""
    donors = donor_sources(sorted({ref.source for ref in resolve(source) if ref.mask is None}))
    if donors is None:
        log.warning("synthetic set %s names no donors: its fairness cannot be checked", name)
        return
    leaked = sorted(donors & eval_ids)
    if leaked:
        raise TrainError(f"synthetic set {name} ({source}): {len(leaked)} donor images are evaluation images "
                         f"(e.g. {leaked[0]}); build its donors from the training split only")
    outside = sorted(donors - real_ids) if real_ids is not None else []
    if outside:
        raise TrainError(f"synthetic set {name} ({source}): {len(outside)} donor images are not among the trial's "
                         f"real images (e.g. {outside[0]}); build its donors from the same --real-n subset")


def trials(spec: ExperimentSpec, n_real: int) -> list[Trial]:
    """Per seed: real only; each synthetic set at each ratio at equal epochs and at the real-only
    steps; real only for as many steps as each ratio takes at equal epochs (the compute control)."""
    def steps_at(ratio: float) -> int:  # as the trainer counts: real + round(ratio · real) pairs an epoch
        return spec.settings.epochs * math.ceil((n_real + round(ratio * n_real)) / spec.settings.batch_size)

    steps_of_real = steps_at(0)
    out = []
    for seed in range(spec.seeds):
        out.append(Trial(synthetic=None, ratio=0.0, seed=seed, budget="epochs"))
        if spec.synthetic:
            out.extend(Trial(synthetic=None, ratio=ratio, seed=seed, budget="compute", steps=steps_at(ratio))
                       for ratio in spec.ratios if ratio > 0)
        for name in spec.synthetic:
            for ratio in spec.ratios:
                if ratio == 0:
                    continue
                out.append(Trial(synthetic=name, ratio=ratio, seed=seed, budget="epochs"))
                out.append(Trial(synthetic=name, ratio=ratio, seed=seed, budget="steps", steps=steps_of_real))
    return out


def _done(path: Path, experiment: str) -> dict[str, TrialResult]:
    """Finished trials of this experiment; a last line cut short by a kill is dropped (it reruns)."""
    if not path.exists():
        return {}
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    results = []
    for number, line in enumerate(lines, start=1):
        try:
            results.append(TrialResult.model_validate_json(line))
        except ValidationError:
            if number < len(lines):
                raise TrainError(f"{path} line {number}: not a trial result; move the file away to start over") from None
            log.warning("%s: dropping its last line, cut short (that trial runs again)", path)
            storage.write_bytes_atomic(str(path), "".join(f"{kept}\n" for kept in lines[:-1]).encode())
    other = [r.trial.key for r in results if r.experiment != experiment]
    if other:
        raise TrainError(f"{path}: holds trials of another experiment (other data, data with other content, "
                         f"evaluation or training settings, e.g. {other[0]}); use another --out, or move that "
                         "file away")
    return {r.trial.key: r for r in results}


def run_experiment(spec: ExperimentSpec) -> list[TrialResult]:
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    real = resolve(DataSpec.parse(spec.real))
    if spec.real_n is not None:
        if spec.real_n > len(real):
            raise TrainError(f"--real-n {spec.real_n}: {spec.real} has only {len(real)} images")
        real = real[: spec.real_n]
    evals = [resolve(DataSpec.parse(data)) for data in spec.evals]
    eval_ids = {ref.sample_id for refs in evals for ref in refs}
    for name, source in spec.synthetic.items():
        check_fair(name, source, {ref.sample_id for ref in real} if spec.real_n is not None else None, eval_ids)
    synthetic: dict[str, list[PairRef]] = {name: resolve(source) for name, source in spec.synthetic.items()}
    identity = spec.digest({"real": content_digest(real), "evals": [content_digest(refs) for refs in evals],
                            "synthetic": {name: content_digest(refs) for name, refs in synthetic.items()}})
    layout = ExperimentLayout(out)
    record = layout.trials
    done = _done(record, identity)
    todo = trials(spec, len(real))
    missing = [trial for trial in todo if trial.key not in done]
    run = _on_ray if spec.executor == "ray" else _one_after_another
    for result in run(spec, missing, real, synthetic):
        result = result.model_copy(update={"experiment": identity})
        with record.open("a") as handle:
            handle.write(result.model_dump_json() + "\n")
        done[result.trial.key] = result
    results = [done[trial.key] for trial in todo]
    summary = summarise(results)
    storage.write_bytes_atomic(str(layout.summary), json.dumps(summary, indent=2).encode())
    storage.write_bytes_atomic(str(layout.table), summary_markdown(summary).encode())
    plot(summary, layout.plot)
    return results


def run_trial(spec: ExperimentSpec, trial: Trial, real: list[PairRef], synthetic: dict[str, list[PairRef]]) -> TrialResult:
    """Train one arm's model (checkpoint under OUT/checkpoints/) and evaluate it on every eval set."""
    ratio = trial.ratio if trial.synthetic else 0.0  # a compute control's ratio names the arm it matches
    settings = spec.settings.model_copy(update={"seed": trial.seed, "ratio": ratio, "steps": trial.steps})
    checkpoint = ExperimentLayout(Path(spec.out)).checkpoint(trial.key)
    trained = train(real, settings, checkpoint, synthetic.get(trial.synthetic or "", []), [spec.real],
                    [spec.synthetic[trial.synthetic]] if trial.synthetic else [])
    reports = evaluate(str(checkpoint), spec.evals, spec.settings.device)
    return TrialResult(
        trial=trial, real_ids=trained.record.real_ids, synthetic_per_epoch=trained.record.synthetic_samples,
        steps=trained.record.steps, epochs=trained.record.epochs, seconds=trained.record.seconds,
        metrics={r.data: r.mean for r in reports},
    )


def _one_after_another(spec: ExperimentSpec, todo: list[Trial], real: list[PairRef],
                       synthetic: dict[str, list[PairRef]]) -> Iterator[TrialResult]:
    for index, trial in enumerate(todo):
        log.info("trial %d/%d: %s", index + 1, len(todo), trial.key)
        yield run_trial(spec, trial, real, synthetic)


def _on_ray(spec: ExperimentSpec, todo: list[Trial], real: list[PairRef],
            synthetic: dict[str, list[PairRef]]) -> Iterator[TrialResult]:
    """One Ray task per trial, a GPU each where the cluster has GPUs (else a CPU), results as they
    finish. OUT must be a folder every node can write (checkpoints), the data paths readable there."""
    import ray

    from pipeline.executors.ray import connect

    connect(spec.ray_address)
    gpus = ray.cluster_resources().get("GPU", 0)
    task = ray.remote(num_gpus=1, num_cpus=1)(run_trial) if gpus else ray.remote(num_cpus=1)(run_trial)
    pending = {task.remote(spec, trial, real, synthetic): trial for trial in todo}
    log.info("%d trials submitted to Ray (%s per trial)", len(pending), "a GPU" if gpus else "a CPU")
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=spec.trial_timeout_s)
            if not ready:
                raise ExecutorError(f"experiment: no trial finished within {spec.trial_timeout_s:.0f}s "
                                    f"({len(pending)} still running, e.g. {next(iter(pending.values())).key})")
            trial = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayError as exc:
                raise ExecutorError(f"experiment trial {trial.key} failed on Ray: {str(exc).splitlines()[0]}") from None
            log.info("trial %s done (%d left)", trial.key, len(pending))
            yield result
    finally:  # a failure, a timeout or Ctrl-C: no trial keeps its GPU after the driver gives up
        for ref in pending:
            ray.cancel(ref, force=True)


def summarise(results: list[TrialResult]) -> list[dict]:
    """One row per arm (synthetic set, ratio, budget): mean and std over seeds of each eval metric.
    The real-only arm serves both the epochs and the steps budget."""
    arms: dict[tuple[str, float, str], list[TrialResult]] = {}
    for result in results:
        t = result.trial
        budgets = ("epochs", "steps") if t.synthetic is None and t.budget == "epochs" else (t.budget,)
        for budget in budgets:
            arms.setdefault((t.synthetic or "real only", t.ratio, budget), []).append(result)
    rows = []
    for (name, ratio, budget), members in sorted(arms.items(), key=lambda kv: (kv[0][2], kv[0][0] != "real only",
                                                                                kv[0][0], kv[0][1])):
        sets = members[0].metrics.keys()
        figures = {data: {metric: {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
                          for metric in METRICS
                          for values in [[m.metrics[data][metric] for m in members]]}
                   for data in sets}
        rows.append({"synthetic": name, "ratio": ratio, "budget": budget, "seeds": len(members),
                     "steps": int(np.mean([m.steps for m in members])), "metrics": figures})
    return rows


def summary_markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    sets = list(rows[0]["metrics"])
    head = "| budget | synthetic | ratio | seeds | steps | " + " | ".join(
        f"{d} {m}" for d in sets for m in ("dice", "iou", "hd95")) + " |"
    lines = [head, "|" + " --- |" * (5 + 3 * len(sets))]
    for row in rows:
        cells = [f"{row['metrics'][d][m]['mean']:.3f} ± {row['metrics'][d][m]['std']:.3f}" if m != "hd95" else
                 f"{row['metrics'][d][m]['mean']:.1f} ± {row['metrics'][d][m]['std']:.1f}"
                 for d in sets for m in ("dice", "iou", "hd95")]
        lines.append(f"| {row['budget']} | {row['synthetic']} | {row['ratio']:g} | {row['seeds']} | {row['steps']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Dice against ratio, one line per (synthetic set, budget), error bars = std over seeds; one panel
    per evaluation set. The real-only arm is the ratio-0 point of every line; a dotted line is real
    only trained as long as each ratio (the compute control)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    sets = list(rows[0]["metrics"])
    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4), squeeze=False)
    for ax, data in zip(axes[0], sets):
        for budget in ("epochs", "steps"):
            base = [r for r in rows if r["budget"] == budget and r["synthetic"] == "real only"]
            for name in sorted({r["synthetic"] for r in rows} - {"real only"}) or ["real only"]:
                line = sorted(base + [r for r in rows if r["budget"] == budget and r["synthetic"] == name != "real only"],
                              key=lambda r: r["ratio"])
                ax.errorbar([r["ratio"] for r in line], [r["metrics"][data]["dice"]["mean"] for r in line],
                            yerr=[r["metrics"][data]["dice"]["std"] for r in line], marker="o", capsize=3,
                            linestyle="-" if budget == "epochs" else "--", label=f"{name}, equal {budget}")
        control = sorted([r for r in rows if r["budget"] == "epochs" and r["synthetic"] == "real only"]
                         + [r for r in rows if r["budget"] == "compute"], key=lambda r: r["ratio"])
        if len(control) > 1:
            ax.errorbar([r["ratio"] for r in control], [r["metrics"][data]["dice"]["mean"] for r in control],
                        yerr=[r["metrics"][data]["dice"]["std"] for r in control], marker="s", capsize=3,
                        linestyle=":", color="black", label="real only, as many steps as that ratio")
        ax.set_xlabel("synthetic : real ratio")
        ax.set_ylabel("Dice (mean ± std over seeds)")
        ax.set_title(data, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
