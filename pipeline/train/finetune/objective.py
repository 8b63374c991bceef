"""The inpainting objective of SDXL's 9-channel UNet, as pure tensor maths.

The UNet sees [noisy latents | repaint mask | latents of the image with the region erased] and
predicts the noise (ε) or the velocity v = √ᾱ·ε − √(1−ᾱ)·x₀ of the noisy latents; which one is
the base model's scheduler's `prediction_type`, so the LoRA predicts what the engine's sampler expects.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr


def unet_input(noisy_latents: torch.Tensor, mask: torch.Tensor, masked_latents: torch.Tensor) -> torch.Tensor:
    """The 9 input channels, in the order the inpainting pipeline concatenates them."""
    return torch.cat([noisy_latents, mask, masked_latents], dim=1)


def training_target(scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor,
                    timesteps: torch.Tensor) -> torch.Tensor:
    """ε for an epsilon model; v = √ᾱ_t·ε − √(1−ᾱ_t)·x₀ for a v-prediction model."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"scheduler prediction_type {kind!r}: fine-tuning supports epsilon and v_prediction")


def min_snr_weights(snr: torch.Tensor, gamma: float | None, prediction_type: str) -> torch.Tensor:
    """Per-sample loss weights of min-SNR-γ (Hang et al. 2023, arXiv:2303.09556).

    With SNR_t = ᾱ_t / (1 − ᾱ_t): w = min(SNR_t, γ) / SNR_t for an ε target and
    w = min(SNR_t, γ) / (SNR_t + 1) for a v target (the ε loss is SNR⁻¹ times the x₀ loss, the v loss
    (SNR + 1)⁻¹ times it, and min-SNR clips the x₀ weight at γ). No γ: w = 1.
    """
    if gamma is None:
        return torch.ones_like(snr)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


def weighted_mse(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """mean_i w_i · mean(‖prediction_i − target_i‖²), computed in float32."""
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weights).mean()


def inpainting_loss(scheduler: DDPMScheduler, prediction: torch.Tensor, latents: torch.Tensor,
                    noise: torch.Tensor, timesteps: torch.Tensor, snr_gamma: float | None) -> torch.Tensor:
    """The loss of one batch: min-SNR weighted MSE against the scheduler's target."""
    weights = min_snr_weights(compute_snr(scheduler, timesteps), snr_gamma, scheduler.config.prediction_type)
    return weighted_mse(prediction, training_target(scheduler, latents, noise, timesteps), weights)
