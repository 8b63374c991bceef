"""The reference: features of real polyp images (and of their lesion crops), and a lesion probe.

`build_reference` reads a folder of real images, optionally their masks (lesion crops: the mask's
bounding box, padded and squared) and polyp-free frames (negatives: a logistic-regression probe that
scores "is there a polyp in this crop"). The reference folder holds `reference.json` (identity,
settings, probe weights) and `features.parquet`; its identity digest covers every input byte, the
extractor and the settings, so gate results name exactly what they were measured against.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.core import parquet, storage
from pipeline.core.digests import json_digest
from pipeline.core.labelled import (
    LabelledPair,
    check_same_size,
    files_by_id,
    labelled_pairs,
    read_split,
    split_digest,
)
from pipeline.core.layout import ReferenceLayout
from pipeline.core.lineage import ImageKeys, Lineage, stem
from pipeline.core.progress import progress_bar
from pipeline.errors import FrameCatalogError, GateError, validation_summary
from pipeline.gate import metrics
from pipeline.gate.features import Extractor, lesion_crop
from pipeline.gate.verdicts import ReferenceIdentity, SetMetrics
from pipeline.plan.frames import load_frame

log = logging.getLogger(__name__)

NEGATIVE_CROP_SIDES = (0.25, 0.75)  # a negative crop's side, as a fraction of the frame's shorter side


class Probe(BaseModel):
    """Standardise, then logistic regression: p = σ(((f − mean) / scale) · coef + intercept)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    train_accuracy: float

    def score(self, features: np.ndarray) -> np.ndarray:
        z = ((features - np.asarray(self.mean)) / np.asarray(self.scale)) @ np.asarray(self.coef) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))


class ReferenceRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    identity: ReferenceIdentity
    probe: Probe | None
    lineage: Lineage | None = None  # the images it holds (None: built before they were recorded)


@dataclass(frozen=True)
class Reference:
    identity: ReferenceIdentity
    images: np.ndarray  # (n, d) features of the whole images
    crops: np.ndarray | None  # (m, d) features of the lesion crops
    probe: Probe | None
    nearest_k: int = 5
    lineage: Lineage | None = None  # its images and the probe's negatives, by id and SHA-256

    def save(self, out: str) -> None:
        record = ReferenceRecord(identity=self.identity, probe=self.probe, lineage=self.lineage)
        table = pa.table({"kind": ["image"] * len(self.images) + ["crop"] * (0 if self.crops is None else len(self.crops)),
                          "features": list(self.images) + ([] if self.crops is None else list(self.crops))})
        layout = ReferenceLayout(out)
        parquet.write(layout.features, table, {"reference": self.identity.digest})
        storage.write_bytes_atomic(layout.record,
                                   json.dumps(record.model_dump(mode="json"), indent=2).encode())

    @classmethod
    def load(cls, path: str, nearest_k: int = 5) -> Reference:
        layout = ReferenceLayout(path)
        record_url = layout.record
        try:
            record = ReferenceRecord.model_validate_json(storage.read_bytes(record_url))
            table = parquet.read(layout.features)
        except FileNotFoundError:
            raise GateError(f"{path}: no reference there; build one with `polyp-synth reference build "
                            f"--images DIR --out {path}`") from None
        except ValidationError as exc:
            raise GateError(f"{record_url}: not a reference ({validation_summary(exc)})") from None
        except (OSError, pa.ArrowInvalid) as exc:
            raise GateError(f"{path}: unreadable reference ({exc})") from None
        kinds = np.asarray(table.column("kind").to_pylist())
        features = np.asarray(table.column("features").to_pylist(), np.float32)
        crops = features[kinds == "crop"]
        return cls(record.identity, features[kinds == "image"], crops if len(crops) else None, record.probe, nearest_k,
                   record.lineage)

    def manifold(self, view: str) -> metrics.Manifold:
        return metrics.Manifold.of(self.crops if view == "crop" else self.images, self.nearest_k)


def image_files(folder: str, limit: int | None = None, split: str | None = None) -> list[str]:
    """Image URLs directly in a folder, by id (file stem), only the ids listed in `split` when given
    (in its order), the first `limit` of them."""
    files = files_by_id(folder, GateError)
    ids = read_split(split, GateError) if split is not None else sorted(files)
    urls = [files[i] for i in ids if i in files]
    if not urls:
        raise GateError(f"{folder}: no images{' of ' + split if split else ''} there")
    return urls[:limit]


def _load(url: str) -> tuple[np.ndarray, bytes]:
    data = storage.read_bytes(url)
    try:
        return load_frame(url), data
    except FrameCatalogError as exc:
        raise GateError(str(exc)) from None


def negative_crops(frame: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Random square crops of a polyp-free frame, sides uniform in NEGATIVE_CROP_SIDES of its shorter side."""
    height, width = frame.shape[:2]
    crops = []
    for _ in range(count):
        side = max(8, int(rng.uniform(*NEGATIVE_CROP_SIDES) * min(height, width)))
        y, x = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        crops.append(frame[y:y + side, x:x + side])
    return crops


def fit_probe(positives: np.ndarray, negatives: np.ndarray, seed: int = 0) -> Probe:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([positives, negatives])
    y = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=0.1, max_iter=2000, random_state=seed).fit(scaler.transform(x), y)
    return Probe(mean=scaler.mean_.tolist(), scale=scaler.scale_.tolist(), coef=model.coef_[0].tolist(),
                 intercept=float(model.intercept_[0]), train_accuracy=float(model.score(scaler.transform(x), y)))


def folder_features(folder: str, extractor: Extractor, limit: int | None = None,
                    description: str = "features") -> np.ndarray:
    """Features of every image in a folder (for `quality compare`)."""
    urls = image_files(folder, limit)
    return extractor([_load(url)[0] for url in progress_bar(urls, description, len(urls), unit="images")])


def build_reference(images: str, extractor: Extractor, masks: str | None = None, negatives: str | None = None,
                    limit: int | None = None, seed: int = 0, nearest_k: int = 5, split: str | None = None) -> Reference:
    """Features (and crops, and a probe) of real polyp images; see the module docstring."""
    if negatives and not masks:
        raise GateError("--negatives needs --masks: the probe learns lesion crops against polyp-free crops")
    content = hashlib.sha256()
    pictures, crops, image_sha, negative_ids, negative_sha = [], [], [], [], []
    if masks:
        pairs = labelled_pairs(images, masks, split, GateError)[:limit]
    else:
        pairs = [LabelledPair(PurePosixPath(url).stem, url, "") for url in image_files(images, limit, split)]
    for pair in progress_bar(pairs, "reference images", len(pairs), unit="images"):
        image, data = _load(pair.image)
        sha = hashlib.sha256(data)
        content.update(sha.digest())
        image_sha.append(sha.hexdigest())
        pictures.append(image)
        if masks:
            mask, mask_data = _load(pair.mask)
            check_same_size(pair, image, mask, GateError)
            content.update(hashlib.sha256(mask_data).digest())
            crop = lesion_crop(image, mask[..., 0])
            if crop is None:
                raise GateError(f"{pair.mask}: empty mask (a reference image must show its polyp)")
            crops.append(crop)
    image_features = extractor(pictures)
    crop_features = extractor(crops) if crops else None

    probe, negative_count = None, 0
    if negatives:
        rng = np.random.default_rng(seed)
        frames = image_files(negatives, limit)
        per_frame = max(1, round(len(crops) / len(frames)))
        negative_pictures = []
        for url in progress_bar(frames, "negative frames", len(frames), unit="images"):
            frame, data = _load(url)
            sha = hashlib.sha256(data)
            content.update(sha.digest())
            negative_ids.append(stem(url))
            negative_sha.append(sha.hexdigest())
            negative_pictures.extend(negative_crops(frame, per_frame, rng))
        negative_count = len(negative_pictures)
        probe = fit_probe(crop_features, extractor(negative_pictures), seed)
        log.info("lesion probe: %d crops vs %d negative crops, training accuracy %.3f",
                 len(crops), negative_count, probe.train_accuracy)

    settings = {"size": extractor.size, "limit": limit, "split": split,
                "split_digest": split_digest(split, GateError), "seed": seed, "crop_pad": 0.25,
                "negative_crop_min": NEGATIVE_CROP_SIDES[0], "negative_crop_max": NEGATIVE_CROP_SIDES[1]}
    identity = ReferenceIdentity(
        digest=json_digest({"content": content.hexdigest(), "extractor": extractor.name, "settings": settings}),
        extractor=extractor.name, images=len(pictures), crops=len(crops), negatives=negative_count,
        settings=settings,
    )
    lineage = Lineage(reference=ImageKeys.of(zip([pair.id for pair in pairs], image_sha)),
                      negatives=ImageKeys.of(zip(negative_ids, negative_sha)), gated=True)
    return Reference(identity, image_features, crop_features, probe, nearest_k, lineage)


def compare(reference: Reference, features: np.ndarray, view: str = "image", prdc_max: int = 5000) -> SetMetrics:
    """Set-level figures of `features` against the reference's images (or crops). KID and FID use
    every row; precision/recall/density/coverage (k-NN within the set: O(n²)) at most `prdc_max`
    rows drawn at random (seeded)."""
    real = reference.crops if view == "crop" else reference.images
    kid, kid_std = metrics.kid(real, features)
    sample = features
    if len(features) > prdc_max:
        sample = features[np.sort(np.random.default_rng(0).choice(len(features), prdc_max, replace=False))]
    figures = metrics.prdc(reference.manifold(view), sample)
    return SetMetrics(
        n=len(features), kid=kid, kid_std=kid_std, fid=metrics.fid(real, features),
        precision=figures and figures.precision, recall=figures and figures.recall,
        density=figures and figures.density, coverage=figures and figures.coverage,
    )
