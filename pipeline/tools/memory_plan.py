"""The largest generation and fine-tuning batch a GPU's memory holds, counted without a GPU.

The job's UNet and VAE are built at full size on fake tensors (shapes and dtypes, no storage, no
arithmetic); one sample's denoising step (both classifier-free-guidance rows when guidance is on),
its VAE encode (the masked image) and its VAE decode run through them while torch's `MemTracker`
counts live bytes. Activations grow linearly with the batch (two samples count twice one, to the
byte), so for a batch of B

    need(B) = weights + B · max(unet, vae_encode, vae_decode) + reserve,
    reserve = 1.5 GiB + 10 % of the GPU      (CUDA context, cuDNN workspaces, allocator slack)

and the largest batch is the largest B with need(B) ≤ memory. Weights are the engine's UNet, VAE,
text encoders and LoRA, in the engine's dtype. It is where a first GPU run starts, not a promise:
confirm it on the GPU with `bench/bench_sdxl_throughput.py --batch N` (and the engine halves a
batch that runs out of memory rather than failing the shard).

Fine-tuning (`finetune --gpu-memory`) counts what autograd keeps for the backward pass instead:

    need(B) = weights + lora_state + B · (saved outside checkpointed blocks + 2 · largest block) + reserve,
    lora_state = LoRA parameters × (4 fp32 + 4 gradient + 8 AdamW moments, or 2 with 8-bit AdamW) bytes

where the saved bytes are those `torch.autograd.graph.saved_tensors_hooks` sees during one example's
forward; with gradient checkpointing a block keeps only its inputs and is recomputed, one at a time, in
the backward pass, hence the largest block once. The projections LoRA wraps are made trainable as its
stand-in (autograd then saves their inputs, as it does for LoRA; LoRA's rank-r intermediates are
negligible), since peft cannot wrap layers of fake tensors.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.config import TINY_MODEL_ID, EngineConfig, JobConfig
from pipeline.errors import ConfigError
from pipeline.generate.loading import DTYPES, local_path, reserved_tiny_model
from pipeline.train.finetune.config import FinetuneConfig

GIB = 2**30
RESERVE_BYTES = int(1.5 * GIB)
RESERVE_SHARE = 0.10


def parse_memory(text: str) -> int:
    """`80GiB`, `80GB`, `24 GiB`, `81920MiB` → bytes; a bare number is GiB."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(GiB|GB|MiB|MB|G|M)?\s*", text)
    if not match:
        raise ConfigError(f"--gpu-memory: {text!r}: expected an amount such as 80GiB or 24GB")
    value, unit = float(match.group(1)), (match.group(2) or "GiB")
    scale = {"GiB": GIB, "G": GIB, "GB": 1e9, "MiB": 2**20, "M": 2**20, "MB": 1e6}[unit]
    return int(value * scale)


class _Batched:
    """need(B) = weights + B · per_sample + reserve, and the largest B that fits."""

    weights: int
    per_sample: int

    def need(self, batch: int, memory: int) -> int:
        return self.weights + batch * self.per_sample + RESERVE_BYTES + int(RESERVE_SHARE * memory)

    def largest_batch(self, memory: int) -> int:
        """0 when not even one sample fits."""
        room = memory - self.need(0, memory)
        return max(0, room // self.per_sample) if self.per_sample else 0


@dataclass(frozen=True)
class Footprint(_Batched):
    """Bytes one engine needs on the GPU at one working resolution."""

    resolution: int
    weights: int
    unet: int  # activations of one sample's denoising step
    vae_encode: int
    vae_decode: int

    @property
    def per_sample(self) -> int:
        return max(self.unet, self.vae_encode, self.vae_decode)


@dataclass(frozen=True)
class TrainingFootprint(_Batched):
    """Bytes one fine-tuning worker needs on the GPU: frozen weights, LoRA state, saved activations."""

    resolution: int
    weights: int  # frozen components in the engine's dtype plus the LoRA state
    lora_parameters: int
    per_sample: int  # saved for backward per example (plus the largest recomputed block and its gradients)


def _config(folder: Path | None, component: str) -> dict | None:
    path = folder / component / "config.json" if folder else None
    return json.loads(path.read_text()) if path and path.exists() else None


def _modules(engine: EngineConfig) -> tuple[list[torch.nn.Module], str]:
    """UNet, VAE, text encoders (built in the current mode: meta or fake) and where their shapes came from."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pipeline.tools import sdxl_shapes

    folder = reserved_tiny_model() if engine.model == TINY_MODEL_ID else local_path(engine.model, "engine.model")
    unet_config = _config(folder, "unet")
    if unet_config is None:  # a hub id: the checkpoint is not here to read, its architecture is known
        modules = [sdxl_shapes.unet(), sdxl_shapes.vae(), *sdxl_shapes.text_encoders()]
        source = "SDXL inpainting's shapes"
    else:
        encoders = [cls(CLIPTextConfig.from_pretrained(folder / name)) for cls, name in
                    ((CLIPTextModel, "text_encoder"), (CLIPTextModelWithProjection, "text_encoder_2"))
                    if (folder / name / "config.json").exists()]
        modules = [UNet2DConditionModel.from_config(unet_config), AutoencoderKL.from_config(_config(folder, "vae")),
                   *encoders]
        source = f"the configs in {folder}"
    vae_folder = local_path(engine.vae, "engine.vae") if engine.vae else None
    if vae_folder is not None and (vae_folder / "config.json").exists():
        modules[1] = AutoencoderKL.from_config(json.loads((vae_folder / "config.json").read_text()))
    return modules, source


def _lora_bytes(engine: EngineConfig) -> int:
    path = local_path(engine.lora, "engine.lora") if engine.lora else None
    if path is None:
        return 0
    files = [path] if path.is_file() else list(path.glob("*.safetensors"))
    return sum(f.stat().st_size for f in files)


def _peak_activations(module: torch.nn.Module, run) -> int:
    """Peak activation + temporary bytes while `run()` goes through `module` (fake tensors)."""
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

    tracker = MemTracker()
    tracker.track_external(module)
    with tracker, torch.no_grad():
        run()
    peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    return peak.get(_MemRefType.ACT, 0) + peak.get(_MemRefType.TEMP, 0)


def _saved_bytes(module: torch.nn.Module) -> tuple[contextlib.AbstractContextManager, dict[int, int]]:
    """A context under which autograd's saved tensors are counted (distinct storages, not parameters)."""
    parameters = {p.untyped_storage()._cdata for p in module.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in parameters:
            seen[storage._cdata] = storage.nbytes()
        return tensor

    return torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), seen


def _unet_inputs(unet: torch.nn.Module, rows: int, resolution: int) -> dict:
    """A denoising step's inputs at `resolution` (SDXL's added conditioning when the UNet has it)."""
    c = unet.config  # pooled text embedding, then 6 time ids embedded
    pooled = (c.projection_class_embeddings_input_dim or 0) - 6 * (c.addition_time_embed_dim or 0)
    added = {"text_embeds": torch.randn(rows, pooled), "time_ids": torch.randn(rows, 6)}
    side = resolution // 8
    return {"sample": torch.randn(rows, c.in_channels, side, side), "timestep": torch.tensor([500] * rows),
            "encoder_hidden_states": torch.randn(rows, 77, c.cross_attention_dim),
            "added_cond_kwargs": added if c.addition_embed_type else None}


def footprint(engine: EngineConfig, resolution: int) -> tuple[Footprint, str]:
    """What the engine needs at `resolution` (GPU dtype: `engine.dtype`, `auto` is bfloat16)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from pipeline.tools.sdxl_shapes import parameters_in

    dtype = torch.bfloat16 if engine.dtype == "auto" else DTYPES[engine.dtype]
    with parameters_in(dtype), FakeTensorMode():
        (unet, vae, *encoders), source = _modules(engine)
        weights = sum(p.numel() * p.element_size() for m in (unet, vae, *encoders) for p in m.parameters())
        rows = 2 if engine.guidance_scale > 1 else 1  # classifier-free guidance doubles the UNet's batch
        inputs = _unet_inputs(unet, rows, resolution)
        steps = _peak_activations(unet, lambda: unet(**inputs))
        side = resolution // 8
        image = torch.randn(1, 3, resolution, resolution)
        encode = _peak_activations(vae, lambda: vae.encode(image))
        decode = _peak_activations(vae, lambda: vae.decode(torch.randn(1, vae.config.latent_channels, side, side)))
    return Footprint(resolution, weights + _lora_bytes(engine), steps, encode, decode), source


def training_footprint(config: FinetuneConfig) -> tuple[TrainingFootprint, str]:
    """What one fine-tuning worker needs at `engine.resolution` (frozen weights in `engine.dtype`, `auto`
    is bfloat16 as on a GPU)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from pipeline.tools.sdxl_shapes import parameters_in

    engine, train = config.engine, config.train
    dtype = torch.bfloat16 if engine.dtype == "auto" else DTYPES[engine.dtype]
    with parameters_in(dtype), FakeTensorMode():
        (unet, *others), source = _modules(engine)
        frozen = sum(p.numel() * p.element_size() for m in (unet, *others) for p in m.parameters())
        unet.requires_grad_(False).train()
        lora = 0
        for name, layer in unet.named_modules():
            if isinstance(layer, torch.nn.Linear) and any(name == t or name.endswith(f".{t}") for t in config.lora.targets):
                layer.weight.requires_grad_(True)  # LoRA's stand-in
                lora += config.lora.rank * (layer.in_features + layer.out_features)
        counting, seen = _saved_bytes(unet)
        blocks: list[int] = []
        if train.gradient_checkpointing:
            def block(module, *args):
                """Runs a block as checkpointing does: it keeps its inputs (counted with the rest) and
                what it saves inside is counted apart, as the peak of its recomputation."""
                for arg in args:
                    if isinstance(arg, torch.Tensor):
                        seen[arg.untyped_storage()._cdata] = arg.untyped_storage().nbytes()
                inner, inside = _saved_bytes(module)
                with inner:
                    out = module(*args)
                blocks.append(sum(inside.values()))
                return out

            unet.enable_gradient_checkpointing(block)
        with counting:
            unet(**_unet_inputs(unet, 1, engine.resolution))
    state = 16 if train.optimizer != "adamw8bit" else 10  # fp32 LoRA, gradient, two moments (8-bit: 1 byte each)
    return TrainingFootprint(engine.resolution, frozen + lora * state, lora,
                             sum(seen.values()) + 2 * max(blocks, default=0)), source


def training_table(config: FinetuneConfig, memory: int) -> str:
    """A Markdown line of the largest fine-tuning batch per worker on a GPU of `memory` bytes."""
    fp, source = training_footprint(config)
    batch = fp.largest_batch(memory)
    optimizer = {"adamw8bit": "8-bit AdamW", "adamw": "AdamW"}.get(config.train.optimizer, "auto (counted as AdamW)")
    return "\n".join([
        f"fine-tuning on a GPU of {memory / GIB:.0f} GiB (engine dtype {config.engine.dtype}, LoRA rank "
        f"{config.lora.rank}, {optimizer}, gradient checkpointing {'on' if config.train.gradient_checkpointing else 'off'}); "
        f"reserve {RESERVE_BYTES / GIB:.1f} GiB + {RESERVE_SHARE:.0%} of the GPU", "",
        "| resolution | weights + LoRA state GiB | LoRA parameters | saved for backward GiB/example | largest batch | need at it GiB |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| {fp.resolution}² | {fp.weights / GIB:.2f} | {fp.lora_parameters / 1e6:.1f} M | {fp.per_sample / GIB:.3f} | "
        f"{batch} | {fp.need(batch, memory) / GIB:.1f} |", "",
        f"shapes from {source}; an estimate to start from (train.batch_size is per worker): confirm it on the GPU "
        "with one step at that batch"])


def resolutions(config: JobConfig) -> list[int]:
    """The working resolutions a job uses: `resolution`, and `crop_resolution` for small windows."""
    return sorted({config.engine.resolution, *([config.engine.crop_resolution] if config.engine.crop_resolution else [])})


def memory_table(config: JobConfig, memory: int) -> str:
    """A Markdown table: per working resolution, what one sample needs and the largest batch."""
    lines = [f"generation on a GPU of {memory / GIB:.0f} GiB (engine dtype {config.engine.dtype}, "
             f"guidance {config.engine.guidance_scale:g}); reserve {RESERVE_BYTES / GIB:.1f} GiB + "
             f"{RESERVE_SHARE:.0%} of the GPU", "",
             "| resolution | weights GiB | UNet step GiB/sample | VAE encode | VAE decode | largest batch | need at it GiB |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    source = ""
    for resolution in resolutions(config):
        fp, source = footprint(config.engine, resolution)
        batch = fp.largest_batch(memory)
        lines.append(f"| {resolution}² | {fp.weights / GIB:.2f} | {fp.unet / GIB:.3f} | {fp.vae_encode / GIB:.3f} | "
                     f"{fp.vae_decode / GIB:.3f} | {batch} | {fp.need(batch, memory) / GIB:.1f} |")
    lines += ["", f"shapes from {source}; an estimate to start from: confirm it on the GPU with "
              "`bench/bench_sdxl_throughput.py --batch N`"]
    return "\n".join(lines)
