"""PyTorch datasets of image–mask pairs: real folders, exports and shards, real and synthetic mixed.

`PairStream` is an `IterableDataset`, so shards stream from object storage without a local copy. Each
epoch has one order of pairs, fixed by (seed, epoch); every (distributed rank, DataLoader worker)
takes one contiguous slice of it, so together they yield every pair exactly once: no overlap, no
loss (ranks may differ by one pair). Shuffling permutes whole Parquet files, then rows inside each,
so a slice reads each of its files once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import albumentations as A
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.core.digests import seed_from
from pipeline.core.images import resize_image, resize_mask
from pipeline.data.sources import PairRef, read_pairs


@dataclass(frozen=True)
class Sample:
    image: torch.Tensor  # float32 (3, H, W) in [-1, 1]: x / 127.5 − 1, as the Lite encoders were trained
    mask: torch.Tensor  # float32 (1, H, W) in {0, 1}
    sample_id: str


def train_transform(size: int) -> A.Compose:
    """The usual segmentation recipe: resize, flips, 90° rotations, small affine, colour jitter."""
    return A.Compose([
        A.Resize(size, size),
        A.HorizontalFlip(), A.VerticalFlip(), A.RandomRotate90(),
        A.Affine(scale=(0.9, 1.1), rotate=(-15, 15), p=0.5),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.8),
    ])


def eval_transform(size: int) -> A.Compose:
    return A.Compose([A.Resize(size, size)])


def to_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 HxWx3 image and {0,255} HxW mask → (3,H,W) in [-1, 1] and (1,H,W) in {0, 1}."""
    image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 127.5 - 1.0
    mask_t = torch.from_numpy(np.ascontiguousarray(mask > 0)).float()[None]
    return image_t, mask_t


def partition(total: int, parts: int, part: int) -> slice:
    """The `part`-th of `parts` contiguous slices of range(total): sizes differ by at most one and
    together they cover it exactly: [part·total // parts, (part+1)·total // parts)."""
    return slice(part * total // parts, (part + 1) * total // parts)


def _shuffled(refs: list[PairRef], rng: np.random.Generator) -> list[PairRef]:
    """Blocks of consecutive refs from one source file in random order, each block shuffled inside."""
    blocks: list[list[PairRef]] = []
    for ref in refs:
        if blocks and ref.mask is None and blocks[-1][-1].mask is None and blocks[-1][-1].source == ref.source:
            blocks[-1].append(ref)
        else:
            blocks.append([ref])
    order = rng.permutation(len(blocks))
    return [blocks[b][i] for b in order for i in rng.permutation(len(blocks[b]))]


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class PairStream(IterableDataset):
    """Image–mask tensors of `real` pairs, plus `round(ratio · len(real))` of `synthetic` per epoch
    (a fresh draw each epoch; cycled when there are fewer). Call `set_epoch` before each epoch.

    `cache_size`: keep each pair, decoded and resized to that square size, in memory (per process)
    after its first read — for transforms that begin by resizing to it, the same pixels at a fraction
    of the cost (a 1920×1072 JPEG decodes in tens of ms). Use it with in-process loading (no workers)."""

    def __init__(self, real: list[PairRef], transform: Callable[..., dict] | None, *,
                 synthetic: list[PairRef] = (), ratio: float = 0.0, seed: int = 0, shuffle: bool = True,
                 rank: int | None = None, world_size: int | None = None, cache_size: int | None = None):
        self.real, self.synthetic, self.ratio = list(real), list(synthetic), ratio
        if ratio > 0 and not self.synthetic:
            raise ValueError("a synthetic ratio above 0 needs synthetic pairs")
        self.transform, self.seed, self.shuffle = transform, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.cache_size = cache_size
        self._cache: dict[PairRef, tuple[np.ndarray, np.ndarray]] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def synthetic_per_epoch(self) -> int:
        return round(self.ratio * len(self.real)) if self.synthetic else 0

    def __len__(self) -> int:
        """Pairs per epoch over all ranks and workers."""
        return len(self.real) + self.synthetic_per_epoch

    def epoch_refs(self) -> list[PairRef]:
        """This epoch's pairs, in this epoch's order (the same in every rank and worker)."""
        rng = np.random.default_rng(seed_from(f"pairs/{self.seed}/{self.epoch}"))
        extra: list[PairRef] = []
        if self.synthetic_per_epoch:
            cycles = -(-self.synthetic_per_epoch // len(self.synthetic))
            draw = np.concatenate([rng.permutation(len(self.synthetic)) for _ in range(cycles)])
            extra = [self.synthetic[i] for i in sorted(draw[: self.synthetic_per_epoch])]
        refs = self.real + extra
        return _shuffled(refs, rng) if self.shuffle else refs

    def __iter__(self) -> Iterator[Sample]:
        rank, world = _rank_and_world(self.rank, self.world_size)
        worker = get_worker_info()
        workers, index = (worker.num_workers, worker.id) if worker else (1, 0)
        part = rank * workers + index
        mine = self.epoch_refs()[partition(len(self), world * workers, part)]
        if self.transform is not None and hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(seed_from(f"augment/{self.seed}/{self.epoch}/{part}") % 2**32)
        for ref, image, mask in self._pairs(mine):
            if self.transform is not None:
                out = self.transform(image=image, mask=mask)
                image, mask = out["image"], out["mask"]
            image_t, mask_t = to_tensors(image, mask)
            yield Sample(image_t, mask_t, ref.sample_id)

    def _pairs(self, refs: list[PairRef]) -> Iterator[tuple[PairRef, np.ndarray, np.ndarray]]:
        if self.cache_size is None:
            yield from read_pairs(refs)
            return
        size = (self.cache_size, self.cache_size)
        for ref, image, mask in read_pairs([ref for ref in refs if ref not in self._cache]):
            self._cache[ref] = resize_image(image, size), resize_mask(mask, size)
        for ref in refs:
            yield (ref, *self._cache[ref])


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # (N, 3, H, W)
    masks: torch.Tensor  # (N, 1, H, W)
    sample_ids: list[str]


def collate(samples: list[Sample]) -> Batch:
    """DataLoader `collate_fn` for `Sample`s."""
    return Batch(torch.stack([s.image for s in samples]), torch.stack([s.mask for s in samples]),
                 [s.sample_id for s in samples])
