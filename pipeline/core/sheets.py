"""Contact sheets: images in a grid, each with its label's outline (and the window a model painted)
and a caption. The plan and run previews, the gate's report and the fine-tuning's validation
sheets all draw with these."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.core.labelled import binary_label
from pipeline.errors import ConfigError, ShardError

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
