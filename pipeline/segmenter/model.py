"""The reference segmentation model: a U-Net (segmentation_models_pytorch) on a pretrained encoder,
and its safetensors checkpoints.

Encoders `efficientnet-lite0` / `efficientnet-lite2` get the offline ImageNet weights of
`pipeline.core.backbones` (smp reaches timm's architecture as `tu-efficientnet_lite0/2`). Any other
smp encoder name works with `weights` = an smp weight name (downloaded by smp where a network allows)
or a local state-dict file of the encoder (`.safetensors`, or `.pt`/`.pth` loaded with weights_only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from pipeline.core.backbones import LITE_NAMES, lite_state_dict, timm_architecture
from pipeline.core.lineage import ImageKeys
from pipeline.errors import PolypSynthError, TrainError, validation_summary

DEFAULT_ENCODER = "efficientnet-lite0"
_METADATA_KEY = "polyp_synth"


def smp_encoder_name(encoder: str) -> str:
    """smp's name of an encoder: the offline Lite encoders are timm models (`tu-…`)."""
    return f"tu-{timm_architecture(encoder)}" if encoder in LITE_NAMES else encoder


def _encoder_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def build_unet(encoder: str = DEFAULT_ENCODER, weights: str | None = "imagenet") -> smp.Unet:
    """A one-class U-Net; `weights=None` leaves the encoder randomly initialised (to load a checkpoint)."""
    name = smp_encoder_name(encoder)
    remote = weights if (encoder not in LITE_NAMES and weights and not Path(weights).is_file()) else None
    try:
        model = smp.Unet(encoder_name=name, encoder_weights=remote, classes=1)
    except (KeyError, ValueError) as exc:
        raise TrainError(f"--encoder {encoder}: not an smp encoder ({exc})") from None
    except (OSError, RuntimeError) as exc:  # weights that cannot be downloaded here
        raise TrainError(f"--encoder {encoder}: weights {weights!r} not at hand ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); give a local state-dict file") from None
    if weights is None or remote:
        return model
    if encoder in LITE_NAMES:
        if weights != "imagenet":
            raise TrainError(f"--encoder {encoder}: only its offline 'imagenet' weights are known (got {weights!r})")
        state = lite_state_dict(encoder)
    else:
        state = _encoder_state(Path(weights))
    target = model.encoder.model if hasattr(model.encoder, "model") else model.encoder
    # torch's own method: some smp encoders override it and return nothing; the classifier head has no place here
    missing, _ = torch.nn.Module.load_state_dict(target, state, strict=False)
    if missing:
        raise TrainError(f"{weights}: does not fit encoder {encoder} (missing {', '.join(missing[:3])})")
    return model


class HoldoutRecord(BaseModel):
    """The checkpoint's own IoU on held-out real images: what the gate's label check expects of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str  # the held-out set, as given (DIR[:SPLIT])
    n: int
    iou_mean: float
    iou_p10: float  # 90 % of the held-out real images reach this IoU


class TrainRecord(BaseModel):
    """What a checkpoint was trained on and how: stored in its safetensors metadata."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    encoder: str
    size: int
    seed: int
    epochs: int  # epochs begun (the last batch may reach into one more)
    steps: int  # optimizer steps, each a full batch
    samples_seen: int = 0  # steps × batch_size (0 in checkpoints made before it was recorded)
    batch_size: int
    lr: float
    ratio: float
    real: list[str]  # data specs
    synthetic: list[str]
    real_ids: list[str]  # every real image the model saw: fairness of comparisons is checkable
    synthetic_samples: int
    epoch_losses: list[float]
    seconds: float
    device: str
    pipeline_version: str
    holdout: HoldoutRecord | None = None  # with `train --holdout`
    images: ImageKeys | None = None  # every real image it trained or was calibrated on (SHA-256 → id)


def save_checkpoint(model: torch.nn.Module, record: TrainRecord, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    tmp = path.with_name(f".tmp-{path.name}")
    save_file(state, tmp, metadata={_METADATA_KEY: record.model_dump_json()})
    tmp.replace(path)
    return path


def read_record(path: str | Path) -> TrainRecord:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata: dict[str, Any] = handle.metadata() or {}
        return TrainRecord.model_validate(json.loads(metadata[_METADATA_KEY]))
    except FileNotFoundError:
        raise TrainError(f"{path}: no such checkpoint") from None
    except ValidationError as exc:
        raise TrainError(f"{path}: not a polyp-synth segmentation checkpoint ({validation_summary(exc)})") from None
    except (KeyError, ValueError, OSError, SafetensorError) as exc:
        raise TrainError(f"{path}: not a polyp-synth segmentation checkpoint ({exc})") from None


def load_checkpoint(path: str | Path) -> tuple[smp.Unet, TrainRecord]:
    """The trained model (eval mode, CPU) and its record."""
    record = read_record(path)
    try:
        model = build_unet(record.encoder, weights=None)
        model.load_state_dict(load_file(str(path)))
    except (RuntimeError, PolypSynthError) as exc:
        raise TrainError(f"{path}: weights do not fit a U-Net on {record.encoder} ({exc})") from None
    return model.eval(), record
