"""Mask throughput on one core: sample + draw at 1024x1024, and plan-time sampling on a 64-cell grid.

    python bench/bench_masks.py [--n 3000] [--preset masks/default.yaml]

Drawing runs inside generate workers next to the GPU, so it must stay far below the cost of a
diffusion step; sampling runs once per sample at plan time, 100,000 at a time.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from pipeline.plan.fov import GRID_SIDE, FieldOfView
from pipeline.plan.masks.preset import MaskPreset
from pipeline.plan.masks.sampling import sample_mask_params
from pipeline.plan.masks.shapes import draw_mask

ATTRIBUTES = [{"morphology": m, "size": s} for m in ("0-Is", "0-IIa", "0-Ip", "0-Isp") for s in ("small", "large")]


def endoscope_fov() -> FieldOfView:
    """A rounded field of view on a 4:3 grid, like a frame with a black border."""
    rows, cols = GRID_SIDE * 3 // 4, GRID_SIDE
    y, x = np.mgrid[0:rows, 0:cols] + 0.5
    return FieldOfView(((x - cols / 2) / (0.45 * cols)) ** 2 + ((y - rows / 2) / (0.45 * rows)) ** 2 < 1)


def rate(n: int, work) -> float:
    start = time.perf_counter()
    for i in range(n):
        work(i)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--preset", default="masks/default.yaml")
    args = parser.parse_args()
    preset = MaskPreset.load(args.preset)
    full, rounded = FieldOfView.full(), endoscope_fov()
    rng = np.random.default_rng(0)

    def sample_and_draw(i: int) -> None:
        draw_mask(sample_mask_params(preset, ATTRIBUTES[i % len(ATTRIBUTES)], full, rng), 1024, 1024)

    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"sample + draw 1024x1024, full field of view: {rate(args.n, sample_and_draw):8.0f} masks/s")
    for name, fov in (("full", full), ("rounded 48x64", rounded)):
        per_second = rate(args.n, lambda i: sample_mask_params(preset, ATTRIBUTES[i % len(ATTRIBUTES)], fov, rng))
        print(f"sample only, {name:>13} grid: {per_second:8.0f} params/s ({100_000 / per_second:5.1f} s per 100,000)")


if __name__ == "__main__":
    main()
