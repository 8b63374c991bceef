"""Fine-tuning benchmark: seconds per LoRA training step, and peak GPU memory, per batch size.

    # any machine: the tiny random model (the CPU figure in BENCHMARKS.md)
    python bench/bench_finetune.py --model testing/tiny-random --resolution 64 --batch 2 --steps 20

    # a GPU: the full-size SDXL inpainting architecture with random weights at 1024², batch 1, then
    # doubling until the GPU is out of memory (the arithmetic does not depend on the weights' values)
    python bench/build_sdxl_random.py /tmp/sdxl-random --dtype bfloat16
    python bench/bench_finetune.py --model /tmp/sdxl-random --resolution 1024 --batch 1 --max-batch 64 --steps 10

Each step is the real one (`trainer.train_step`: noisy latents + repaint mask + masked-image latents
through the LoRA UNet, min-SNR loss, backward, AdamW or 8-bit AdamW), on real Kvasir-SEG pairs encoded
by `trainer.encode_examples`; the engine's settings (bf16 on CUDA, gradient checkpointing, SDPA)
are the job's defaults. One JSON line per batch size.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from pipeline.config import TINY_MODEL_ID, config_from_dict
from pipeline.core.devices import resolve_device
from pipeline.generate.loading import resolve_dtype
from pipeline.testing.data import shared_data
from pipeline.tools.tiny_model import build_reserved_model
from pipeline.train.finetune import trainer
from pipeline.train.finetune.config import FinetuneConfig
from pipeline.train.finetune.data import prepare_data


def _config(args: argparse.Namespace, split: Path, out: Path) -> FinetuneConfig:
    kvasir = shared_data() / "kvasir-seg"
    return config_from_dict({
        "output": str(out),
        "engine": {"model": args.model, "resolution": args.resolution},
        "data": {"images": str(kvasir / "images"), "masks": str(kvasir / "masks"), "split": str(split)},
        "train": {"batch_size": args.batch, "gradient_checkpointing": not args.no_checkpointing,
                  "optimizer": args.optimizer},
        "lora": {"rank": args.rank, "alpha": args.rank},
        "validation": {"count": 0},
    }, "bench", model=FinetuneConfig)


def _time_steps(state: dict, batch: int, steps: int, device: torch.device) -> dict:
    indices = [i % len(state["data"]) for i in range(batch)]

    def step(seed: int) -> float:
        return trainer.train_step(state["unet"], state["scheduler"], state["data"], indices,
                                  torch.Generator(device).manual_seed(seed), state["params"], state["optimizer"],
                                  state["schedule"], state["config"].train, trainer.autocast(device, state["dtype"]))

    cuda = device.type == "cuda"
    step(0)  # warm-up: kernels, allocator, optimiser state
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for seed in range(1, steps + 1):
        step(seed)
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    return {"batch": batch, "seconds_per_step": round(seconds, 4), "images_per_s": round(batch / seconds, 2),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="testing/tiny-random")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--max-batch", type=int, help="double the batch up to this, stopping at out-of-memory")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--optimizer", default="auto", choices=("auto", "adamw", "adamw8bit"))
    parser.add_argument("--no-checkpointing", action="store_true", help="train without gradient checkpointing")
    parser.add_argument("--images", type=int, default=8, help="real pairs encoded (batches repeat them)")
    args = parser.parse_args()
    if args.model == TINY_MODEL_ID:
        build_reserved_model()

    ids = sorted(p.stem for p in (shared_data() / "kvasir-seg" / "images").iterdir())[:args.images]
    with tempfile.TemporaryDirectory() as tmp:
        split = Path(tmp) / "split.txt"
        split.write_text("\n".join(ids))
        config = _config(args, split, Path(tmp) / "out")
        device = resolve_device(config.engine.device, "engine.device")
        dtype = resolve_dtype(config.engine.dtype, device)
        start = time.perf_counter()
        pipe = trainer.load_base(config.engine, device, dtype)
        params = trainer.add_lora(pipe, config)
        loaded = time.perf_counter()
        engine = trainer.TrainingEngine(config.engine, pipe, device, dtype)
        data = trainer.encode_examples(engine, prepare_data(config).train, config.seed)
        encoded = time.perf_counter()
        optimizer, schedule = trainer.make_optimizer(params, config, device)
        state = {"unet": pipe.unet, "scheduler": DDPMScheduler.from_config(pipe.scheduler.config), "data": data,
                 "params": params, "optimizer": optimizer, "schedule": schedule, "config": config, "dtype": dtype}
        common = {"model": args.model, "resolution": args.resolution, "device": str(device),
                  "dtype": str(dtype).removeprefix("torch."), "optimizer": type(optimizer).__name__,
                  "gradient_checkpointing": not args.no_checkpointing, "lora_rank": args.rank,
                  "trainable_parameters": sum(p.numel() for p in params), "load_s": round(loaded - start, 2),
                  "encode_s_per_image": round((encoded - loaded) / len(data), 3),
                  "torch_threads": torch.get_num_threads()}
        batch = args.batch
        while True:
            try:
                print(json.dumps({**common, **_time_steps(state, batch, args.steps, device)}), flush=True)
            except torch.cuda.OutOfMemoryError:
                print(json.dumps({**common, "batch": batch, "out_of_memory": True}), flush=True)
                break
            if args.max_batch is None or batch * 2 > args.max_batch:
                break
            batch *= 2
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
