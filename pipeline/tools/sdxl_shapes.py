"""The full-size SDXL inpainting architecture (`diffusers/stable-diffusion-xl-1.0-inpainting-0.1`):
2.6 B-parameter UNet with 9 input channels, CLIP ViT-L and OpenCLIP ViT-bigG text encoders, the 8x
VAE. Built with random weights by the benchmarks (`bench/build_sdxl_random.py`) and on fake tensors
by the memory planner, where the real checkpoint cannot be read."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

VOCAB_SIZE = 49408


@contextlib.contextmanager
def parameters_in(dtype: torch.dtype) -> Iterator[None]:
    """Modules built inside make their parameters in `dtype`: half the memory of fp32 then a cast."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(default)


def text_encoders(vocab_size: int = VOCAB_SIZE) -> tuple[CLIPTextModel, CLIPTextModelWithProjection]:
    common = {"vocab_size": vocab_size, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 2}
    clip_l = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                            projection_dim=768, hidden_act="quick_gelu", **common)
    clip_g = CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                            projection_dim=1280, hidden_act="gelu", **common)
    return CLIPTextModel(clip_l), CLIPTextModelWithProjection(clip_g)


def unet(in_channels: int = 9) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        in_channels=in_channels, out_channels=4, sample_size=128,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    )


def vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2, sample_size=1024, scaling_factor=0.13025,
    )
