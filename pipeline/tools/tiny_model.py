"""Build a tiny, randomly initialised SDXL inpainting pipeline for tests and the demo
(`polyp-synth build-tiny-model`; jobs reach it only as `engine.model: testing/tiny-random`).

No weights can be downloaded here, so tests load this model through the same `from_pretrained` path
as the real one. The architecture is SDXL's (two CLIP text encoders, the second with a projection;
a "text_time" UNet; an 8x VAE) with every width cut down so a batch of 4 at 128x128 runs in seconds
on a CPU. The shapes follow diffusers' own SDXL inpainting tests.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLInpaintPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from pipeline.errors import ModelLoadError
from pipeline.generate.loading import (
    TINY_MODEL_MARKER,
    is_tiny_model,
    reserved_model_dir,
)

TEXT_HIDDEN = 32  # both text encoders (SDXL: 768 and 1280)
TEXT_PROJECTION = 32  # pooled embedding of the second encoder (SDXL: 1280)
TIME_EMBED = 8  # per added time id (SDXL: 256)
# SDXL conditions on 6 time ids (original size, crop top-left, target size) plus the pooled text
# embedding; with `requires_aesthetics_score` it would be 5 ids instead.
ADD_EMBED_DIM = 6 * TIME_EMBED + TEXT_PROJECTION

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MERGES = [("p", "o"), ("l", "y"), ("po", "ly"), ("c", "o"), ("o", "n"), ("a", "l</w>")]


def _byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the 256 byte values (GPT-2/CLIP mapping)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def _write_tokenizer_files(folder: Path) -> None:
    """A valid CLIP BPE vocabulary: every byte, alone and word-final, a few merges, the two specials."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet]
    tokens += ["".join(pair) for pair in MERGES] + [BOS, EOS]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES), encoding="utf-8")


def local_tokenizer(folder: Path) -> CLIPTokenizer:
    _write_tokenizer_files(folder)
    return CLIPTokenizer.from_pretrained(folder, model_max_length=77, bos_token=BOS, eos_token=EOS, pad_token=EOS)


def _text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        projection_dim=TEXT_PROJECTION,
        hidden_act="gelu",
        max_position_embeddings=77,
    )


def _unet(in_channels: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        in_channels=in_channels,  # 9 = noisy latents + mask + masked-image latents; 4 = base SDXL
        out_channels=4,
        sample_size=16,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=2 * TEXT_HIDDEN,  # the two encoders' hidden states are concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=ADD_EMBED_DIM,
    )


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16, 32, 32),  # 4 blocks, 3 downsamples: 8x, like SDXL's VAE
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=128,
        scaling_factor=0.13025,
    )


def sdxl_scheduler() -> EulerDiscreteScheduler:
    """SDXL's own scheduler settings."""
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )


def build_tiny_model(out_dir: str | os.PathLike, unet_channels: int = 9, seed: int = 0) -> Path:
    """Write a tiny SDXL inpainting pipeline (safetensors) to `out_dir` and return its path.

    Built in a temporary sibling folder and renamed into place, so a crash never leaves half a model.
    If `out_dir` already holds a tiny model built with the same arguments it is reused.
    """
    if unet_channels not in (4, 9):
        raise ValueError(f"unet_channels must be 9 (inpainting UNet) or 4 (base SDXL UNet), got {unet_channels}")
    out_dir = Path(out_dir)
    recipe = {"unet_channels": unet_channels, "seed": seed}
    if out_dir.exists():
        marker = out_dir / TINY_MODEL_MARKER
        try:
            if json.loads(marker.read_text()) == recipe:
                return out_dir
        except (OSError, ValueError):  # no marker, or not ours
            pass
        raise ModelLoadError(f"{out_dir} already exists and is not a tiny model built with {recipe}; "
                             "choose another folder or delete it")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        with torch.random.fork_rng():  # leave the caller's global RNG alone
            torch.manual_seed(seed)
            tokenizer = local_tokenizer(tmp / "tokenizer-src")
            text_config = _text_config(tokenizer)
            pipe = StableDiffusionXLInpaintPipeline(
                vae=_vae(),
                text_encoder=CLIPTextModel(text_config),
                text_encoder_2=CLIPTextModelWithProjection(text_config),
                tokenizer=tokenizer,
                tokenizer_2=tokenizer,
                unet=_unet(unet_channels),
                scheduler=sdxl_scheduler(),
                add_watermarker=False,
            )
        model_dir = tmp / "model"
        pipe.save_pretrained(model_dir, safe_serialization=True)
        (model_dir / TINY_MODEL_MARKER).write_text(json.dumps(recipe))
        try:
            os.rename(model_dir, out_dir)
        except OSError:  # another process (a second Ray actor) finished first: use its copy
            if not is_tiny_model(out_dir):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def build_reserved_model() -> Path:
    """Build the model behind `engine.model: testing/tiny-random` where the loader looks for it."""
    return build_tiny_model(reserved_model_dir())
