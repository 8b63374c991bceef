"""Scheduling overhead of the Ray executor, measured with cheap engines so the model hides nothing.

1. Same plan, engine sleeping `--seconds-per-sample` per sample: wall time of the in-process
   executor vs the Ray executor with one worker; overhead = (ray - local) / ray.
2. A plan of `--big-samples` samples in `--big-shards` shards (planning time measured), run through
   the Ray executor with workers that return at once: the driver's own time per shard, i.e. whether
   the driver can become the bottleneck.

    python bench/bench_ray.py
"""

from __future__ import annotations

import argparse
import tempfile
import time

import ray

from pipeline.config import load_config
from pipeline.core.timing import StageTimer
from pipeline.executors.base import RunContext
from pipeline.executors.local import LocalExecutor
from pipeline.executors.ray import RayExecutor
from pipeline.generate.runner import run_generate
from pipeline.generate.shards import ShardInfo
from pipeline.generate.worker import ShardResult, ShardWorker
from pipeline.plan.plan import build_plan


class SleepEngine:
    """Takes a fixed time per sample and returns the frames: a stand-in GPU of known speed."""

    identity = {"model": "sleep"}
    prompt_used = True

    def __init__(self, seconds_per_sample: float):
        self.seconds_per_sample = seconds_per_sample

    def inpaint(self, frames, masks, prompts, negatives, seeds, timer: StageTimer | None = None):
        time.sleep(self.seconds_per_sample * len(frames))
        return list(frames)


class InstantWorker:
    """Returns a result without generating anything: all that is left is scheduling."""

    def run(self, shard_index: int, rows: list[dict]) -> ShardResult:
        return ShardResult(ShardInfo(shard_index, len(rows), [], 0, "", ""), {})


def sleep_factory(seconds: float):
    def factory(context: RunContext) -> ShardWorker:
        return ShardWorker(SleepEngine(seconds), context)

    return factory


def instant_factory(context: RunContext) -> InstantWorker:
    return InstantWorker()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="jobs/smoke.yaml")
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--shard-size", type=int, default=4)
    parser.add_argument("--seconds-per-sample", type=float, default=1.0)
    parser.add_argument("--big-samples", type=int, default=100_000)
    parser.add_argument("--big-shards", type=int, default=1_000)
    args = parser.parse_args()
    ray.init(num_cpus=2, logging_level="WARNING", include_dashboard=False)

    walls = {}
    for name, executor in (("local", LocalExecutor()), ("ray", RayExecutor())):
        with tempfile.TemporaryDirectory() as out:
            config = load_config(args.config, [f"output={out}", f"samples={args.samples}",
                                               f"shard_size={args.shard_size}", "executor.max_workers=1"])
            build_plan(config).write(config.run_dir())  # planning is not scheduling: done before the clock
            start = time.perf_counter()
            summary = run_generate(config, executor, factory=sleep_factory(args.seconds_per_sample))
            walls[name] = time.perf_counter() - start
            assert summary.ok and summary.written_samples == args.samples
    overhead = (walls["ray"] - walls["local"]) / walls["ray"]
    print(f"[1] {args.samples} samples, {args.samples // args.shard_size} shards, {args.seconds_per_sample}s/sample, "
          f"1 worker: local {walls['local']:.2f}s ({args.samples / walls['local']:.3f} samples/s), "
          f"ray {walls['ray']:.2f}s ({args.samples / walls['ray']:.3f} samples/s) → Ray overhead {100 * overhead:.1f}%")

    with tempfile.TemporaryDirectory() as out:
        config = load_config(args.config, [f"output={out}", f"samples={args.big_samples}",
                                           f"shard_size={args.big_samples // args.big_shards}",
                                           "executor.max_workers=2"])
        start = time.perf_counter()
        plan = build_plan(config)
        planned = time.perf_counter() - start
        plan.write(config.run_dir())
        start = time.perf_counter()
        summary = run_generate(config, RayExecutor(), factory=instant_factory)
        driver = time.perf_counter() - start
    print(f"[2] plan of {args.big_samples} samples: built in {planned:.1f}s; {len(plan.shard_indices)} shards "
          f"scheduled through 2 instant workers in {driver:.1f}s → {1000 * driver / len(plan.shard_indices):.1f} ms "
          f"of driver time per shard, {summary.planned_samples / driver:.0f} samples/s ceiling")


if __name__ == "__main__":
    main()
