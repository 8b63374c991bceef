"""What every command file shares: registering a command, the job arguments, reading a job config,
counts and sizes from the command line, settings models from arguments, the executor of a job."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from pipeline.config import TINY_MODEL_ID, JobConfig, M, load_config
from pipeline.errors import ConfigError

Command = Callable[[argparse.Namespace], int]
AddCommand = Callable[[str, Command, str], argparse.ArgumentParser]


def group(add: AddCommand, name: str, help: str) -> Any:
    """A command with actions of its own (`polyp-synth NAME ACTION`): its subparsers."""
    parent = add(name, lambda args: 0, help)
    return parent.add_subparsers(dest=f"{name}_command", required=True, metavar="ACTION")


def action(actions: Any, name: str, fn: Command, help: str) -> argparse.ArgumentParser:
    parser = actions.add_parser(name, help=help, description=help)
    parser.set_defaults(fn=fn)
    return parser


def count(text: str) -> int:
    """argparse type of --n and other counts: a positive whole number (0 or less would mean 'the
    whole job' or crash)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 1024x1024") from None
    if width <= 0 or height <= 0:
        raise ConfigError(f"--size {text!r}: both sides must be positive")
    return width, height


def job_arguments(parser: argparse.ArgumentParser, n_help: str = "only the first N samples of the job",
                  out_help: str = "output root (local path or fsspec URL); the run goes to OUT/RUN_ID",
                  with_n: bool = True) -> None:
    parser.add_argument("job", nargs="?", help="job config (YAML)")
    parser.add_argument("--config", help="job config (YAML), same as the positional JOB")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field; repeatable")
    parser.add_argument("--out", help=out_help)
    if with_n:
        parser.add_argument("--n", type=count, help=n_help)


def aim_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from-evaluation", metavar="EVAL.json", help="aim the plan's lesion sizes at the bins "
                        "this `evaluate --json` report is weakest in (sets targets.from_evaluation)")


def job(args: argparse.Namespace, model: type[M] = JobConfig) -> M:
    """The job config the arguments name, with their overrides; the reserved test model built on first use."""
    if args.config and args.job and args.config != args.job:
        raise ConfigError(f"two job configs given ({args.job} and --config {args.config}): pass one")
    path = args.config or args.job
    if not path:
        raise ConfigError("no job config given: pass JOB.yaml or --config JOB.yaml")
    overrides = list(args.set or [])
    if getattr(args, "out", None):
        overrides.append(f"output={args.out}")
    if getattr(args, "executor", None):
        overrides.append(f"executor.kind={args.executor}")
    if getattr(args, "from_evaluation", None):
        overrides.append(f"targets.from_evaluation={args.from_evaluation}")
    config = load_config(path, overrides, model)
    if getattr(config.engine, "model", None) == TINY_MODEL_ID:
        from pipeline.tools.tiny_model import build_reserved_model

        build_reserved_model()
    return config


def settings(model: type[M], args: argparse.Namespace, names: tuple[str, ...]) -> M:
    """A settings model from the given CLI arguments; a bad value is one ConfigError line."""
    from pydantic import ValidationError

    from pipeline.errors import validation_summary

    try:
        return model(**{name: getattr(args, name) for name in names if getattr(args, name) is not None})
    except ValidationError as exc:
        raise ConfigError(f"--{validation_summary(exc).replace('_', '-')}") from None


def executor(config: JobConfig, description: str = "generating"):
    if config.executor.kind == "ray":
        from pipeline.executors.ray import RayExecutor

        return RayExecutor(description)
    from pipeline.executors.local import LocalExecutor

    return LocalExecutor(description)
