"""The gate's report: one self-contained `report.html` (every image inline as base64) plus its PNGs.

It shows whether the run passed and why, the run's figures beside the reference, a histogram of
every score with its bound drawn, accepted and rejected contact sheets with the reasons under each
image, acceptance per shard and per attribute the engine honoured. Runs made with random weights say so first.
"""

from __future__ import annotations

import base64
import html
import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import GateConfig
from pipeline.core import parquet, storage
from pipeline.core.images import decode_image
from pipeline.core.layout import RunLayout
from pipeline.core.lesion_bins import SIZE_BINS
from pipeline.gate.checks import CHECKS, SURPLUS
from pipeline.gate.metrics import fid, kid
from pipeline.gate.reference import Reference
from pipeline.gate.verdicts import GateMetrics, SetMetrics
from pipeline.generate.shards import RANDOM_WEIGHTS_WARNING
from pipeline.plan.plan import Plan

SHEET_SAMPLES = 12


def _histogram_png(name: str, values: np.ndarray, bound: float | None, fail_below: bool) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = values[np.isfinite(values)]
    figure, axes = plt.subplots(figsize=(4.2, 2.6), dpi=100)
    if len(finite):
        axes.hist(finite, bins=30, color="#4878a8")
    else:
        axes.text(0.5, 0.5, "not applicable", ha="center", va="center", transform=axes.transAxes)
    if bound is not None:
        axes.axvline(bound, color="#c0392b", linestyle="--", linewidth=2)
        axes.annotate(f"{'min' if fail_below else 'max'} {bound:g}", (bound, 0.95), xycoords=("data", "axes fraction"),
                      color="#c0392b", ha="left", va="top", fontsize=8)
    axes.set_title(name, fontsize=10)
    axes.set_ylabel("samples", fontsize=8)
    axes.tick_params(labelsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def _sheet_png(layout: RunLayout, picks: list[tuple[int, str, str]]) -> bytes | None:
    """Contact sheet of (shard_index, sample_id, caption) picks, read from the shards."""
    from pipeline.core.sheets import contact_sheet, tile

    if not picks:
        return None
    cells = []
    for index in sorted({p[0] for p in picks}):
        wanted = {sample_id: caption for shard, sample_id, caption in picks if shard == index}
        table = parquet.read(layout.shard(index), columns=["sample_id", "image", "mask"])
        for row in table.to_pylist():
            if row["sample_id"] in wanted:
                cells.append(tile(decode_image(row["image"]["bytes"]), decode_image(row["mask"]["bytes"]),
                                  wanted[row["sample_id"]]))
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "sheet.png"
        contact_sheet(cells, str(out))
        return out.read_bytes()


def _picks(run: Any, reasons: list[list[str]], scores: dict[str, np.ndarray], accepted: bool) -> list[tuple[int, str, str]]:
    """Up to SHEET_SAMPLES samples; for rejections, every reason is shown before any repeats."""
    chosen: list[int] = []
    if accepted:
        chosen = [i for i, r in enumerate(reasons) if not r][:SHEET_SAMPLES]
    else:  # surplus samples passed every check: not shown as rejections
        rejected = [i for i, r in enumerate(reasons) if r and r != [SURPLUS]]
        by_reason: dict[str, list[int]] = {}
        for i in rejected:
            by_reason.setdefault(reasons[i][0], []).append(i)
        while len(chosen) < min(SHEET_SAMPLES, len(rejected)):
            for group in by_reason.values():
                if group and len(chosen) < SHEET_SAMPLES:
                    chosen.append(group.pop(0))
    picks = []
    for i in chosen:
        text = "accepted" if accepted else "REJECTED: " + ", ".join(reasons[i])
        shown = ("negative_lesion_area",) if run.negative[i] else ("realism", "lesion_score")  # what judged it
        detail = " ".join(f"{k}={scores[k][i]:.3g}" for k in shown if np.isfinite(scores[k][i]))
        picks.append((int(run.shard_indices[i]), run.sample_ids[i], f"{text}. {detail}"))
    return picks


def _attribute_rates(layout: RunLayout, run: Any, accepted: np.ndarray,
                     judged: np.ndarray) -> list[tuple[str, str, int, float]]:
    """(attribute, value, samples, acceptance rate), worst first within each attribute: the categorical
    attributes a sample records, which are those its engine honoured (a transplant sample never
    records the prompt's colour or NICE type; measured numbers such as a donor's shape are left out)."""
    position = {sample_id: i for i, sample_id in enumerate(run.sample_ids)}
    groups: dict[tuple[str, str], list[bool]] = {}
    for index in sorted(set(run.shard_indices.tolist())):
        table = parquet.read(layout.shard(index), columns=["sample_id", "attributes"])
        for sample_id, attributes in zip(table.column("sample_id").to_pylist(), table.column("attributes").to_pylist()):
            if not judged[position[sample_id]]:
                continue
            for name, value in (attributes or {}).items():
                if value is None or isinstance(value, float):
                    continue
                groups.setdefault((name, str(value)), []).append(bool(accepted[position[sample_id]]))
    rows = [(name, value, len(flags), float(np.mean(flags))) for (name, value), flags in groups.items()]
    return sorted(rows, key=lambda r: (r[0], r[3], r[1]))


def _sizes(plan: Plan | None, metrics: GateMetrics) -> str:
    """Lesion sizes generated and accepted (the labels' areas), against what the plan asked when it
    was aimed (`targets`): the gate's rejections must not skew the distribution unseen."""
    columns = dict(metrics.sizes)
    targets = plan.meta.targets if plan else None
    if targets is not None:
        columns = {"natural": targets.natural, "asked": targets.asked, **columns}
    head = "".join(f"<th>{name}</th>" for name in columns) + ("<th>why</th>" if targets else "")
    rows = "".join(f"<tr><th>{html.escape(label)}</th>" + "".join(f"<td>{shares[name]:.3f}</td>" for shares in columns.values())
                   + (f"<td style='text-align:left'>{html.escape(targets.why[name])}</td>" if targets else "") + "</tr>"
                   for name, _, _, label in SIZE_BINS)
    source = f"<p>Aimed with {html.escape(targets.source)}.</p>" if targets else ""
    return f"{source}<table><tr><th>size</th>{head}</tr>{rows}</table>"


def _rounds(plan: Plan | None) -> str:
    """The rounds of a job that asked for accepted samples: what each planned, and why."""
    if plan is None or len(plan.rounds) < 2:
        return ""
    rows = "".join(f"<tr><th>{r.index}</th><td>{r.samples}</td><td>{r.first_shard}</td>"
                   f"<td style='text-align:left'>{html.escape(r.why)}</td></tr>" for r in plan.rounds)
    return ("<h2>Rounds</h2><p>Each round planned replacements for the samples the gate had rejected, until the "
            f"job's accepted samples were reached or its budget spent.</p><table><tr><th>round</th><th>planned</th>"
            f"<th>first shard</th><th>why</th></tr>{rows}</table>")


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def _figures_table(rows: list[tuple[str, SetMetrics]]) -> str:
    names = ("n", "kid", "kid_std", "fid", "precision", "recall", "density", "coverage")
    head = "".join(f"<th>{n}</th>" for n in names)
    body = "".join(f"<tr><th>{html.escape(label)}</th>" + "".join(f"<td>{_fmt(getattr(m, n))}</td>" for n in names)
                   + "</tr>" for label, m in rows)
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


_STYLE = """
body{font-family:sans-serif;margin:24px;max-width:1240px;color:#222}
h1{margin-bottom:4px} h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
.pass{color:#1e7e34}.fail{color:#c0392b}
.banner{background:#c0392b;color:#fff;padding:14px 18px;font-size:18px;font-weight:bold;border-radius:4px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}
th{background:#f3f3f3}.hist img{width:400px;margin:4px}.sheet img{max-width:100%}
.low{background:#fde2e0}
"""


def render(metrics: GateMetrics, reference: Reference, histograms: dict[str, bytes], sheets: dict[str, bytes | None],
           attribute_rates: list[tuple[str, str, int, float]], sizes: str, rounds: str) -> str:
    m = metrics
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>gate report: {html.escape(m.run_id)}</title>"
             f"<style>{_STYLE}</style></head><body>"]
    if m.random_weights:
        parts.append(f"<p class='banner'>WARNING: this run was {html.escape(RANDOM_WEIGHTS_WARNING)}.</p>")
    verdict = "<span class='pass'>PASSED</span>" if m.passed else "<span class='fail'>FAILED</span>"
    parts.append(f"<h1>Gate report: {html.escape(m.run_id)} — {verdict}</h1>")
    parts.append(f"<p>{m.samples.accepted} of {m.samples.total} samples accepted "
                 f"({100 * m.samples.accepted / max(1, m.samples.total):.1f}%). Gated {html.escape(m.gated_at)}, "
                 f"plan {html.escape(m.plan_digest)}, extractor {html.escape(m.extractor)}.</p>")
    if m.samples.negatives:
        parts.append(f"<p>Of them {m.samples.negatives} hard negatives (empty labels), {m.samples.negatives_accepted} "
                     "accepted: judged only by the checks of every sample and by lesion_in_negative (with "
                     "gate.segmenter: no lesion may be found where the label has none); the set figures below "
                     "are of the polyp samples."
                     + ("" if m.bounds.get("segmenter") else " <b>No gate.segmenter was set: nothing checked that "
                        "they hold no lesion.</b>") + "</p>")
    if m.failures:
        parts.append("<ul class='fail'>" + "".join(f"<li>{html.escape(f)}</li>" for f in m.failures) + "</ul>")
    ref = m.reference
    parts.append("<h2>Set-level figures</h2>")
    parts.append(f"<p>Against reference <code>{html.escape(ref.digest)}</code>: {ref.images} real images, "
                 f"{ref.crops} lesion crops, {ref.negatives} negative crops ({html.escape(ref.extractor)}). "
                 "KID ≈ 0 means indistinguishable from the reference; a held-out real set scores about 0 "
                 "(negative values are estimator noise).</p>")
    parts.append(_figures_table([("all samples", m.run), ("accepted samples", m.accepted)]))
    half_kid, _ = kid(reference.images[::2], reference.images[1::2])
    parts.append(f"<p>Noise floor: the reference's two halves ({len(reference.images[1::2])} images each) are "
                 f"at KID {_fmt(half_kid)}, FID {_fmt(fid(reference.images[::2], reference.images[1::2]))} from "
                 "each other. FID is biased upwards below a few thousand samples; KID is the figure to trust "
                 "at small n.</p>")
    parts.append(f"<p>Diversity (mean MS-SSIM over sampled pairs, lower = more diverse): {_fmt(m.diversity)}</p>")
    parts.append("<h2>Rejections by reason</h2><table><tr><th>reason</th><th>samples</th></tr>"
                 + "".join(f"<tr><th>{html.escape(r)}</th><td>{n}</td></tr>" for r, n in sorted(m.samples.by_reason.items()))
                 + "</table>")
    parts.append("<h2>Scores and their bounds</h2><div class='hist'>"
                 + "".join(_img(png, name) for name, png in histograms.items()) + "</div>")
    for title, key in (("Rejected samples (reasons under each image)", "rejected"), ("Accepted samples", "accepted")):
        parts.append(f"<h2>{title}</h2>")
        parts.append(f"<div class='sheet'>{_img(sheets[key], key)}</div>" if sheets[key] else "<p>none</p>")
    parts.append("<h2>Shards</h2><table><tr><th>shard</th><th>samples</th><th>accepted</th><th>KID</th>"
                 "<th>KID std</th><th>rejected whole</th></tr>")
    parts.extend(f"<tr><th>{s.shard_index}</th><td>{s.samples}</td><td>{s.accepted}</td><td>{_fmt(s.kid)}</td>"
                 f"<td>{_fmt(s.kid_std)}</td><td>{'yes' if s.rejected_whole else ''}</td></tr>" for s in m.shards)
    parts.append("</table><h2>Acceptance by attribute (what the engine honoured)</h2>"
                 "<table><tr><th>attribute</th><th>value</th><th>samples</th><th>accepted</th></tr>")
    overall = m.samples.accepted / max(1, m.samples.total)
    parts.extend(f"<tr{' class=low' if rate < overall - 0.1 else ''}><th>{html.escape(a)}</th><td>{html.escape(v)}</td>"
                 f"<td>{n}</td><td>{100 * rate:.0f}%</td></tr>" for a, v, n, rate in attribute_rates)
    parts.append("</table><h2>Lesion sizes (share of the frame): generated and accepted</h2>" + sizes + rounds)
    parts.append("<h2>Bounds</h2>" + "".join(f"<p>{html.escape(note)}</p>" for note in m.notes) + "<table>"
                 + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in m.bounds.items())
                 + "</table></body></html>")
    return "".join(parts)


def write_report(layout: RunLayout, metrics: GateMetrics, reference: Reference, run: Any,
                 scores: dict[str, np.ndarray], reasons: list[list[str]], gate: GateConfig) -> None:
    """Write `report.html` and its PNGs (histograms, contact sheets) under the run's gate folder."""
    histograms = {}
    for spec in CHECKS:
        if spec.reason == "non_finite":  # a 0/1 flag: its count is in the table of reasons
            continue
        png = _histogram_png(spec.score, np.asarray(scores[spec.score], np.float64), spec.bound(gate), spec.fail_below)
        storage.write_bytes_atomic(layout.gate_file(f"hist_{spec.score}.png"), png)
        histograms[spec.score] = png
    sheets = {}
    for key in ("rejected", "accepted"):
        sheets[key] = _sheet_png(layout, _picks(run, reasons, scores, key == "accepted"))
        if sheets[key]:
            storage.write_bytes_atomic(layout.gate_file(f"{key}.png"), sheets[key])
    accepted = np.array([not r for r in reasons])
    judged = np.array([r != [SURPLUS] for r in reasons])  # a surplus sample says nothing of its attributes
    plan = Plan.read(layout.root) if storage.exists(layout.plan) else None
    page = render(metrics, reference, histograms, sheets, _attribute_rates(layout, run, accepted, judged),
                  _sizes(plan, metrics), _rounds(plan))
    storage.write_bytes_atomic(layout.gate_report, page.encode())
