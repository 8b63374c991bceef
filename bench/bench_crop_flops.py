"""FLOPs per sample that crop-around-mask inpainting saves on a job's plan (full-size SDXL, counted).

For each planned sample: its label at output size, the window the engine paints (`engine.region=crop`
with the job's crop settings) and the whole frame (`frame`, padded to a square). The working side of
each comes from one policy, applied to both modes alike:

    fixed        always `--resolution` (today's engine without crop_resolution)
    threshold    `--crop-resolution` for windows no larger than it, else `--resolution` (the engine's
                 `engine.crop_resolution` rule)
    same-detail  the frame at `--resolution`, a window at the same scale: ceil64(resolution · window /
                 frame), at least `--floor` (each source pixel gets as many model pixels in both modes)

FLOPs per side are counted on the real architecture (`sdxl_flops.py`).

    python bench/bench_crop_flops.py --config jobs/demo-sdxl.yaml
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys

from sdxl_flops import full_size_configs, sample_flops, steps_run

from pipeline.config import load_config
from pipeline.core.timing import StageTimer
from pipeline.generate.window import Window, paint_window
from pipeline.generate.worker import prepare_sample
from pipeline.plan.plan import build_plan


def working_side(policy: str, window: Window, frame: Window, args: argparse.Namespace) -> int:
    if policy == "fixed":
        return args.resolution
    if policy == "threshold":
        return args.crop_resolution if window.side <= args.crop_resolution else args.resolution
    scaled = 64 * math.ceil(args.resolution * window.side / frame.side / 64)
    return min(args.resolution, max(args.floor, scaled))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="jobs/demo-sdxl.yaml")
    parser.add_argument("--n", type=int, help="first N samples of the plan (default: the whole job)")
    parser.add_argument("--set", action="append", default=[], help="override a job field (crop_min, …)")
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--crop-resolution", type=int, default=768)
    parser.add_argument("--floor", type=int, default=512, help="smallest working side of same-detail")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()

    config = load_config(args.config, args.set)
    if config.engine.kind != "sdxl":
        sys.exit(f"{args.config}: engine.kind is {config.engine.kind}; crop mode is the SDXL engine's "
                 "(try jobs/demo-sdxl.yaml)")
    engine = config.engine.model_copy(update={"region": "crop"})
    unet_config, vae_config = full_size_configs()
    steps = steps_run(args.steps, engine.strength)
    samples = []
    for row in build_plan(config, args.n).table.to_pylist():
        _, mask = prepare_sample(row, engine.output_resolution, StageTimer())
        frame = Window(0, 0, mask.shape[1], mask.shape[0])
        samples.append((paint_window(mask, engine), frame, (mask > 0).mean()))

    print(f"{config.resolved_run_id()}: {len(samples)} samples, output {engine.output_resolution or 'frame size'}, "
          f"crop_context {engine.crop_context}, crop_min {engine.crop_min}, dilation {engine.mask_dilation}+"
          f"{engine.mask_feather}; full-size SDXL, {steps} steps run ({args.steps} × strength {engine.strength}), CFG")
    areas = [area for _, _, area in samples]
    ratios = [window.side / frame.side for window, frame, _ in samples]
    print(f"label area: median {statistics.median(areas):.1%} (min {min(areas):.1%}, max {max(areas):.1%}); "
          f"crop side / frame side: median {statistics.median(ratios):.2f} (min {min(ratios):.2f}); "
          f"{sum(r == 1 for r in ratios)} of {len(ratios)} windows are the whole frame")
    print(f"{'policy':<12} {'frame TFLOP':>11} {'crop TFLOP':>10} {'saved':>6}   lesion's model pixels, crop / frame")
    for policy in ("fixed", "threshold", "same-detail"):
        frame_flops, crop_flops, detail = [], [], []
        for window, frame, _ in samples:
            frame_side, crop_side = working_side(policy, frame, frame, args), working_side(policy, window, frame, args)
            frame_flops.append(sample_flops(unet_config, vae_config, frame_side).total(steps))
            crop_flops.append(sample_flops(unet_config, vae_config, crop_side).total(steps))
            detail.append((crop_side / window.side) ** 2 / (frame_side / frame.side) ** 2)
        frame_mean, crop_mean = statistics.mean(frame_flops), statistics.mean(crop_flops)
        print(f"{policy:<12} {frame_mean / 1e12:>11.1f} {crop_mean / 1e12:>10.1f} {1 - crop_mean / frame_mean:>6.1%}"
              f"   ×{statistics.median(detail):.2f} median (×{min(detail):.2f}–×{max(detail):.2f})")


if __name__ == "__main__":
    main()
