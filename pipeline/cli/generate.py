"""Commands of the generate stage: donor libraries, generating a job, and the whole job (generate → gate)."""

from __future__ import annotations

import argparse
import logging

from pipeline.cli.args import AddCommand, action, aim_argument, executor, group, job, job_arguments
from pipeline.cli.plan import labelled_set_arguments

log = logging.getLogger("pipeline")


def cmd_donors_build(args: argparse.Namespace) -> int:
    from pipeline.generate.transplant.donors import build_donors

    print(build_donors(args.images, args.masks, args.out, args.split).line())
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from pipeline.generate.runner import run_generate

    config = job(args)
    summary = run_generate(config, executor(config), args.n)
    print(summary.line())
    return 0 if summary.ok else 1


def cmd_run(args: argparse.Namespace) -> int:
    """generate → gate; the gate runs only on a complete run, and its verdict is the exit code. A job
    that asks for accepted samples runs rounds of generate → gate until it has them."""
    from pipeline.gate.run import run_gate
    from pipeline.generate.runner import run_generate

    config = job(args)
    if config.until_accepted:
        from pipeline.errors import ConfigError
        from pipeline.gate.rounds import run_until_accepted

        if args.n is not None:  # later rounds depend on every sample before them
            raise ConfigError(f"--n {args.n}: the job asks for samples.accepted={config.until_accepted.accepted}; "
                              f"ask for another number with --set samples.accepted={args.n}")
        outcome = run_until_accepted(config, lambda description: executor(config, description))
        print(outcome.line())
        return 0 if outcome.ok else 1
    summary = run_generate(config, executor(config), args.n)
    print(summary.line())
    if not summary.ok:
        return 1
    if not config.gate.enabled:
        log.info("gate.enabled is false: not gating %s", config.run_dir())
        return 0
    outcome = run_gate(config.run_dir(), config, executor(config, "gating"))
    print(outcome.line())
    return 0 if outcome.passed else 1


def register(add: AddCommand) -> None:
    donors = group(add, "donors", "donor libraries of real lesions for the transplant engine")
    labelled_set_arguments(action(donors, "build", cmd_donors_build,
                                  "cut every lesion of a labelled set (its training split) into a library"),
                           "donor library to write (Parquet; local path or fsspec URL)")
    for name, fn, text in (
        ("generate", cmd_generate, "plan → generate → shards"),
        ("run", cmd_run, "the whole job: generate → gate, in rounds until N are accepted when the job asks "
                         "for samples: {accepted: N} (export with `polyp-synth export`)"),
    ):
        p = add(name, fn, text)
        job_arguments(p)
        aim_argument(p)
        p.add_argument("--executor", choices=("local", "ray"), help="override executor.kind")
