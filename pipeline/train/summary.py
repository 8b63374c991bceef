"""What an experiment found: per arm the mean ± std over seeds of each figure, per arm and control the
paired difference with its 95 % interval (`paired`); written as `summary.json`, `table.md` and
`plot.png` (per evaluation set: Dice against ratio, and the paired differences).

Controls: an arm at equal epochs is held against real only and against the compute control of its
ratio (real only, as many steps); an arm at equal steps against real only (the same steps); the
compute control itself against real only (what training longer alone gives). With several synthetic
sets, each is also held against the reference set (the first named: transplant, or the untargeted
set) at the same ratio and budget, so one generator is measured against another seed by seed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from pipeline.core import storage
from pipeline.core.layout import ExperimentLayout
from pipeline.core.lesion_bins import SIZE_BINS
from pipeline.train.paired import MIN_SEEDS, Difference, Verdict, paired_difference
from pipeline.train.segment import BATCH_RULE
from pipeline.train.trial import TrialResult

REAL_ONLY = "real only"
LOWER_IS_BETTER = {"hd95", "miss_rate", "fp_rate", *(f"miss_{name}" for name, *_ in SIZE_BINS)}
SMALLEST = SIZE_BINS[0][0]
SHOWN = ("dice", "iou", "hd95", *(f"dice_{name}" for name, *_ in SIZE_BINS), "miss_rate", f"miss_{SMALLEST}")
"""Figures of a labelled evaluation set in the tables: the miss rate overall and on the smallest polyps,
which segmenters miss most."""
COMPARED = (*SHOWN, "fp_rate")
"""Figures the paired differences are given for (those an evaluation set has)."""
_SIZE_LABELS = {name: label for name, _, _, label in SIZE_BINS}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Spread(_Model):
    mean: float | None
    std: float | None
    n: int  # seeds with a value


class Arm(_Model):
    """One arm: a synthetic set (or real only) at a ratio and budget, over its seeds."""

    synthetic: str
    ratio: float
    budget: str  # epochs | steps | compute
    seeds: list[int]
    steps: int
    samples_seen: int
    metrics: dict[str, dict[str, Spread]]  # eval set → figure → spread over seeds

    @property
    def label(self) -> str:
        return arm_label(self.synthetic, self.ratio, self.budget)


def arm_label(synthetic: str, ratio: float, budget: str) -> str:
    """How tables name an arm: `real only`, `real only, as long as ratio 2`, `gated r2, equal epochs`."""
    if budget == "compute":
        return f"real only, as long as ratio {ratio:g}"
    if synthetic == REAL_ONLY:
        return REAL_ONLY
    return f"{synthetic} r{ratio:g}, equal {budget}"


class Comparison(_Model):
    """Arm − control, paired by seed, for one figure of one evaluation set."""

    arm: str
    control: str
    data: str
    figure: str
    difference: Difference
    verdict: Verdict


class Summary(_Model):
    rule: str
    arms: list[Arm]
    comparisons: list[Comparison]

    @property
    def sets(self) -> list[str]:
        return list(self.arms[0].metrics) if self.arms else []


def _spread(values: list[float]) -> Spread:
    if not values:
        return Spread(mean=None, std=None, n=0)
    return Spread(mean=float(np.mean(values)), std=float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                  n=len(values))


def _arms(results: Iterable[TrialResult]) -> dict[tuple[str, float, str], list[TrialResult]]:
    """Trials grouped by arm; the real-only arm serves both the epochs and the steps budget."""
    arms: dict[tuple[str, float, str], list[TrialResult]] = {}
    for result in results:
        t = result.trial
        arms.setdefault((t.synthetic or REAL_ONLY, t.ratio, t.budget), []).append(result)
    return arms


def _values(members: list[TrialResult], data: str, figure: str) -> dict[int, float]:
    """Per seed, the figure's value where it has one."""
    out = {}
    for member in members:
        value = member.metrics.get(data, {}).get(figure)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            out[member.trial.seed] = float(value)
    return out


def _compare(arm: tuple[str, list[TrialResult]], control: tuple[str, list[TrialResult]]) -> list[Comparison]:
    (arm_label, arm_members), (control_label, control_members) = arm, control
    out = []
    for data in arm_members[0].metrics:
        for figure in COMPARED:
            a, c = _values(arm_members, data, figure), _values(control_members, data, figure)
            seeds = sorted(set(a) & set(c))
            difference = paired_difference([a[s] for s in seeds], [c[s] for s in seeds])
            if difference is not None:
                out.append(Comparison(arm=arm_label, control=control_label, data=data, figure=figure,
                                      difference=difference,
                                      verdict=difference.verdict(figure not in LOWER_IS_BETTER)))
    return out


def summarise(results: list[TrialResult], reference: str | None = None) -> Summary:
    """Arms and their paired comparisons; `reference` names the synthetic set the others are held against."""
    grouped = _arms(results)
    arms = []
    order = {"epochs": 0, "compute": 1, "steps": 2}  # real only, then its compute controls, then each set's arms
    for (name, ratio, budget), members in sorted(grouped.items(), key=lambda kv: (
            kv[0][0] != REAL_ONLY, kv[0][0], order[kv[0][2]], kv[0][1])):
        sets = members[0].metrics
        arms.append(Arm(
            synthetic=name, ratio=ratio, budget=budget, seeds=sorted(m.trial.seed for m in members),
            steps=int(np.mean([m.steps for m in members])), samples_seen=int(np.mean([m.samples_seen for m in members])),
            metrics={data: {figure: _spread(list(_values(members, data, figure).values())) for figure in sets[data]}
                     for data in sets}))
    labelled = {key: (arm_label(*key), members) for key, members in grouped.items()}
    comparisons = []
    real = labelled.get((REAL_ONLY, 0.0, "epochs"))
    for (name, ratio, budget), arm in sorted(labelled.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
        if (name, budget) == (REAL_ONLY, "epochs"):
            continue
        if real is not None:
            comparisons += _compare(arm, real)
        compute = labelled.get((REAL_ONLY, ratio, "compute"))
        if budget == "epochs" and compute is not None:
            comparisons += _compare(arm, compute)
        other = labelled.get((reference, ratio, budget))
        if name not in (REAL_ONLY, reference) and other is not None:
            comparisons += _compare(arm, other)
    return Summary(rule=BATCH_RULE, arms=arms, comparisons=comparisons)


def _cell(spread: Spread | None, figure: str) -> str:
    if spread is None or spread.mean is None:
        return "–"
    digits = 1 if figure == "hd95" else 3
    return f"{spread.mean:.{digits}f} ± {spread.std:.{digits}f}"


def _figure_label(figure: str) -> str:
    for name, label in _SIZE_LABELS.items():
        figure = figure.replace(f"dice_{name}", f"Dice {label}").replace(f"miss_{name}", f"miss {label}")
    return {"dice": "Dice", "iou": "IoU", "hd95": "HD95", "miss_rate": "miss rate", "fp_rate": "FP rate"}.get(figure, figure)


def _difference_cell(comparison: Comparison | None, figure: str) -> str:
    if comparison is None:
        return "–"
    d = comparison.difference
    digits = 1 if figure == "hd95" else 3
    text = f"{d.mean:+.{digits}f} [{d.low:+.{digits}f}, {d.high:+.{digits}f}]"
    return f"**{text}**" if comparison.verdict != "no claim" else text


def summary_markdown(summary: Summary) -> str:
    """Per evaluation set: the arms (mean ± std over seeds) and the paired differences (mean [95 % CI];
    bold where the interval excludes 0, the only differences that may be claimed)."""
    if not summary.arms:
        return ""
    lines = [f"Budget rule: {summary.rule}.", ""]
    for data in summary.sets:
        labelled = "dice" in summary.arms[0].metrics[data]
        figures = list(SHOWN if labelled else ("fp_rate",))
        sizes = {n: summary.arms[0].metrics[data].get(f"n_{n}") for n, *_ in SIZE_BINS} if labelled else {}
        counts = ", ".join(f"{_SIZE_LABELS[n]}: {int(s.mean)}" for n, s in sizes.items() if s and s.mean is not None)
        lines += [f"## {data}" + (f" (images by lesion size: {counts})" if counts else ""), ""]
        lines += ["| arm | seeds | steps | samples seen | " + " | ".join(_figure_label(f) for f in figures) + " |",
                  "|" + " --- |" * (4 + len(figures))]
        for arm in summary.arms:
            cells = [_cell(arm.metrics.get(data, {}).get(f), f) for f in figures]
            lines.append(f"| {arm.label} | {len(arm.seeds)} | {arm.steps} | {arm.samples_seen} | " + " | ".join(cells) + " |")
        pairs = _pairs(summary, data)
        if pairs:
            lines += ["", "Paired differences, arm − control on the same seed: mean [95 % CI]; **bold**: the "
                      f"interval excludes 0 over at least {MIN_SEEDS} seeds. Each interval is for its own comparison: "
                      f"of the {len(pairs) * len(figures)} here, about 1 in 20 would exclude 0 by chance alone.", "",
                      "| arm | control | " + " | ".join(_figure_label(f) for f in figures) + " |",
                      "|" + " --- |" * (2 + len(figures))]
            index = {(c.arm, c.control, c.figure): c for c in summary.comparisons if c.data == data}
            for arm, control in pairs:
                lines.append(f"| {arm} | {control} | "
                             + " | ".join(_difference_cell(index.get((arm, control, f)), f) for f in figures) + " |")
        lines.append("")
    return "\n".join(lines)


def write_summary(summary: Summary, layout: ExperimentLayout) -> None:
    storage.write_bytes_atomic(str(layout.summary), json.dumps(summary.model_dump(mode="json"), indent=2).encode())
    storage.write_bytes_atomic(str(layout.table), summary_markdown(summary).encode())
    plot(summary, layout.plot)


def plot(summary: Summary, path: Path) -> None:
    """Per labelled evaluation set, two panels: Dice against ratio (one line per synthetic set and
    budget, error bars = std over seeds; dotted: real only trained as long as each ratio), and the
    paired differences of Dice and of small-polyp Dice with their 95 % intervals; per set of
    polyp-free frames, the same for the false-positive rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [(d, "dice") for d in summary.sets if "dice" in summary.arms[0].metrics[d]]
    sets += [(d, "fp_rate") for d in summary.sets if "fp_rate" in summary.arms[0].metrics[d]]
    if not sets:
        return
    # a row of panels grows with its comparisons, so that their two-line labels never overlap
    heights = [max(4.2, 0.4 * len(_pairs(summary, data, figure))) for data, figure in sets]
    fig, axes = plt.subplots(len(sets), 2, figsize=(13, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for (left, right), (data, figure) in zip(axes, sets):
        _ratio_panel(left, summary, data, figure)
        _difference_panel(right, summary, data, figure)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ratio_panel(ax, summary: Summary, data: str, figure: str) -> None:
    def point(arm: Arm) -> tuple[float, float, float]:
        spread = arm.metrics[data][figure]
        return arm.ratio, spread.mean, spread.std

    real = [a for a in summary.arms if a.synthetic == REAL_ONLY and a.budget == "epochs"]
    for name in sorted({a.synthetic for a in summary.arms} - {REAL_ONLY}):
        for budget, style in (("epochs", "-"), ("steps", "--")):
            line = sorted(real + [a for a in summary.arms if a.synthetic == name and a.budget == budget],
                          key=lambda a: a.ratio)
            x, y, e = zip(*map(point, line))
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, linestyle=style, label=f"{name}, equal {budget}")
    control = sorted(real + [a for a in summary.arms if a.budget == "compute"], key=lambda a: a.ratio)
    if len(control) > 1:
        x, y, e = zip(*map(point, control))
        ax.errorbar(x, y, yerr=e, marker="s", capsize=3, linestyle=":", color="black",
                    label="real only, as many steps as that ratio")
    ax.set_xlabel("synthetic : real ratio")
    ax.set_ylabel(f"{_figure_label(figure)} (mean ± std over seeds)")
    ax.set_title(data, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _pairs(summary: Summary, data: str, figure: str | None = None) -> list[tuple[str, str]]:
    """(arm, control) of each comparison on `data` (of `figure` alone, if given), in the arms' order."""
    return sorted({(c.arm, c.control) for c in summary.comparisons
                   if c.data == data and figure in (None, c.figure)},
                  key=lambda p: ([a.label for a in summary.arms].index(p[0]), p[1]))


def _difference_panel(ax, summary: Summary, data: str, figure: str) -> None:
    small = SIZE_BINS[0]
    figures = ((("dice", "Dice", "tab:blue"), (f"dice_{small[0]}", f"Dice {small[3]}", "tab:orange"))
               if figure == "dice" else ((figure, _figure_label(figure), "tab:red"),))
    rows = _pairs(summary, data, figure)[::-1]  # the first arm at the top
    if not rows:
        ax.text(0.5, 0.5, "fewer than 2 seeds: no paired intervals", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    index = {(c.arm, c.control, c.figure): c for c in summary.comparisons if c.data == data}
    for offset, (shown, label, colour) in zip((0.15, -0.15) if len(figures) > 1 else (0.0,), figures):
        for y, (arm, control) in enumerate(rows):
            comparison = index.get((arm, control, shown))
            if comparison is None:
                continue
            d = comparison.difference
            ax.errorbar([d.mean], [y + offset], xerr=[[d.mean - d.low], [d.high - d.mean]], fmt="o", capsize=3,
                        color=colour, label=label if y == 0 else None,
                        markerfacecolor=colour if comparison.verdict != "no claim" else "white")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [f"{arm}\nvs {control}" for arm, control in rows], fontsize=7)
    ax.set_xlabel("paired difference, arm − control (95 % CI; filled: excludes 0)")
    ax.set_title(f"{data}: paired by seed", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8)
