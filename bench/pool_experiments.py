"""One table from several experiments that differ only in their synthetic sets.

    python bench/pool_experiments.py --reference untargeted --out runs/exp/pooled \
        runs/exp/negatives-added-128-e8-s5 runs/exp/negatives-kinds-128-e8-s5

`experiment` pairs arms only within one run (a new synthetic set is a new experiment, and its
`trials.jsonl` refuses the old one's trials). Two runs with the same real subset, seeds, evaluation
sets and training settings train the same real-only and compute-control trials; where those come out
identical, figure for figure, each synthetic arm of one run is paired seed by seed with the other's
as if they had been one run. This pools them, refusing when any trial both runs hold differs (other
data or settings, or a machine that trains differently) and when one synthetic set's name comes from
two runs (a name says nothing of the data behind it), and writes `table.md`, `summary.json` and
`plot.png`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.core.layout import ExperimentLayout
from pipeline.train.summary import summarise, write_summary
from pipeline.train.trial import TrialResult


def pooled(runs: list[Path]) -> list[TrialResult]:
    """Every trial of `runs`, once: a real-only trial found in several runs must agree on data and
    figures; a synthetic set must come from one run."""
    seen: dict[str, tuple[Path, TrialResult]] = {}
    sets: dict[str, Path] = {}
    for run in runs:
        trials = ExperimentLayout(run).trials
        if not trials.is_file():
            raise SystemExit(f"{run}: no {trials.name}; not an experiment folder (`experiment --out`)")
        for line in trials.read_text().splitlines():
            if not line.strip():
                continue
            result = TrialResult.model_validate_json(line)
            name, key = result.trial.synthetic, result.trial.key
            if name is not None and sets.setdefault(name, run) != run:
                raise SystemExit(f"synthetic set {name!r} is in both {sets[name]} and {run}: rename one to pool them")
            if key not in seen:
                seen[key] = (run, result)
                continue
            first, kept = seen[key]
            if (kept.real_ids, kept.steps, kept.metrics) != (result.real_ids, result.steps, result.metrics):
                raise SystemExit(f"trial {key} differs between {first} and {run}: these runs cannot be paired")
    return [result for _, result in seen.values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="experiment folders (`experiment --out`)")
    parser.add_argument("--reference", required=True, help="the synthetic set the others are held against")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    results = pooled(args.runs)
    names = {r.trial.synthetic for r in results} - {None}
    if args.reference not in names:
        raise SystemExit(f"--reference {args.reference!r} is none of the pooled sets: {', '.join(sorted(names))}")
    args.out.mkdir(parents=True, exist_ok=True)
    write_summary(summarise(results, reference=args.reference), ExperimentLayout(args.out))
    print(f"{len(results)} trials from {len(args.runs)} runs → {ExperimentLayout(args.out).table}")


if __name__ == "__main__":
    main()
