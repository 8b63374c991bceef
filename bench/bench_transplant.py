"""Transplant engine speed: ms per sample at 1024² on one core, per blend mode.

    python bench/bench_transplant.py --n 48

CPU time (`time.thread_time`, one core, one OpenCV thread) is the figure: on a shared machine the wall
time also counts other processes' turns on the core; both are printed. Frames are polyp-free crops enlarged to the output side and masks are the plan's own (the demo job's
prompt bank and mask preset), so sizes and shapes follow a real job. Timed: the engine's whole work
per sample (donor choice, warp, colour transfer, blend, composite); then one `run_generate` of the
default blend for the whole CPU side (frame load, mask drawing, PNG encoding, shard writing).
The donor library is the demo job's (half the Kvasir-SEG training split), built first if it is
missing; `--donors` names another.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2

from pipeline.config import load_config
from pipeline.core.layout import RunLayout
from pipeline.core.timing import StageTimer
from pipeline.executors.local import LocalExecutor
from pipeline.generate.runner import run_generate
from pipeline.generate.transplant.donors import ensure_donors
from pipeline.generate.transplant.engine import TransplantEngine
from pipeline.generate.worker import prepare_sample
from pipeline.plan.plan import build_plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="jobs/demo.yaml", help="a transplant job (frames, bank, preset)")
    parser.add_argument("--donors", default=None, help="donor library (default: the job's)")
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--side", type=int, default=1024)
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cv2.setNumThreads(1)

    with tempfile.TemporaryDirectory() as out:
        overrides = [f"output={out}", f"engine.output_resolution={args.side}", f"samples={args.n}",
                     f"shard_size={args.n}", "frames.limit=200"]
        if args.donors:
            overrides.append(f"engine.donors={args.donors}")
        config = load_config(args.config, overrides)
        ensure_donors(config.engine)
        rows = build_plan(config).table.to_pylist()
        samples = [(*prepare_sample(row, args.side, StageTimer()), row["seed"]) for row in rows]
        areas = [float((mask > 0).mean()) for _, mask, _ in samples]
        results = {}
        for blend in ("alpha", "pyramid", "poisson"):
            for colour in (True, False):
                engine = TransplantEngine(config.engine.model_copy(update={"blend": blend, "colour_transfer": colour}))
                for frame, mask, seed in samples[:4]:  # decode the first donors and warm the caches
                    engine.inpaint([frame], [mask], [""], [""], [seed])
                cpu, wall = [], []
                for frame, mask, seed in samples:
                    start, start_cpu = time.perf_counter(), time.thread_time()
                    engine.inpaint([frame], [mask], [""], [""], [seed])
                    cpu.append(1000 * (time.thread_time() - start_cpu))
                    wall.append(1000 * (time.perf_counter() - start))
                cpu.sort()
                results[f"{blend}{'' if colour else ', no colour transfer'}"] = {
                    "cpu_mean_ms": round(statistics.fmean(cpu), 1), "cpu_median_ms": round(statistics.median(cpu), 1),
                    "cpu_p95_ms": round(cpu[int(0.95 * (len(cpu) - 1))], 1), "cpu_max_ms": round(cpu[-1], 1),
                    "wall_mean_ms": round(statistics.fmean(wall), 1)}

        start = time.perf_counter()
        summary = run_generate(config.model_copy(update={"run_id": "bench"}), LocalExecutor())
        wall = time.perf_counter() - start
        stages = json.loads(Path(RunLayout(f"{out}/bench").manifest).read_text())["timings"]["stage_seconds"]

    n = summary.written_samples
    print(json.dumps({
        "side": args.side, "samples": len(samples), "one_core": True,
        "mask_area_fraction": {"median": round(statistics.median(areas), 3), "max": round(max(areas), 3)},
        "engine_ms_per_sample": results,
        "run_generate": {"blend": config.engine.blend, "wall_s": round(wall, 2),
                         "ms_per_sample_by_stage": {k: round(1000 * v / n, 1) for k, v in sorted(stages.items())}},
    }, indent=2))


if __name__ == "__main__":
    main()
