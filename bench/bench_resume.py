"""Resume cost per shard: how long a re-run takes to decide that a finished shard is finished.

    python bench/bench_resume.py --shards 12 --rows 8 --side 768

Writes a run of real shards (random-texture images, so PNGs do not compress away) locally and on a
local S3 server (moto), then validates every shard two ways:

- whole-file: what resume did before completion records: read the whole shard, hash it, read the
  sample ids from it;
- record + footer: what `validate_shard` does now: the completion record (a few hundred bytes), the
  object's size from its metadata, and the Parquet footer (a range read).

Prints ms per shard and bytes read per shard for both, local and S3.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import storage
from pipeline.core.digests import sha256_hex
from pipeline.core.layout import RunLayout
from pipeline.generate import shards

ATTRS = pa.struct([("size", pa.string())])
META = {"run_id": "bench", "pipeline_version": "0", "plan_digest": "d", "config": {}}


def shard_rows(shard: int, rows: int, side: int, rng: np.random.Generator) -> list[dict]:
    base = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
    out = []
    for i in range(rows):
        image = np.kron(base, np.ones((8, 8, 1), np.uint8)) ^ rng.integers(0, 32, (side, side, 3), dtype=np.uint8)
        mask = np.zeros((side, side), np.uint8)
        mask[side // 4: side // 2, side // 4: side // 2] = 255
        out.append({"sample_id": f"s{shard}-{i}", "plan_index": shard * rows + i, "shard_index": shard, "seed": i,
                    "source_frame": "f.jpg", "source_sha256": "0" * 64, "prompt": "p", "negative_prompt": "n",
                    "attributes": {"size": "small"}, "mask_params": "{}", "image": image, "mask": mask,
                    "engine": {"model": "bench"}, "run_id": "bench", "pipeline_version": "0"})
    return out


def whole_file(layout: RunLayout, index: int, planned: list[str]) -> bool:
    """The former resume check: the whole shard read, hashed and its ids parsed."""
    data = storage.read_bytes(layout.shard(index))
    ids = pq.ParquetFile(pa.BufferReader(data)).read(columns=["sample_id"]).column("sample_id").to_pylist()
    sha256_hex(data)
    return set(ids) == set(planned)


def timed(check, layout: RunLayout, plan: dict[int, list[str]], repeats: int) -> float:
    """Median over repeats of the mean ms per shard."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        assert all(check(layout, index, ids) for index, ids in plan.items())
        runs.append(1000 * (time.perf_counter() - start) / len(plan))
    return statistics.median(runs)


def bench(root: str, args: argparse.Namespace) -> None:
    layout = RunLayout(root)
    rng = np.random.default_rng(0)
    plan, size = {}, 0
    for index in range(args.shards):
        table = shards.shard_table(shard_rows(index, args.rows, args.side, rng), ATTRS)
        info = shards.write_shard(layout, index, table, [], META)
        plan[index] = table.column("sample_id").to_pylist()
        size += info.bytes
    record = len(storage.read_bytes(layout.shard_done(0)))
    with shards.parquet.read_footer(layout.shard(0)) as footer:
        footer_bytes = footer.metadata.serialized_size + 8
    old = timed(whole_file, layout, plan, args.repeats)
    new = timed(lambda lay, i, ids: shards.validate_shard(lay, i, ids) is not None, layout, plan, args.repeats)
    where = root.split("://")[0] if "://" in root else "local"
    print(f"{where:>5}: {args.shards} shards of {size / args.shards / 1e6:.1f} MB | whole-file {old:8.2f} ms/shard, "
          f"{size / args.shards / 1e6:.1f} MB read | record+footer {new:6.2f} ms/shard, "
          f"~{(record + footer_bytes) / 1e3:.1f} kB read (record {record} B, footer {footer_bytes} B) "
          f"→ {old / new:.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=12)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--side", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench(tmp, args)

    import boto3
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://{host}:{port}")
    s3fs.S3FileSystem.clear_instance_cache()
    boto3.client("s3").create_bucket(Bucket="bench")
    try:
        bench("s3://bench/run", args)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
