"""Gate throughput: the per-shard work (decode, features of image and label crop, pixel checks) at
512², and the whole-run work (reference scores, duplicates, KID/FID/PRDC, verdicts) as runs grow.

    python bench/bench_gate.py [--samples 64] [--sizes 1000,2000,5000,10000] [--device cpu]

Per-shard work runs through the executors (one worker per GPU, or per CPU slot); its cost per
sample is constant by construction, so it is timed on one real run of Kvasir-SEG images at 512².
The whole-run part runs once on the driver; it is timed on n feature rows (the real run's rows
repeated with small noise, as n real samples would be) to show how the cost per 1,000 samples moves.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from pipeline.config import config_from_dict
from pipeline.core.images import resize_image
from pipeline.core.layout import RunLayout
from pipeline.executors.base import RunContext
from pipeline.executors.local import LocalExecutor
from pipeline.gate import checks
from pipeline.gate.features import make_extractor
from pipeline.gate.reference import build_reference, compare
from pipeline.gate.run import (
    RunFeatures,
    _read_features,
    feature_scores,
    make_feature_worker,
    per_sample,
    run_gate,
    shard_kids,
)
from pipeline.plan.frames import load_frame
from pipeline.testing.data import require_shared_data
from pipeline.testing.gate_runs import ATTRIBUTES, RunSample, image_run, remove_lesion

SIDE = 512


def kvasir_samples(n: int) -> list[RunSample]:
    root = require_shared_data() / "kvasir-seg"
    ids = (root / "splits" / "test.txt").read_text().split()[:n]
    samples = []
    for image_id in ids:
        image = resize_image(load_frame(str(root / "images" / f"{image_id}.jpg")), (SIDE, SIDE))
        mask = load_frame(str(root / "masks" / f"{image_id}.jpg"))[..., 0]
        mask = np.where(cv2.resize(mask, (SIDE, SIDE), interpolation=cv2.INTER_AREA) > 127, 255, 0).astype(np.uint8)
        samples.append(RunSample(image, mask, remove_lesion(image, mask), "real", image_id))
    return samples


def scaled(run: RunFeatures, n: int, rng: np.random.Generator) -> RunFeatures:
    """n rows made from the run's rows plus 1% noise (so no two are exact duplicates)."""
    pick = rng.integers(0, len(run.sample_ids), n)

    def jitter(x: np.ndarray) -> np.ndarray:
        return (x[pick] * (1 + 0.01 * rng.standard_normal((n, x.shape[1])))).astype(np.float32)

    return RunFeatures([f"s{i}" for i in range(n)], np.arange(n) // 64, jitter(run.features), jitter(run.crop_features),
                       run.has_label[pick], {k: v[pick] for k, v in run.pixel_scores.items()}, [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64, help="real samples for the per-shard timing")
    parser.add_argument("--sizes", default="1000,2000,5000,10000")
    parser.add_argument("--reference", type=int, default=300, help="reference images (Kvasir-SEG train split)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-gate-"))
    try:
        root = require_shared_data() / "kvasir-seg"
        train = work / "train"
        for sub in ("images", "masks"):
            (train / sub).mkdir(parents=True)
            for image_id in (root / "splits" / "train.txt").read_text().split()[:args.reference]:
                os.symlink(root / sub / f"{image_id}.jpg", train / sub / f"{image_id}.jpg")
        extractor = make_extractor("efficientnet-lite0", device=args.device)
        start = time.perf_counter()
        reference = build_reference(str(train / "images"), extractor, str(train / "masks"),
                                    str(require_shared_data() / "normal-mucosa"), limit=args.reference)
        reference.save(str(work / "ref"))
        print(f"reference: {args.reference} images + crops + negatives in {time.perf_counter() - start:.1f}s")

        samples = kvasir_samples(args.samples)
        run_dir = str(work / "run")
        image_run(run_dir, samples, 32, str(work / "frames"))
        config = config_from_dict({"run_id": "bench", "frames": {"source": "unused"},
                                   "gate": {"reference": {"path": str(work / "ref")}, "device": args.device}})
        start = time.perf_counter()
        run_gate(run_dir, config, LocalExecutor("gating"))
        first = time.perf_counter() - start
        start = time.perf_counter()
        run_gate(run_dir, config, LocalExecutor("gating"))
        cached = time.perf_counter() - start
        # the per-shard work alone, as one executor worker does it (model already loaded, cache removed)
        layout = RunLayout(run_dir)
        shutil.rmtree(Path(layout.features(extractor.name, 0)).parent)
        worker = make_feature_worker(RunContext(layout, config, "bench", "bench", ATTRIBUTES))
        shards = list(range(-(-args.samples // 32)))
        start = time.perf_counter()
        for index in shards:
            worker.run(index, [{}] * min(32, args.samples - 32 * index))
        per_shard = time.perf_counter() - start
        print(f"per-shard work at {SIDE}² (decode, source frame, features of image and label crop, pixel "
              f"scores, diversity pairs, cache write): {args.samples} samples in {per_shard:.1f}s = "
              f"{args.samples / per_shard:.2f} samples/s ({1000 * per_shard / args.samples:.0f}s per 1,000)")
        print(f"whole gate of {args.samples} samples: {first:.1f}s; again from the feature cache: {cached:.1f}s")

        run = _read_features(layout, extractor.name, shards)
        rng = np.random.default_rng(0)
        print("| samples | whole-run s | whole-run s per 1,000 | total s per 1,000 (with per-shard) |")
        print("|---:|---:|---:|---:|")
        for n in (int(v) for v in args.sizes.split(",")):
            big = scaled(run, n, rng)
            start = time.perf_counter()
            scores = {**big.pixel_scores, **feature_scores(reference, big),
                      "shard_kid": per_sample(shard_kids(reference, big), big)}
            checks.judge(scores, checks.resolve_label_bound(config.gate)[0], ~big.has_label)
            compare(reference, big.features)
            seconds = time.perf_counter() - start
            total = seconds + per_shard * n / args.samples
            print(f"| {n} | {seconds:.1f} | {1000 * seconds / n:.2f} | {1000 * total / n:.0f} |")
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, device {args.device}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
