"""Gate figures of the transplant engine, with donors and reference drawn from *disjoint* halves of the
Kvasir-SEG training split, on two kinds of polyp-free frames, beside three controls.

    python bench/bench_transplant_quality.py --samples 300 --out runs/transplant-quality

- donors: `jobs/splits/kvasir-train-donors.txt` (450 training ids); reference: the first
  `--reference-limit` of `jobs/splits/kvasir-train-reference.txt`, the other 450 (whole images, lesion
  crops and the "no lesion" probe, with polyp-free crops 1001–2000 as the probe's negatives). No
  lesion is ever scored against itself.
- host frames, each a real pipeline run (`run_generate` → `run_gate`, default per-sample bounds; the
  per-shard KID bound is reported, not applied):
  * `mucosa`: polyp-free crops 1–1000 of `normal-mucosa` (256² close-ups, never the probe's negatives);
  * `kvasir-free`: the polyp-free side of each donor-half Kvasir-SEG frame (`polyp-synth frames
    polyp-free`: the largest full-height or full-width strip clear of every lesion by 3% of the frame,
    kept when it is ≥ 30% of the frame and ≥ 200 px a side): real colonoscopy framing (black
    surround, overlays, lumen) with no polyp in it.
- controls: the 100 Kvasir-SEG test images as they are (real), blurred (Gaussian σ 6), and *swapped*:
  each test frame's own polyp replaced by a donor warped onto its label (the engine's `inpaint`, label
  = the real mask), which scores the engine's lesions in real frames with nothing else changed.

Printed (JSON, then a Markdown table): KID of whole images and of lesion crops against the reference,
the share of samples passing the "no lesion" probe, and the share accepted by the gate.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq

from pipeline.config import TransplantEngineConfig, config_from_dict
from pipeline.core.images import decode_image
from pipeline.executors.local import LocalExecutor
from pipeline.gate.features import lesion_crop, make_extractor
from pipeline.gate.reference import compare
from pipeline.gate.run import load_or_build_reference, run_gate
from pipeline.generate.runner import run_generate
from pipeline.generate.transplant.donors import ensure_donors
from pipeline.generate.transplant.engine import TransplantEngine
from pipeline.plan.polyp_free import cut_polyp_free_frames
from pipeline.testing.data import require_shared_data

ROOT = Path(__file__).resolve().parents[1]
BLENDS = ("alpha", "pyramid", "poisson")
HOSTS = ("mucosa", "kvasir-free")


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


def read_label(path: Path) -> np.ndarray:
    return np.where(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 127, 255, 0).astype(np.uint8)


def shard_crops(run_dir: str) -> list[np.ndarray]:
    return [lesion_crop(decode_image(row["image"]["bytes"]), decode_image(row["mask"]["bytes"]))
            for path in sorted(Path(run_dir, "shards").glob("*.parquet"))
            for row in pq.read_table(path, columns=["image", "mask"]).to_pylist()]


def shard_images(run_dir: str, n: int) -> list[np.ndarray]:
    """The first `n` samples of a run, each with its label's outline in green."""
    rows = pq.read_table(min(Path(run_dir, "shards").glob("*.parquet")), columns=["image", "mask"]).to_pylist()
    pictures = []
    for row in rows[:n]:
        image, mask = decode_image(row["image"]["bytes"]), decode_image(row["mask"]["bytes"])
        outline, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        pictures.append(cv2.drawContours(image.copy(), outline, -1, (0, 255, 0), max(1, image.shape[0] // 200)))
    return pictures


def write_sheet(path: Path, rows: dict[str, list[np.ndarray]], side: int = 240) -> None:
    """One row of pictures per named set, the name written on its first picture."""
    lines = []
    for name, pictures in rows.items():
        tiles = [cv2.resize(p, (side, side), interpolation=cv2.INTER_AREA) for p in pictures]
        cv2.putText(tiles[0], name, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        lines.append(np.hstack(tiles))
    cv2.imwrite(str(path), cv2.cvtColor(np.vstack(lines), cv2.COLOR_RGB2BGR))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--out", default="runs/transplant-quality")
    parser.add_argument("--reference-limit", type=int, default=300)
    parser.add_argument("--blends", default="pyramid", help=f"comma-separated, of {', '.join(BLENDS)}")
    parser.add_argument("--hosts", default=",".join(HOSTS), help=f"comma-separated, of {', '.join(HOSTS)}")
    parser.add_argument("--no-colour-transfer", action="store_true", help="runs without the Reinhard transfer")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = require_shared_data()
    kvasir, mucosa = data / "kvasir-seg", data / "normal-mucosa"
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    test = (kvasir / "splits/test.txt").read_text().split()
    donor_split, reference_split = ROOT / "jobs/splits/kvasir-train-donors.txt", ROOT / "jobs/splits/kvasir-train-reference.txt"
    frames = sorted(mucosa.glob("*.jpg"), key=lambda p: int(p.stem))
    negatives = linked_folder(out / "negatives", [p.name for p in frames[1000:]], mucosa)
    hosts = {"mucosa": linked_folder(out / "hosts-mucosa", [p.name for p in frames[:1000]], mucosa),
             "kvasir-free": out / "hosts-kvasir-free"}
    if not hosts["kvasir-free"].exists():
        cut_polyp_free_frames(str(kvasir / "images"), str(kvasir / "masks"), str(hosts["kvasir-free"]), str(donor_split))

    extractor = make_extractor("efficientnet-lite0", device="cpu")
    # built on first use, and refused if it was built from another split or limit
    gate = {"reference": {"path": str(out / "reference"), "images": str(kvasir / "images"), "masks": str(kvasir / "masks"),
                          "negatives": str(negatives), "split": str(reference_split), "limit": args.reference_limit},
            "device": "cpu", "shard_kid_max": None}
    reference = load_or_build_reference(config_from_dict({"frames": {"source": "unused"}, "gate": gate}, "bench").gate)

    def scores(images: list[np.ndarray], crops: list[np.ndarray]) -> dict[str, float]:
        crop_features = extractor(crops)
        return {"kid_image": compare(reference, extractor(images)).kid,
                "kid_crop": compare(reference, crop_features, view="crop").kid,
                "no_lesion_pass": float(np.mean(reference.probe.score(crop_features) >= 0.5))}

    colour = not args.no_colour_transfer
    engine = {"kind": "transplant", "donors": str(out / "donors.parquet"), "colour_transfer": colour,
              "donors_source": {"images": str(kvasir / "images"), "masks": str(kvasir / "masks"),
                                "split": str(donor_split)}}
    results: dict[str, dict] = {}
    for host in args.hosts.split(","):
        for blend in args.blends.split(","):
            run_id = f"{host}-{blend}{'' if colour else '-plain'}"
            job = {
                "run_id": run_id, "seed": 11, "samples": args.samples, "shard_size": 50, "output": str(out),
                "frames": {"source": str(hosts[host])},
                "prompts": {"bank": str(ROOT / "prompts/clinical.yaml")}, "masks": {"preset": str(ROOT / "masks/default.yaml")},
                "engine": {**engine, "blend": blend},
                "gate": gate,
            }
            config = config_from_dict(job, "bench")
            run_generate(config, LocalExecutor())
            metrics = run_gate(config.run_dir(), config, LocalExecutor("gating")).metrics
            total = metrics.samples.total
            crop_features = extractor(shard_crops(config.run_dir()))
            results[f"{host} frames, transplant ({blend}{'' if colour else ', no colour transfer'})"] = {
                "n": total, "kid_image": metrics.run.kid,
                "kid_crop": compare(reference, crop_features, view="crop").kid,
                "no_lesion_pass": 1 - metrics.samples.by_reason.get("no_lesion", 0) / total,
                "gate_accepted": metrics.samples.accepted / total, "rejections": metrics.samples.by_reason,
                "shard_kids": [round(shard.kid, 4) for shard in metrics.shards],
            }
        unpainted = [read_rgb(p) for p in sorted(hosts[host].iterdir())[:args.samples]]
        results[f"{host} frames, unpainted"] = {"n": len(unpainted), "kid_image": compare(reference, extractor(unpainted)).kid}

    test_images = [read_rgb(kvasir / "images" / f"{i}.jpg") for i in test]
    test_labels = [read_label(kvasir / "masks" / f"{i}.jpg") for i in test]
    swap_config = TransplantEngineConfig(**{**engine, "blend": args.blends.split(",")[0]})
    ensure_donors(swap_config)
    swapper = TransplantEngine(swap_config)
    swapped = [swapper.inpaint([image], [label], [""], [""], [seed])[0]
               for seed, (image, label) in enumerate(zip(test_images, test_labels))]
    controls = {"Kvasir-SEG test (real)": test_images,
                "Kvasir-SEG test blurred (σ 6)": [cv2.GaussianBlur(image, (0, 0), 6) for image in test_images],
                "Kvasir-SEG test, polyps swapped for donors": swapped}
    for name, pictures in controls.items():
        results[name] = {"n": len(pictures), **scores(pictures, [lesion_crop(p, m) for p, m in zip(pictures, test_labels)])}
    rows = {f"{host} frames": shard_images(str(out / f"{host}-{args.blends.split(',')[0]}{'' if colour else '-plain'}"), 6)
            for host in args.hosts.split(",")}
    rows |= {"Kvasir-SEG test": test_images[:6], "the same, polyps swapped": swapped[:6]}
    write_sheet(out / "sheet.png", rows)

    print(json.dumps(results, indent=2, default=float))
    print("\n| set | n | KID (whole images) | KID (lesion crops) | pass \"no lesion\" probe | accepted by the gate |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        cells = [f"{r[k]:.4f}" if r.get(k) is not None else "–" for k in ("kid_image", "kid_crop")]
        rates = [f"{100 * r[k]:.1f}%" if r.get(k) is not None else "–" for k in ("no_lesion_pass", "gate_accepted")]
        print(f"| {name} | {r['n']} | {' | '.join(cells)} | {' | '.join(rates)} |")


if __name__ == "__main__":
    main()
