"""Contact sheets: look at a plan before spending GPU hours, and at a run's shards afterwards.

Each tile is the frame (or generated image) with the label's outline drawn on it, and the prompt
printed underneath.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.config import EngineConfig, JobConfig
from pipeline.core import storage
from pipeline.core.images import decode_png
from pipeline.core.labelled import binary_label
from pipeline.core.layout import RunLayout
from pipeline.core.timing import StageTimer
from pipeline.errors import ConfigError, ShardError
from pipeline.generate.shards import read_shard
from pipeline.generate.window import paint_window
from pipeline.generate.worker import prepare_sample
from pipeline.plan.modality import MODALITY_AXIS
from pipeline.plan.plan import build_plan

TILE = 256
CAPTION_LINES = 6
_OUTLINE = (0, 255, 0)
_WINDOW = (255, 220, 0)


def tile(image: np.ndarray, mask: np.ndarray, caption: str, window: list[int] | None = None) -> Image.Image:
    """One contact-sheet cell: image with the mask outline (and the window the model painted, when
    given as [x0, y0, x1, y1]), caption below."""
    scale = TILE / max(image.shape[:2])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    picture = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    label = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(binary_label(label).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(picture, contours, -1, _OUTLINE, 2)
    if window is not None:
        x0, y0, x1, y1 = (round(v * scale) for v in window)
        cv2.rectangle(picture, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), _WINDOW, 1)

    font = ImageFont.load_default(size=11)
    line_height = 13
    cell = Image.new("RGB", (TILE, TILE + CAPTION_LINES * line_height + 6), "white")
    cell.paste(Image.fromarray(picture), ((TILE - size[0]) // 2, (TILE - size[1]) // 2))
    lines = textwrap.wrap(caption, width=44)[:CAPTION_LINES]
    draw = ImageDraw.Draw(cell)
    for i, line in enumerate(lines):
        draw.text((3, TILE + 3 + i * line_height), line, fill="black", font=font)
    return cell


def contact_sheet(cells: list[Image.Image], out: str) -> None:
    if not cells:
        raise ShardError("nothing to draw: no samples found")
    columns = min(4, len(cells))
    rows = math.ceil(len(cells) / columns)
    width, height = cells[0].size
    sheet = Image.new("RGB", (columns * (width + 4) + 4, rows * (height + 4) + 4), (200, 200, 200))
    for i, cell in enumerate(cells):
        sheet.paste(cell, (4 + (i % columns) * (width + 4), 4 + (i // columns) * (height + 4)))
    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        sheet.save(out)
    except (ValueError, OSError) as exc:  # unknown extension, unwritable folder
        raise ConfigError(f"--out {out}: cannot write the contact sheet ({exc})") from None


def caption(row: dict) -> str:
    """The prompt, led by the frame's modality (which the frame decides, so the prompt must agree); for
    a sample whose engine never read its prompt (transplant), what it did honour: its donor, the
    label's size class and position."""
    attributes = row.get("attributes") or {}
    modality = attributes.get(MODALITY_AXIS)
    text = row["prompt"]
    if row.get("prompt_used") is False:
        text = (f"donor {row.get('donor_id')}: {attributes.get('size')} polyp, {attributes.get('position')} "
                "of the view (prompt not used)")
    return f"[{modality.upper()} frame] {text}" if modality else text


def plan_sheet(config: JobConfig, n: int, out: str, windows: bool = False) -> None:
    """Frames, planned masks and prompts of the first n samples of a job; with `windows`, also the
    square the engine will paint each in."""
    if windows and not isinstance(config.engine, EngineConfig):
        raise ConfigError(f"--windows: engine.kind {config.engine.kind} paints no window (only sdxl does)")
    cells = []
    for row in build_plan(config, n).table.to_pylist():
        frame, mask = prepare_sample(row, config.engine.output_resolution, StageTimer())
        window = paint_window(mask, config.engine).as_list() if windows else None
        cells.append(tile(frame, mask, caption(row), window))
    contact_sheet(cells, out)


def run_sheet(run_dir: str, n: int, out: str, windows: bool = False) -> None:
    """Generated images, label outlines and prompts of the first n samples in a run's shards; with
    `windows`, also the square each was painted in (the shard's `window` column, where not null)."""
    cells = []
    shard_dir = RunLayout(run_dir).shard_dir
    for name in storage.list_names(shard_dir):
        if len(cells) >= n:
            break
        if not name.endswith(".parquet"):
            continue
        table = read_shard(storage.join(shard_dir, name))
        columns = ["sample_id", "image", "mask", "prompt", "attributes"] + (
            ["window"] if windows and "window" in table.column_names else []) + [
            name for name in ("prompt_used", "donor_id") if name in table.column_names]
        for row in table.select(columns).slice(0, n - len(cells)).to_pylist():
            try:
                image, mask = decode_png(row["image"]["bytes"]), decode_png(row["mask"]["bytes"])
            except ValueError as exc:
                raise ShardError(f"{storage.join(shard_dir, name)}: sample {row['sample_id']}: {exc}") from None
            cells.append(tile(image, mask, caption(row), row.get("window")))
    if not cells:
        raise ShardError(f"{run_dir}: no shards to preview (is this a run directory?)")
    contact_sheet(cells, out)
