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

Stages take a `RunLayout` and ask it for URLs; nothing else spells these names.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core import storage

PLAN_FILE = "plan.parquet"
SHARD_DIR = "shards"
MANIFEST_FILE = "manifest.json"
SUCCESS_FILE = "_SUCCESS"
DONE_SUFFIX = ".done"
GATE_DIR = "gate"


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
