"""`polyp-synth` (also `python -m pipeline`): one entry point, one subcommand per job a user has.

User errors (`PolypSynthError`) end as one line on stderr and exit code 2; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
from collections.abc import Callable

from pipeline import __version__
from pipeline.config import JobConfig, M, load_config
from pipeline.core import logsetup
from pipeline.errors import ConfigError, PolypSynthError

log = logging.getLogger("pipeline")


def _job(args: argparse.Namespace, model: type[M] = JobConfig) -> M:
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
    return load_config(path, overrides, model)


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

    width, height = _size(args.size)
    sample_masks_to_dir(args.preset, args.bank, args.n, width, height, args.seed, args.out)
    return 0


def cmd_masks_check(args: argparse.Namespace) -> int:
    from pipeline.tools.masks import check_against_reference

    report = check_against_reference(args.preset, args.bank, args.reference, args.n, args.seed)
    print(json.dumps(report, indent=2))
    return 0 if report["pass"] else 1


def cmd_donors_build(args: argparse.Namespace) -> int:
    from pipeline.generate.transplant.donors import build_donors

    print(build_donors(args.images, args.masks, args.out, args.split).line())
    return 0


def cmd_frames_polyp_free(args: argparse.Namespace) -> int:
    from pipeline.plan.polyp_free import cut_polyp_free_frames

    print(cut_polyp_free_frames(args.images, args.masks, args.out, args.split).line())
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from pipeline.generate.runner import new_plan

    config = _job(args)
    plan = new_plan(config, args.n)
    url = plan.write(config.run_dir())
    print(f"{url}: {plan.num_samples} samples in {len(plan.shard_indices)} shards "
          f"({plan.meta.frames.usable} frames, {len(plan.meta.frames.skipped)} skipped)")
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from pipeline.tools import preview

    if args.config:
        config = load_config(args.config, list(args.set or []))
        preview.plan_sheet(config, args.n, args.out, args.windows)
    elif args.job:
        if args.set:
            raise ConfigError("--set changes a job's config; a RUN_DIR preview draws what was generated")
        preview.run_sheet(args.job, args.n, args.out, args.windows)
    else:
        raise ConfigError("preview needs a RUN_DIR or --config JOB.yaml")
    print(args.out)
    return 0


def cmd_build_tiny_model(args: argparse.Namespace) -> int:
    from pipeline.testing.tiny_model import build_tiny_model

    print(build_tiny_model(args.dir, unet_channels=args.unet_channels))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from pipeline.generate.runner import run_generate

    config = _job(args)
    summary = run_generate(config, _executor(config), args.n)
    print(summary.line())
    return 0 if summary.ok else 1


def cmd_run(args: argparse.Namespace) -> int:
    """generate → gate; the gate runs only on a complete run, and its verdict is the exit code."""
    from pipeline.gate.run import run_gate
    from pipeline.generate.runner import run_generate

    config = _job(args)
    summary = run_generate(config, _executor(config), args.n)
    print(summary.line())
    if not summary.ok:
        return 1
    if not config.gate.enabled:
        log.info("gate.enabled is false: not gating %s", config.run_dir())
        return 0
    outcome = run_gate(config.run_dir(), config, _executor(config, "gating"))
    print(outcome.line())
    return 0 if outcome.passed else 1


def cmd_gate(args: argparse.Namespace) -> int:
    """Exit 0 when the run passes its run-level bounds, 1 when it fails them (export then refuses it)."""
    from pipeline.gate.run import gate_config, run_gate

    config = gate_config(args.run_dir, list(args.set or []))
    outcome = run_gate(args.run_dir, config, _executor(config, "gating"))
    print(outcome.line())
    return 0 if outcome.passed else 1


def cmd_reference_build(args: argparse.Namespace) -> int:
    from pipeline.gate.features import make_extractor
    from pipeline.gate.reference import build_reference

    extractor = make_extractor(args.extractor, args.inception_path, args.device)
    reference = build_reference(args.images, extractor, args.masks, args.negatives, args.limit, split=args.split)
    reference.save(args.out)
    print(json.dumps(reference.identity.model_dump(mode="json")))
    return 0


def cmd_quality_compare(args: argparse.Namespace) -> int:
    from pipeline.gate.features import make_extractor
    from pipeline.gate.reference import Reference, compare, folder_features

    reference = Reference.load(args.reference)
    extractor = make_extractor(reference.identity.extractor, args.inception_path, args.device)
    figures = compare(reference, folder_features(args.images, extractor, args.limit))
    print(json.dumps(figures.model_dump(mode="json")))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pipeline.tools.inspect import summarise_run

    print(summarise_run(args.run_dir))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from pipeline.train.finetune.config import FinetuneConfig

    config = _job(args, FinetuneConfig)
    if config.executor.kind == "ray":
        from pipeline.train.finetune.distributed import finetune_on_ray

        result = finetune_on_ray(config)
    else:
        from pipeline.train.finetune.trainer import finetune

        result = finetune(config)
    print(result.line())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pipeline.export.export import ExportOptions, export_runs

    manifest = export_runs(args.run_dirs, ExportOptions(
        out=args.out, format=args.format, include_rejected=args.include_rejected, force=args.force,
        shard_size=args.shard_size))
    print(f"{args.out}: {manifest.samples} samples ({manifest.format}) from {len(manifest.runs)} run(s), "
          f"{len(manifest.files)} files")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pipeline.data.sources import resolve
    from pipeline.train.segment import TrainSettings, train

    settings = _settings(TrainSettings, args, ("encoder", "size", "epochs", "steps", "batch_size", "lr", "ratio",
                                               "seed", "workers", "device"))
    real = [ref for spec in args.real for ref in resolve(spec)]
    synthetic = [ref for spec in args.synthetic or [] for ref in resolve(spec)]
    result = train(real, settings, args.out, synthetic, args.real, args.synthetic or [])
    print(f"{result.checkpoint}: {result.record.steps} steps, {result.record.epochs} epochs, "
          f"final loss {result.record.epoch_losses[-1]:.4f}, {result.record.seconds:.0f} s")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pipeline.train.evaluate import evaluate, report_table

    reports = evaluate(args.checkpoint, args.data, args.device, args.negatives or [])
    payload = json.dumps({"checkpoint": args.checkpoint, "sets": [r.to_json() for r in reports]}, indent=2)
    if args.json:
        from pipeline.core import storage

        storage.write_bytes_atomic(args.json, payload.encode())
    else:
        print(payload)
    Console(stderr=True).print(report_table(reports, args.checkpoint))
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from pipeline.train.experiment import ExperimentSpec, run_experiment
    from pipeline.train.segment import TrainSettings
    from pipeline.train.summary import summarise, summary_markdown

    synthetic = {}
    for text in args.synthetic:
        name, sep, source = text.partition("=")
        synthetic[name if sep else f"synthetic{len(synthetic) + 1}"] = source if sep else text
    try:
        ratios = [float(r) for r in args.ratios.split(",")]
    except ValueError:
        raise ConfigError(f"--ratios {args.ratios!r}: expected numbers separated by commas, e.g. 0,0.5,1,2") from None
    settings = _settings(TrainSettings, args, ("encoder", "size", "epochs", "batch_size", "lr", "workers", "device"))
    results = run_experiment(ExperimentSpec(real=args.real, synthetic=synthetic, evals=args.eval, ratios=ratios,
                                            seeds=args.seeds, real_n=args.real_n, settings=settings, out=args.out,
                                            negatives=args.eval_negatives or [], executor=args.executor))
    print(summary_markdown(summarise(results)))
    return 0


def _settings(model, args: argparse.Namespace, names: tuple[str, ...]):
    """A settings model from the given CLI arguments; a bad value is one ConfigError line."""
    from pydantic import ValidationError

    from pipeline.errors import validation_summary

    try:
        return model(**{name: getattr(args, name) for name in names if getattr(args, name) is not None})
    except ValidationError as exc:
        raise ConfigError(f"--{validation_summary(exc).replace('_', '-')}") from None


def _executor(config: JobConfig, description: str = "generating"):
    if config.executor.kind == "ray":
        from pipeline.executors.ray import RayExecutor

        return RayExecutor(description)
    from pipeline.executors.local import LocalExecutor

    return LocalExecutor(description)


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 1024x1024") from None
    if width <= 0 or height <= 0:
        raise ConfigError(f"--size {text!r}: both sides must be positive")
    return width, height


def _count(text: str) -> int:
    """argparse type of --n: a positive whole number (0 or less would mean 'the whole job' or crash)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def _job_arguments(parser: argparse.ArgumentParser, n_help: str = "only the first N samples of the job",
                   out_help: str = "output root (local path or fsspec URL); the run goes to OUT/RUN_ID",
                   with_n: bool = True) -> None:
    parser.add_argument("job", nargs="?", help="job config (YAML)")
    parser.add_argument("--config", help="job config (YAML), same as the positional JOB")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field; repeatable")
    parser.add_argument("--out", help=out_help)
    if with_n:
        parser.add_argument("--n", type=_count, help=n_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polyp-synth",
        description="Manufacture labelled synthetic colonoscopy polyp images: plan, generate, inspect.",
    )
    parser.add_argument("--version", action="version", version=f"polyp-synth {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(fn=fn)
        return p

    p = command("prompts", cmd_prompts, "print N sampled prompts (text + attributes) as JSON lines")
    p.add_argument("--n", type=_count, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bank", default="prompts/clinical.yaml")

    masks = command("masks", lambda a: 0, "procedural polyp masks: fit presets, sample, check")
    masks_sub = masks.add_subparsers(dest="masks_command", required=True, metavar="ACTION")
    p = masks_sub.add_parser("fit", help="derive a mask preset from a folder of real masks")
    p.set_defaults(fn=cmd_masks_fit)
    p.add_argument("--reference", required=True, help="folder of real binary masks (*.png, *.jpg)")
    p.add_argument("--out", required=True, help="preset YAML to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bank", default="prompts/clinical.yaml",
                   help="prompt bank whose size and morphology shares the preset's bands follow")
    sample = masks_sub.add_parser("sample", help="write N mask PNGs and their parameters for inspection")
    sample.set_defaults(fn=cmd_masks_sample)
    sample.add_argument("--n", type=_count, default=16)
    sample.add_argument("--out", required=True)
    sample.add_argument("--size", default="1024x1024", help="WIDTHxHEIGHT")
    check = masks_sub.add_parser("check", help="KS statistics of generated masks against real ones")
    check.set_defaults(fn=cmd_masks_check)
    check.add_argument("--reference", default="../shared/data/kvasir-seg/masks")
    check.add_argument("--n", type=_count, default=2000)
    for p in (sample, check):
        p.add_argument("--preset", default="masks/default.yaml")
        p.add_argument("--bank", default="prompts/clinical.yaml", help="prompt bank the attributes come from")
        p.add_argument("--seed", type=int, default=0)

    for group, action, fn, text, out in (
        ("donors", "build", cmd_donors_build, "cut every lesion of a labelled set (its training split) into a library",
         "donor library to write (Parquet; local path or fsspec URL)"),
        ("frames", "polyp-free", cmd_frames_polyp_free, "cut the polyp-free side of labelled frames into frames to paint on",
         "folder to write <id>.png to (local path or fsspec URL)"),
    ):
        parent = command(group, lambda a: 0, {"donors": "donor libraries of real lesions for the transplant engine",
                                              "frames": "frames to paint on"}[group])
        p = parent.add_subparsers(dest=f"{group}_command", required=True, metavar="ACTION").add_parser(action, help=text)
        p.set_defaults(fn=fn)
        p.add_argument("--images", required=True, help="folder of images (<id>.jpg/.png)")
        p.add_argument("--masks", required=True, help="folder of binary masks with the same ids")
        p.add_argument("--split", help="file of the ids to use, one per line: a TRAINING split (never a test split)")
        p.add_argument("--out", required=True, help=out)

    _job_arguments(command("plan", cmd_plan, "write the run's plan (Parquet), one row per sample"))

    p = command("preview", cmd_preview, "contact sheet of a plan (--config JOB) or of a run's shards (RUN_DIR)")
    _job_arguments(p, "how many samples to draw", "PNG to write")
    p.set_defaults(n=16, out="preview.png")
    p.add_argument("--windows", action="store_true", help="also draw the square the model paints (or painted) each sample in")

    p = command("build-tiny-model", cmd_build_tiny_model, "write a small random SDXL inpainting pipeline")
    p.add_argument("dir")
    p.add_argument("--unet-channels", type=int, choices=(4, 9), default=9)

    for name, fn, text in (
        ("generate", cmd_generate, "plan → generate → shards"),
        ("run", cmd_run, "the whole job: generate → gate (export with `polyp-synth export`)"),
    ):
        p = command(name, fn, text)
        _job_arguments(p)
        p.add_argument("--executor", choices=("local", "ray"), help="override executor.kind")

    p = command("inspect", cmd_inspect, "summarise a run: shards, rows, sizes, settings")
    p.add_argument("run_dir")

    p = command("gate", cmd_gate, "judge a generated run: verdicts, metrics and report.html under RUN_DIR/gate/")
    p.add_argument("run_dir")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. gate.realism_min=0.8")

    reference = command("reference", lambda a: 0, "reference sets of real polyp images for the gate")
    reference_sub = reference.add_subparsers(dest="reference_command", required=True, metavar="ACTION")
    build = reference_sub.add_parser("build", help="features (and lesion crops, and a lesion probe) of real images")
    build.set_defaults(fn=cmd_reference_build)
    build.add_argument("--images", required=True, help="folder of real polyp images")
    build.add_argument("--masks", help="their masks (same file stems): lesion crops")
    build.add_argument("--negatives", help="polyp-free frames: fit the lesion probe (needs --masks)")
    build.add_argument("--out", required=True, help="reference folder to write")
    build.add_argument("--extractor", choices=("efficientnet-lite0", "efficientnet-lite2", "inception"),
                       default="efficientnet-lite0")
    build.add_argument("--split", help="file of the image ids to use (e.g. a training split), one per line")
    build.add_argument("--limit", type=_count, help="use the first N images (sorted by name)")

    quality = command("quality", lambda a: 0, "set-level figures of any image folder")
    quality_sub = quality.add_subparsers(dest="quality_command", required=True, metavar="ACTION")
    compare = quality_sub.add_parser("compare", help="FID, KID, precision/recall, density/coverage vs a reference, as JSON")
    compare.set_defaults(fn=cmd_quality_compare)
    compare.add_argument("--images", required=True, help="folder of images")
    compare.add_argument("--reference", required=True, help="reference folder (`polyp-synth reference build`)")
    compare.add_argument("--limit", type=_count, help="use the first N images (sorted by name)")
    for p in (build, compare):
        p.add_argument("--inception-path", help="folder or file of clean-fid's inception-2015-12-05.pt")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda, …")

    p = command("export", cmd_export, "write the gate's accepted samples of runs as Parquet or image folders")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="gated runs to merge (local or fsspec URL)")
    p.add_argument("--out", required=True, help="export folder (local or fsspec URL)")
    p.add_argument("--format", choices=("parquet", "folders"), default="parquet")
    p.add_argument("--shard-size", type=_count, default=256, help="rows per Parquet file")
    p.add_argument("--include-rejected", action="store_true", help="also samples the gate rejected")
    p.add_argument("--force", action="store_true", help="export runs whose run-level gate failed")

    p = command("train", cmd_train, "train the reference U-Net on real (+ synthetic) pairs; safetensors checkpoint")
    p.add_argument("--real", action="append", required=True, metavar="DIR[:SPLIT]",
                   help="real images/ + masks/ folder, split name or file; repeatable")
    p.add_argument("--synthetic", action="append", metavar="EXPORT", help="export, run or shards; repeatable")
    p.add_argument("--ratio", type=float, help="synthetic pairs per real pair per epoch (default 0)")
    p.add_argument("--out", required=True, help="checkpoint file (.safetensors)")
    p.add_argument("--encoder", help="efficientnet-lite0 (default), efficientnet-lite2 or an smp encoder")
    p.add_argument("--size", type=int, help="square training size (default 352)")
    p.add_argument("--epochs", type=int, help="default 20")
    p.add_argument("--steps", type=int, help="total optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="DataLoader workers (default 0: in-process, with a resize cache)")
    p.add_argument("--device", help="auto (default), cpu, cuda, …")

    p = command("evaluate", cmd_evaluate, "Dice, IoU, precision, recall, HD95 of a checkpoint on labelled sets")
    p.add_argument("checkpoint")
    p.add_argument("--data", action="append", required=True, metavar="DIR[:SPLIT]", help="repeatable")
    p.add_argument("--negatives", action="append", metavar="DIR[:IDS.txt]",
                   help="folder of polyp-free frames: the false-positive rate; repeatable")
    p.add_argument("--json", help="write the JSON report here instead of stdout")
    p.add_argument("--device", default="auto")

    p = command("experiment", cmd_experiment, "does the synthetic data help? real only vs real + synthetic, "
                "several ratios and seeds, at equal epochs and equal steps")
    p.add_argument("--real", required=True, metavar="DIR[:SPLIT]")
    p.add_argument("--synthetic", action="append", required=True, metavar="[NAME=]EXPORT",
                   help="synthetic set (export, run or shards), optionally named; repeatable (e.g. gated=…, ungated=…)")
    p.add_argument("--ratios", default="0,0.5,1,2")
    p.add_argument("--seeds", type=_count, default=5, help="seeds per arm (default 5; differences are paired by seed)")
    p.add_argument("--eval", action="append", required=True, metavar="DIR[:SPLIT]", help="held-out real set; repeatable")
    p.add_argument("--eval-negatives", action="append", metavar="DIR[:IDS.txt]",
                   help="held-out polyp-free frames: the false-positive rate; repeatable")
    p.add_argument("--real-n", type=_count, help="train on only the first N real ids (the low-data regime)")
    p.add_argument("--out", required=True, help="experiment folder: trials.jsonl, summary.json, table.md, plot.png")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="ray: one task per trial, a GPU each (the cluster of RAY_ADDRESS, or a local Ray)")
    for flag, kind in (("--encoder", str), ("--size", int), ("--epochs", int), ("--batch-size", int), ("--lr", float),
                       ("--workers", int), ("--device", str)):
        p.add_argument(flag, type=kind, help="as for train")

    p = command("finetune", cmd_finetune, "train a LoRA of the inpainting model on real labelled polyps")
    _job_arguments(p, out_help="folder of the fine-tuning run (LoRA, card, checkpoints, sheets)", with_n=False)
    p.add_argument("--executor", choices=("local", "ray"), help="override executor.kind (ray: Ray Train, a worker per GPU)")
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
