"""The experiment that says whether a synthetic set helps: real only against real + synthetic at each
ratio, several seeds, evaluated on held-out real sets (and polyp-free frames); every arm compared
with its controls seed by seed (`paired`), in a table and a plot (`summary`).

Arms per seed. Budgets are optimizer steps of full batches, so steps fix samples seen
(`segment.BATCH_RULE`):
- real only, `epochs` over the real images;
- each synthetic set at each ratio at equal *epochs* (more pairs an epoch, so more steps), and at
  equal *steps* (the real-only arm's: synthetic pairs replace real repetitions);
- the *compute* control: real only for as many steps as each ratio's synthetic arm at equal epochs.
A gain only at equal epochs, and not against the compute control, is compute, not data.

Nothing an evaluation image reached may train (`leakage`): refused before the first trial. With
`--real-n N` every trial trains on the first N ids of the real split. Every trial records the real ids
it saw. Trials already in `trials.jsonl` are skipped: a killed experiment resumes. Trials run one
after another here, or as Ray tasks, one per GPU, on a cluster (`executor="ray"`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from pipeline.core import storage
from pipeline.core.digests import json_digest
from pipeline.core.layout import ExperimentLayout
from pipeline.data.sources import (
    DataSpec,
    PairRef,
    files_fingerprint,
    fingerprint,
    lineage,
    resolve,
    unlabelled_files,
)
from pipeline.errors import ExecutorError, TrainError
from pipeline.train.evaluate import evaluate
from pipeline.train.leakage import SyntheticSet, check_real, check_synthetic
from pipeline.train.segment import TrainSettings, steps_for, train
from pipeline.train.summary import summarise, write_summary
from pipeline.train.trial import Trial, TrialResult

log = logging.getLogger(__name__)

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
    negatives: list[str] = field(default_factory=list)  # folders of polyp-free frames: false positives
    executor: Literal["local", "ray"] = "local"  # ray: one task per trial (a GPU each on a GPU cluster)
    ray_address: str | None = None  # None: RAY_ADDRESS, or a local Ray
    trial_timeout_s: float = 24 * 3600.0  # longest wait for the next trial to finish

    @property
    def reference(self) -> str | None:
        """The synthetic set the others are held against: the first named."""
        return next(iter(self.synthetic), None)

    def digest(self, content: dict[str, Any]) -> str:
        """What a trial's result depends on besides the trial itself: data (named, and `content`: the
        digests of its files, so data regenerated at the same path is another experiment), evaluation
        and training settings (not where or how trials run, nor how many seeds or ratios: those only
        add trials)."""
        return json_digest({"real": self.real, "real_n": self.real_n, "synthetic": self.synthetic,
                            "evals": self.evals, "negatives": self.negatives, "content": content,
                            "settings": self.settings.model_dump(mode="json", exclude={"device"})})


def trials(spec: ExperimentSpec, n_real: int) -> list[Trial]:
    """Per seed: real only; each synthetic set at each ratio at equal epochs and at the real-only
    steps; real only for as many steps as each ratio takes at equal epochs (the compute control)."""
    settings = spec.settings

    def steps_at(ratio: float) -> int:  # as a synthetic arm at this ratio trains at equal epochs
        return steps_for(settings.epochs, n_real, ratio, settings.batch_size, synthetic_available=len(spec.synthetic))

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
                out.append(Trial(synthetic=name, ratio=ratio, seed=seed, budget="steps", steps=steps_at(0)))
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
                raise TrainError(f"{path} line {number}: not a trial result of this version; move the file "
                                 "away to start over") from None
            log.warning("%s: dropping its last line, cut short (that trial runs again)", path)
            storage.write_bytes_atomic(str(path), "".join(f"{kept}\n" for kept in lines[:-1]).encode())
    other = [r.trial.key for r in results if r.experiment != experiment]
    if other:
        raise TrainError(f"{path}: holds trials of another experiment (other data, data with other content, "
                         f"evaluation or training settings, e.g. {other[0]}); use another --out, or move that "
                         "file away")
    return {r.trial.key: r for r in results}


@dataclass(frozen=True)
class _Data:
    """The experiment's data, resolved and checked, and the digest of its content."""

    real: list[PairRef]
    synthetic: dict[str, list[PairRef]]
    identity: str


def _prepare(spec: ExperimentSpec) -> _Data:
    """Resolve every set, fingerprint it (every byte read once) and refuse leakage before any training."""
    real = resolve(DataSpec.parse(spec.real))
    if spec.real_n is not None:
        if spec.real_n > len(real):
            raise TrainError(f"--real-n {spec.real_n}: {spec.real} has only {len(real)} images")
        real = real[: spec.real_n]
    evals = [fingerprint(resolve(DataSpec.parse(data))) for data in spec.evals]
    negatives = [files_fingerprint(unlabelled_files(data)) for data in spec.negatives]
    evaluation = evals[0].keys
    for other in evals[1:] + negatives:
        evaluation = evaluation | other.keys
    real_print = fingerprint(real)
    check_real(real_print.keys, evaluation, spec.real)
    synthetic = {name: resolve(source) for name, source in spec.synthetic.items()}
    prints = {name: fingerprint(refs) for name, refs in synthetic.items()}
    for name, source in spec.synthetic.items():
        check_synthetic(SyntheticSet(name, source, prints[name].keys, lineage(source, synthetic[name])), evaluation,
                        real_print.keys if spec.real_n is not None else None)
    identity = spec.digest({"real": real_print.digest, "evals": [p.digest for p in evals],
                            "negatives": [p.digest for p in negatives],
                            "synthetic": {name: p.digest for name, p in prints.items()}})
    return _Data(real, synthetic, identity)


def run_experiment(spec: ExperimentSpec) -> list[TrialResult]:
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    data = _prepare(spec)
    layout = ExperimentLayout(out)
    done = _done(layout.trials, data.identity)
    todo = trials(spec, len(data.real))
    missing = [trial for trial in todo if trial.key not in done]
    run = _on_ray if spec.executor == "ray" else _one_after_another
    for result in run(spec, missing, data.real, data.synthetic):
        result = result.model_copy(update={"experiment": data.identity})
        with layout.trials.open("a") as handle:
            handle.write(result.model_dump_json() + "\n")
        done[result.trial.key] = result
    results = [done[trial.key] for trial in todo]
    write_summary(summarise(results, reference=spec.reference), layout)
    return results


def run_trial(spec: ExperimentSpec, trial: Trial, real: list[PairRef], synthetic: dict[str, list[PairRef]]) -> TrialResult:
    """Train one arm's model (checkpoint under OUT/checkpoints/) and evaluate it on every eval set."""
    ratio = trial.ratio if trial.synthetic else 0.0  # a compute control's ratio names the arm it matches
    settings = spec.settings.model_copy(update={"seed": trial.seed, "ratio": ratio, "steps": trial.steps})
    checkpoint = ExperimentLayout(Path(spec.out)).checkpoint(trial.key)
    trained = train(real, settings, checkpoint, synthetic.get(trial.synthetic or "", []), [spec.real],
                    [spec.synthetic[trial.synthetic]] if trial.synthetic else [])
    reports = evaluate(str(checkpoint), spec.evals, spec.settings.device, spec.negatives)
    record = trained.record
    return TrialResult(
        trial=trial, real_ids=record.real_ids, synthetic_per_epoch=record.synthetic_samples, steps=record.steps,
        samples_seen=record.samples_seen, epochs=record.epochs, seconds=record.seconds,
        metrics={r.data: r.figures() for r in reports},
    )


def _one_after_another(spec: ExperimentSpec, todo: list[Trial], real: list[PairRef],
                       synthetic: dict[str, list[PairRef]]) -> Iterator[TrialResult]:
    for index, trial in enumerate(todo):
        log.info("trial %d/%d: %s", index + 1, len(todo), trial.key)
        yield run_trial(spec, trial, real, synthetic)


def _trial_on_a_node(spec: ExperimentSpec, trial: Trial, real: list[PairRef],
                     synthetic: dict[str, list[PairRef]]) -> TrialResult:
    """`run_trial` as a Ray task: the result names the node that ran it."""
    import ray

    return run_trial(spec, trial, real, synthetic).model_copy(
        update={"node": ray.get_runtime_context().get_node_id()})


def _on_ray(spec: ExperimentSpec, todo: list[Trial], real: list[PairRef],
            synthetic: dict[str, list[PairRef]]) -> Iterator[TrialResult]:
    """One Ray task per trial, a GPU each where the cluster has GPUs (else a CPU), results as they
    finish. OUT must be a folder every node can write (checkpoints), the data paths readable there."""
    import ray

    from pipeline.executors.ray import connect

    connect(spec.ray_address)
    gpus = ray.cluster_resources().get("GPU", 0)
    # max_retries: a trial whose node or worker dies runs again elsewhere, at most twice (an error of
    # the trial itself is not retried). The rerun draws the same seeded data, steps and augmentations.
    task = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1, max_retries=2)(_trial_on_a_node)
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
            log.info("trial %s done on node %s (%d left)", trial.key, result.node[:6], len(pending))
            yield result
    finally:  # a failure, a timeout or Ctrl-C: no trial keeps its GPU after the driver gives up
        for ref in pending:
            ray.cancel(ref, force=True)
