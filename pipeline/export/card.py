"""The Hugging Face dataset card (`README.md` with a YAML header) of an export: how it was made, what it
is for, and what it must not be used for."""

from __future__ import annotations

import yaml

from pipeline.core.layout import EXPORT_DATA_DIR
from pipeline.export.manifest import ExportManifest
from pipeline.generate.shards import RANDOM_WEIGHTS_WARNING


def _size_category(n: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < bound:
            return name
    return "n>1M"


def render_card(manifest: ExportManifest) -> str:
    header = {
        "pretty_name": "Synthetic colonoscopy polyp segmentation (polyp-synth)",
        "task_categories": ["image-segmentation"],
        "tags": ["medical", "colonoscopy", "polyp", "synthetic"],
        "size_categories": [_size_category(manifest.samples)],
        "license": "other",
    }
    if manifest.format == "parquet":
        header["configs"] = [{"config_name": "default",
                              "data_files": [{"split": "train", "path": f"{EXPORT_DATA_DIR}/train-*"}]}]
    runs = "\n".join(
        f"| `{run.run_id}` | {', '.join(run.engines)} | {run.samples} | {run.accepted} | {run.exported} | "
        f"{'passed' if run.gate_passed else 'FAILED (forced)'} |"
        for run in manifest.runs
    )
    warning = f"\n> **WARNING**: {RANDOM_WEIGHTS_WARNING}.\n" if manifest.random_weights else ""
    rejected = (f"It includes {manifest.rejected_included} samples the quality gate REJECTED (column `accepted` "
                "is false, `reasons` says why).\n" if manifest.include_rejected else
                "Only samples the quality gate accepted are included.\n")
    layout = ("Parquet shards under `data/`: `image` and `mask` decode as images with "
              "`datasets.load_dataset(\"parquet\", data_dir=...)`; every provenance column is kept."
              if manifest.format == "parquet" else
              "`images/<sample_id>.png` and `masks/<sample_id>.png` (the layout PraNet-family trainers read).")
    return f"""---
{yaml.safe_dump(header, sort_keys=False).strip()}
---

# Synthetic colonoscopy polyp segmentation data
{warning}
{manifest.samples} image–mask pairs made by polyp-synth {manifest.pipeline_version}. Each is a polyp-free
colonoscopy frame with a synthetic polyp painted (or transplanted) into a procedurally planned mask; the mask
is the label. {rejected}
| run | made by | samples | accepted | exported | gate |
| --- | --- | --- | --- | --- | --- |
{runs}

Layout: {layout} `manifest.json` lists every file with its SHA-256, the gate figures and the job configs.

## Intended use
Training or augmenting polyp segmentation models alongside real labelled data, and research on synthetic
data for endoscopy. Measure the effect on held-out *real* images (`polyp-synth experiment`).

## Must not be used for
- Clinical diagnosis or any decision about a patient.
- Evaluating or benchmarking models: test sets must be real images with expert labels.
- The only training data of a model meant for clinical use, or as evidence of clinical performance.
- Training anything at all when the warning above says the model had random weights.
"""
