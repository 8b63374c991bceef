"""The `polyp-synth` command as a user runs it: outputs, and one-line errors with exit code 2."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.testing.data import shared_data

ROOT = Path(__file__).parents[1]
DATA = shared_data()


def run(*args, cwd=ROOT):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # no hub here: fail at once instead of retrying a network
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=env)


def test_prompts_prints_json_lines():
    done = run("prompts", "--n", 4, "--seed", 9)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0 and len(lines) == 4
    assert all(line["prompt"] and "morphology" in line["attributes"] for line in lines)
    assert run("prompts", "--n", 4, "--seed", 9).stdout == done.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["plan", "--config", "jobs/demo-sdxl.yaml", "--set", "engine.steps=zero"], "engine.steps"),
        (["plan", "--config", "jobs/missing.yaml"], "jobs/missing.yaml: no such config file"),
        (["plan", "--config", "jobs/mucosa.yaml", "--set", "frames.source=/no/such/frames"], "/no/such/frames"),
        (["prompts", "--bank", "jobs/mucosa.yaml"], "jobs/mucosa.yaml"),
        (["masks", "sample", "--out", "x", "--size", "big"], "--size 'big'"),
        (["inspect", "/no/such/run"], "not a run directory"),
        (["plan", "jobs/mucosa.yaml", "--config", "jobs/smoke.yaml"], "two job configs given"),
        (["masks", "sample", "--out", "README.md", "--n", "1"], "--out README.md: cannot create this folder"),
        (["generate", "jobs/demo-sdxl.yaml", "--set", "engine.model={tmp}/no/such/model", "--out", "{tmp}", "--n", "2"],
         "/no/such/model: no such file or folder"),
        (["generate", "jobs/demo-sdxl.yaml", "--set", "engine.model=org/not-a-model", "--out", "{tmp}", "--n", "2"],
         "engine.model: cannot load org/not-a-model"),
        (["generate", "jobs/smoke.yaml", "--set", "engine.model={tmp}/no/such/model", "--out", "{tmp}", "--n", "2"],
         "/no/such/model: no such file or folder"),
        (["generate", "jobs/mucosa.yaml", "--out", "{tmp}", "--n", "33"], "--n 33: the job plans only samples=32"),
    ],
)
def test_user_errors_are_one_line_naming_the_input(args, expected, tmp_path):
    done = run(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("polyp-synth: error:") and expected in last
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "no").exists() and not (ROOT / "org").exists()  # a misspelt model never becomes one


def test_plan_and_preview_before_spending_gpu_hours(tmp_path):
    done = run("plan", "--config", "jobs/mucosa.yaml", "--out", tmp_path, "--n", 12, "--set", "frames.limit=20")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "mucosa" / "plan.parquet").exists() and "12 samples in 2 shards" in done.stdout
    sheet = tmp_path / "preview.png"
    done = run("preview", "--config", "jobs/mucosa.yaml", "--n", 6, "--out", sheet, "--set", "frames.limit=20")
    assert done.returncode == 0, done.stderr
    picture = cv2.imread(str(sheet))
    assert picture.shape[0] > 256 and picture.shape[1] > 3 * 256  # a grid of tiles with captions


def test_masks_sample_and_check(tmp_path):
    done = run("masks", "sample", "--n", 5, "--out", tmp_path, "--size", "320x240", "--seed", 1)
    assert done.returncode == 0, done.stderr
    masks = sorted(tmp_path.glob("mask-*.png"))
    assert len(masks) == 5 and len((tmp_path / "params.jsonl").read_text().splitlines()) == 5
    first = cv2.imread(str(masks[0]), cv2.IMREAD_UNCHANGED)
    assert first.shape == (240, 320) and set(np.unique(first)) <= {0, 255}

    # The KS figures of the default preset, through the real prompt bank, against Kvasir-SEG.
    done = run("masks", "check", "--n", 1500)
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["pass"], report
    assert all(value <= 0.10 for value in report["ks"].values())


def test_masks_fit_adapts_to_another_mask_set(tmp_path):
    reference = tmp_path / "reference"
    reference.mkdir()
    for name in (DATA / "kvasir-seg/splits/test.txt").read_text().split():
        shutil.copy(DATA / "kvasir-seg/masks" / f"{name}.jpg", reference)
    preset = tmp_path / "fitted.yaml"
    assert run("masks", "fit", "--reference", reference, "--out", preset).returncode == 0
    done = run("masks", "check", "--preset", preset, "--reference", reference, "--n", 1000)
    assert json.loads(done.stdout)["pass"], done.stdout


def test_a_named_cluster_that_does_not_answer_fails_fast(tmp_path):
    """Ray's own client would retry 127.0.0.1:1 forever; we give up at once with one line."""
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pipeline", "generate", "jobs/smoke.yaml", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "polyp-synth: error: RAY_ADDRESS: no Ray cluster answers at '127.0.0.1:1' (waited up to 60s)")
    assert time.monotonic() - start < 120
