"""Polyp-free frames cut from labelled ones: the largest strip of each frame clear of every lesion.

The engines paint into normal frames, and a team often has labelled polyp frames of its own site but
few normal ones. The part of a labelled frame away from its polyp is a real frame of that site (its
light, lumen, field-of-view border and overlays) with no polyp in it: on such frames transplanted
polyps score close to real (BENCHMARKS.md), where 256² mucosa close-ups are held back by their framing.
Cut them from a *training* split only: a test frame's surroundings must not reach training data.
`cut_from.json` beside the frames says which labelled frame (id and SHA-256) each was cut from, so
an experiment can refuse a synthetic set painted on an evaluation frame's surroundings.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np

from pipeline.config import FramesConfig
from pipeline.core import storage
from pipeline.core.digests import sha256_hex
from pipeline.core.images import encode_png
from pipeline.core.labelled import labelled_pairs, read_pair, read_split
from pipeline.core.layout import CUT_SOURCES_FILE
from pipeline.core.progress import progress_bar
from pipeline.errors import FrameCatalogError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StripRule:
    """Which strip of a frame counts as a polyp-free frame."""

    margin: float = 0.03  # gap kept from every lesion: this share of the frame's long side, plus 4 px
    min_share: float = 0.3  # of the frame's area: a smaller strip is a close-up, not a frame
    min_side: int = 200  # pixels, both sides
    max_aspect: float = 2.0  # long side / short side


def polyp_free_strip(label: np.ndarray, rule: StripRule = StripRule()) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the largest full-height or full-width strip of the frame that keeps
    `rule.margin` from every labelled pixel (the whole frame when nothing is labelled); None when it
    is smaller than `rule.min_share` of the frame or `rule.min_side` a side, or longer than
    `rule.max_aspect`. Full-height and full-width strips keep the frame's own border and overlays."""
    height, width = label.shape
    ys, xs = np.nonzero(label)
    if xs.size == 0:
        strips = [(0, 0, width, height)]
    else:
        gap = int(rule.margin * max(height, width)) + 4
        left, right, top, bottom = xs.min() - gap, xs.max() + 1 + gap, ys.min() - gap, ys.max() + 1 + gap
        strips = [(0, 0, max(0, left), height), (min(width, right), 0, width, height),
                  (0, 0, width, max(0, top)), (0, min(height, bottom), width, height)]
    fitting = [(x0, y0, x1, y1) for x0, y0, x1, y1 in strips
               if min(x1 - x0, y1 - y0) >= rule.min_side
               and max(x1 - x0, y1 - y0) <= rule.max_aspect * min(x1 - x0, y1 - y0)
               and (x1 - x0) * (y1 - y0) >= rule.min_share * height * width]
    return max(fitting, key=lambda s: (s[2] - s[0]) * (s[3] - s[1])) if fitting else None


@dataclass(frozen=True)
class CutSummary:
    out: str
    frames: int
    cut: int
    mean_share: float

    def line(self) -> str:
        return (f"{self.out}: {self.cut} polyp-free frames from {self.frames} labelled frames "
                f"(mean {100 * self.mean_share:.0f}% of their frame)")


def cut_polyp_free_frames(images: str, masks: str, out: str, split: str | None = None,
                          rule: StripRule = StripRule()) -> CutSummary:
    """Write `<id>.png` under `out` for every labelled frame (of `split`) with a polyp-free strip."""
    pairs = labelled_pairs(images, masks, split, FrameCatalogError)
    shares, cut_from = [], {}
    for pair in progress_bar(pairs, "cutting polyp-free frames", total=len(pairs), unit="frames"):
        frame = read_pair(pair, FrameCatalogError)
        strip = polyp_free_strip(frame.label, rule)
        if strip is None:
            continue
        x0, y0, x1, y1 = strip
        storage.write_bytes_atomic(storage.join(out, f"{pair.id}.png"), encode_png(frame.rgb[y0:y1, x0:x1]))
        cut_from[f"{pair.id}.png"] = {"id": pair.id, "sha256": sha256_hex(frame.data)}
        shares.append((x1 - x0) * (y1 - y0) / frame.label.size)
    if not shares:
        raise FrameCatalogError(f"{masks}: no frame of the {len(pairs)} has a polyp-free strip of at least "
                                f"{rule.min_side} px a side and {100 * rule.min_share:.0f}% of the frame")
    # written last: a folder without it is an unfinished cut
    storage.write_bytes_atomic(storage.join(out, CUT_SOURCES_FILE), json.dumps(cut_from, indent=1).encode())
    return CutSummary(out, len(pairs), len(shares), float(np.mean(shares)))


def ensure_polyp_free_frames(frames: FramesConfig) -> None:
    """Cut `frames.source` from `frames.polyp_free_from` when it has not been cut yet (its record of
    sources, written last, is missing); refuse a folder cut from ids outside the named split, so an
    edited split never keeps hosts it no longer allows (a test image must never become a host)."""
    source = frames.polyp_free_from
    if source is None:
        return
    record = storage.join(frames.source, CUT_SOURCES_FILE)
    if not storage.exists(record):
        log.info("cutting the polyp-free frames %s from %s (first use)", frames.source, source.masks)
        log.info(cut_polyp_free_frames(source.images, source.masks, frames.source, source.split).line())
        return
    cut_from = json.loads(storage.read_bytes(record))
    strays = sorted(set(storage.list_names(frames.source)) - set(cut_from) - {CUT_SOURCES_FILE})
    if strays:  # left by an interrupted cut of another split: not hosts this record vouches for
        raise FrameCatalogError(f"frames.source: {frames.source}: holds {strays[0]}, which its {CUT_SOURCES_FILE} "
                                "does not list; delete the folder to cut it again")
    if source.split is None:
        return
    allowed = set(read_split(source.split, FrameCatalogError))
    outside = sorted({entry["id"] for entry in cut_from.values()} - allowed)
    if outside:
        raise FrameCatalogError(f"frames.source: {frames.source}: cut from {len(outside)} id(s) outside "
                                f"frames.polyp_free_from.split ({source.split}), e.g. {outside[0]}; delete the "
                                "folder to cut it again, or name a new frames.source")
