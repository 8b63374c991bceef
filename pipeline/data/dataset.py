"""PyTorch datasets of image–mask pairs: real folders, exports and shards, real and synthetic mixed.

Both are `IterableDataset`s, so shards stream from object storage without a local copy.

- `PairStream`: every pair once per epoch (plus the epoch's synthetic draw), for evaluation and for
  trainers of your own. Every (distributed rank, DataLoader worker) takes one contiguous slice of
  the epoch's order, so together they yield every pair exactly once (ranks may differ by one pair).
- `TrainBatches`: what the reference trainer reads: whole batches, a fixed number of them, each
  holding real and synthetic pairs at the ratio (± 1 pair) whatever the files look like, so two
  arms of an experiment differ in their data only, never in how it was mixed or how many samples
  they saw. Batches are dealt round-robin to ranks and workers: the sequence, and every batch's
  augmentation, is the same with any number of workers.

An epoch's order (`epoch_order`) shuffles real and synthetic pairs separately and interleaves them
evenly. Synthetic pairs are shuffled by blocks (whole Parquet files in random order, rows shuffled
inside each), so a worker reads each file once per run of batches instead of once per row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import albumentations as A
import numpy as np
import torch
from albumentations.core.composition import BaseCompose
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.core.digests import seed_from
from pipeline.core.progress import progress_bar
from pipeline.data.sources import PairRef, TableCache, read_pairs
from pipeline.errors import PolypSynthError, TrainError
from pipeline.segmenter.predict import model_resize, to_tensors

Transform = Callable[..., dict]


@dataclass(frozen=True)
class Sample:
    image: torch.Tensor  # float32 (3, H, W) in [-1, 1]: x / 127.5 − 1, as the Lite encoders were trained
    mask: torch.Tensor  # float32 (1, H, W) in {0, 1}
    sample_id: str


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # (N, 3, H, W)
    masks: torch.Tensor  # (N, 1, H, W)
    sample_ids: list[str]
    index: int = -1  # position in the training sequence (TrainBatches); -1 elsewhere


def train_transform(size: int) -> A.Compose:
    """The usual segmentation recipe: resize (as the model sees every image), flips, 90° rotations,
    small affine, colour jitter. Seeded per sample (`seed_transform`)."""
    return A.Compose([
        model_resize(size),
        A.HorizontalFlip(), A.VerticalFlip(), A.RandomRotate90(),
        A.Affine(scale=(0.9, 1.1), rotate=(-15, 15), p=0.5),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.8),
    ])


def seed_transform(transform: Transform | None, seed: int) -> None:
    """Make the transform's next draws a function of `seed` alone, each of its transforms with a
    stream of its own: albumentations' `Compose.set_random_seed` gives every child the *same* seed,
    so a horizontal and a vertical flip (one draw each) would always agree and no image would ever
    be mirrored. A transform that cannot be seeded is refused: two runs of one seed would differ."""
    if transform is None:
        return
    if not hasattr(transform, "set_random_seed"):
        raise TrainError(f"{type(transform).__name__} cannot be seeded (albumentations ≥ 2.0 can): upgrade albumentations")
    transform.set_random_seed(seed % 2**32)
    if isinstance(transform, BaseCompose):
        for index, child in enumerate(transform.transforms):
            seed_transform(child, seed_from(f"{seed}/{index}"))


def partition(total: int, parts: int, part: int) -> slice:
    """The `part`-th of `parts` contiguous slices of range(total): sizes differ by at most one and
    together they cover it exactly: [part·total // parts, (part+1)·total // parts)."""
    return slice(part * total // parts, (part + 1) * total // parts)


def interleave(real: int, synthetic: int) -> np.ndarray:
    """Which positions of an epoch of `real + synthetic` pairs are synthetic (boolean mask): position
    k is iff ⌊(k+1)·s/n⌋ > ⌊k·s/n⌋, with s = synthetic and n = real + synthetic. Any B consecutive
    positions then hold ⌊B·s/n⌋ or ⌈B·s/n⌉ synthetic pairs, also across the boundary between two
    epochs (the pattern repeats exactly, since n·s/n is whole)."""
    n = real + synthetic
    k = np.arange(n)
    return ((k + 1) * synthetic // n) > (k * synthetic // n) if n else np.zeros(0, bool)


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


def synthetic_count(real: int, ratio: float, synthetic_available: int) -> int:
    """Synthetic pairs per epoch: round(ratio · real), none without synthetic data."""
    return round(ratio * real) if synthetic_available else 0


def epoch_order(real: list[PairRef], synthetic: list[PairRef], ratio: float, seed: int, epoch: int,
                shuffle: bool = True) -> list[PairRef]:
    """The pairs of one epoch, in order: every real pair once, and `synthetic_count` synthetic pairs (a
    fresh draw each epoch, cycled when there are fewer), spread evenly among them (`interleave`).
    The same for every rank and worker: a function of (seed, epoch) only. Real and synthetic pairs
    are drawn from streams of their own, so arms of one seed see the real pairs in the same order."""
    real_rng = np.random.default_rng(seed_from(f"real/{seed}/{epoch}"))
    synthetic_rng = np.random.default_rng(seed_from(f"synthetic/{seed}/{epoch}"))
    count = synthetic_count(len(real), ratio, len(synthetic))
    extra: list[PairRef] = []
    if count:
        cycles = -(-count // len(synthetic))
        draw = np.concatenate([synthetic_rng.permutation(len(synthetic)) for _ in range(cycles)])
        extra = [synthetic[i] for i in sorted(draw[:count])]
    if shuffle:
        real, extra = [real[i] for i in real_rng.permutation(len(real))], _shuffled(extra, synthetic_rng)
    real_iter, extra_iter = iter(real), iter(extra)
    return [next(extra_iter) if is_synthetic else next(real_iter) for is_synthetic in interleave(len(real), count)]


def _place(rank: int | None, world_size: int | None) -> tuple[int, int, int, int]:
    """(rank, world size, DataLoader worker, workers) of this process."""
    if rank is None or world_size is None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank, world_size = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
    worker = get_worker_info()
    return (rank, world_size, *((worker.id, worker.num_workers) if worker else (0, 1)))


def _part_and_parts(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """This process's place among every (rank, DataLoader worker) of the job."""
    rank, world, worker, workers = _place(rank, world_size)
    return rank * workers + worker, world * workers


def _my_batches(steps: int, rank: int | None, world_size: int | None) -> range:
    """The batches of this (rank, worker): batch k to rank k mod world, and on that rank to worker
    (k div world) mod workers, so a rank's batches do not depend on how many workers it has."""
    rank, world, worker, workers = _place(rank, world_size)
    return range(rank + world * worker, steps, world * workers)


class _PairSource:
    """Reads pairs, optionally keeping each decoded and resized to a square size in memory (per
    process) after its first read: for transforms that begin by resizing to it, the same pixels at a
    fraction of the cost (a 1920×1072 JPEG decodes in tens of ms). Use it with in-process loading."""

    def __init__(self, cache_size: int | None):
        self.cache_size = cache_size
        self._cache: dict[PairRef, tuple[np.ndarray, np.ndarray]] = {}
        self._tables = TableCache()

    def pairs(self, refs: list[PairRef]) -> Iterator[tuple[PairRef, np.ndarray, np.ndarray]]:
        if self.cache_size is None:
            yield from read_pairs(refs, self._tables)
            return
        self.warm(refs)
        for ref in refs:
            yield (ref, *self._cache[ref])

    def warm(self, refs: list[PairRef], description: str | None = None) -> None:
        """Read the pairs not yet cached, in file order (with a progress bar when `description`),
        resized as the model sees them (`model_resize`: the transforms' own first step)."""
        resize = model_resize(self.cache_size)
        missing = sorted({ref for ref in refs if ref not in self._cache}, key=lambda r: (r.source, r.row))
        pairs = read_pairs(missing, self._tables)
        if description:
            pairs = progress_bar(pairs, description, len(missing), unit="pairs")
        for ref, image, mask in pairs:
            out = resize(image=image, mask=mask)
            self._cache[ref] = out["image"], out["mask"]


def _samples(source: _PairSource, refs: list[PairRef], transform: Transform | None,
             seeds: list[int]) -> Iterator[Sample]:
    """Tensors of `refs`, each augmented with its own seed (`seeds`, one per ref)."""
    for (ref, image, mask), seed in zip(source.pairs(refs), seeds):
        if transform is not None:
            seed_transform(transform, seed)
            out = transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        image_t, mask_t = to_tensors(image, mask)
        yield Sample(image_t, mask_t, ref.sample_id)


def augment_seed(seed: int, epoch: int, ref: PairRef) -> int:
    """A pair's augmentation in an epoch: the same in every arm of a seed that trains on it, whatever
    batch or worker it falls in."""
    return seed_from(f"augment/{seed}/{epoch}/{ref.source}/{ref.row}")


class PairStream(IterableDataset):
    """Image–mask tensors of `real` pairs, plus `round(ratio · len(real))` of `synthetic` per epoch
    (`epoch_order`). Call `set_epoch` before each epoch. `cache_size`: see `_PairSource`."""

    def __init__(self, real: list[PairRef], transform: Transform | None, *,
                 synthetic: list[PairRef] = (), ratio: float = 0.0, seed: int = 0, shuffle: bool = True,
                 rank: int | None = None, world_size: int | None = None, cache_size: int | None = None):
        self.real, self.synthetic, self.ratio = list(real), list(synthetic), ratio
        if ratio > 0 and not self.synthetic:
            raise ValueError("a synthetic ratio above 0 needs synthetic pairs")
        self.transform, self.seed, self.shuffle = transform, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._source = _PairSource(cache_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def synthetic_per_epoch(self) -> int:
        return synthetic_count(len(self.real), self.ratio, len(self.synthetic))

    def __len__(self) -> int:
        """Pairs per epoch over all ranks and workers."""
        return len(self.real) + self.synthetic_per_epoch

    def epoch_refs(self) -> list[PairRef]:
        """This epoch's pairs, in this epoch's order (the same in every rank and worker)."""
        return epoch_order(self.real, self.synthetic, self.ratio, self.seed, self.epoch, self.shuffle)

    def __iter__(self) -> Iterator[Sample]:
        part, parts = _part_and_parts(self.rank, self.world_size)
        mine = self.epoch_refs()[partition(len(self), parts, part)]
        yield from _samples(self._source, mine, self.transform, [augment_seed(self.seed, self.epoch, r) for r in mine])


def collate(samples: list[Sample], index: int = -1) -> Batch:
    """DataLoader `collate_fn` for `Sample`s."""
    return Batch(torch.stack([s.image for s in samples]), torch.stack([s.mask for s in samples]),
                 [s.sample_id for s in samples], index)


class TrainBatches(IterableDataset):
    """`steps` whole batches of `batch_size` pairs, cut from the epochs of `epoch_order` laid end to end
    (a batch may finish one epoch and start the next), so every arm sees exactly steps × batch_size
    pairs, each batch at the ratio ± 1. Batches are dealt to ranks and DataLoader workers
    (`_my_batches`); with a DataLoader use `batch_size=None` (its round-robin over workers then
    yields batches 0, 1, 2, … in order). Each pair is augmented by (seed, epoch, pair): the same
    pixels with any number of workers, and in every arm of the seed. A pair that cannot be read
    stops training with one line naming it, from a worker process too (`TrainBatches.Failure`)."""

    @dataclass(frozen=True)
    class Failure:
        """What a worker yields instead of a batch when a pair cannot be read: the main process
        raises it as the one-line error it is (torch would wrap it in a worker traceback)."""

        message: str

    def __init__(self, real: list[PairRef], transform: Transform | None, *, batch_size: int, steps: int,
                 synthetic: list[PairRef] = (), ratio: float = 0.0, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None, cache_size: int | None = None):
        if ratio > 0 and not synthetic:
            raise ValueError("a synthetic ratio above 0 needs synthetic pairs")
        if not real or batch_size <= 0 or steps < 0:
            raise ValueError("TrainBatches needs real pairs, batch_size ≥ 1 and steps ≥ 0")
        self.real, self.synthetic, self.ratio = list(real), list(synthetic), ratio
        self.transform, self.batch_size, self.steps, self.seed = transform, batch_size, steps, seed
        self.rank, self.world_size = rank, world_size
        self._source = _PairSource(cache_size)

    @property
    def synthetic_per_epoch(self) -> int:
        return synthetic_count(len(self.real), self.ratio, len(self.synthetic))

    @property
    def epoch_length(self) -> int:
        return len(self.real) + self.synthetic_per_epoch

    def __len__(self) -> int:
        return self.steps

    def warm(self) -> None:
        """With the in-process cache: read every pair before the first step, so a broken file is one
        error naming it now, not after hours of training (the first epoch would read them anyway)."""
        if self._source.cache_size is not None:
            orders: dict[int, list[PairRef]] = {}
            drawn = {ref for index in range(self.steps) for _, ref in self.batch_refs(index, orders)}
            self._source.warm(list(set(self.real) | drawn), "reading training pairs")  # every real pair, the synthetic drawn

    def epoch_of(self, index: int) -> int:
        """The epoch batch `index` begins in."""
        return index * self.batch_size // self.epoch_length

    def batch_refs(self, index: int, orders: dict[int, list[PairRef]] | None = None) -> list[tuple[int, PairRef]]:
        """The (epoch, pair) of batch `index`: positions [index·B, (index+1)·B) of the epochs laid end
        to end. `orders` keeps the epoch orders computed so far (the last two) between calls."""
        orders = {} if orders is None else orders
        refs: list[tuple[int, PairRef]] = []
        position, n = index * self.batch_size, self.epoch_length
        while len(refs) < self.batch_size:
            epoch = position // n
            if epoch not in orders:
                for old in sorted(orders)[:-1]:
                    del orders[old]
                orders[epoch] = epoch_order(self.real, self.synthetic, self.ratio, self.seed, epoch)
            begin = position - epoch * n
            chunk = orders[epoch][begin:begin + self.batch_size - len(refs)]
            refs.extend((epoch, ref) for ref in chunk)
            position += len(chunk)
        return refs

    def __iter__(self) -> Iterator[Batch | TrainBatches.Failure]:
        orders: dict[int, list[PairRef]] = {}  # one epoch's order, computed once per process
        for index in _my_batches(self.steps, self.rank, self.world_size):
            placed = self.batch_refs(index, orders)
            refs = [ref for _, ref in placed]
            seeds = [augment_seed(self.seed, epoch, ref) for epoch, ref in placed]
            try:
                yield collate(list(_samples(self._source, refs, self.transform, seeds)), index)
            except PolypSynthError as exc:
                yield TrainBatches.Failure(str(exc))
                return
