"""Where one SDXL denoising step spends its GPU time, by kind of work.

The throughput table (BENCHMARKS.md) found the engine at 39 % of the FLOP floor, 93–96 % of it inside
the model call. This script times the full-size inpainting UNet alone at the engine's shapes (B images
= a batch of 2B with CFG, side/8 latents, 77 text tokens), then splits one step's kernel time by kind,
from the kernels' names:

    attention      SDPA kernels (cuDNN, flash, memory-efficient)
    convolution    cuDNN / CUTLASS implicit-GEMM convolutions
    matmul         GEMMs (the linear projections and feed-forwards; inductor's mm templates)
    normalisation  GroupNorm and LayerNorm kernels (compiled: fused with their neighbours)
    pointwise      elementwise kernels, copies and concatenations

with each kind's FLOPs (FlopCounterMode over the same call, by aten op) so each kind has its own TFLOP/s:

    TFLOP/s(kind) = FLOPs(kind) / kernel seconds(kind)

Variants, each timed alone: eager (SDPA's default backend), flash attention forced, channels-last,
torch.compile (inductor: GroupNorm, SiLU and the adds fused), and with max-autotune GEMM/conv templates.
A variant whose estimated compile time does not fit `--budget` is skipped, and the JSON is rewritten
after every variant, so a run cut short keeps what it measured.

    python bench/profile_sdxl_unet.py --tiny --side 64 --batch 2            # CPU dry run, tiny UNet
    python bench/profile_sdxl_unet.py --json OUT/unet.json                   # GPU: full size, bf16, batch 8
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import re
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

KINDS = ("attention", "convolution", "matmul", "normalisation", "pointwise")

# First match wins. Inductor names a fused elementwise kernel after every op it absorbed
# (`triton_poi_fused_convolution_native_group_norm_silu`), so its kernels are pointwise unless a norm.
KERNEL_KINDS = [
    ("normalisation", re.compile(r"norm|Moments|ComputeFusedParams", re.I)),
    ("pointwise", re.compile(r"^triton_(poi|red|per)_")),
    ("attention", re.compile(r"flash|fmha|attention|sdpa|attn", re.I)),
    ("convolution", re.compile(r"convolution|conv2d|fprop|dgrad|implicit", re.I)),
    ("matmul", re.compile(r"gemm|nvjet|cublas|cutlass|triton_tem|_mm_|addmm|bmm", re.I)),
]
OP_KINDS = [
    ("attention", re.compile(r"attention")),
    ("convolution", re.compile(r"conv")),
    ("matmul", re.compile(r"mm|linear")),
]


def kernel_kind(name: str) -> str:
    """The kind of work a GPU kernel does, from its name (`KERNEL_KINDS`; anything else is pointwise)."""
    return next((kind for kind, pattern in KERNEL_KINDS if pattern.search(name)), "pointwise")


def op_kind(name: str) -> str:
    """The kind of an aten op the FLOP counter counted (only these three have FLOPs)."""
    return next((kind for kind, pattern in OP_KINDS if pattern.search(name)), "pointwise")


@dataclass
class Variant:
    name: str
    ms_per_step: float = 0.0
    tflops: float = 0.0  # whole step
    floor_share: float = 0.0  # tflops / the GPU's dense bf16 rate
    compile_s: float = 0.0
    kinds_ms: dict[str, float] = field(default_factory=dict)  # kernel milliseconds per step, by kind
    top_kernels: list[tuple[str, float]] = field(default_factory=list)  # (name, ms per step)
    skipped: str = ""


def unet_inputs(config, batch: int, side: int, device: str, dtype: torch.dtype) -> tuple:
    """The UNet's arguments for one CFG step of `batch` images at `side`² (latents side/8)."""
    rows, latent = 2 * batch, side // 8
    text_embeds = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    make = {"device": device, "dtype": dtype}
    return (torch.randn(rows, config.in_channels, latent, latent, **make), torch.full((rows,), 500.0, device=device),
            torch.randn(rows, 77, config.cross_attention_dim, **make),
            {"text_embeds": torch.randn(rows, text_embeds, **make), "time_ids": torch.randn(rows, 6, **make)})


def build_unet(tiny: bool, device: str, dtype: torch.dtype):
    if tiny:
        from diffusers import UNet2DConditionModel

        from pipeline.tools.tiny_model import build_tiny_model

        model = UNet2DConditionModel.from_pretrained(build_tiny_model(Path(tempfile.mkdtemp()) / "tiny") / "unet")
    else:
        from pipeline.tools.sdxl_shapes import parameters_in, unet

        with torch.device(device), parameters_in(dtype):
            model = unet()
    return model.to(device, dtype).eval().requires_grad_(False)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_steps(step, device: str, steps: int) -> float:
    """Seconds per call of `step`, after the caller's warm-up."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def kernel_ms(step, device: str, steps: int) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """Kernel milliseconds per step by kind, and the 12 costliest kernels, from a torch.profiler trace."""
    activities = [torch.profiler.ProfilerActivity.CUDA if device == "cuda" else torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as trace:
        for _ in range(steps):
            step()
        sync(device)
    kinds: dict[str, float] = defaultdict(float)
    kernels: dict[str, float] = defaultdict(float)
    for event in trace.events():
        on_gpu = event.device_type == torch.autograd.DeviceType.CUDA
        if device == "cuda" and not on_gpu or device != "cuda" and not event.name.startswith("aten::"):
            continue
        us = event.device_time_total if on_gpu else event.self_cpu_time_total
        kinds[kernel_kind(event.name)] += us / 1000 / steps
        kernels[event.name] += us / 1000 / steps
    return dict(kinds), sorted(kernels.items(), key=lambda item: -item[1])[:12]


def flops_by_kind(step) -> dict[str, int]:
    with FlopCounterMode(display=False) as counter:
        step()
    totals: dict[str, int] = defaultdict(int)
    for op, flops in counter.get_flop_counts()["Global"].items():
        totals[op_kind(str(op))] += flops
    return dict(totals)


def matmul_peak(device: str, dtype: torch.dtype) -> float:
    """TFLOP/s of a large square GEMM: the rate the floor assumes, measured on this GPU now."""
    n = 8192 if device == "cuda" else 512
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    return 2 * n**3 / time_steps(lambda: a @ b, device, 20) / 1e12


VARIANTS = {
    # name: (memory format, SDPA backend or None, torch.compile mode or None, estimated compile seconds)
    "eager": (torch.contiguous_format, None, None, 0),
    "flash-attention": (torch.contiguous_format, "FLASH_ATTENTION", None, 0),  # torch 2.11 picks cuDNN's
    "channels-last": (torch.channels_last, None, None, 0),
    "compile": (torch.contiguous_format, None, "default", 150),
    "compile+channels-last": (torch.channels_last, None, "default", 150),
    "compile max-autotune": (torch.channels_last, None, "max-autotune-no-cudagraphs", 420),
}


def run_variant(name: str, model, inputs: tuple, device: str, args) -> Variant:
    memory_format, backend, mode, _ = VARIANTS[name]
    model = model.to(memory_format=memory_format)
    sample, timestep, text, added = inputs
    sample = sample.contiguous(memory_format=memory_format)
    net = torch.compile(model, mode=mode) if mode else model
    attention = contextlib.nullcontext
    if backend:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        attention = functools.partial(sdpa_kernel, getattr(SDPBackend, backend))

    def step():
        with attention():
            return net(sample, timestep, encoder_hidden_states=text, added_cond_kwargs=added).sample

    try:
        with torch.inference_mode():
            start = time.perf_counter()
            for _ in range(2):
                step()
            sync(device)
            warm = time.perf_counter() - start
            seconds = time_steps(step, device, args.steps)
            kinds, top = kernel_ms(step, device, 2)
    finally:  # the next variant starts from the contiguous model, whatever happened here
        model.to(memory_format=torch.contiguous_format)
    return Variant(name, ms_per_step=1000 * seconds, compile_s=warm if mode else 0.0, kinds_ms=kinds, top_kernels=top)


def row(v: Variant) -> str:
    if v.skipped:
        return f"{v.name:<24} skipped: {v.skipped}"
    return (f"{v.name:<24} {v.ms_per_step:>8.1f} {v.tflops:>8.1f} {100 * v.floor_share:>7.1f}% {v.compile_s:>9.0f}  "
            + " ".join(f"{v.kinds_ms.get(k, 0):>8.1f} ms" for k in KINDS))


def report(variants: list[Variant], flops: dict[str, int], step_flops: float, peak: float, args) -> str:
    lines = [f"UNet step: {args.batch} images (batch {2 * args.batch} with CFG), {args.side}², {args.dtype}; "
             f"{step_flops / 1e12:.3g} TFLOP a step; GEMM peak measured {peak:.0f} TFLOP/s, "
             f"floor at {args.peak_tflops}",
             "", f"{'variant':<24} {'ms/step':>8} {'TFLOP/s':>8} {'% floor':>8} {'compile s':>9}  "
             + " ".join(f"{k[:11]:>11}" for k in KINDS)]
    lines += [row(v) for v in variants]
    eager = next((v for v in variants if v.name == "eager" and not v.skipped), None)
    if eager:
        lines += ["", "eager, by kind:   ms/step  share   TFLOP   TFLOP/s"]
        total = sum(eager.kinds_ms.values())
        for kind in KINDS:
            ms = eager.kinds_ms.get(kind, 0.0)
            tflop = flops.get(kind, 0) / 1e12
            rate = f"{tflop / (ms / 1000):>9.1f}" if ms and tflop else f"{'–':>9}"
            lines.append(f"  {kind:<14} {ms:>8.1f} {100 * ms / total:>5.1f}% {tflop:>7.2f} {rate}")
        lines += ["", "eager, costliest kernels (ms/step):"]
        lines += [f"  {ms:>8.2f}  {name[:160]}" for name, ms in eager.top_kernels]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--tiny", action="store_true", help="the tiny test UNet (CPU dry run)")
    parser.add_argument("--batch", type=int, default=8, help="images a step (the UNet sees twice as many with CFG)")
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    parser.add_argument("--steps", type=int, default=10, help="steps timed per variant")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--budget", type=float, default=480, help="seconds; skip a variant that would not fit")
    parser.add_argument("--peak-tflops", type=float, default=790.0)
    parser.add_argument("--json")
    args = parser.parse_args()
    start = time.monotonic()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype) if device == "cuda" else torch.float32
    args.dtype = str(dtype).removeprefix("torch.")
    model = build_unet(args.tiny, device, dtype)
    inputs = unet_inputs(model.config, args.batch, args.side, device, dtype)
    with torch.inference_mode():
        flops = flops_by_kind(lambda: model(inputs[0], inputs[1], encoder_hidden_states=inputs[2],
                                            added_cond_kwargs=inputs[3]))
    step_flops = sum(flops.values())  # on a GPU, as bench/sdxl_flops.py counts it times the batch
    peak = matmul_peak(device, dtype)
    variants: list[Variant] = []
    for name in args.variants:
        left = args.budget - (time.monotonic() - start)
        estimate = VARIANTS[name][3] + 30
        if device != "cuda" and (VARIANTS[name][1] or VARIANTS[name][2]):
            variants.append(Variant(name, skipped="forced SDPA backends and torch.compile are measured on a GPU only"))
        elif left < estimate:
            variants.append(Variant(name, skipped=f"{left:.0f} s left of the budget, about {estimate} s needed"))
        else:
            try:
                v = run_variant(name, model, inputs, device, args)
                v.tflops = step_flops / (v.ms_per_step / 1000) / 1e12
                v.floor_share = v.tflops / args.peak_tflops
            except Exception as error:  # one variant failing (a backend this GPU lacks) keeps the others
                v = Variant(name, skipped=f"failed: {type(error).__name__}: {str(error)[:200]}")
            variants.append(v)
            torch._dynamo.reset()
        print(row(variants[-1]), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                           "torch": torch.__version__, "batch": args.batch, "side": args.side, "dtype": args.dtype,
                           "step_tflop": step_flops / 1e12, "gemm_peak_tflops": peak,
                           "flops_by_kind": flops, "variants": [asdict(v) for v in variants]}, f, indent=1)
    print(report(variants, flops, step_flops, peak, args))


if __name__ == "__main__":
    main()
