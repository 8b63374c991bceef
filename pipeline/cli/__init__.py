"""`polyp-synth` (also `python -m pipeline`): one entry point, one subcommand per job a user has;
each stage's commands are registered by a file of their own here, in the order of the data flow.

User errors (`PolypSynthError`) end as one line on stderr and exit code 2; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import gc
import sys

from pipeline import __version__
from pipeline.cli import export, gate, generate, plan, tools, train
from pipeline.cli.args import Command
from pipeline.core import logsetup
from pipeline.errors import PolypSynthError

STAGES = (plan, generate, gate, export, train, tools)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polyp-synth",
        description="Manufacture labelled synthetic colonoscopy polyp images: plan, generate, gate, export, train.",
    )
    parser.add_argument("--version", action="version", version=f"polyp-synth {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Command, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(fn=fn)
        return p

    for stage in STAGES:
        stage.register(add)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logsetup.configure(args.verbose)
    try:
        code = args.fn(args)
    except PolypSynthError as exc:
        print(f"polyp-synth: error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("polyp-synth: interrupted; run the same command again to resume", file=sys.stderr)
        code = 130
    # Free Arrow tables while Arrow is alive: one left to the interpreter's final teardown can abort
    # the process in Arrow's thread pool (exit 134 instead of ours; apache/arrow#34314).
    gc.collect()
    sys.exit(code)
