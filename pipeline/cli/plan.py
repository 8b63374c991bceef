"""Commands of the plan stage: prompts, mask presets, frames to paint on, the plan itself."""

from __future__ import annotations

import argparse
import json
import logging

from pipeline.cli.args import AddCommand, action, aim_argument, count, group, job, job_arguments, size

log = logging.getLogger("pipeline")


def cmd_prompts(args: argparse.Namespace) -> int:
    from pipeline.plan.prompts.bank import PromptBank

    for sample in PromptBank.load(args.bank).sample_many(args.n, args.seed):
        print(json.dumps(sample.to_json()))
    return 0


def cmd_masks_fit(args: argparse.Namespace) -> int:
    from pipeline.plan.masks.fit import fit_preset
    from pipeline.plan.prompts.bank import PromptBank

    preset = fit_preset(args.reference, PromptBank.load(args.bank), seed=args.seed)
    preset.save(args.out)
    log.info("wrote preset fitted on %s to %s", args.reference, args.out)
    return 0


def cmd_masks_sample(args: argparse.Namespace) -> int:
    from pipeline.tools.masks import sample_masks_to_dir

    width, height = size(args.size)
    sample_masks_to_dir(args.preset, args.bank, args.n, width, height, args.seed, args.out)
    return 0


def cmd_masks_check(args: argparse.Namespace) -> int:
    from pipeline.tools.masks import check_against_reference

    report = check_against_reference(args.preset, args.bank, args.reference, args.n, args.seed)
    print(json.dumps(report, indent=2))
    return 0 if report["pass"] else 1


def cmd_frames_polyp_free(args: argparse.Namespace) -> int:
    from pipeline.plan.polyp_free import cut_polyp_free_frames

    print(cut_polyp_free_frames(args.images, args.masks, args.out, args.split).line())
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from pipeline.core.layout import RunLayout
    from pipeline.generate.runner import load_or_build_plan

    config = job(args)
    plan = load_or_build_plan(config, config.run_dir(), args.n)  # a run's plan (and its rounds) is kept
    url = RunLayout(config.run_dir()).plan
    print(f"{url}: {plan.num_samples} samples in {len(plan.shard_indices)} shards "
          f"({plan.meta.frames.usable} frames, {len(plan.meta.frames.skipped)} skipped)")
    if plan.negatives:
        print(f"hard negatives (empty labels): {sum(plan.negatives.values())}, "
              + ", ".join(f"{shows} {count}" for shows, count in plan.negatives.items()))
    if plan.meta.targets:
        from pipeline.plan.targets import planned_areas, shares_table, size_shares

        print(shares_table(plan.meta.targets, {"planned": size_shares(planned_areas(plan.table))}))
    return 0


def labelled_set_arguments(parser: argparse.ArgumentParser, out_help: str) -> None:
    """--images, --masks, --split, --out: a command that reads a labelled set's training split."""
    parser.add_argument("--images", required=True, help="folder of images (<id>.jpg/.png)")
    parser.add_argument("--masks", required=True, help="folder of binary masks with the same ids")
    parser.add_argument("--split", help="file of the ids to use, one per line: a TRAINING split (never a test split)")
    parser.add_argument("--out", required=True, help=out_help)


def register(add: AddCommand) -> None:
    p = add("prompts", cmd_prompts, "print N sampled prompts (text + attributes) as JSON lines")
    p.add_argument("--n", type=count, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bank", default="prompts/clinical.yaml")

    masks = group(add, "masks", "procedural polyp masks: fit presets, sample, check")
    p = action(masks, "fit", cmd_masks_fit, "derive a mask preset from a folder of real masks")
    p.add_argument("--reference", required=True, help="folder of real binary masks (*.png, *.jpg)")
    p.add_argument("--out", required=True, help="preset YAML to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bank", default="prompts/clinical.yaml",
                   help="prompt bank whose size and morphology shares the preset's bands follow")
    sample = action(masks, "sample", cmd_masks_sample, "write N mask PNGs and their parameters for inspection")
    sample.add_argument("--n", type=count, default=16)
    sample.add_argument("--out", required=True)
    sample.add_argument("--size", default="1024x1024", help="WIDTHxHEIGHT")
    check = action(masks, "check", cmd_masks_check, "KS statistics of generated masks against real ones")
    check.add_argument("--reference", default="../shared/data/kvasir-seg/masks")
    check.add_argument("--n", type=count, default=2000)
    for p in (sample, check):
        p.add_argument("--preset", default="masks/default.yaml")
        p.add_argument("--bank", default="prompts/clinical.yaml", help="prompt bank the attributes come from")
        p.add_argument("--seed", type=int, default=0)

    frames = group(add, "frames", "frames to paint on")
    labelled_set_arguments(action(frames, "polyp-free", cmd_frames_polyp_free,
                                  "cut the polyp-free side of labelled frames into frames to paint on"),
                           "folder to write <id>.png to (local path or fsspec URL)")

    p = add("plan", cmd_plan, "write the run's plan (Parquet), one row per sample")
    job_arguments(p)
    aim_argument(p)
