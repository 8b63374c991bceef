"""What "the same sample" means across settings that are not part of a sample's identity: thread
counts, dtypes. Generates the golden-pixel inputs (tests/test_golden.py) under each setting and
prints how far the pixels move inside the repaint region (outside it they are the source's exactly).

    python bench/bench_same_pixels.py            # CPU: threads 1 vs 2, float32 vs bfloat16
    python bench/bench_same_pixels.py --cuda     # also the GPU in float32 and bfloat16 against the CPU
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline.config import EngineConfig, TransplantEngineConfig
from pipeline.generate.composite import repaint_region
from pipeline.generate.sdxl import InpaintEngine
from pipeline.generate.transplant.donors import build_donors
from pipeline.generate.transplant.engine import TransplantEngine
from pipeline.testing.data import shared_data
from pipeline.testing.golden import SEEDS, golden_inputs
from pipeline.tools.tiny_model import build_tiny_model


def moved(a: list[np.ndarray], b: list[np.ndarray], region: np.ndarray) -> dict:
    """Mean and max |a − b| in grey levels inside the repaint region, and the share of its pixels that differ."""
    diff = np.stack([np.abs(x.astype(int) - y.astype(int)).max(axis=2)[region] for x, y in zip(a, b)])
    return {"mean_levels": round(float(diff.mean()), 3), "max_levels": int(diff.max()),
            "pixels_differing": round(float((diff > 0).mean()), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuda", action="store_true")
    args = parser.parse_args()
    data = shared_data() / "kvasir-seg"
    with tempfile.TemporaryDirectory() as tmp:
        split = Path(tmp) / "split.txt"
        split.write_text("\n".join((data / "splits" / "train.txt").read_text().split()[:4]))
        build_donors(data / "images", data / "masks", f"{tmp}/donors.parquet", split)
        frame, mask = golden_inputs(192)
        engine = TransplantEngine(TransplantEngineConfig(kind="transplant", donors=f"{tmp}/donors.parquet"))
        region = repaint_region(mask, engine.config.mask_dilation, engine.config.mask_feather) > 0
        runs = {}
        for threads in (1, 2):
            cv2.setNumThreads(threads)
            runs[threads] = engine.inpaint([frame] * 3, [mask] * 3, [""] * 3, [""] * 3, SEEDS)
        print(json.dumps({"engine": "transplant", "compare": "OpenCV threads 1 vs 2", **moved(runs[1], runs[2], region)}))

        model = build_tiny_model(Path(tmp) / "tiny")
        frame, mask = golden_inputs(96)
        outputs = {}
        settings = [("cpu", "float32", 1), ("cpu", "float32", 2), ("cpu", "bfloat16", 2)]
        settings += [("cuda", "float32", 2), ("cuda", "bfloat16", 2)] if args.cuda else []
        for device, dtype, threads in settings:
            torch.set_num_threads(threads)
            sdxl = InpaintEngine(
                EngineConfig(model=str(model), resolution=64, steps=2, device=device, dtype=dtype, batch_size=3))
            outputs[(device, dtype, threads)] = sdxl.inpaint([frame] * 3, [mask] * 3, ["a sessile polyp"] * 3, [""] * 3, SEEDS)
        region = repaint_region(mask, 8, 4) > 0
        base = outputs[("cpu", "float32", 1)]
        for key, images in outputs.items():
            if key != ("cpu", "float32", 1):
                print(json.dumps({"engine": "sdxl (tiny random)", "compare": f"cpu float32 1 thread vs {key[0]} {key[1]} "
                                  f"{key[2]} threads", **moved(base, images, region)}))


if __name__ == "__main__":
    main()
