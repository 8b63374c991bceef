"""Torch devices as users name them: `auto` is the GPU when there is one, else the CPU; `cpu`,
`cuda`, `cuda:N`. One definition for the engine, the gate's networks and the trainer."""

from __future__ import annotations

import torch

from pipeline.errors import ConfigError, PolypSynthError


def resolve_device(name: str, field: str = "device", error: type[PolypSynthError] = ConfigError) -> torch.device:
    """The device `name` means; a one-line `error` naming `field` when it is not a device, or is a GPU
    this machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise error(f"{field}: {name!r} is not a torch device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise error(f"{field}: {name!r} asked for, but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise error(f"{field}: {name!r} asked for, but this machine has {torch.cuda.device_count()} GPU(s)")
    return device
