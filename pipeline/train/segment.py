"""The reference trainer: the usual polyp-segmentation recipe, so that what it measures about a
synthetic set is what other trainers would see.

U-Net on a pretrained encoder, Dice + BCE (smp's Dice loss, torch's BCE), AdamW, a cosine schedule
stepped per optimizer step, flips/rotations/affine/colour jitter (albumentations). The budget is
`epochs` over real + synthetic pairs, or a fixed number of optimizer `steps` (for comparisons at equal
compute). Deterministic for a seed on one device: the decoder's init, the epoch orders and the
augmentations all derive from it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import DataLoader

from pipeline import __version__
from pipeline.core.progress import ProgressReporter
from pipeline.data.dataset import PairStream, collate, train_transform
from pipeline.data.sources import PairRef
from pipeline.errors import TrainError
from pipeline.train.model import (
    DEFAULT_ENCODER,
    TrainRecord,
    build_unet,
    save_checkpoint,
)

log = logging.getLogger(__name__)


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise TrainError(f"--device {name!r}: not a torch device (cpu, cuda, cuda:1, …)") from None


def train(real: list[PairRef], settings: TrainSettings, out: str | Path, synthetic: list[PairRef] = (),
          real_specs: list[str] = (), synthetic_specs: list[str] = ()) -> TrainResult:
    """Train on `real` (+ `synthetic` at `settings.ratio`) and write a safetensors checkpoint to `out`."""
    if not real:
        raise TrainError("no real training pairs")
    if settings.ratio > 0 and not synthetic:
        raise TrainError(f"--ratio {settings.ratio} needs --synthetic data")
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    model = build_unet(settings.encoder, settings.encoder_weights).to(device)
    data = PairStream(real, train_transform(settings.size), synthetic=synthetic, ratio=settings.ratio,
                      seed=settings.seed, cache_size=settings.size if settings.workers == 0 else None)
    per_epoch = math.ceil(len(data) / settings.batch_size)
    total = settings.steps or settings.epochs * per_epoch
    loader = DataLoader(data, batch_size=settings.batch_size, num_workers=settings.workers, collate_fn=collate)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    dice = smp.losses.DiceLoss(smp.losses.BINARY_MODE, from_logits=True)
    bce = torch.nn.BCEWithLogitsLoss()

    start, step, epoch, epoch_losses = time.monotonic(), 0, 0, []
    model.train()
    with ProgressReporter(f"train {settings.encoder} {settings.size}²", total, "steps") as progress:
        while step < total:
            data.set_epoch(epoch)
            losses = []
            for batch in loader:
                images, masks = batch.images.to(device), batch.masks.to(device)
                logits = model(images)
                loss = dice(logits, masks) + bce(logits, masks)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                step += 1
                progress.update(extra=f"epoch {epoch + 1}, loss {loss.item():.3f}")
                if step >= total:
                    break
            epoch_losses.append(float(sum(losses) / max(len(losses), 1)))
            log.debug("epoch %d: mean loss %.4f", epoch + 1, epoch_losses[-1])
            epoch += 1
    record = TrainRecord(
        encoder=settings.encoder, size=settings.size, seed=settings.seed, epochs=epoch, steps=step,
        batch_size=settings.batch_size, lr=settings.lr, ratio=settings.ratio, real=list(real_specs),
        synthetic=list(synthetic_specs), real_ids=sorted(ref.sample_id for ref in real),
        synthetic_samples=data.synthetic_per_epoch, epoch_losses=epoch_losses,
        seconds=round(time.monotonic() - start, 1), device=str(device), pipeline_version=__version__,
    )
    return TrainResult(save_checkpoint(model.cpu(), record, out), record)
