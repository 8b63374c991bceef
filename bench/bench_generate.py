"""Generation benchmark: images/s and seconds per image split into stages, for a job config.

    python bench/bench_generate.py --config jobs/demo-sdxl.yaml --n 32
    python bench/bench_generate.py --config jobs/demo-sdxl.yaml --n 32 --null-model \\
        --set engine.resolution=1024 --set engine.output_resolution=1024 --one-core

`--null-model` keeps every CPU-side stage real (frame load, mask, resize to the working resolution,
repaint region, composite, PNG encode, Parquet write) and replaces only the diffusion call with a
pass-through, to measure what the CPU adds per sample around a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import cv2
import numpy as np
import pyarrow as pa
import torch

from pipeline.config import load_config
from pipeline.core.devices import resolve_device
from pipeline.core.layout import RunLayout
from pipeline.executors.base import RunContext
from pipeline.executors.local import LocalExecutor
from pipeline.generate.loading import resolve_dtype
from pipeline.generate.runner import run_generate
from pipeline.generate.sdxl import InpaintEngine
from pipeline.generate.worker import ShardWorker, make_worker

STAGES = ("frame_load", "mask", "prepare", "model", "composite", "png_encode", "write")


class NullModelEngine(InpaintEngine):
    """The real engine minus the diffusion call: the model 'returns' its input unchanged."""

    def __init__(self, config):
        self.config = config
        self.device = resolve_device("cpu")
        self.dtype = resolve_dtype("float32", self.device)

    @property
    def identity(self):
        return {"model": "null", "resolution": self.config.resolution, "steps": 0}

    def generate_batch(self, batch):
        return [np.asarray(sample.image) for sample in batch]


def null_model_worker(context: RunContext) -> ShardWorker:
    return ShardWorker(NullModelEngine(context.config.engine), context)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="jobs/demo-sdxl.yaml")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--null-model", action="store_true", help="measure everything but the model call")
    parser.add_argument("--one-core", action="store_true", help="pin to one core, one thread")
    args = parser.parse_args()
    if args.one_core:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        torch.set_num_threads(1)
        cv2.setNumThreads(1)

    with tempfile.TemporaryDirectory() as out:
        config = load_config(args.config, [*args.set, f"output={out}", "executor.kind=local"])
        if config.engine.kind != "sdxl" and args.null_model:
            sys.exit(f"{args.config}: engine.kind is {config.engine.kind}; --null-model measures the SDXL engine's "
                     "CPU side (try jobs/demo-sdxl.yaml)")
        factory = null_model_worker if args.null_model else make_worker
        if not args.null_model:  # load + warm caches
            factory(RunContext(RunLayout(out), config, "warmup", "", pa.string()))
        start = time.perf_counter()
        summary = run_generate(config, LocalExecutor(), args.n, factory=factory)
        wall = time.perf_counter() - start
        stages = json.load(open(RunLayout(config.run_dir()).manifest))["timings"]["stage_seconds"]

    n = summary.written_samples
    per_image = {stage: stages.get(stage, 0.0) / n for stage in STAGES}
    cpu_side = sum(v for k, v in per_image.items() if k != "model")
    engine = config.engine
    print(f"config {args.config} {' '.join(args.set)}; model {'null' if args.null_model else engine.model}; "
          f"resolution {engine.resolution} → output {engine.output_resolution}; steps {engine.steps}; "
          f"batch {engine.batch_size}; torch threads {torch.get_num_threads()}")
    print(f"{n} images in {wall:.2f}s wall (incl. planning) → {n / wall:.2f} images/s")
    for stage in STAGES:
        print(f"  {stage:<11} {1000 * per_image[stage]:9.1f} ms/image")
    print(f"  {'cpu-side':<11} {1000 * cpu_side:9.1f} ms/image (everything but the model call)")


if __name__ == "__main__":
    main()
