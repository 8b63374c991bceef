"""Gated runs made of real labelled images, for testing what comes after the gate (export, loaders,
training) without generating: real Kvasir-SEG pairs go into real shards through the shard writer,
with a run manifest and gate results in the gate's own file formats (its verdict table and metrics model).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa

from pipeline import __version__
from pipeline.core import parquet, storage
from pipeline.core.digests import digest, sha256_hex
from pipeline.core.images import resize_image, resize_mask
from pipeline.core.labelled import binary_label, labelled_pairs
from pipeline.core.layout import RunLayout
from pipeline.core.lineage import Lineage
from pipeline.errors import DataError
from pipeline.gate.verdicts import (
    GateMetrics,
    ReferenceIdentity,
    SampleCounts,
    SetMetrics,
    verdict_table,
    write_metrics,
)
from pipeline.generate.manifest import RunManifest, SampleTotals, ShardEntry
from pipeline.generate.shards import shard_table, write_shard

ATTRIBUTES = pa.struct([("size", pa.string())])


def kvasir_pairs(root: Path, split: str, n: int) -> list[tuple[Path, Path]]:
    """The first `n` (image, mask) paths of a Kvasir-SEG split."""
    pairs = labelled_pairs(str(root / "images"), str(root / "masks"), str(root / "splits" / f"{split}.txt"), DataError)
    return [(Path(pair.image), Path(pair.mask)) for pair in pairs[:n]]


def write_gated_run(root: str, pairs: list[tuple[Path, Path]], run_id: str, size: int = 64, shard_size: int = 4,
                    rejected: dict[int, list[str]] | None = None, passed: bool = True,
                    random_weights: bool = False, reference: Lineage | None = Lineage(gated=True)) -> list[str]:
    """Write a run of `pairs` (resized to size²) with gate results; `rejected` maps pair index → reasons,
    `reference` is what the gate says its reference held (None: not recorded). The pairs' images are
    the samples' source frames. Returns the sample ids in order."""
    rejected = rejected or {}
    layout = RunLayout(root)
    config = {"run_id": run_id, "frames": {"source": str(pairs[0][0].parent)}}  # a job config that validates
    plan_digest = digest(run_id)
    rows = []
    for index, (image_path, mask_path) in enumerate(pairs):
        image = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
        mask = np.where(binary_label(cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)), 255, 0).astype(np.uint8)
        rows.append({
            "sample_id": digest(f"{run_id}/{image_path.stem}", 32), "plan_index": index,
            "shard_index": index // shard_size, "seed": index, "source_frame": str(image_path),
            "source_sha256": sha256_hex(image_path.read_bytes()), "prompt": "a polyp", "negative_prompt": "", "attributes": {"size": "small"},
            "mask_params": "{}", "image": resize_image(image, (size, size)), "mask": resize_mask(mask, (size, size)),
            "engine": {"model": "kvasir-seg (real images)", "random_weights": random_weights},
            "run_id": run_id, "pipeline_version": __version__,
        })
    provenance = {"run_id": run_id, "pipeline_version": __version__, "plan_digest": plan_digest,
                  "config": config}
    entries = []
    for shard in range(0, len(rows), shard_size):
        chunk, index = rows[shard:shard + shard_size], shard // shard_size
        info = write_shard(layout, index, shard_table(chunk, ATTRIBUTES), [], provenance)
        entries.append(ShardEntry(index=index, file=layout.shard_file(index), rows=info.rows, failed=0,
                                  bytes=info.bytes, sha256=info.sha256))
    manifest = RunManifest(run_id=run_id, plan_digest=plan_digest, pipeline_version=__version__, finished_at="",
                           complete=True, samples=SampleTotals(planned=len(rows), written=len(rows), failed=0),
                           shards=entries, config=config)
    manifest.write(layout)

    ids = [row["sample_id"] for row in rows]
    accepted = np.array([i not in rejected for i in range(len(rows))])
    table = verdict_table(ids, np.array([row["shard_index"] for row in rows], np.int32), accepted,
                          [rejected.get(i, []) for i in range(len(rows))], {"score": np.linspace(0, 1, len(rows))})
    parquet.write(layout.verdicts, table, provenance)
    figures = SetMetrics(n=len(rows), kid=0.01, kid_std=0.001, fid=None, precision=0.9, recall=0.9,
                         density=1.0, coverage=0.9)
    reasons = [reason for i in rejected for reason in rejected[i]]
    write_metrics(layout, GateMetrics(
        run_id=run_id, plan_digest=plan_digest, shards_digest=manifest.shards_digest(),
        gated_at="2026-01-01T00:00:00Z", passed=passed,
        failures=[] if passed else ["kid 0.5 above its bound 0.1"], extractor="efficientnet-lite0",
        reference=ReferenceIdentity(digest="ref", extractor="efficientnet-lite0", images=1, crops=0, negatives=0,
                                    settings={}),
        run=figures, accepted=figures, diversity=None,
        samples=SampleCounts(total=len(rows), accepted=int(accepted.sum()),
                             by_reason={r: reasons.count(r) for r in sorted(set(reasons))}),
        shards=[], random_weights=random_weights, bounds={}, lineage=reference,
    ))
    storage.write_bytes_atomic(layout.gate_success, b"")
    return ids
