"""`polyp-synth gate RUN_DIR`: features and pixel scores per shard (through the executors, cached),
then reference-based scores, verdicts, metrics and the report.

Shards are read, never rewritten. The per-shard work (decode, features of the image and of the
label's crop, pixel scores, pairs for diversity) is cached at `gate/features/<extractor>/shard-N.parquet`
and reused while the shard (checksum of its completion record) and the set of pixel scores are
unchanged, so gating again with other bounds recomputes nothing but the cheap part.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.config import GateConfig, GateReferenceConfig, JobConfig, config_from_dict
from pipeline.core import parquet, storage
from pipeline.core.images import decode_image, resize_image
from pipeline.core.labelled import split_digest
from pipeline.core.layout import ReferenceLayout, RunLayout
from pipeline.core.lineage import Lineage
from pipeline.errors import FrameCatalogError, GateError
from pipeline.executors.base import Executor, RunContext
from pipeline.gate import checks, metrics
from pipeline.gate.features import Extractor, lesion_crop, make_extractor
from pipeline.gate.reference import Reference, build_reference, compare
from pipeline.gate.verdicts import (
    GateMetrics,
    SampleCounts,
    SetMetrics,
    ShardVerdict,
    verdict_table,
    write_metrics,
)
from pipeline.generate.composite import repaint_region
from pipeline.generate.manifest import RunManifest
from pipeline.generate.shards import made_with_random_weights, read_shard, shard_footer
from pipeline.plan.frames import load_frame
from pipeline.plan.negatives import negative_of
from pipeline.plan.targets import size_shares
from pipeline.segmenter.model import read_record

log = logging.getLogger(__name__)

_SHARD_COLUMNS = ["sample_id", "image", "mask", "width", "height", "source_frame", "source_sha256", "engine",
                  "mask_params"]


@dataclass
class FeatureShardResult:
    shard_index: int
    samples: int
    cached: bool


def _shard_checksum(layout: RunLayout, shard_index: int) -> str:
    try:
        return json.loads(storage.read_bytes(layout.shard_done(shard_index)))["sha256"]
    except (FileNotFoundError, KeyError, ValueError):
        raise GateError(f"{layout.shard_done(shard_index)}: missing completion record; "
                        "the shard is incomplete (generate the run again)") from None


def _source(row: dict[str, Any]) -> np.ndarray | None:
    """The sample's source frame at its size, as planned (its bytes checked against `source_sha256`);
    None when it cannot be read or changed: the checks that need it cannot score the sample."""
    try:
        return resize_image(load_frame(row["source_frame"], row.get("source_sha256")), (row["width"], row["height"]))
    except FrameCatalogError as exc:
        log.warning("sample %s: %s: unpainted and leaked cannot score it (if it is a polyp sample)",
                    row["sample_id"], exc)
        return None


class FeatureWorker:
    """Per shard: features of each image and of its label's crop, pixel scores, diversity pairs."""

    def __init__(self, context: RunContext):
        self.gate = context.config.gate
        self.layout = context.layout
        self.name = self.gate.extractor
        self.scorers = checks.pixel_scorers(self.gate)
        self.pairs = self.gate.diversity_pairs

    @functools.cached_property
    def extractor(self) -> Extractor:
        """Loaded on the first shard not in the cache: a re-gate from the cache loads no network."""
        return make_extractor(self.name, self.gate.inception_path, self.gate.device, self.gate.batch_size)

    def cache_key(self, shard_index: int) -> dict[str, Any]:
        weights = self.gate.inception_path if self.name == "inception" else None  # another file, other features
        return {"shard_sha256": _shard_checksum(self.layout, shard_index), "extractor": self.name, "weights": weights,
                "scores": sorted(self.scorers), "diversity_pairs": self.pairs,
                "scorers": {name: getattr(s, "identity", "") for name, s in sorted(self.scorers.items())}}

    def cached(self, shard_index: int, key: dict[str, Any]) -> bool:
        try:
            with parquet.read_footer(self.layout.features(self.name, shard_index)) as footer:
                return parquet.provenance(footer.schema_arrow).get("key") == key
        except (FileNotFoundError, OSError, KeyError, ValueError, pa.ArrowInvalid):
            return False

    def run(self, shard_index: int, rows: list[dict[str, Any]]) -> FeatureShardResult:
        key = self.cache_key(shard_index)
        if self.cached(shard_index, key):
            return FeatureShardResult(shard_index, len(rows), cached=True)
        table = read_shard(self.layout.shard(shard_index)).select(_SHARD_COLUMNS)
        samples = []
        for row in table.to_pylist():
            image, mask = decode_image(row["image"]["bytes"]), decode_image(row["mask"]["bytes"])
            engine = row["engine"] or {}
            alpha = repaint_region(mask, engine.get("mask_dilation") or 0, engine.get("mask_feather") or 0)
            samples.append(checks.Sample(row["sample_id"], image, mask, _source(row), alpha > 0, row))
        images = [s.image for s in samples]
        crops = [lesion_crop(s.image, s.mask) for s in samples]
        features = self.extractor(images)
        crop_features = self.extractor([c if c is not None else s.image for c, s in zip(crops, samples)])
        columns: dict[str, pa.Array] = {
            "sample_id": pa.array([s.sample_id for s in samples], pa.string()),
            "has_label": pa.array([c is not None for c in crops], pa.bool_()),
            # a hard negative is what the plan made one, never merely an empty label
            "negative": pa.array([negative_of(s.row["mask_params"]) is not None for s in samples], pa.bool_()),
            "features": _fixed_list(features), "crop_features": _fixed_list(crop_features),
        }
        for name, scorer in self.scorers.items():
            columns[name] = pa.array(np.asarray(scorer(samples), np.float64), pa.float64())
        diversity = _pair_ms_ssim(images, self.pairs, shard_index)
        parquet.write(self.layout.features(self.name, shard_index), pa.table(columns),
                      {"key": key, "diversity": diversity})
        return FeatureShardResult(shard_index, len(rows), cached=False)


def make_feature_worker(context: RunContext) -> FeatureWorker:
    return FeatureWorker(context)


def _fixed_list(values: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), pa.float32()), values.shape[1])


def _pair_ms_ssim(images: list[np.ndarray], pairs: int, seed: int) -> list[float]:
    """MS-SSIM of `pairs` random pairs of distinct images of a shard, at 176²."""
    if len(images) < 2 or pairs == 0:
        return []
    rng = np.random.default_rng(seed)
    picks = [rng.choice(len(images), 2, replace=False) for _ in range(pairs)]
    size = (checks.MS_SSIM_SIDE, checks.MS_SSIM_SIDE)
    a = np.stack([resize_image(images[i], size) for i, _ in picks])
    b = np.stack([resize_image(images[j], size) for _, j in picks])
    return [float(v) for v in metrics.ms_ssim(a, b)]


@dataclass(frozen=True)
class RunFeatures:
    """Everything cached for a run, concatenated in shard order."""

    sample_ids: list[str]
    shard_indices: np.ndarray
    features: np.ndarray
    crop_features: np.ndarray
    has_label: np.ndarray
    negative: np.ndarray  # planned hard negatives (`negatives:`)
    pixel_scores: dict[str, np.ndarray]
    diversity_pairs: list[float]


def _read_features(layout: RunLayout, extractor: str, shards: list[int]) -> RunFeatures:
    tables, diversity = [], []
    for index in shards:
        table = parquet.read(layout.features(extractor, index))
        diversity += parquet.provenance(table.schema)["diversity"]
        tables.append(table.append_column("shard_index", pa.array([index] * table.num_rows, pa.int32())))
    table = pa.concat_tables(tables)
    fixed = {"sample_id", "shard_index", "has_label", "negative", "features", "crop_features"}

    def matrix(name: str) -> np.ndarray:
        column = table.column(name).combine_chunks()
        return column.flatten().to_numpy().reshape(len(column), -1)

    return RunFeatures(
        sample_ids=table.column("sample_id").to_pylist(),
        shard_indices=table.column("shard_index").to_numpy(),
        features=matrix("features"), crop_features=matrix("crop_features"),
        has_label=table.column("has_label").to_numpy(zero_copy_only=False),
        negative=table.column("negative").to_numpy(zero_copy_only=False),
        pixel_scores={n: table.column(n).to_numpy() for n in table.column_names if n not in fixed},
        diversity_pairs=diversity,
    )


def gate_config(run_dir: str, overrides: list[str] = ()) -> JobConfig:
    """The run's job config as generated, with `--set` overrides (e.g. other gate bounds)."""
    return config_from_dict(RunManifest.read(run_dir).config, f"{run_dir} (the run's config)", list(overrides))


def load_or_build_reference(gate: GateConfig) -> Reference:
    """The configured reference; built from `gate.reference.images` when it is not there yet."""
    settings = gate.reference
    if storage.exists(ReferenceLayout(settings.path).record) or not settings.images:
        reference = Reference.load(settings.path, gate.nearest_k)
        if settings.images:  # one this job would build: it must be what the job would build
            check_source(reference, settings)
    else:
        log.info("building the reference %s from %s", settings.path, settings.images)
        extractor = make_extractor(gate.extractor, gate.inception_path, gate.device, gate.batch_size)
        reference = build_reference(settings.images, extractor, settings.masks, settings.negatives,
                                    settings.limit, nearest_k=gate.nearest_k, split=settings.split)
        reference.save(settings.path)
    if reference.identity.extractor != gate.extractor:
        raise GateError(f"{settings.path}: reference made with {reference.identity.extractor}, but "
                        f"gate.extractor is {gate.extractor}; build one with that extractor")
    return reference


def _split_name(split: str | None) -> str:
    return f"the split {split}" if split else "no split (every image)"


def check_source(reference: Reference, settings: GateReferenceConfig) -> None:
    """A reference built on first use stays tied to its source: an edited `split` (its contents) or
    `limit` must not silently keep the old reference. One made before split contents were recorded is
    held to its split's path. The images, masks and negatives folders are not compared (they are
    named, not versioned: a changed folder needs a new `path`)."""
    built = reference.identity.settings
    changed = []
    if built.get("limit") != settings.limit:
        changed.append(f"it was built with limit {built.get('limit')}, gate.reference.limit is {settings.limit}")
    if "split_digest" in built:
        try:
            wanted = split_digest(settings.split, GateError)
        except GateError as exc:
            raise GateError(f"gate.reference.split: {exc} (needed to check {settings.path} against the split "
                            "it was built from)") from None
        if built["split_digest"] == wanted:
            pass
        elif built.get("split") == settings.split:
            changed.append(f"the contents of the split {settings.split} changed since it was built")
        else:
            changed.append(f"it was built from {_split_name(built.get('split'))}, gate.reference.split is {settings.split}")
    elif built.get("split") != settings.split:
        changed.append(f"it was built from {_split_name(built.get('split'))}, gate.reference.split is {settings.split}")
    if changed:
        raise GateError(f"gate.reference: {settings.path}: {'; '.join(changed)}; delete it to rebuild, or name "
                        "a new gate.reference.path")


def shard_kids(reference: Reference, run: RunFeatures) -> dict[int, tuple[float | None, float | None]]:
    """Per shard, the KID (± std) of its label crops against the reference's lesion crops (whole
    images when it has none); None for a shard of one sample, which has no KID (the `shard_kid`
    check does not apply to its samples). Hard negatives have no lesion and are left out."""
    finite = np.isfinite(run.features).all(1) & np.isfinite(run.crop_features).all(1) & ~run.negative
    out = {}
    for index in np.unique(run.shard_indices).tolist():
        rows = (run.shard_indices == index) & finite
        out[index] = (metrics.kid(reference.crops, run.crop_features[rows]) if reference.crops is not None
                      else metrics.kid(reference.images, run.features[rows]))
    return out


def per_sample(kids: dict[int, tuple[float | None, float | None]], run: RunFeatures) -> np.ndarray:
    """The `shard_kid` score of each sample: its shard's KID (NaN where there is none)."""
    return np.array([np.nan if kids[i][0] is None else kids[i][0] for i in run.shard_indices.tolist()], np.float64)


def usable_bounds(gate: GateConfig, reference: Reference) -> None:
    """A check that is on but could score no sample at all is a setting to fix, not a run to reject;
    so is a name in `gate.unscored_allowed` that names no check."""
    unknown = sorted(set(gate.unscored_allowed) - {spec.reason for spec in checks.CHECKS})
    if unknown:
        raise GateError(f"gate.unscored_allowed: {', '.join(unknown)} is no check (the checks: "
                        f"{', '.join(spec.reason for spec in checks.CHECKS)})")
    if gate.lesion_score_min is not None and reference.probe is None and "no_lesion" not in gate.unscored_allowed:
        raise GateError(f"gate.lesion_score_min is {gate.lesion_score_min}, but the reference {gate.reference.path} has "
                        "no lesion probe (built without negatives): rebuild it with gate.reference.negatives, or set "
                        "gate.lesion_score_min: null")


def feature_scores(reference: Reference, run: RunFeatures) -> dict[str, np.ndarray]:
    """Scores that need the reference or the whole run: realism, lesion probe (of the label's crop: 0
    for a polyp sample with an empty label; a hard negative has none), duplicates (among the polyp
    samples: a negative on a reused frame is no lesion repeated), finiteness."""
    finite = np.isfinite(run.features).all(1) & np.isfinite(run.crop_features).all(1)
    view = "crop" if reference.crops is not None else "image"
    mine = run.crop_features if view == "crop" else run.features
    safe = np.where(finite[:, None], mine, 0.0)
    realism = np.where(finite, metrics.realism(reference.manifold(view), safe), np.nan)
    if reference.probe is None:
        lesion = np.full(len(finite), np.nan)
    else:
        lesion = np.where(run.has_label, reference.probe.score(np.where(finite[:, None], run.crop_features, 0.0)), 0.0)
    lesions = ~run.negative
    duplicates = np.full(len(finite), np.nan)
    duplicates[lesions] = metrics.nearest_earlier_similarity(np.where(finite[:, None], run.features, 0.0)[lesions])
    return {"features_finite": finite.astype(np.float64), "realism": realism,
            "lesion_score": np.where(lesions, lesion, np.nan),
            "duplicate_similarity": np.where(finite, duplicates, np.nan)}


@dataclass(frozen=True)
class GateOutcome:
    metrics: GateMetrics
    run_dir: str

    @property
    def passed(self) -> bool:
        return self.metrics.passed

    def line(self) -> str:
        m = self.metrics
        kid = "n/a" if m.accepted.kid is None else f"{m.accepted.kid:.4f}"
        negatives = (f" ({m.samples.negatives_accepted}/{m.samples.negatives} hard negatives)"
                     if m.samples.negatives else "")
        text = (f"{self.run_dir}: gate {'PASSED' if m.passed else 'FAILED'}: {m.samples.accepted}/{m.samples.total} "
                f"samples accepted{negatives}, KID of accepted {kid}; report {RunLayout(self.run_dir).gate_report}")
        return text + ("; " + "; ".join(m.failures) if m.failures else "")


def run_gate(run_dir: str, config: JobConfig, executor: Executor) -> GateOutcome:
    """Gate a generated run: verdicts, metrics, report under `RUN_DIR/gate/`; safe to re-run."""
    from pipeline.gate.report import write_report

    layout = RunLayout(run_dir)
    manifest = RunManifest.read(run_dir)
    shards = [entry.index for entry in manifest.shards if entry.rows > 0]
    if not shards:
        raise GateError(f"{run_dir}: no samples to gate (every shard is empty or failed)")
    work, attributes_type = {}, None
    for index in shards:  # every shard readable before anything is changed or loaded
        with shard_footer(layout.shard(index)) as footer:
            ids = footer.read(columns=["sample_id"]).column("sample_id").to_pylist()
            attributes_type = footer.schema_arrow.field("attributes").type
        work[index] = [{"sample_id": i} for i in ids]
    gate, label_note = checks.resolve_label_bound(config.gate)
    config = config.model_copy(update={"gate": gate})
    reference = load_or_build_reference(gate)
    usable_bounds(gate, reference)
    storage.remove(layout.gate_success)
    run_id, plan_digest = manifest.run_id, manifest.plan_digest
    context = RunContext(layout=layout, config=config, run_id=run_id, plan_digest=plan_digest,
                         attributes_type=attributes_type)
    report = executor.execute(work, context, make_feature_worker)
    if report.failures:
        raise GateError(f"{run_dir}: feature extraction failed for shard(s) "
                        + ", ".join(f"{f.shard_index} ({f.error})" for f in report.failures))
    log.info("features: %d shards computed, %d from cache", sum(not r.cached for r in report.results),
             sum(r.cached for r in report.results))

    run = _read_features(layout, gate.extractor, shards)
    kids = shard_kids(reference, run)
    scores = {**run.pixel_scores, **feature_scores(reference, run), "shard_kid": per_sample(kids, run)}
    negative = run.negative
    if negative.any() and gate.segmenter is None:
        log.warning("%d hard negatives: without gate.segmenter nothing checks that they hold no lesion",
                    int(negative.sum()))
    reasons = checks.judge(scores, gate, negative)
    if config.until_accepted:  # samples are in plan order: shards ascending, rows by plan index
        reasons = checks.keep_first(reasons, config.until_accepted.accepted)

    shard_verdicts = []
    for index in shards:
        rows = np.flatnonzero(run.shard_indices == index)
        kid, kid_std = kids[index]
        shard_verdicts.append(ShardVerdict(shard_index=index, samples=len(rows), accepted=sum(not reasons[i] for i in rows),
                                           kid=kid, kid_std=kid_std,
                                           rejected_whole=any("shard_kid" in reasons[i] for i in rows)))
    accepted = np.array([not r for r in reasons])
    lesions = (scores["features_finite"] > 0) & ~negative  # the set figures are of polyp images
    run_figures = compare(reference, run.features[lesions])
    accepted_figures = compare(reference, run.features[accepted & lesions])
    counts: dict[str, int] = {}
    for sample_reasons in reasons:
        for reason in sample_reasons:
            counts[reason] = counts.get(reason, 0) + 1
    failures = _run_failures(config, accepted_figures, accepted, negative)
    random_weights = any(made_with_random_weights(e) for e in _engines(layout, shards))
    if random_weights:
        log.warning("this run was made with RANDOM model weights: its painted regions are noise, not polyps")
    gate_metrics = GateMetrics(
        run_id=run_id, plan_digest=plan_digest, shards_digest=manifest.shards_digest(),
        gated_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        passed=not failures, failures=failures, extractor=gate.extractor, reference=reference.identity,
        run=run_figures, accepted=accepted_figures,
        diversity=float(np.mean(run.diversity_pairs)) if run.diversity_pairs else None,
        samples=SampleCounts(total=len(accepted), accepted=int(accepted.sum()), by_reason=counts,
                             negatives=int(negative.sum()), negatives_accepted=int((accepted & negative).sum())),
        shards=shard_verdicts, random_weights=random_weights, sizes=size_shares_of(layout, run, accepted),
        bounds=gate.model_dump(mode="json", exclude={"reference"}),
        lineage=gate_lineage(reference, gate), notes=[label_note] if label_note else [],
    )
    parquet.write(layout.verdicts, verdict_table(run.sample_ids, run.shard_indices, accepted, reasons, scores),
                  {"run_id": run_id, "plan_digest": plan_digest, "reference": reference.identity.digest})
    write_metrics(layout, gate_metrics)
    write_report(layout, gate_metrics, reference, run, scores, reasons, gate)
    storage.write_bytes_atomic(layout.gate_success, b"")
    outcome = GateOutcome(gate_metrics, run_dir)
    log.info(outcome.line())
    return outcome


def size_shares_of(layout: RunLayout, run: RunFeatures, accepted: np.ndarray) -> dict[str, dict[str, float]]:
    """The share of each size bin among the polyp samples generated, and among those accepted (the
    labels' areas, as written in the shards)."""
    areas = {}
    for index in sorted(set(run.shard_indices.tolist())):
        table = parquet.read(layout.shard(index), columns=["sample_id", "mask_area"])
        areas.update(zip(table.column("sample_id").to_pylist(), table.column("mask_area").to_pylist()))
    lesions = [(areas[s], keep) for s, keep, negative in zip(run.sample_ids, accepted, run.negative) if not negative]
    return {"generated": size_shares([area for area, _ in lesions]),
            "accepted": size_shares([area for area, keep in lesions if keep])}


def gate_lineage(reference: Reference, gate: GateConfig) -> Lineage | None:
    """The real images that judged the samples: the reference's images and probe negatives, and with a
    label check, those its segmenter was trained and calibrated on (None where one is not recorded)."""
    if reference.lineage is None:
        return None
    if gate.segmenter is None:
        return reference.lineage
    images = read_record(gate.segmenter).images
    return None if images is None else reference.lineage | Lineage(segmenter=images, gated=True)


def _engines(layout: RunLayout, shards: list[int]) -> list[dict[str, Any]]:
    """One `engine` record per shard (all rows of a shard share it)."""
    engines = []
    for index in shards:
        with shard_footer(layout.shard(index)) as footer:
            engines.append(footer.read_row_group(0, columns=["engine"]).column("engine")[0].as_py())
    return engines


def _run_failures(config: JobConfig, accepted: SetMetrics, kept: np.ndarray, negative: np.ndarray) -> list[str]:
    """Run-level bounds, judged on the accepted samples (what export hands to trainers). How many
    must be accepted: a job that asks for N accepted samples fails while it has fewer (its
    `samples.max_attempts` bounds how many may be rejected, so export refuses a run that fell
    short); any other by `gate.acceptance_min`, the acceptance of its polyp samples (hard negatives
    pass more easily and must not lift it)."""
    gate, asked, failures = config.gate, config.until_accepted, []
    if asked is not None:
        if kept.sum() < asked.accepted:
            failures.append(f"accepted {int(kept.sum())} < samples.accepted {asked.accepted}")
    elif gate.acceptance_min is not None:
        acceptance = float(kept[~negative].mean()) if (~negative).any() else 1.0
        if acceptance < gate.acceptance_min:
            failures.append(f"acceptance {acceptance:.3f} < gate.acceptance_min {gate.acceptance_min}")
    for name, bound, above in (("kid", gate.run_kid_max, True), ("fid", gate.run_fid_max, True),
                               ("precision", gate.run_precision_min, False)):
        value = getattr(accepted, name)
        if bound is None:
            continue
        if value is None:
            failures.append(f"{name} of the accepted samples cannot be computed (n={accepted.n}), bound {bound}")
        elif (value > bound) if above else (value < bound):
            failures.append(f"{name} {value:.4f} {'>' if above else '<'} gate.run_{name}_{'max' if above else 'min'} {bound}")
    return failures
