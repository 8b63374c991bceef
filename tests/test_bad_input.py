"""Bad input gives one line naming the file, and exit 2, in every command that reads user data:
never a traceback, and nothing an earlier command wrote is lost. A table: command × broken input.

Each case copies a small healthy labelled set (three Kvasir-SEG training pairs), a gated run, an
export and a checkpoint into its own folder, breaks one thing, and runs the command in-process
(an exception that is not a one-line user error fails the test with its traceback)."""

import json
import shutil
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.export.export import ExportOptions, export_runs
from pipeline.testing.data import shared_data
from pipeline.testing.runs import kvasir_pairs, write_gated_run
from pipeline.train.segment import TrainSettings, train

KVASIR = shared_data() / "kvasir-seg"
IDS = (KVASIR / "splits" / "train.txt").read_text().split()[:3]


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    """A labelled set (images/, masks/, splits/train.txt), a gated run, an export and a checkpoint."""
    root = tmp_path_factory.mktemp("healthy")
    for sub in ("images", "masks", "splits"):
        (root / "set" / sub).mkdir(parents=True)
    for image_id in IDS:
        shutil.copy(KVASIR / "images" / f"{image_id}.jpg", root / "set" / "images")
        shutil.copy(KVASIR / "masks" / f"{image_id}.jpg", root / "set" / "masks")
    (root / "set" / "splits" / "train.txt").write_text("\n".join(IDS) + "\n")
    write_gated_run(str(root / "run"), kvasir_pairs(KVASIR, "train", 3), "bad-input", size=32)
    export_runs([str(root / "run")], ExportOptions(out=str(root / "export")))
    from pipeline.data.sources import resolve

    train(resolve(str(root / "set")), TrainSettings(size=32, steps=1, batch_size=2), root / "model.safetensors")
    return root


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def corrupt(path: Path) -> None:
    path.write_bytes(b"\x00not what it says it is\xff" * 40)


def first(folder: Path, pattern: str) -> Path:
    return sorted(folder.glob(pattern))[0]


def image(case: Path) -> Path:
    return case / "set/images" / f"{IDS[0]}.jpg"


def mask(case: Path) -> Path:
    return case / "set/masks" / f"{IDS[0]}.jpg"


# what to break: (name, function of the case folder that breaks it, the file the message must name)
BREAKS = {
    "image missing": (lambda d: image(d).unlink(), lambda d: d / "set/images" / IDS[0]),
    "image empty": (lambda d: image(d).write_bytes(b""), lambda d: image(d)),
    "image truncated": (lambda d: truncate(image(d)), lambda d: image(d)),
    "image corrupt": (lambda d: corrupt(image(d)), lambda d: image(d)),
    "mask missing": (lambda d: mask(d).unlink(), lambda d: image(d)),
    "mask corrupt": (lambda d: corrupt(mask(d)), lambda d: mask(d)),
    "mask of another size": (lambda d: mask(d).write_bytes(
        (KVASIR / "masks" / f"{IDS[1]}.jpg").read_bytes()), lambda d: mask(d)),
    "split missing": (lambda d: (d / "set/splits/train.txt").unlink(), lambda d: d / "set/splits/train.txt"),
    "split empty": (lambda d: (d / "set/splits/train.txt").write_text(""), lambda d: d / "set/splits/train.txt"),
    "folder is a file": (lambda d: (shutil.rmtree(d / "set/images"), (d / "set/images").write_text("x")),
                         lambda d: d / "set/images"),
    "shard truncated": (lambda d: truncate(first(d / "run/shards", "*.parquet")), lambda d: first(d / "run/shards", "*.parquet")),
    "shard corrupt": (lambda d: corrupt(first(d / "run/shards", "*.parquet")), lambda d: first(d / "run/shards", "*.parquet")),
    "run manifest corrupt": (lambda d: corrupt(d / "run/manifest.json"), lambda d: d / "run/manifest.json"),
    "export manifest missing": (lambda d: (d / "export/manifest.json").unlink(), lambda d: d / "export"),
    "export manifest corrupt": (lambda d: corrupt(d / "export/manifest.json"), lambda d: d / "export/manifest.json"),
    "export file truncated": (lambda d: truncate(first(d / "export/data", "*.parquet")), lambda d: first(d / "export/data", "*.parquet")),
    "checkpoint missing": (lambda d: (d / "model.safetensors").unlink(), lambda d: d / "model.safetensors"),
    "checkpoint empty": (lambda d: (d / "model.safetensors").write_bytes(b""), lambda d: d / "model.safetensors"),
    "checkpoint truncated": (lambda d: truncate(d / "model.safetensors"), lambda d: d / "model.safetensors"),
    "checkpoint corrupt": (lambda d: corrupt(d / "model.safetensors"), lambda d: d / "model.safetensors"),
}

SET_BREAKS = ["image missing", "image empty", "image truncated", "image corrupt", "mask missing", "mask corrupt",
              "mask of another size", "split missing", "split empty", "folder is a file"]
LABELLED = lambda d: ["--images", str(d / "set/images"), "--masks", str(d / "set/masks"),  # noqa: E731
                      "--split", str(d / "set/splits/train.txt")]

COMMANDS = {
    "donors build": (SET_BREAKS, lambda d: ["donors", "build", *LABELLED(d), "--out", str(d / "out/donors.parquet")]),
    "frames polyp-free": (SET_BREAKS, lambda d: ["frames", "polyp-free", *LABELLED(d), "--out", str(d / "out/frames")]),
    "reference build": (SET_BREAKS, lambda d: ["reference", "build", *LABELLED(d), "--out", str(d / "out/ref"),
                                               "--device", "cpu"]),
    "train": (SET_BREAKS, lambda d: ["train", "--real", f"{d / 'set'}:train", "--size", "32", "--steps", "1",
                                     "--batch-size", "2", "--out", str(d / "out/m.safetensors")]),
    "train --workers 1": (["image corrupt", "mask of another size"],
                          lambda d: ["train", "--real", f"{d / 'set'}:train", "--size", "32", "--steps", "2",
                                     "--batch-size", "2", "--workers", "1", "--out", str(d / "out/m.safetensors")]),
    "evaluate": (SET_BREAKS + ["checkpoint missing", "checkpoint empty", "checkpoint truncated", "checkpoint corrupt"],
                 lambda d: ["evaluate", str(d / "model.safetensors"), "--data", f"{d / 'set'}:train"]),
    "gate": (["shard truncated", "shard corrupt", "run manifest corrupt"], lambda d: ["gate", str(d / "run")]),
    "export": (["shard truncated", "shard corrupt", "run manifest corrupt"],
               lambda d: ["export", str(d / "run"), "--out", str(d / "export")]),
    "experiment": (["export manifest missing", "export manifest corrupt", "export file truncated"] + SET_BREAKS[:4],
                   lambda d: ["experiment", "--real", f"{d / 'set'}:train", "--synthetic", str(d / "export"),
                              "--eval", f"{KVASIR}:test", "--ratios", "0,1", "--seeds", "1", "--size", "32",
                              "--epochs", "1", "--out", str(d / "out/exp")]),
    "finetune": (SET_BREAKS[:7], lambda d: ["finetune", "jobs/finetune.yaml", "--out", str(d / "out/ft"),
                                            "--set", f"data.images={d / 'set/images'}", "--set", f"data.masks={d / 'set/masks'}",
                                            "--set", f"data.split={d / 'set/splits/train.txt'}",
                                            "--set", "engine.model=testing/tiny-random", "--set", "engine.resolution=64",
                                            "--set", "train.steps=1", "--set", "validation.count=0"]),
}
CASES = [(command, broken) for command, (breaks, _) in COMMANDS.items() for broken in breaks]


@pytest.mark.parametrize(("command", "broken"), CASES, ids=[f"{c}: {b}" for c, b in CASES])
def test_bad_input_is_one_line_naming_the_file(command, broken, healthy, tmp_path, capsys):
    case = tmp_path / "case"
    shutil.copytree(healthy, case)
    export_manifest = (case / "export/manifest.json").read_bytes()
    brake, named = BREAKS[broken]
    brake(case)
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(COMMANDS[command][1](case))
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2, err
    assert len(err) == 1 and err[0].startswith("polyp-synth: error: "), err
    assert str(named(case)) in err[0], (err[0], named(case))
    if command == "export" and broken != "run manifest corrupt":  # the export there before is still whole
        assert (case / "export/manifest.json").read_bytes() == export_manifest
        json.loads(export_manifest)
