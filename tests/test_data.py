"""Loaders: real folders with split files, exports and shards; every pair exactly once across
distributed ranks and DataLoader workers; real + synthetic at a ratio, in every training batch,
whatever the export's format; the same batches and augmentations with any number of workers."""

import math
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.data.dataset import (
    PairStream,
    TrainBatches,
    collate,
    interleave,
    partition,
    seed_transform,
    train_transform,
)
from pipeline.data.sources import DataSpec, folder_refs, read_pairs, resolve
from pipeline.errors import DataError, TrainError
from pipeline.export.export import ExportOptions, export_runs
from pipeline.segmenter.predict import eval_transform
from pipeline.testing.data import shared_data
from pipeline.testing.runs import kvasir_pairs, write_gated_run

KVASIR = shared_data() / "kvasir-seg"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run of 14 real pairs in shards of 4 (so shard boundaries fall inside the workers' slices)."""
    root = tmp_path_factory.mktemp("run")
    ids = write_gated_run(str(root), kvasir_pairs(KVASIR, "train", 14), "loader", size=32)
    return str(root), ids


def test_kvasir_folder_with_split_file_and_thresholded_jpeg_masks():
    refs = resolve(f"{KVASIR}:test")
    assert len(refs) == 100 and refs[0].sample_id == (KVASIR / "splits" / "test.txt").read_text().split()[0]
    assert len(folder_refs(DataSpec(str(KVASIR)))) == 1000
    _, image, mask = next(read_pairs(refs[:1]))
    assert image.ndim == 3 and image.shape[:2] == mask.shape
    assert set(np.unique(mask)) == {0, 255}  # JPEG noise thresholded at 127
    with pytest.raises(DataError, match="no such split file"):
        resolve(f"{KVASIR}:validation")
    with pytest.raises(DataError, match="no such data folder"):
        resolve(f"{KVASIR}-missing:train")
    assert DataSpec.parse("s3://bucket/export") == DataSpec("s3://bucket/export")
    assert DataSpec.parse("s3://bucket/kvasir:train") == DataSpec("s3://bucket/kvasir", "train")


def test_partition_covers_exactly():
    for total in (0, 1, 7, 14, 100):
        for parts in (1, 3, 4):
            covered = [i for p in range(parts) for i in range(total)[partition(total, parts, p)]]
            assert covered == list(range(total))


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_ranks_times_two_workers_yield_every_sample_exactly_once(run, shuffle):
    root, ids = run
    refs = resolve(root)
    seen: Counter = Counter()
    for rank in range(2):
        data = PairStream(refs, eval_transform(32), seed=3, shuffle=shuffle, rank=rank, world_size=2)
        data.set_epoch(1)
        for batch in DataLoader(data, batch_size=3, num_workers=2, collate_fn=collate):
            assert batch.images.shape[1:] == (3, 32, 32) and batch.masks.shape[1:] == (1, 32, 32)
            assert batch.images.min() >= -1 and batch.images.max() <= 1 and set(batch.masks.unique().tolist()) <= {0, 1}
            seen.update(batch.sample_ids)
    assert sorted(seen) == sorted(ids) and set(seen.values()) == {1}


def test_epochs_reorder_and_a_seed_repeats(run):
    root, _ = run
    refs = resolve(root)
    data = PairStream(refs, None, seed=1)
    first = [r.sample_id for r in data.epoch_refs()]
    data.set_epoch(1)
    assert sorted(first) == sorted(r.sample_id for r in data.epoch_refs()) and first != [
        r.sample_id for r in data.epoch_refs()]
    assert first == [r.sample_id for r in PairStream(refs, None, seed=1).epoch_refs()]


def test_real_and_synthetic_mix_at_a_ratio(run, tmp_path):
    root, synthetic_ids = run
    export_runs([root], ExportOptions(out=str(tmp_path / "ex"), shard_size=5))
    real = resolve(f"{KVASIR}:test")[:4]
    synthetic = resolve(str(tmp_path / "ex"))
    for ratio, expected in ((0.5, 2), (2.0, 8), (5.0, 20)):  # 20 > 14: cycled
        data = PairStream(real, train_transform(32), synthetic=synthetic, ratio=ratio, seed=0, cache_size=32)
        data.set_epoch(2)
        batches = list(DataLoader(data, batch_size=4, collate_fn=collate))
        got = Counter(i for b in batches for i in b.sample_ids)
        assert sum(got[r.sample_id] for r in real) == 4 and all(got[r.sample_id] == 1 for r in real)
        assert sum(got[i] for i in synthetic_ids) == expected == data.synthetic_per_epoch
        assert len(data) == 4 + expected
    with pytest.raises(ValueError, match="needs synthetic"):
        PairStream(real, None, ratio=1.0)


def test_shards_stream_from_object_storage(run, s3_server):
    import s3fs

    root, ids = run
    s3fs.S3FileSystem(anon=False).mkdir("loaders")
    export_runs([root], ExportOptions(out="s3://loaders/ex", shard_size=6))
    data = PairStream(resolve("s3://loaders/ex"), eval_transform(32), shuffle=False)
    assert [s.sample_id for s in data] == ids


def test_interleave_keeps_every_window_at_the_ratio_across_epochs():
    for real, synthetic in ((10, 0), (10, 5), (10, 10), (7, 20), (50, 100), (3, 1), (9, 4)):
        n = real + synthetic
        pattern = np.tile(interleave(real, synthetic), 4).astype(int)  # four epochs laid end to end
        assert pattern[:n].sum() == synthetic
        for width in (1, 2, 3, 8, 13):
            counts = np.convolve(pattern, np.ones(width, int), "valid")
            assert counts.min() >= math.floor(width * synthetic / n) and counts.max() <= math.ceil(width * synthetic / n)


def test_every_training_batch_holds_real_and_synthetic_at_the_ratio_whatever_the_export_format(run, tmp_path):
    root, synthetic_ids = run
    export_runs([root], ExportOptions(out=str(tmp_path / "parquet")))  # one 14-row file: one block
    export_runs([root], ExportOptions(out=str(tmp_path / "folders"), format="folders"))
    real = resolve(f"{KVASIR}:test")[:6]
    compositions = {}
    for name in ("parquet", "folders"):
        synthetic = resolve(str(tmp_path / name))
        for ratio in (0.5, 1.0, 2.0):
            per_epoch = round(ratio * len(real))
            expected = 4 * per_epoch / (len(real) + per_epoch)
            data = TrainBatches(real, eval_transform(32), batch_size=4, steps=10, synthetic=synthetic, ratio=ratio,
                                seed=0, cache_size=32)
            batches = list(DataLoader(data, batch_size=None))
            assert [b.index for b in batches] == list(range(10)) and all(len(b.sample_ids) == 4 for b in batches)
            counts = [sum(i in synthetic_ids for i in b.sample_ids) for b in batches]
            assert math.floor(expected) <= min(counts) and max(counts) <= math.ceil(expected), (name, ratio, counts)
            compositions[(name, ratio)] = counts
    assert all(compositions[("parquet", r)] == compositions[("folders", r)] for r in (0.5, 1.0, 2.0))


def test_batches_and_their_augmentations_are_the_same_with_any_number_of_workers(run):
    root, _ = run
    refs = resolve(root)
    def make():
        return TrainBatches(refs[:5], train_transform(32), batch_size=3, steps=7, synthetic=refs[5:], ratio=1.0, seed=4)
    alone = list(DataLoader(make(), batch_size=None))
    workers = list(DataLoader(make(), batch_size=None, num_workers=2))
    assert [b.index for b in workers] == [b.index for b in alone] == list(range(7))
    assert len({i for b in alone for i in b.sample_ids}) > 5  # 21 samples: epochs of 10 laid end to end
    for a, b in zip(alone, workers):
        assert a.sample_ids == b.sample_ids and torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    again = list(DataLoader(make(), batch_size=None))
    assert all(torch.equal(a.images, b.images) for a, b in zip(alone, again))
    plain = {s.sample_id: s.image for s in PairStream(refs, eval_transform(32), shuffle=False)}
    augmented = [not torch.equal(image, plain[i]) for b in alone for i, image in zip(b.sample_ids, b.images)]
    assert sum(augmented) > len(augmented) // 2  # what is the same is the augmentation, not its absence


def test_an_augmentation_that_cannot_be_seeded_is_refused():
    with pytest.raises(TrainError, match="cannot be seeded"):
        seed_transform(lambda **pair: pair, 1)


def test_seeding_leaves_every_transform_a_stream_of_its_own():
    """albumentations seeds a Compose's children alike, so two flips drawn per image always agreed
    and no image was ever mirrored: every combination of the two flips occurs here."""
    import albumentations as A

    image = np.arange(16, dtype=np.uint8).reshape(4, 4)[..., None].repeat(3, axis=2)
    flips = A.Compose([A.HorizontalFlip(), A.VerticalFlip()])
    seen = set()
    for seed in range(40):
        seed_transform(flips, seed)
        out = flips(image=image)["image"]
        seen.add((np.array_equal(out, image[:, ::-1]), np.array_equal(out, image[::-1])))
    assert seen >= {(True, False), (False, True)}  # mirrored one way, and the other


def test_the_cache_gives_the_pixels_the_transforms_would(run):
    root, _ = run
    refs = resolve(root)

    def batches(cache):
        return list(DataLoader(TrainBatches(refs[:6], train_transform(32), batch_size=3, steps=4, synthetic=refs[6:],
                                            ratio=1.0, seed=2, cache_size=cache), batch_size=None))
    for a, b in zip(batches(32), batches(None)):
        assert a.sample_ids == b.sample_ids and torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)


def test_arms_of_one_seed_visit_the_real_pairs_in_the_same_order(run):
    from pipeline.data.dataset import epoch_order

    root, _ = run
    refs = resolve(root)
    real, synthetic = refs[:8], refs[8:]
    for epoch in range(3):
        alone = epoch_order(real, [], 0.0, 5, epoch)
        mixed = [ref for ref in epoch_order(real, synthetic, 2.0, 5, epoch) if ref in real]
        assert alone == mixed
