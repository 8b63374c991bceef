"""The `masks sample` and `masks check` commands: masks drawn exactly as a job would draw them.

Attributes come from the prompt bank, so the size/morphology mix checked here is the one a job
produces, and the field of view is full (frames without a border).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import cv2

from pipeline.core.progress import progress_bar
from pipeline.errors import ConfigError
from pipeline.plan.fov import FieldOfView
from pipeline.plan.masks.params import MaskParams
from pipeline.plan.masks.preset import MaskPreset
from pipeline.plan.masks.sampling import sample_mask_params
from pipeline.plan.masks.shapes import draw_mask
from pipeline.plan.masks.stats import (
    drawing_sizes,
    ks_report,
    load_reference_stats,
    stats_table,
)
from pipeline.plan.plan import mask_rng
from pipeline.plan.prompts.bank import PromptBank

log = logging.getLogger(__name__)

KS_LIMIT = 0.10


def sample_params(preset_path: str, bank_path: str, sizes: list[tuple[int, int]],
                  seed: int) -> list[tuple[dict[str, Any], MaskParams]]:
    """(attributes, mask parameters) for the first len(sizes) samples of a job with this bank and
    preset, on borderless frames of those (width, height) sizes."""
    preset = MaskPreset.load(preset_path)
    prompts = PromptBank.load(bank_path).sample_many(len(sizes), seed)
    return [(p.attributes, sample_mask_params(preset, p.attributes, FieldOfView.full(w, h), mask_rng(seed, i)))
            for i, (p, (w, h)) in enumerate(zip(prompts, sizes))]


def sample_masks_to_dir(preset_path: str, bank_path: str, n: int, width: int, height: int, seed: int,
                        out_dir: str) -> None:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out_dir}: cannot create this folder ({exc.strerror})") from None
    with (out / "params.jsonl").open("w") as index:
        for i, (attributes, params) in enumerate(sample_params(preset_path, bank_path, [(width, height)] * n, seed)):
            name = f"mask-{i:05d}.png"
            if not cv2.imwrite(str(out / name), draw_mask(params, width, height)):
                raise ConfigError(f"--out {out}: cannot write {name}")
            index.write(json.dumps({"file": name, "attributes": attributes, "mask_params": params.to_dict()}) + "\n")
    log.info("wrote %d masks and params.jsonl to %s", n, out)


def check_against_reference(preset_path: str, bank_path: str, reference_dir: str, n: int,
                            seed: int) -> dict[str, Any]:
    """Two-sample KS statistic per shape statistic, generated vs reference; passes at ≤ KS_LIMIT.
    Generated masks are drawn at sizes sampled from the reference's own."""
    reference = load_reference_stats(reference_dir)
    sizes = drawing_sizes(reference, n, seed)
    drawn = progress_bar(zip(sample_params(preset_path, bank_path, sizes, seed), sizes), "drawing masks", n)
    generated = stats_table(draw_mask(params, w, h) for (_, params), (w, h) in drawn)
    ks = ks_report(generated, reference)
    return {"preset": preset_path, "reference": reference_dir, "generated": n, "ks": ks, "limit": KS_LIMIT,
            "pass": all(value <= KS_LIMIT for value in ks.values())}
