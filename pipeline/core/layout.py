"""Every file name of a run directory, in one place.

```
RUN_DIR/
  plan.parquet                      the plan (plan stage)
  shards/shard-00000.parquet        image–mask pairs (generate stage)
  shards/shard-00000.parquet.done   completion record of that shard: size, checksum, ids digest
  manifest.json, _SUCCESS           written last by the generate stage
  gate/features/<extractor>/shard-00000.parquet   cached image features (gate stage)
  gate/verdicts.parquet, gate/metrics.json, gate/report.html, gate/*.png, gate/_SUCCESS
```

An export (what trainers read) has its own `ExportLayout`:

```
EXPORT/
  data/train-00000-of-00004.parquet  image–mask pairs with provenance (format parquet)
  images/<sample_id>.png, masks/<sample_id>.png   (format folders)
  README.md                         dataset card
  manifest.json                     written last; readers require it
```

A fine-tuning run (`polyp-synth finetune`, a local or shared-mount folder) has its `FinetuneLayout`:

```
FINETUNE_DIR/
  pytorch_lora_weights.safetensors  the LoRA in diffusers' format (what `engine.lora` names)
  lora_card.json, README.md         base model, data hashes, settings, final loss
  checkpoints/step-000100/          lora.safetensors, optimizer.pt, state.json (resume)
  validation/step-000100.png        contact sheet of held-out frames inpainted at that step
  loss_curve.png
```

Stages take a `RunLayout` / `ExportLayout` / `FinetuneLayout` and ask it for URLs; nothing else spells
these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.core import storage

PLAN_FILE = "plan.parquet"
SHARD_DIR = "shards"
MANIFEST_FILE = "manifest.json"
SUCCESS_FILE = "_SUCCESS"
DONE_SUFFIX = ".done"
GATE_DIR = "gate"
VERDICTS_FILE = "verdicts.parquet"
GATE_METRICS_FILE = "metrics.json"
GATE_REPORT_FILE = "report.html"


def shard_name(shard_index: int) -> str:
    return f"shard-{shard_index:05d}.parquet"


@dataclass(frozen=True)
class RunLayout:
    """The URLs of one run's files; `root` is a local path or an fsspec URL."""

    root: str

    @property
    def plan(self) -> str:
        return storage.join(self.root, PLAN_FILE)

    @property
    def shard_dir(self) -> str:
        return storage.join(self.root, SHARD_DIR)

    def shard(self, shard_index: int) -> str:
        return storage.join(self.shard_dir, shard_name(shard_index))

    def shard_done(self, shard_index: int) -> str:
        """Completion record written after the shard: resume reads it instead of the shard's bytes."""
        return self.shard(shard_index) + DONE_SUFFIX

    def shard_file(self, shard_index: int) -> str:
        """The shard's path relative to the run (as the manifest lists it)."""
        return f"{SHARD_DIR}/{shard_name(shard_index)}"

    @property
    def manifest(self) -> str:
        return storage.join(self.root, MANIFEST_FILE)

    @property
    def success(self) -> str:
        return storage.join(self.root, SUCCESS_FILE)

    @property
    def gate_dir(self) -> str:
        return storage.join(self.root, GATE_DIR)

    def gate_file(self, name: str) -> str:
        return storage.join(self.gate_dir, name)

    def features(self, extractor: str, shard_index: int) -> str:
        return storage.join(self.gate_dir, "features", extractor, shard_name(shard_index))

    @property
    def verdicts(self) -> str:
        return self.gate_file(VERDICTS_FILE)

    @property
    def gate_metrics(self) -> str:
        return self.gate_file(GATE_METRICS_FILE)

    @property
    def gate_report(self) -> str:
        return self.gate_file(GATE_REPORT_FILE)

    @property
    def gate_success(self) -> str:
        """Written last by the gate stage: verdicts and metrics are complete and belong together."""
        return self.gate_file(SUCCESS_FILE)


REFERENCE_RECORD_FILE = "reference.json"
REFERENCE_FEATURES_FILE = "features.parquet"


@dataclass(frozen=True)
class ReferenceLayout:
    """A gate reference folder: its record (identity, probe) and its features."""

    root: str

    @property
    def record(self) -> str:
        return storage.join(self.root, REFERENCE_RECORD_FILE)

    @property
    def features(self) -> str:
        return storage.join(self.root, REFERENCE_FEATURES_FILE)


EXPORT_DATA_DIR = "data"
EXPORT_IMAGE_DIR = "images"
EXPORT_MASK_DIR = "masks"
EXPORT_CARD_FILE = "README.md"
EXPORT_METADATA_FILE = "metadata.parquet"  # folders exports: every column but the pixels, one row per sample


@dataclass(frozen=True)
class ExportLayout:
    """The URLs of one export's files; `root` is a local path or an fsspec URL. Paths relative to the
    root (as the manifest lists them) come from the `*_path` methods."""

    root: str

    @property
    def manifest(self) -> str:
        return storage.join(self.root, MANIFEST_FILE)

    @property
    def card(self) -> str:
        return storage.join(self.root, EXPORT_CARD_FILE)

    @staticmethod
    def data_path(index: int, count: int) -> str:
        return f"{EXPORT_DATA_DIR}/train-{index:05d}-of-{count:05d}.parquet"

    @staticmethod
    def image_path(sample_id: str) -> str:
        return f"{EXPORT_IMAGE_DIR}/{sample_id}.png"

    @staticmethod
    def mask_path(sample_id: str) -> str:
        return f"{EXPORT_MASK_DIR}/{sample_id}.png"

    @property
    def metadata(self) -> str:
        return storage.join(self.root, EXPORT_METADATA_FILE)

    def url(self, relative: str) -> str:
        return storage.join(self.root, relative)


CUT_SOURCES_FILE = "cut_from.json"
"""Beside frames cut by `frames polyp-free`: each frame's file name → the labelled frame it was cut
from ({"id", "sha256"}), so a cut frame's lineage is its source's, whatever it is renamed to."""

LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' default name: `load_lora_weights(folder)` finds it


@dataclass(frozen=True)
class FinetuneLayout:
    """The files of one fine-tuning run; `root` is a folder every training worker can write."""

    root: Path

    @property
    def lora(self) -> Path:
        return self.root / LORA_FILE

    @property
    def card_json(self) -> Path:
        return self.root / "lora_card.json"

    @property
    def card(self) -> Path:
        return self.root / "README.md"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoint_dir / f"step-{step:06d}"

    @staticmethod
    def checkpoint_step(folder: Path) -> int | None:
        """The step of a checkpoint folder's name, None for anything else (a temporary folder)."""
        name = folder.name
        return int(name[5:]) if name.startswith("step-") and name[5:].isdigit() else None

    @property
    def loss_curve(self) -> Path:
        return self.root / "loss_curve.png"

    def validation_sheet(self, step: int) -> Path:
        return self.root / "validation" / f"step-{step:06d}.png"


@dataclass(frozen=True)
class ExperimentLayout:
    """The files of one experiment (`polyp-synth experiment --out`): a folder every trial can write."""

    root: Path

    @property
    def trials(self) -> Path:
        """One JSON line per finished trial: what a killed experiment resumes from."""
        return self.root / "trials.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def table(self) -> Path:
        return self.root / "table.md"

    @property
    def plot(self) -> Path:
        return self.root / "plot.png"

    def checkpoint(self, trial_key: str) -> Path:
        return self.root / "checkpoints" / f"{trial_key}.safetensors"
