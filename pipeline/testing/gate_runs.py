"""Runs made of real images, for testing and benchmarking the gate without a generative model.

`image_run` writes genuine shards (the generate stage's own writer) and a manifest, with each
sample's image, label and source frame given: e.g. a Kvasir-SEG polyp image as the "generated"
image, its mask as the label, and the same image with the polyp removed (`remove_lesion`) as the
source frame, which is what an ideal inpainting engine would have started from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa

from pipeline import __version__
from pipeline.core import storage
from pipeline.core.digests import digest
from pipeline.core.images import encode_png
from pipeline.core.layout import RunLayout
from pipeline.generate.manifest import RunManifest, SampleTotals, ShardEntry
from pipeline.generate.shards import shard_table, write_shard
from pipeline.plan.negatives import Negative

ATTRIBUTES = pa.struct([("kind", pa.string())])


@dataclass
class RunSample:
    image: np.ndarray  # RGB uint8
    mask: np.ndarray  # uint8 {0, 255}
    source: np.ndarray  # the frame the image was "painted" on, same size
    kind: str = "real"  # recorded as the `kind` attribute (acceptance per attribute)
    name: str = field(default="")
    negative: bool = False  # planned as a hard negative (`negatives:`): the frame as it is, no label


def remove_lesion(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the labelled region filled from its surroundings (cv2.inpaint, Telea):
    only pixels under the label change."""
    return cv2.cvtColor(cv2.inpaint(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), (mask > 0).astype(np.uint8), 5,
                                    cv2.INPAINT_TELEA), cv2.COLOR_BGR2RGB)


def image_run(run_dir: str, samples: list[RunSample], shard_size: int, frames_dir: str,
              random_weights: bool = False) -> RunLayout:
    """Write `samples` as a generated run (shards, completion records, manifest); source frames are
    written as PNGs under `frames_dir`."""
    layout = RunLayout(run_dir)
    Path(frames_dir).mkdir(parents=True, exist_ok=True)
    engine = {"model": "real-images", "mask_dilation": 0, "mask_feather": 0, "random_weights": random_weights}
    entries, ids = [], []
    for start in range(0, len(samples), shard_size):
        index = start // shard_size
        rows = []
        for i, sample in enumerate(samples[start:start + shard_size], start):
            sample_id = digest(f"{i}/{sample.name}/{sample.kind}", 32)
            source_path = Path(frames_dir) / f"{sample_id}.png"
            source_bytes = encode_png(sample.source)
            source_path.write_bytes(source_bytes)
            rows.append({
                "sample_id": sample_id, "plan_index": i, "shard_index": index, "seed": i,
                "source_frame": str(source_path), "source_sha256": digest(source_bytes, 64),
                "prompt": f"{sample.kind} {sample.name}", "negative_prompt": "",
                "attributes": {"kind": sample.kind},
                "mask_params": json.dumps(Negative("frame").to_dict()) if sample.negative else "{}",
                "image": sample.image, "mask": sample.mask, "engine": engine,
                "run_id": Path(run_dir).name, "pipeline_version": __version__,
            })
            ids.append(sample_id)
        info = write_shard(layout, index, shard_table(rows, ATTRIBUTES), [], {"run_id": Path(run_dir).name})
        entries.append(ShardEntry(index=index, file=layout.shard_file(index), rows=info.rows, failed=0,
                                  bytes=info.bytes, sha256=info.sha256))
    RunManifest(
        run_id=Path(run_dir).name, plan_digest=digest("\n".join(ids)), pipeline_version=__version__,
        finished_at="", complete=True, samples=SampleTotals(planned=len(ids), written=len(ids), failed=0),
        shards=entries, config={"run_id": Path(run_dir).name, "frames": {"source": frames_dir}},
    ).write(layout)
    storage.write_bytes_atomic(layout.success, b"")
    return layout
