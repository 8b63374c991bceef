"""What the LoRA is trained on: image/mask pairs, the training and validation split, and captions.

Everything here runs on the driver before any model is loaded, so a missing mask, a bad split file
or an image whose mask has another size is a one-line `DataError` naming the file, not a worker crash.

Captions come from the prompt bank, with what a label tells us: the size class is the mask preset's
band that holds the mask's area (the inverse of how the planner draws areas for a size class), and
`captions.known` pins attributes true of the whole set (its modality, say). The rest of the
attributes are drawn as the planner draws them (the bank's weights and constraints), from a stream
seeded per image id, so the captions look like the prompts the engine is given and never change
between runs.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core import storage
from pipeline.core.digests import json_digest, seed_from
from pipeline.core.images import resize_image, resize_mask
from pipeline.core.labelled import binary_label, labelled_pairs, read_split
from pipeline.core.progress import progress_bar
from pipeline.errors import DataError
from pipeline.plan.masks.preset import MaskPreset
from pipeline.plan.masks.sampling import size_class_of
from pipeline.plan.prompts.bank import PromptBank
from pipeline.train.finetune.config import FinetuneConfig

CAPTION_DRAWS = 10_000  # bank draws before concluding that it cannot render the measured attributes


@dataclass(frozen=True)
class Example:
    """One real polyp: its files, its caption and the sha256 of both files (for the LoRA's card)."""

    id: str
    image: str
    mask: str
    caption: str
    sha256: str


@dataclass(frozen=True)
class FinetuneData:
    train: tuple[Example, ...]
    validation: tuple[Example, ...]
    negative: str  # negative prompt of the validation sheets

    def digest(self) -> str:
        """Identity of the training set: ids, file contents and captions."""
        return json_digest([[e.id, e.sha256, e.caption] for e in self.train])


def find_pairs(images: str, masks: str) -> dict[str, tuple[str, str]]:
    """id -> (image, mask), sorted by id; every image must have its mask."""
    return {pair.id: (pair.image, pair.mask) for pair in labelled_pairs(images, masks, None, DataError)}


def read_ids(path: str, field: str, known: dict[str, tuple[str, str]], images: str) -> list[str]:
    """The ids listed in a split file; each must name a pair."""
    ids = read_split(path, DataError)
    for value in ids:
        if value not in known:
            raise DataError(f"{field}: {path} lists {value!r}, but {storage.join(images, value)}.* (with its mask) "
                            "is not there")
    return ids


def split_ids(config: FinetuneConfig, pairs: dict[str, tuple[str, str]]) -> tuple[list[str], list[str]]:
    """(training ids, validation ids); validation frames are never trained on.

    Without `validation.split`, validation draws from the pairs outside the training split, or, with
    no training split either, holds out the last `validation.count` pairs."""
    data, count = config.data, config.validation.count
    given = read_ids(config.validation.split, "validation.split", pairs, data.images) if config.validation.split else None
    listed = read_ids(data.split, "data.split", pairs, data.images) if data.split else list(pairs)
    train = [i for i in listed if i not in set(given or ())]
    if given is not None:
        held_out = given
    elif data.split:
        held_out = [i for i in pairs if i not in set(train)]
    else:
        held_out, train = (train[-count:], train[:-count]) if count else ([], train)
    held_out = held_out[:count]
    if count and not held_out:
        raise DataError(f"data.split: {data.split} trains on every pair, so none is left for validation: "
                        "give validation.split, or set validation.count: 0")
    train = train[:data.limit] if data.limit else train
    if not train:
        raise DataError(f"data.images: {data.images}: no pair is left to train on")
    return train, held_out


def _read_image(path: str | Path, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as picture:
            return np.asarray(picture.convert(mode))
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def load_pair(image: str | Path, mask: str | Path, output_resolution: int | None) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 frame and {0, 255} label, at the size the engine works at (`engine.output_resolution`)."""
    frame = _read_image(image, "RGB")
    label = np.where(binary_label(_read_image(mask, "L")), 255, 0).astype(np.uint8)
    if label.shape != frame.shape[:2]:
        raise DataError(f"{mask}: the mask is {label.shape[1]}x{label.shape[0]} but its image {image} is "
                        f"{frame.shape[1]}x{frame.shape[0]}")
    if not label.any():
        raise DataError(f"{mask}: the mask has no lesion pixel (nothing > 127)")
    if output_resolution:
        side = (output_resolution, output_resolution)
        frame, label = resize_image(frame, side), resize_mask(label, side)
    return frame, label


def bank_caption(bank: PromptBank, required: dict[str, str], seed: int) -> str:
    """A prompt of the bank whose attributes include `required`, drawn as the planner draws."""
    rng = np.random.default_rng(seed)
    for _ in range(CAPTION_DRAWS):
        sample = bank.sample(rng)
        if all(sample.attributes.get(axis) == value for axis, value in required.items()):
            return sample.text
    raise DataError(f"captions: the bank {bank.path} never rendered {required} in {CAPTION_DRAWS} draws "
                    "(an axis or value it does not have, or one its constraints forbid: check captions.known)")


def _csv_captions(path: str) -> dict[str, str]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"captions.csv: cannot read {path} ({type(exc).__name__}: {exc})") from None
    if not rows or not {"id", "caption"} <= set(rows[0]):
        raise DataError(f"captions.csv: {path} needs a header with the columns id,caption")
    return {row["id"]: row["caption"] for row in rows}


def _file_sha256(*urls: str) -> str:
    digest = hashlib.sha256()
    for url in urls:
        digest.update(storage.read_bytes(url))
    return digest.hexdigest()


def prepare_data(config: FinetuneConfig) -> FinetuneData:
    """Pairs, split and captions of a fine-tuning job; every problem is a `DataError` naming its file."""
    pairs = find_pairs(config.data.images, config.data.masks)
    train_ids, validation_ids = split_ids(config, pairs)
    bank = PromptBank.load(config.captions.bank)
    table = _csv_captions(config.captions.csv) if config.captions.csv else None
    preset = None if table is not None else MaskPreset.load(config.captions.preset)

    def example(stem: str) -> Example:
        image, mask = pairs[stem]
        _, label = load_pair(image, mask, None)  # sizes checked here, not in a worker
        if table is not None:
            if stem not in table:
                raise DataError(f"captions.csv: {config.captions.csv} has no caption for {stem!r} ({image})")
            caption = table[stem]
        else:
            measured = {"size": size_class_of(float((label > 0).mean()), preset)}
            caption = bank_caption(bank, {**measured, **config.captions.known}, seed_from(f"{config.seed}:{stem}"))
        return Example(stem, str(image), str(mask), caption, _file_sha256(image, mask))

    ids = train_ids + validation_ids
    made = [example(stem) for stem in progress_bar(ids, "checking pairs and captions", len(ids), "pair")]
    return FinetuneData(tuple(made[:len(train_ids)]), tuple(made[len(train_ids):]), bank.negative)
