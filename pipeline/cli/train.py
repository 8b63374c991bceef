"""Commands of the train stage: the reference segmenter (train, evaluate, experiment) and the
generator's LoRA fine-tuning."""

from __future__ import annotations

import argparse
import json

from pipeline.cli.args import AddCommand, count, job, job_arguments, settings
from pipeline.errors import ConfigError


def cmd_train(args: argparse.Namespace) -> int:
    from pipeline.data.sources import resolve
    from pipeline.train.segment import TrainSettings, train

    trainer_settings = settings(TrainSettings, args, ("encoder", "size", "epochs", "steps", "batch_size", "lr",
                                                      "ratio", "seed", "workers", "device"))
    real = [ref for spec in args.real for ref in resolve(spec)]
    synthetic = [ref for spec in args.synthetic or [] for ref in resolve(spec)]
    holdout = resolve(args.holdout) if args.holdout else []
    result = train(real, trainer_settings, args.out, synthetic, args.real, args.synthetic or [], holdout,
                   args.holdout or "")
    held = result.record.holdout
    print(f"{result.checkpoint}: {result.record.steps} steps, {result.record.epochs} epochs, "
          f"final loss {result.record.epoch_losses[-1]:.4f}, {result.record.seconds:.0f} s"
          + (f"; IoU on {held.n} held-out images: mean {held.iou_mean:.3f}, 10th percentile {held.iou_p10:.3f}"
             if held else ""))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pipeline.train.evaluate import evaluate, report_table

    reports = evaluate(args.checkpoint, args.data, args.device, args.negatives or [], args.metadata)
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
    trainer_settings = settings(TrainSettings, args, ("encoder", "size", "epochs", "batch_size", "lr", "workers",
                                                      "device"))
    spec = ExperimentSpec(real=args.real, synthetic=synthetic, evals=args.eval, ratios=ratios, seeds=args.seeds,
                          real_n=args.real_n, settings=trainer_settings, out=args.out,
                          negatives=args.eval_negatives or [], executor=args.executor)
    print(summary_markdown(summarise(run_experiment(spec), reference=spec.reference)))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from pipeline.train.finetune.config import FinetuneConfig

    config = job(args, FinetuneConfig)
    if args.gpu_memory:
        from pipeline.tools.memory_plan import parse_memory, training_table

        print(training_table(config, parse_memory(args.gpu_memory)))
        return 0
    if config.executor.kind == "ray":
        from pipeline.train.finetune.distributed import finetune_on_ray

        result = finetune_on_ray(config)
    else:
        from pipeline.train.finetune.trainer import finetune

        result = finetune(config)
    print(result.line())
    return 0


def register(add: AddCommand) -> None:
    p = add("train", cmd_train, "train the reference U-Net on real (+ synthetic) pairs; safetensors checkpoint")
    p.add_argument("--real", action="append", required=True, metavar="DIR[:SPLIT]",
                   help="real images/ + masks/ folder, split name or file; repeatable")
    p.add_argument("--synthetic", action="append", metavar="EXPORT", help="export, run or shards; repeatable")
    p.add_argument("--ratio", type=float, help="synthetic pairs per real pair per epoch (default 0)")
    p.add_argument("--out", required=True, help="checkpoint file (.safetensors)")
    p.add_argument("--holdout", metavar="DIR[:SPLIT]", help="held-out real images: their IoU is recorded in the "
                   "checkpoint (the gate's label check derives its bound from it)")
    p.add_argument("--encoder", help="efficientnet-lite0 (default), efficientnet-lite2 or an smp encoder")
    p.add_argument("--size", type=int, help="square training size (default 352)")
    p.add_argument("--epochs", type=int, help="default 20")
    p.add_argument("--steps", type=int, help="total optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="DataLoader workers (default 0: in-process, with a resize cache)")
    p.add_argument("--device", help="auto (default), cpu, cuda, …")

    p = add("evaluate", cmd_evaluate, "Dice, IoU, precision, recall, HD95 of a checkpoint on labelled sets")
    p.add_argument("checkpoint")
    p.add_argument("--data", action="append", required=True, metavar="DIR[:SPLIT]", help="repeatable")
    p.add_argument("--negatives", action="append", metavar="DIR[:IDS.txt]",
                   help="folder of polyp-free frames: the false-positive rate; repeatable")
    p.add_argument("--json", help="write the JSON report here instead of stdout (`plan --from-evaluation` reads it)")
    p.add_argument("--metadata", metavar="CSV", help="per-image attributes to report by: an id column (file stems), "
                   "then one column per attribute")
    p.add_argument("--device", default="auto")

    p = add("experiment", cmd_experiment, "does the synthetic data help? real only vs real + synthetic, "
            "several ratios and seeds, at equal epochs and equal steps")
    p.add_argument("--real", required=True, metavar="DIR[:SPLIT]")
    p.add_argument("--synthetic", action="append", required=True, metavar="[NAME=]EXPORT",
                   help="synthetic set (export, run or shards), optionally named; repeatable (e.g. transplant=…, sdxl=…): "
                        "the first named is the reference the others are also held against")
    p.add_argument("--ratios", default="0,0.5,1,2")
    p.add_argument("--seeds", type=count, default=5, help="seeds per arm (default 5; differences are paired by seed)")
    p.add_argument("--eval", action="append", required=True, metavar="DIR[:SPLIT]", help="held-out real set; repeatable")
    p.add_argument("--eval-negatives", action="append", metavar="DIR[:IDS.txt]",
                   help="held-out polyp-free frames: the false-positive rate; repeatable")
    p.add_argument("--real-n", type=count, help="train on only the first N real ids (the low-data regime)")
    p.add_argument("--out", required=True, help="experiment folder: trials.jsonl, summary.json, table.md, plot.png")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="ray: one task per trial, a GPU each (the cluster of RAY_ADDRESS, or a local Ray)")
    for flag, kind in (("--encoder", str), ("--size", int), ("--epochs", int), ("--batch-size", int), ("--lr", float),
                       ("--workers", int), ("--device", str)):
        p.add_argument(flag, type=kind, help="as for train")

    p = add("finetune", cmd_finetune, "train a LoRA of the inpainting model on real labelled polyps")
    job_arguments(p, out_help="folder of the fine-tuning run (LoRA, card, checkpoints, sheets)", with_n=False)
    p.add_argument("--executor", choices=("local", "ray"), help="override executor.kind (ray: Ray Train, a worker per GPU)")
    p.add_argument("--gpu-memory", metavar="AMOUNT", help="instead of training, the largest batch per worker on a GPU "
                   "of AMOUNT (e.g. 80GiB), counted on fake tensors")
