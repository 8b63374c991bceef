"""The export command: a gate's accepted samples, as trainers read them."""

from __future__ import annotations

import argparse

from pipeline.cli.args import AddCommand, count


def cmd_export(args: argparse.Namespace) -> int:
    from pipeline.export.export import ExportOptions, export_runs

    manifest = export_runs(args.run_dirs, ExportOptions(
        out=args.out, format=args.format, include_rejected=args.include_rejected, force=args.force,
        shard_size=args.shard_size))
    print(f"{args.out}: {manifest.samples} samples ({manifest.format}) from {len(manifest.runs)} run(s), "
          f"{len(manifest.files)} files")
    return 0


def register(add: AddCommand) -> None:
    p = add("export", cmd_export, "write the gate's accepted samples of runs as Parquet or image folders")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="gated runs to merge (local or fsspec URL)")
    p.add_argument("--out", required=True, help="export folder (local or fsspec URL)")
    p.add_argument("--format", choices=("parquet", "folders"), default="parquet")
    p.add_argument("--shard-size", type=count, default=256, help="rows per Parquet file")
    p.add_argument("--include-rejected", action="store_true", help="also samples the gate rejected")
    p.add_argument("--force", action="store_true", help="export runs whose run-level gate failed")
