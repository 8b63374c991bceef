"""The full-size SDXL inpainting architecture end to end on CPU: build, fine-tune one step, generate.

The tiny test model cannot show dtype, shape, memory or loading faults of the real one. This runs the
real-size architecture (random weights, `build_sdxl_random.py`) through the product's own commands
at a small working resolution:

1. build the pipeline (bf16 where the CPU has bf16 instructions, else fp32) and a separate VAE folder
   (as the fp16-fix VAE is used);
2. `polyp-synth finetune`: one LoRA step at batch 1 (rank 16 on the attention projections, the job's
   default): a LoRA of real size;
3. `polyp-synth run`: `region: crop`, `engine.vae` the separate folder, `engine.lora` the LoRA of
   step 2, `scheduler: lcm`, 2 steps, batch 1.

Each command runs as a child process; its peak RSS comes from the kernel (`wait4`), its stage times
from its own manifest or log. Needs ~15 GB of RAM and ~10 GB of disk; not a CI test.

    python bench/bench_sdxl_cpu.py --work /tmp/sdxl-cpu
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.testing.cluster import set_args
from pipeline.testing.data import shared_data

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent


def cpu_has_bf16() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def child(args: list[str], log: Path) -> tuple[float, float]:
    """Run `args`, output to `log`; (wall seconds, peak RSS GiB), failing loudly with the log's tail."""
    start = time.monotonic()
    with open(log, "w") as sink:
        process = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(args[:3])} failed:\n{log.read_text()[-3000:]}")
    return time.monotonic() - start, usage.ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the model (~7 GB in bf16) and runs")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    dtype = "bfloat16" if cpu_has_bf16() else "float32"
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    model, vae = work / f"sdxl-random-{dtype}", work / f"vae-{dtype}"
    data = shared_data()
    rows = []

    if not (model / "model_index.json").exists():
        wall, rss = child([sys.executable, str(ROOT / "bench/build_sdxl_random.py"), str(model), "--dtype", dtype,
                           "--vae-out", str(vae)], work / "build.log")
        rows.append(("build + save (random init)", wall, rss, ""))

    finetune = work / "finetune"
    wall, rss = child([str(BIN / "polyp-synth"), "finetune", str(ROOT / "jobs/finetune.yaml"),
                       *set_args({"output": finetune, "engine.model": model, "engine.resolution": args.resolution,
                              "engine.dtype": dtype, "data.images": data / "kvasir-seg/images",
                              "data.masks": data / "kvasir-seg/masks", "data.split": data / "kvasir-seg/splits/train.txt",
                              "data.limit": 4, "train.steps": 1, "train.batch_size": 1, "train.lr_warmup_steps": 0,
                              "validation.count": 0})], work / "finetune.log")
    lora = finetune / "pytorch_lora_weights.safetensors"
    rows.append((f"finetune: 1 LoRA step, batch 1, {args.resolution}², rank 16", wall, rss,
                 f"LoRA {lora.stat().st_size / 2**20:.0f} MiB"))

    runs = work / "runs"
    wall, rss = child([str(BIN / "polyp-synth"), "run", str(ROOT / "jobs/smoke.yaml"), "--out", str(runs),
                       "--executor", "local",
                       *set_args({"run_id": f"full-size-{time.strftime('%H%M%S')}", "samples": 2, "shard_size": 2,
                              "frames.source": data / "normal-mucosa", "engine.model": model, "engine.vae": vae,
                              "engine.lora": lora, "engine.scheduler": "lcm", "engine.region": "crop",
                              "engine.resolution": args.resolution, "engine.output_resolution": "null",
                              "engine.steps": args.steps, "engine.batch_size": 1, "engine.dtype": dtype,
                              "engine.guidance_scale": 1.0})], work / "generate.log")
    manifest = json.loads(next(runs.glob("full-size-*/manifest.json")).read_text())
    stages = manifest["timings"]["stage_seconds"]
    rows.append((f"generate: 2 samples, crop, lcm, {args.steps} steps, VAE + LoRA", wall, rss,
                 ", ".join(f"{k} {v:.1f}s" for k, v in stages.items())))

    print(f"\nfull-size SDXL inpainting, random weights, {dtype}, {os.cpu_count()} CPUs\n")
    print("| step | wall s | peak RSS GiB | detail |\n| --- | --- | --- | --- |")
    for name, wall, rss, detail in rows:
        print(f"| {name} | {wall:.0f} | {rss:.1f} | {detail} |")


if __name__ == "__main__":
    main()
