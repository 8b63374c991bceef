"""SDXL inpainting throughput: the baseline loop, the engine as a job runs it, and speed techniques.

One process, one model (the full-size SDXL inpainting architecture with random weights, built by
`build_sdxl_random.py` on first use, or `--tiny`, the tiny test model), one table:

    baseline      the loop of Ray's Stable Diffusion batch-inference example: fp16, batch 1, one
                  pipeline call per image, diffusers' default attention, no compilation; inputs
                  prepared beforehand (frame squashed to the square), only the calls timed
    engine        `run_generate` on a plan of real frames, as a job runs it: batches, one generator
                  per sample, windows, compositing, PNG encoding, shard writing (fp16, like baseline)
    -sdpa         engine with the classic attention processor instead of SDPA (what SDPA gives)
    -batched-cfg  engine with the two CFG halves as two UNet calls (what batching them gives)
    +bf16 …       then each technique asked for, added to the ones before it (cumulative):
                  bf16, fuse_qkv, channels_last, compile (regional: compile_repeated_blocks; full:
                  `engine.compile`, the whole UNet; cudagraphs), overlap (engine.overlap_cpu)

Columns: images/s, s/image, achieved TFLOP/s (FLOPs counted on the model's own architecture with
`torch.utils.flop_counter`, see `sdxl_flops.py`, at each sample's working side), % of the floor
(the FLOPs at `--peak-tflops`, dense bf16: ~790 on an H100/H200 SXM), peak GPU memory, warm-up
(the first batch: CUDA init, autotuning, compilation) and the largest pixel difference from the
engine row's first image (0–255: the techniques must not change the pictures).

    python bench/bench_sdxl_throughput.py --tiny --n 8 --batch 4 --resolution 128 --steps 4   # CPU
    python bench/bench_sdxl_throughput.py --model /tmp/sdxl --n 64 --batch 8 \\
        --bf16 --fuse-qkv --channels-last --compile regional --overlap --no-sdpa --split-cfg  # GPU
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import diffusers
import numpy as np
import torch
import transformers
from diffusers import (
    AutoencoderKL,
    StableDiffusionXLInpaintPipeline,
    UNet2DConditionModel,
)
from diffusers.models.attention_processor import AttnProcessor
from PIL import Image
from sdxl_flops import sample_flops, steps_run

from pipeline.config import JobConfig, config_from_dict
from pipeline.core.images import decode_image, resize_image, resize_mask
from pipeline.core.layout import RunLayout
from pipeline.core.timing import StageTimer
from pipeline.executors.local import LocalExecutor
from pipeline.generate import loading
from pipeline.generate.runner import load_or_build_plan, run_generate
from pipeline.generate.shards import read_shard
from pipeline.generate.window import paint_window, working_side
from pipeline.generate.worker import make_worker, prepare_sample
from pipeline.testing.data import shared_data

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench")


@dataclass(frozen=True)
class Row:
    """One measured configuration: a dtype, pipeline techniques, and engine settings."""

    name: str
    dtype: str
    techniques: tuple[str, ...] = ()
    overlap: bool = False
    against: str | None = None  # the row its gain is measured against


@dataclass
class Result:
    name: str
    dtype: str
    batch: int
    images: int
    seconds: float
    flops: float
    warmup_s: float
    peak_gib: float | None
    pixel_diff: int | None = None
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


# ------------------------------------------------------------------------------------ techniques


def _split_cfg(pipe: StableDiffusionXLInpaintPipeline) -> None:
    """The UNet runs the unconditional and the conditional half of each CFG batch as two calls."""
    forward = pipe.unet.forward

    def two_calls(sample, timestep, encoder_hidden_states, added_cond_kwargs=None, **kwargs):
        half = sample.shape[0] // 2
        outputs = [
            forward(sample[part], timestep, encoder_hidden_states[part],
                    added_cond_kwargs={k: v[part] for k, v in (added_cond_kwargs or {}).items()}, **kwargs)[0]
            for part in (slice(0, half), slice(half, None))
        ]
        return (torch.cat(outputs),)

    pipe.unet.forward = two_calls


def _channels_last(pipe: StableDiffusionXLInpaintPipeline) -> None:
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)


def _classic_attention(pipe: StableDiffusionXLInpaintPipeline) -> None:
    pipe.unet.set_attn_processor(AttnProcessor())
    pipe.vae.set_attn_processor(AttnProcessor())


TECHNIQUES = {
    "no_sdpa": _classic_attention,
    "split_cfg": _split_cfg,
    "fuse_qkv": lambda pipe: pipe.fuse_qkv_projections(),
    "channels_last": _channels_last,
    "compile_regional": lambda pipe: pipe.unet.compile_repeated_blocks(fullgraph=True),
    "compile_full": None,  # engine.compile, set in the job's config as a user sets it (job_config)
    "compile_cudagraphs": lambda pipe: setattr(pipe, "unet", torch.compile(pipe.unet, mode="reduce-overhead")),
}


def rows_asked(args: argparse.Namespace, fp16: str) -> list[Row]:
    """baseline, engine, the rows that turn a default off, then the cumulative techniques."""
    rows = [] if args.skip_baseline else [Row("baseline", fp16)]
    rows.append(Row("engine", fp16, against=None if args.skip_baseline else "baseline"))
    if args.no_sdpa:
        rows.append(Row("-sdpa", fp16, ("no_sdpa",), against="engine"))
    if args.split_cfg:
        rows.append(Row("-batched-cfg", fp16, ("split_cfg",), against="engine"))
    dtype, techniques, previous = fp16, (), "engine"
    steps = [("+bf16", args.bf16, None), ("+fuse_qkv", args.fuse_qkv, "fuse_qkv"),
             ("+channels_last", args.channels_last, "channels_last"),
             (f"+compile {args.compile}", args.compile, f"compile_{args.compile}"), ("+overlap", args.overlap, None)]
    for name, asked, technique in steps:
        if not asked:
            continue
        dtype = "bfloat16" if name == "+bf16" else dtype
        techniques += (technique,) if technique else ()
        rows.append(Row(name, dtype, techniques, overlap=name == "+overlap", against=previous))
        previous = name
    return rows


# ------------------------------------------------------------------------------------ measuring


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset_memory() -> None:
    loading.load_pipeline.cache_clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def job_config(args: argparse.Namespace, model: str, out: str, run_id: str, row: Row, samples: int) -> JobConfig:
    return config_from_dict({
        "run_id": run_id, "seed": 11, "samples": samples, "shard_size": args.shard_size, "output": out,
        "frames": {"source": str(args.frames), "limit": max(args.n, 1)},
        "prompts": {"bank": str(REPO / "prompts/clinical.yaml")}, "masks": {"preset": str(REPO / "masks/default.yaml")},
        "engine": {"model": model, "batch_size": args.batch, "resolution": args.resolution, "steps": args.steps,
                   "guidance_scale": args.guidance, "strength": args.strength, "dtype": row.dtype,
                   "output_resolution": args.output_resolution, "region": args.region, "crop_min": args.crop_min,
                   "crop_resolution": args.crop_resolution, "overlap_cpu": row.overlap,
                   "compile": "compile_full" in row.techniques},
    })


def per_sample_flops(config: JobConfig, unet_config, vae_config) -> float:
    """FLOPs of the plan's samples at the working side the engine picks for each (windows, crop_resolution)."""
    engine = config.engine
    steps = steps_run(engine.steps, engine.strength)
    total = 0
    for plan_row in load_or_build_plan(config, config.run_dir(), None).table.to_pylist():
        _, mask = prepare_sample(plan_row, engine.output_resolution, StageTimer())
        if not mask.any():  # a hard negative: the engine paints nothing
            continue
        side = working_side(paint_window(mask, engine), engine)
        total += sample_flops(unet_config, vae_config, side, engine.guidance_scale > 1).total(steps)
    return total


def run_engine_row(args: argparse.Namespace, model: str, out: str, row: Row, reference: np.ndarray | None) -> Result:
    _reset_memory()
    applied: set[int] = set()

    def factory(context):
        worker = make_worker(context)
        pipe = worker.engine.pipe
        if id(pipe) not in applied:  # once per loaded pipeline (cached for the row's runs)
            for technique in row.techniques:
                if TECHNIQUES[technique]:
                    TECHNIQUES[technique](pipe)
            applied.add(id(pipe))
        return worker

    slug = row.name.strip("+-").replace(" ", "-")
    warm = job_config(args, model, out, f"warmup-{slug}", row, args.batch)
    start = time.perf_counter()
    run_generate(warm, LocalExecutor(), factory=factory)
    _sync()
    warmup = time.perf_counter() - start
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    config = job_config(args, model, out, f"timed-{slug}", row, args.n)
    flops = per_sample_flops(config, *model_configs(model))  # also writes the plan, so planning is not timed
    start = time.perf_counter()
    summary = run_generate(config, LocalExecutor(), factory=factory)
    _sync()
    seconds = time.perf_counter() - start
    manifest = json.loads(Path(RunLayout(config.run_dir()).manifest).read_text())
    first = decode_image(read_shard(RunLayout(config.run_dir()).shard(0)).column("image")[0]["bytes"].as_py())
    return Result(row.name, row.dtype, args.batch, summary.written_samples, seconds, flops, warmup, _peak_gib(),
                  None if reference is None else int(np.abs(first.astype(int) - reference).max()),
                  manifest["timings"]["stage_seconds"])


def model_configs(model: str) -> tuple[dict, dict]:
    """The UNet's and the VAE's configs, read from the model folder (for counting FLOPs)."""
    return UNet2DConditionModel.load_config(model, subfolder="unet"), AutoencoderKL.load_config(model, subfolder="vae")


def run_baseline(args: argparse.Namespace, model: str, out: str, row: Row) -> Result:
    """Ray's example loop: the pipeline called once per image, batch 1, fp16, defaults everywhere."""
    _reset_memory()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = StableDiffusionXLInpaintPipeline.from_pretrained(model, torch_dtype=getattr(torch, row.dtype),
                                                            add_watermarker=False).to(device)
    pipe.set_progress_bar_config(disable=True)
    config = job_config(args, model, out, "baseline", row, args.n)
    side = (args.resolution, args.resolution)
    inputs = []
    for plan_row in load_or_build_plan(config, config.run_dir(), None).table.to_pylist():
        frame, mask = prepare_sample(plan_row, args.output_resolution, StageTimer())
        inputs.append((plan_row["prompt"], Image.fromarray(resize_image(frame, side)),
                       Image.fromarray(resize_mask(mask, side))))

    def call(prompt, image, mask):
        return pipe(prompt=prompt, image=image, mask_image=mask, height=args.resolution, width=args.resolution,
                    num_inference_steps=args.steps, guidance_scale=args.guidance, strength=args.strength).images[0]

    start = time.perf_counter()
    call(*inputs[0])
    _sync()
    warmup = time.perf_counter() - start
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for sample in inputs:
        call(*sample)
    _sync()
    seconds = time.perf_counter() - start
    one = sample_flops(pipe.unet.config, pipe.vae.config, args.resolution, args.guidance > 1)
    flops = len(inputs) * one.total(steps_run(args.steps, args.strength))
    return Result(row.name, row.dtype, 1, len(inputs), seconds, flops, warmup, _peak_gib())


# ------------------------------------------------------------------------------------ the table


STAGES = ("frame_load", "mask", "prepare", "model", "composite", "png_encode", "write")


def table(rows: list[Row], results: list[Result], peak_tflops: float) -> str:
    """The results table, each row's gain against its reference row, then where the seconds went."""
    speed = {r.name: r.images_per_s for r in results}
    lines = [f"{'row':<18} {'dtype':<9} {'batch':>5} {'img/s':>9} {'s/img':>8} {'TFLOP/s':>9} {'% floor':>8} "
             f"{'peak GiB':>8} {'warm-up s':>9} {'gain':>6}  {'vs':<14} {'Δpx':>4}"]
    for row, r in zip(rows, results):
        per_image = r.seconds / r.images
        floor_share = r.flops / r.images / (peak_tflops * 1e12) / per_image
        peak = f"{r.peak_gib:.1f}" if r.peak_gib is not None else "-"
        gain = f"{r.images_per_s / speed[row.against]:.2f}" if row.against else "-"
        diff = str(r.pixel_diff) if r.pixel_diff is not None else "-"
        lines.append(f"{r.name:<18} {r.dtype:<9} {r.batch:>5} {r.images_per_s:>9.4g} {per_image:>8.4g} "
                     f"{r.flops / r.seconds / 1e12:>9.4g} {floor_share:>8.2%} {peak:>8} {r.warmup_s:>9.1f} "
                     f"{gain:>6}  {row.against or '':<14} {diff:>4}")
    lines.append("")
    lines.append(f"{'ms per image':<18} " + " ".join(f"{stage:>10}" for stage in STAGES))
    for r in results:
        if r.stages:
            lines.append(f"{r.name:<18} " + " ".join(f"{1000 * r.stages.get(stage, 0) / r.images:>10.1f}"
                                                     for stage in STAGES))
    return "\n".join(lines)


def model_dir(args: argparse.Namespace) -> str:
    if args.tiny:
        from pipeline.tools.tiny_model import build_tiny_model

        return str(build_tiny_model(Path(args.cache) / "tiny-sdxl-inpaint"))
    if args.model:
        return args.model
    from build_sdxl_random import build

    out = Path(args.cache) / "sdxl-random"
    if not (out / "model_index.json").exists():
        log.info("building the full-size SDXL inpainting architecture with random weights in %s", out)
        build(out, torch.float16, "cuda" if torch.cuda.is_available() else "cpu")
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--tiny", action="store_true", help="the tiny test model (CPU, CI)")
    parser.add_argument("--model", help="a diffusers SDXL inpainting folder (default: full-size random weights)")
    parser.add_argument("--cache", default=tempfile.gettempdir(), help="where built models are kept")
    parser.add_argument("--frames", type=Path, default=shared_data() / "normal-mucosa")
    parser.add_argument("--n", type=int, default=32, help="images timed per row")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--output-resolution", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--strength", type=float, default=0.99)
    parser.add_argument("--region", choices=("crop", "frame"), default="crop")
    parser.add_argument("--crop-min", type=int, default=256)
    parser.add_argument("--crop-resolution", type=int)
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="dense bf16 peak of the GPU")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--no-sdpa", action="store_true", help="row: classic attention instead of SDPA")
    parser.add_argument("--split-cfg", action="store_true", help="row: CFG halves as two UNet calls")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--fuse-qkv", action="store_true", help="pipe.fuse_qkv_projections()")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", choices=("regional", "full", "cudagraphs"))
    parser.add_argument("--overlap", action="store_true", help="engine.overlap_cpu: CPU stages on a thread")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    diffusers.utils.logging.set_verbosity_error()  # fp16-cast and prompt-truncation notes, per call
    transformers.utils.logging.set_verbosity_error()

    # fp16 on the GPU, as the baseline example; the CPU has no fast fp16, so float32 there
    fp16 = "float16" if torch.cuda.is_available() else "float32"
    model = model_dir(args)
    rows = rows_asked(args, fp16)
    results: list[Result] = []
    reference = None
    with tempfile.TemporaryDirectory() as out:
        for row in rows:
            if row.name == "baseline":
                results.append(run_baseline(args, model, out, row))
            else:
                results.append(run_engine_row(args, model, out, row, reference))
                if reference is None:
                    config = job_config(args, model, out, "timed-engine", row, args.n)
                    reference = decode_image(read_shard(RunLayout(config.run_dir()).shard(0))
                                           .column("image")[0]["bytes"].as_py()).astype(int)
            r = results[-1]
            print(f"  {row.name}: {r.images_per_s:.3f} images/s, {r.flops / r.seconds / 1e12:.4g} TFLOP/s, "
                  f"warm-up {r.warmup_s:.1f} s, peak {r.peak_gib or 0:.1f} GiB", flush=True)
            if args.json:  # after every row, so a run stopped at its time limit keeps what it measured
                Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))

    floor = sample_flops(*model_configs(model), args.resolution, args.guidance > 1).total(args.steps)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"{'tiny' if args.tiny else 'SDXL inpainting'} model on {device}; {args.resolution}², {args.steps} steps "
          f"(strength {args.strength}: {steps_run(args.steps, args.strength)} run), guidance {args.guidance}, "
          f"region {args.region}, {args.n} images per row; torch {torch.__version__}")
    print(f"floor: {floor / 1e12:.4g} TFLOP per image = {floor / (args.peak_tflops * 1e12):.4g} s "
          f"at {args.peak_tflops:.0f} TFLOP/s; warm-up = model load + first batch; Δpx = largest pixel "
          "difference from the engine row's first image")
    print(table(rows, results, args.peak_tflops))


if __name__ == "__main__":
    main()
