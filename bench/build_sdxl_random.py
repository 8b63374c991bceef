"""Full-size SDXL inpainting architecture with random weights, saved as a diffusers pipeline.

No weights can be downloaded where benchmarks run, and the arithmetic of a denoising step does not
depend on the values of the weights, so GPU benchmarks time this model: the shapes of
`diffusers/stable-diffusion-xl-1.0-inpainting-0.1` (2.6 B-parameter UNet with 9 input channels,
CLIP ViT-L and OpenCLIP ViT-bigG text encoders, the 8x VAE), loaded by the engine through the same
`from_pretrained` path as the real checkpoint.

    python bench/build_sdxl_random.py /tmp/sdxl-random            # on a GPU: built there in seconds
    python bench/build_sdxl_random.py /tmp/sdxl --vae-out /tmp/vae # and a separate VAE (engine.vae)
    python bench/build_sdxl_random.py --count-only                 # parameter counts, no memory used
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    StableDiffusionXLInpaintPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from pipeline.tools.tiny_model import local_tokenizer, sdxl_scheduler


def text_encoders(vocab_size: int) -> tuple[CLIPTextModel, CLIPTextModelWithProjection]:
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


def build(out_dir: Path, dtype: torch.dtype, device: str, vae_out: Path | None = None) -> Path:
    """Save the pipeline to `out_dir` (and, with `vae_out`, a separate VAE folder as the fp16-fix
    VAE is used). Parameters are made in `dtype` directly: half the memory of fp32 then a cast."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with tempfile.TemporaryDirectory() as tmp, torch.device(device):
            tokenizer = local_tokenizer(Path(tmp) / "tokenizer")
            encoder, encoder_2 = text_encoders(49408)
            pipe = StableDiffusionXLInpaintPipeline(
                vae=vae(), text_encoder=encoder, text_encoder_2=encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer,
                unet=unet(), scheduler=sdxl_scheduler(), add_watermarker=False,
            )
            pipe.save_pretrained(out_dir, safe_serialization=True)
            if vae_out is not None:
                vae().save_pretrained(vae_out, safe_serialization=True)
    finally:
        torch.set_default_dtype(default)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", type=Path)
    parser.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    parser.add_argument("--vae-out", type=Path, help="also save a separate VAE folder here (for `engine.vae`)")
    parser.add_argument("--count-only", action="store_true", help="print parameter counts (meta device)")
    args = parser.parse_args()
    if args.count_only:
        with torch.device("meta"):
            for name, model in (("unet", unet()), ("vae", vae()), *zip(("text_encoder", "text_encoder_2"),
                                                                      text_encoders(49408))):
                print(f"{name:<15} {sum(p.numel() for p in model.parameters()) / 1e9:.3f} B parameters")
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(build(args.out_dir, getattr(torch, args.dtype), device, args.vae_out))


if __name__ == "__main__":
    main()
