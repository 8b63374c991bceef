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
from diffusers import StableDiffusionXLInpaintPipeline

from pipeline.tools.sdxl_shapes import parameters_in, text_encoders, unet, vae
from pipeline.tools.tiny_model import local_tokenizer, sdxl_scheduler


def build(out_dir: Path, dtype: torch.dtype, device: str, vae_out: Path | None = None) -> Path:
    """Save the pipeline to `out_dir` (and, with `vae_out`, a separate VAE folder as the fp16-fix
    VAE is used). Parameters are made in `dtype` directly."""
    with parameters_in(dtype), tempfile.TemporaryDirectory() as tmp, torch.device(device):
        tokenizer = local_tokenizer(Path(tmp) / "tokenizer")
        encoder, encoder_2 = text_encoders()
        pipe = StableDiffusionXLInpaintPipeline(
            vae=vae(), text_encoder=encoder, text_encoder_2=encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer,
            unet=unet(), scheduler=sdxl_scheduler(), add_watermarker=False,
        )
        pipe.save_pretrained(out_dir, safe_serialization=True)
        if vae_out is not None:
            vae().save_pretrained(vae_out, safe_serialization=True)
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
                                                                      text_encoders())):
                print(f"{name:<15} {sum(p.numel() for p in model.parameters()) / 1e9:.3f} B parameters")
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(build(args.out_dir, getattr(torch, args.dtype), device, args.vae_out))


if __name__ == "__main__":
    main()
