"""Floating-point work of one SDXL inpainting sample, counted on the real architecture.

`torch.utils.flop_counter.FlopCounterMode` counts every matmul, convolution and attention of one
forward pass; the modules are rebuilt from their configs on the meta device, so nothing is allocated
and any architecture (the full-size one, the tiny test one) is counted the same way:

    per sample = steps_run · UNet(batch 2 with CFG, else 1) + 2 · VAE encoder + VAE decoder

(the inpainting pipeline encodes the frame, for its starting latents, and the masked frame, for the
UNet's extra channels; the 9-channel UNet sees both). Text encoders run once per sample and add
under 0.1%: left out. With the full-size architecture at 1024², 30 steps and CFG this is 13.5 TFLOP per
UNet call and 426 TFLOP per sample.

    python bench/sdxl_flops.py                      # full-size architecture, 1024², 768², 512²
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class SampleFlops:
    """FLOPs of one sample at one working side."""

    side: int
    unet_call: int  # one UNet call (both CFG halves when guided)
    vae_encode: int
    vae_decode: int

    def total(self, steps: int) -> int:
        return steps * self.unet_call + 2 * self.vae_encode + self.vae_decode


def _count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@functools.lru_cache(maxsize=None)
def _meta_models(unet_config: tuple, vae_config: tuple) -> tuple[UNet2DConditionModel, AutoencoderKL]:
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(dict(unet_config)), AutoencoderKL.from_config(dict(vae_config))


def _frozen(config) -> tuple:
    """A hashable copy of a diffusers config (lists become tuples)."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in dict(config).items()))


@functools.lru_cache(maxsize=None)
def _sample_flops(unet_config: tuple, vae_config: tuple, side: int, guided: bool) -> SampleFlops:
    unet, vae = _meta_models(unet_config, vae_config)
    c = unet.config
    latent = side // 2 ** (len(vae.config.block_out_channels) - 1)
    batch = 2 if guided else 1
    time_ids = 6
    with torch.device("meta"):
        sample = torch.empty(batch, c.in_channels, latent, latent)
        timestep = torch.empty(batch)
        text = torch.empty(batch, 77, c.cross_attention_dim)
        added = {"text_embeds": torch.empty(batch, c.projection_class_embeddings_input_dim
                                            - time_ids * c.addition_time_embed_dim),
                 "time_ids": torch.empty(batch, time_ids)}
        image = torch.empty(1, 3, side, side)
        latents = torch.empty(1, vae.config.latent_channels, latent, latent)
    return SampleFlops(
        side=side,
        unet_call=_count(lambda: unet(sample, timestep, encoder_hidden_states=text, added_cond_kwargs=added)),
        vae_encode=_count(lambda: vae.encode(image)),
        vae_decode=_count(lambda: vae.decode(latents)),
    )


def sample_flops(unet_config, vae_config, side: int, guided: bool = True) -> SampleFlops:
    """FLOPs of one sample at `side`² for the UNet and VAE with these configs (cached per side)."""
    return _sample_flops(_frozen(unet_config), _frozen(vae_config), side, guided)


def full_size_configs():
    """The configs of SDXL inpainting's UNet and VAE (`build_sdxl_random.py`'s shapes)."""
    from pipeline.tools.sdxl_shapes import unet, vae

    with torch.device("meta"):
        return unet().config, vae().config


def steps_run(steps: int, strength: float) -> int:
    """Denoising steps the img2img/inpainting pipeline runs: int(steps · strength) (diffusers)."""
    return min(int(steps * strength), steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[1024, 768, 512])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    unet_config, vae_config = full_size_configs()
    print(f"{'side':>5} {'UNet/step (CFG)':>16} {'VAE enc':>8} {'VAE dec':>8} {f'{args.steps} steps':>10}")
    for side in args.sides:
        f = sample_flops(unet_config, vae_config, side)
        print(f"{side:>5} {f.unet_call / 1e12:>12.2f} TF {f.vae_encode / 1e12:>5.2f} TF {f.vae_decode / 1e12:>5.2f} TF"
              f" {f.total(args.steps) / 1e12:>7.1f} TF")


if __name__ == "__main__":
    main()
