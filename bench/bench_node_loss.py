"""A node lost mid-run, then the driver, on a simulated multi-GPU Ray cluster: what the run holds.

A head without GPUs and `--nodes` nodes advertising 2 GPUs each (pipeline.testing.cluster); the
smoke job on the tiny model through the real CLI driver. Once `--lose-after` shards are written the
node of the first worker is killed; when the driver has seen it, the driver is killed too; the same
command runs again and a node joins once it writes. Prints samples asked / written / duplicated /
lost, partial files, retries and wall time, for a local output and an S3 one (moto's server).

    python bench/bench_node_loss.py --samples 192
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from pipeline.core import storage
from pipeline.testing.cluster import (
    DONE_BY,
    FAILED_ON,
    SimulatedCluster,
    account,
    lose_a_node_then_the_driver,
    smoke_job,
)
from pipeline.tools.tiny_model import build_tiny_model

BIN = Path(sys.executable).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=192)
    parser.add_argument("--shard-size", type=int, default=4)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--lose-after", type=int, default=8, help="shards written before the node is lost")
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    host, port = s3.get_host_and_port()
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"})
    work = Path(tempfile.mkdtemp(prefix="node-loss-"))
    model = build_tiny_model(work / "tiny-sdxl-inpaint")
    rows = []
    for where in ("local", "s3"):
        out = str(work / "out") if where == "local" else "s3://node-loss"
        if where == "s3":
            storage.filesystem(out)[0].mkdir("node-loss")
        logs = work / f"logs-{where}"
        logs.mkdir()
        with SimulatedCluster(gpu_nodes=args.nodes, gpus_per_node=2) as cluster:
            command = [str(BIN / "polyp-synth"), *smoke_job(
                out, model, samples=args.samples, shard_size=args.shard_size,
                **{"engine.resolution": 256, "engine.steps": 8})]  # about a second a shard on this CPU model
            env = {**os.environ, "RAY_ADDRESS": cluster.address, "PYTHONUNBUFFERED": "1"}
            run_dir = storage.join(out, "smoke")
            loss = lose_a_node_then_the_driver(cluster, command, env, run_dir, logs, args.lose_after)
        held = account(run_dir)
        assert not loss.finished, "the first driver finished before it was killed: give it more samples"
        retries = len(FAILED_ON.findall(loss.first_log + loss.second_log))
        joined_work = DONE_BY.findall(loss.second_log).count(loss.joined[:6])
        rows.append(f"| {where} | {held.asked} | {held.written} | {held.duplicated} | {held.lost} | "
                    f"{held.temp_files} | {retries} | {loss.partial} | {joined_work} | {loss.second_rc} | "
                    f"{loss.seconds:.0f} |")
        print(f"{where}: logs in {logs}", flush=True)
    s3.stop()
    print(f"\n{args.nodes} GPU nodes × 2 GPUs, {args.samples} samples in shards of {args.shard_size}; "
          f"node lost after {args.lose_after} shards, then the driver\n")
    print("| output | asked | written | duplicated | lost | partial files | shard retries | shards before "
          "the rerun | shards done by the joined node | rerun exit | wall s |")
    print("| --- " * 11 + "|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
