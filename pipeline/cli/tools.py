"""Commands that look at what was made, before or after: inspect, preview, the tiny test model."""

from __future__ import annotations

import argparse

from pipeline.cli.args import AddCommand, aim_argument, job_arguments
from pipeline.config import load_config
from pipeline.errors import ConfigError


def cmd_preview(args: argparse.Namespace) -> int:
    from pipeline.tools import preview

    if args.gpu_memory:
        from pipeline.tools.memory_plan import memory_table, parse_memory

        if not args.config:
            raise ConfigError("--gpu-memory plans a job's batch: give --config JOB.yaml")
        print(memory_table(load_config(args.config, list(args.set or [])), parse_memory(args.gpu_memory)))
        return 0
    if args.config:
        aimed = [f"targets.from_evaluation={args.from_evaluation}"] if args.from_evaluation else []
        sizes = preview.plan_sheet(load_config(args.config, [*(args.set or []), *aimed]), args.n, args.out, args.windows)
        if sizes:
            print(sizes)
    elif args.job:
        if args.set:
            raise ConfigError("--set changes a job's config; a RUN_DIR preview draws what was generated")
        preview.run_sheet(args.job, args.n, args.out, args.windows)
    else:
        raise ConfigError("preview needs a RUN_DIR or --config JOB.yaml")
    print(args.out)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pipeline.tools.inspect import summarise_run

    print(summarise_run(args.run_dir))
    return 0


def cmd_build_tiny_model(args: argparse.Namespace) -> int:
    from pipeline.tools.tiny_model import build_reserved_model, build_tiny_model

    if (args.dir is None) == (not args.reserved):
        raise ConfigError("build-tiny-model: give a DIR, or --reserved (the folder testing/tiny-random names)")
    print(build_reserved_model() if args.reserved else build_tiny_model(args.dir, unet_channels=args.unet_channels))
    return 0


def register(add: AddCommand) -> None:
    p = add("inspect", cmd_inspect, "summarise a run: shards, rows, sizes, settings")
    p.add_argument("run_dir")

    p = add("preview", cmd_preview, "contact sheet of a plan (--config JOB) or of a run's shards (RUN_DIR)")
    job_arguments(p, "how many samples to draw", "PNG to write")
    aim_argument(p)
    p.set_defaults(n=16, out="preview.png")
    p.add_argument("--windows", action="store_true", help="also draw the square the model paints (or painted) each sample in")
    p.add_argument("--gpu-memory", metavar="AMOUNT", help="instead of a sheet, the largest generation batch per working "
                   "resolution on a GPU of AMOUNT (e.g. 80GiB), counted on fake tensors")

    p = add("build-tiny-model", cmd_build_tiny_model, "write a small random SDXL inpainting pipeline")
    p.add_argument("dir", nargs="?")
    p.add_argument("--reserved", action="store_true", help="build the model `engine.model: testing/tiny-random` loads")
    p.add_argument("--unet-channels", type=int, choices=(4, 9), default=9)
