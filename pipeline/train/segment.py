"""The reference trainer: the usual polyp-segmentation recipe, so that what it measures about a
synthetic set is what other trainers would see.

U-Net on a pretrained encoder, Dice + BCE (smp's Dice loss, torch's BCE), AdamW, a cosine schedule
stepped per optimizer step, flips/rotations/affine/colour jitter (albumentations). The budget is a
number of optimizer steps, each a *full* batch at the arm's real:synthetic mix (`TrainBatches`):
`steps`, or `epochs` turned into steps by `steps_for` (rounded up to whole batches; the last batch
is completed from the next epoch's order). Samples seen are always steps × batch size, so two arms
with the same steps have seen the same number of samples. Deterministic for a seed on one device:
the decoder's init, the epoch orders and every batch's augmentation derive from it, whatever the
number of DataLoader workers; on a GPU, deterministic kernels are asked for where torch has them.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import DataLoader

from pipeline import __version__
from pipeline.core.devices import resolve_device
from pipeline.core.progress import ProgressReporter
from pipeline.data.dataset import TrainBatches, synthetic_count, train_transform
from pipeline.data.sources import PairRef, fingerprint, read_pairs
from pipeline.errors import DataError, TrainError
from pipeline.segmenter.metrics import segment_metrics
from pipeline.segmenter.model import (
    DEFAULT_ENCODER,
    HoldoutRecord,
    TrainRecord,
    build_unet,
    save_checkpoint,
)
from pipeline.segmenter.predict import predict


class TrainSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    encoder: str = DEFAULT_ENCODER
    encoder_weights: str | None = "imagenet"
    size: int = Field(352, gt=0, multiple_of=32)
    epochs: int = Field(20, gt=0)
    steps: int | None = Field(None, gt=0, description="total optimizer steps; overrides epochs")
    batch_size: int = Field(8, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    ratio: float = Field(0.0, ge=0, description="synthetic pairs per real pair in each epoch")
    seed: int = 0
    workers: int = Field(0, ge=0)
    device: str = "auto"


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    record: TrainRecord


BATCH_RULE = ("every step is a full batch at the arm's real:synthetic ratio (± 1 pair); steps at equal epochs = "
              "⌈epochs · (real + synthetic per epoch) / batch size⌉; samples seen = steps × batch size")
"""The budget rule, as the experiment's table states it."""


def steps_for(epochs: int, real: int, ratio: float, batch_size: int, synthetic_available: int) -> int:
    """Optimizer steps of `epochs` passes over `real` pairs plus round(ratio · real) synthetic ones an
    epoch: ⌈epochs · (real + synthetic) / batch_size⌉ (full batches only)."""
    per_epoch = real + synthetic_count(real, ratio, synthetic_available)
    return math.ceil(epochs * per_epoch / batch_size)


def _deterministic(device: torch.device) -> None:
    """Ask for deterministic kernels on a GPU (a warning where an op has none): same seed, same model."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.use_deterministic_algorithms(True, warn_only=True)


def holdout_record(model: torch.nn.Module, refs: list[PairRef], spec: str, size: int, device: torch.device) -> HoldoutRecord:
    """The model's IoU on held-out real pairs (at their own size): mean and 10th percentile."""
    model.eval()
    ious = [segment_metrics(predict(model, image, size, device), mask > 0).iou for _, image, mask in read_pairs(refs)]
    return HoldoutRecord(data=spec, n=len(ious), iou_mean=float(np.mean(ious)), iou_p10=float(np.percentile(ious, 10)))


def train(real: list[PairRef], settings: TrainSettings, out: str | Path, synthetic: list[PairRef] = (),
          real_specs: list[str] = (), synthetic_specs: list[str] = (), holdout: list[PairRef] = (),
          holdout_spec: str = "") -> TrainResult:
    """Train on `real` (+ `synthetic` at `settings.ratio`) and write a safetensors checkpoint to `out`;
    with `holdout` (real pairs it never saw), record its IoU on them in the checkpoint."""
    if not real:
        raise TrainError("no real training pairs")
    real_keys, holdout_keys = fingerprint(real).keys, fingerprint(list(holdout)).keys
    seen = holdout_keys.shared_with(real_keys)
    if seen:
        raise TrainError(f"--holdout {holdout_spec}: {len(seen)} of its images are training images (e.g. {seen[0]})")
    if settings.ratio > 0 and not synthetic:
        raise TrainError(f"--ratio {settings.ratio} needs --synthetic data")
    device = resolve_device(settings.device, "--device", TrainError)
    _deterministic(device)
    torch.manual_seed(settings.seed)
    model = build_unet(settings.encoder, settings.encoder_weights).to(device)
    total = settings.steps or steps_for(settings.epochs, len(real), settings.ratio, settings.batch_size, len(synthetic))
    data = TrainBatches(real, train_transform(settings.size), batch_size=settings.batch_size, steps=total,
                        synthetic=synthetic, ratio=settings.ratio, seed=settings.seed,
                        cache_size=settings.size if settings.workers == 0 else None)
    data.warm()
    loader = DataLoader(data, batch_size=None, num_workers=settings.workers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    dice = smp.losses.DiceLoss(smp.losses.BINARY_MODE, from_logits=True)
    bce = torch.nn.BCEWithLogitsLoss()

    start, step, losses = time.monotonic(), 0, {}
    model.train()
    with ProgressReporter(f"train {settings.encoder} {settings.size}²", total, "steps") as progress:
        for batch in loader:
            if isinstance(batch, TrainBatches.Failure):
                raise DataError(batch.message)
            if batch.index != step:
                raise TrainError(f"batch {batch.index} arrived as step {step}: the loader broke the batch order")
            images, masks = batch.images.to(device), batch.masks.to(device)
            logits = model(images)
            loss = dice(logits, masks) + bce(logits, masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            epoch = data.epoch_of(step)
            losses.setdefault(epoch, []).append(loss.item())
            step += 1
            progress.update(extra=f"epoch {epoch + 1}, loss {loss.item():.3f}")
    epoch_losses = [float(sum(values) / len(values)) for _, values in sorted(losses.items())]
    record = TrainRecord(
        encoder=settings.encoder, size=settings.size, seed=settings.seed, epochs=len(epoch_losses), steps=step,
        samples_seen=step * settings.batch_size,
        batch_size=settings.batch_size, lr=settings.lr, ratio=settings.ratio, real=list(real_specs),
        synthetic=list(synthetic_specs), real_ids=sorted(ref.sample_id for ref in real),
        synthetic_samples=data.synthetic_per_epoch, epoch_losses=epoch_losses,
        seconds=round(time.monotonic() - start, 1), device=str(device), pipeline_version=__version__,
        holdout=holdout_record(model, list(holdout), holdout_spec, settings.size, device) if holdout else None,
        images=real_keys | holdout_keys,
    )
    return TrainResult(save_checkpoint(model.cpu(), record, out), record)
