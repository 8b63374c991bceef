"""Gate figures of the transplant engine: a few hundred samples per blend mode on polyp-free frames,
scored by the gate against a Kvasir-SEG *training-split* reference, beside two controls.

    python bench/bench_transplant_quality.py --samples 300 --out runs/transplant-quality

- reference: the first `--reference-limit` Kvasir-SEG training images (by name) with their masks
  (lesion crops, the lesion probe) and polyp-free crops 1001–2000 as the probe's negatives;
- one transplant run per blend (`alpha`, `pyramid`, `poisson`) on polyp-free crops 1–1000 (never
  the probe's negatives), gated with the default per-sample bounds (the per-shard KID bound is
  reported per shard, not applied);
- controls: the 100 Kvasir-SEG test images as they are, and blurred (Gaussian σ 6).

Printed (JSON, then a Markdown table): KID of whole images and of lesion crops against the
reference, and the share of samples passing the gate's "no lesion" probe and the whole gate.
The donor library comes from the Kvasir-SEG training split (built first when missing).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq

from pipeline.config import config_from_dict
from pipeline.core.images import decode_png
from pipeline.executors.local import LocalExecutor
from pipeline.gate.features import lesion_crop, make_extractor
from pipeline.gate.reference import Reference, build_reference, compare
from pipeline.gate.run import run_gate
from pipeline.generate.runner import run_generate
from pipeline.generate.transplant.donors import ensure_donors
from pipeline.testing.data import require_shared_data

ROOT = Path(__file__).resolve().parents[1]
BLENDS = ("alpha", "pyramid", "poisson")


def linked_folder(folder: Path, names: list[str], source: Path) -> Path:
    """A folder of symbolic links to `source/<name>`: a subset of a data set without copying it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        link = folder / name
        if not link.exists():
            link.symlink_to(source / name)
    return folder


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def kid_pair(reference, extractor, images: list[np.ndarray], crops: list[np.ndarray]) -> dict[str, float]:
    return {"kid_image": compare(reference, extractor(images)).kid,
            "kid_crop": compare(reference, extractor(crops), view="crop").kid}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--out", default="runs/transplant-quality")
    parser.add_argument("--donors", default="runs/donors/kvasir-train.parquet")
    parser.add_argument("--reference-limit", type=int, default=300)
    parser.add_argument("--output-resolution", type=int, default=256)
    parser.add_argument("--blends", default=",".join(BLENDS), help="comma-separated blend modes to run")
    parser.add_argument("--no-colour-transfer", action="store_true", help="runs without the Reinhard transfer")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = require_shared_data()
    kvasir, mucosa = data / "kvasir-seg", data / "normal-mucosa"
    out = Path(args.out).resolve()
    train = (kvasir / "splits/train.txt").read_text().split()
    test = (kvasir / "splits/test.txt").read_text().split()
    frames = sorted(mucosa.glob("*.jpg"), key=lambda p: int(p.stem))

    images = linked_folder(out / "reference-train/images", [f"{i}.jpg" for i in train], kvasir / "images")
    masks = linked_folder(out / "reference-train/masks", [f"{i}.jpg" for i in train], kvasir / "masks")
    negatives = linked_folder(out / "negatives", [p.name for p in frames[1000:]], mucosa)
    paint_on = linked_folder(out / "frames", [p.name for p in frames[:1000]], mucosa)

    extractor = make_extractor("efficientnet-lite0", device="cpu")
    reference_dir = out / "reference"
    if not (reference_dir / "reference.json").exists():
        build_reference(str(images), extractor, str(masks), str(negatives), args.reference_limit).save(str(reference_dir))
    reference = Reference.load(str(reference_dir))

    results: dict[str, dict] = {}
    colour = not args.no_colour_transfer
    for blend in args.blends.split(","):
        name = f"transplant ({blend}{'' if colour else ', no colour transfer'})"
        job = {
            "run_id": f"transplant-{blend}{'' if colour else '-plain'}", "seed": 11, "samples": args.samples, "shard_size": 50,
            "output": str(out), "frames": {"source": str(paint_on)},
            "prompts": {"bank": str(ROOT / "prompts/clinical.yaml")}, "masks": {"preset": str(ROOT / "masks/default.yaml")},
            "engine": {"kind": "transplant", "donors": args.donors, "blend": blend, "colour_transfer": colour,
                       "output_resolution": args.output_resolution,
                       "donors_source": {"images": str(kvasir / "images"), "masks": str(kvasir / "masks"),
                                         "split": str(kvasir / "splits/train.txt")}},
            # per-sample verdicts with the default bounds; the per-shard KID bound is reported, not applied
            "gate": {"reference": {"path": str(reference_dir)}, "device": "cpu", "shard_kid_max": None},
        }
        config = config_from_dict(job, "bench")
        ensure_donors(config.engine)
        run_generate(config, LocalExecutor())
        metrics = run_gate(config.run_dir(), config, LocalExecutor("gating")).metrics
        total = metrics.samples.total
        crops = [lesion_crop(decode_png(row["image"]["bytes"]), decode_png(row["mask"]["bytes"]))
                 for path in sorted(Path(config.run_dir(), "shards").glob("*.parquet"))
                 for row in pq.read_table(path, columns=["image", "mask"]).to_pylist()]
        results[name] = {
            "n": total, "kid_image": metrics.run.kid,
            "kid_crop": compare(reference, extractor(crops), view="crop").kid,
            "no_lesion_pass": 1 - metrics.samples.by_reason.get("no_lesion", 0) / total,
            "gate_accepted": metrics.samples.accepted / total, "rejections": metrics.samples.by_reason,
            "shard_kids": [round(shard.kid, 4) for shard in metrics.shards],
        }

    test_images = [read_rgb(kvasir / "images" / f"{i}.jpg") for i in test]
    test_masks = [cv2.imread(str(kvasir / "masks" / f"{i}.jpg"), cv2.IMREAD_GRAYSCALE) for i in test]
    blurred = [cv2.GaussianBlur(image, (0, 0), 6) for image in test_images]
    for name, pictures in (("Kvasir-SEG test (real)", test_images), ("Kvasir-SEG test blurred (σ 6)", blurred)):
        crops = [lesion_crop(image, np.where(mask > 127, 255, 0).astype(np.uint8)) for image, mask in zip(pictures, test_masks)]
        results[name] = {"n": len(pictures), **kid_pair(reference, extractor, pictures, crops),
                         "no_lesion_pass": float(np.mean(reference.probe.score(extractor(crops)) >= 0.5))}
    unpainted = [read_rgb(p) for p in frames[:args.samples]]
    results["polyp-free crops (unpainted)"] = {"n": len(unpainted), "kid_image": compare(reference, extractor(unpainted)).kid}

    print(json.dumps(results, indent=2, default=float))
    print("\n| set | n | KID (images) | KID (lesion crops) | pass \"no lesion\" probe | accepted by the gate |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        cells = [f"{r[k]:.4f}" if r.get(k) is not None else "–" for k in ("kid_image", "kid_crop")]
        rates = [f"{100 * r[k]:.1f}%" if r.get(k) is not None else "–" for k in ("no_lesion_pass", "gate_accepted")]
        print(f"| {name} | {r['n']} | {' | '.join(cells)} | {' | '.join(rates)} |")


if __name__ == "__main__":
    main()
