"""The largest generation batch a GPU's memory holds, counted without a GPU.

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
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.config import TINY_MODEL_ID, EngineConfig, JobConfig
from pipeline.errors import ConfigError
from pipeline.generate.loading import DTYPES, local_path, reserved_tiny_model

GIB = 2**30
RESERVE_BYTES = int(1.5 * GIB)
RESERVE_SHARE = 0.10


def parse_memory(text: str) -> int:
    """`80GiB`, `80GB`, `24 GiB`, `81920MiB` → bytes; a bare number is GiB."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*(GiB|GB|MiB|MB|G|M)?\s*", text)
    if not match:
        raise ConfigError(f"--gpu-memory: {text!r}: expected an amount such as 80GiB or 24GB")
    value, unit = float(match.group(1)), (match.group(2) or "GiB")
    scale = {"GiB": GIB, "G": GIB, "GB": 1e9, "MiB": 2**20, "M": 2**20, "MB": 1e6}[unit]
    return int(value * scale)


@dataclass(frozen=True)
class Footprint:
    """Bytes one engine needs on the GPU at one working resolution."""

    resolution: int
    weights: int
    unet: int  # activations of one sample's denoising step
    vae_encode: int
    vae_decode: int

    @property
    def per_sample(self) -> int:
        return max(self.unet, self.vae_encode, self.vae_decode)

    def need(self, batch: int, memory: int) -> int:
        return self.weights + batch * self.per_sample + RESERVE_BYTES + int(RESERVE_SHARE * memory)

    def largest_batch(self, memory: int) -> int:
        """0 when not even one sample fits."""
        room = memory - self.need(0, memory)
        return max(0, room // self.per_sample) if self.per_sample else 0


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


def footprint(engine: EngineConfig, resolution: int) -> tuple[Footprint, str]:
    """What the engine needs at `resolution` (GPU dtype: `engine.dtype`, `auto` is bfloat16)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from pipeline.tools.sdxl_shapes import parameters_in

    dtype = torch.bfloat16 if engine.dtype == "auto" else DTYPES[engine.dtype]
    with parameters_in(dtype), FakeTensorMode():
        (unet, vae, *encoders), source = _modules(engine)
        weights = sum(p.numel() * p.element_size() for m in (unet, vae, *encoders) for p in m.parameters())
        rows = 2 if engine.guidance_scale > 1 else 1  # classifier-free guidance doubles the UNet's batch
        side = resolution // 8
        context = torch.randn(rows, 77, unet.config.cross_attention_dim)
        c = unet.config  # SDXL's added conditioning: pooled text embedding, then 6 time ids embedded
        pooled = (c.projection_class_embeddings_input_dim or 0) - 6 * (c.addition_time_embed_dim or 0)
        added = {"text_embeds": torch.randn(rows, pooled), "time_ids": torch.randn(rows, 6)}
        latents = torch.randn(rows, unet.config.in_channels, side, side)
        steps = _peak_activations(unet, lambda: unet(latents, torch.tensor([500] * rows), encoder_hidden_states=context,
                                                     added_cond_kwargs=added if unet.config.addition_embed_type else None))
        image = torch.randn(1, 3, resolution, resolution)
        encode = _peak_activations(vae, lambda: vae.encode(image))
        decode = _peak_activations(vae, lambda: vae.decode(torch.randn(1, vae.config.latent_channels, side, side)))
    return Footprint(resolution, weights + _lora_bytes(engine), steps, encode, decode), source


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
