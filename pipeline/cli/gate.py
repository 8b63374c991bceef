"""Commands of the gate stage: judging a run, building references, comparing any folder with one."""

from __future__ import annotations

import argparse
import json

from pipeline.cli.args import AddCommand, action, count, executor, group


def cmd_gate(args: argparse.Namespace) -> int:
    """Exit 0 when the run passes its run-level bounds, 1 when it fails them (export then refuses it)."""
    from pipeline.gate.run import gate_config, run_gate

    config = gate_config(args.run_dir, list(args.set or []))
    outcome = run_gate(args.run_dir, config, executor(config, "gating"))
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


def register(add: AddCommand) -> None:
    p = add("gate", cmd_gate, "judge a generated run: verdicts, metrics and report.html under RUN_DIR/gate/")
    p.add_argument("run_dir")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. gate.realism_min=0.8")

    build = action(group(add, "reference", "reference sets of real polyp images for the gate"), "build",
                   cmd_reference_build, "features (and lesion crops, and a lesion probe) of real images")
    build.add_argument("--images", required=True, help="folder of real polyp images")
    build.add_argument("--masks", help="their masks (same file stems): lesion crops")
    build.add_argument("--negatives", help="polyp-free frames: fit the lesion probe (needs --masks)")
    build.add_argument("--out", required=True, help="reference folder to write")
    build.add_argument("--extractor", choices=("efficientnet-lite0", "efficientnet-lite2", "inception"),
                       default="efficientnet-lite0")
    build.add_argument("--split", help="file of the image ids to use (e.g. a training split), one per line")
    build.add_argument("--limit", type=count, help="use the first N images (sorted by name)")

    compare = action(group(add, "quality", "set-level figures of any image folder"), "compare", cmd_quality_compare,
                     "FID, KID, precision/recall, density/coverage vs a reference, as JSON")
    compare.add_argument("--images", required=True, help="folder of images")
    compare.add_argument("--reference", required=True, help="reference folder (`polyp-synth reference build`)")
    compare.add_argument("--limit", type=count, help="use the first N images (sorted by name)")
    for p in (build, compare):
        p.add_argument("--inception-path", help="folder or file of clean-fid's inception-2015-12-05.pt")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda, …")
