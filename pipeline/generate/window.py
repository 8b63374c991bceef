"""Where the model paints: the part of a frame the SDXL engine hands to the model, and its square.

SDXL works on a square. Squashing a 622×529 frame into 1024² distorts the anatomy, and a diminutive
polyp (~1–3% of the frame) gets a few latent pixels while nearly all the work goes on pixels that
compositing throws away. So the engine paints a *window*:

    crop    a square around the repaint region: its bounding box's longer side × `context`, at least
            `minimum` pixels, at most the frame's shorter side, centred on the region and shifted
            inside the frame. A region too large for any square inside the frame gets the frame.
    frame   the whole frame.

A window that is not square (the whole frame) is padded to a square by reflection before resizing,
and the padding is cut off afterwards, so nothing is ever stretched along one axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.config import EngineConfig


@dataclass(frozen=True)
class Window:
    """A rectangle of a frame, [x0, x1) × [y0, y1) in pixels."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def side(self) -> int:
        """Side of the square it is padded to."""
        return max(self.width, self.height)

    @property
    def slices(self) -> tuple[slice, slice]:
        """Index a HxW(xC) array with it: `frame[window.slices]`."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def as_list(self) -> list[int]:
        """[x0, y0, x1, y1], the layout of the shard's `bbox` and `window` columns."""
        return [self.x0, self.y0, self.x1, self.y1]


def region_bounds(mask: np.ndarray, dilation_px: int, feather_px: int) -> Window | None:
    """Bounding box of `repaint_region(mask, dilation_px, feather_px) > 0`, without computing the region.

    The region holds the pixels at Euclidean distance < dilation + feather from the label (≤ dilation
    when there is no feather); along each axis the extreme label pixel is the nearest, so the box is
    the label's box grown by `reach` = dilation + feather − 1 (or dilation), clipped to the frame.
    None for an empty label.
    """
    label = (mask > 0).astype(np.uint8)
    if not label.any():
        return None
    x, y, w, h = cv2.boundingRect(label)
    reach = dilation_px + feather_px - 1 if feather_px > 0 else dilation_px
    height, width = mask.shape[:2]
    return Window(max(0, x - reach), max(0, y - reach), min(width, x + w + reach), min(height, y + h + reach))


def crop_window(region: Window | None, width: int, height: int, context: float, minimum: int) -> Window:
    """The square crop around `region` in a width×height frame (see the module docstring).

    side = clamp(ceil(context · max(region w, region h)), minimum, min(width, height)); the square is
    centred on the region and shifted to lie inside the frame. The whole frame when there is no region
    or the region is longer than the frame's shorter side.
    """
    frame = Window(0, 0, width, height)
    if region is None:
        return frame
    longest = max(region.width, region.height)
    side = min(max(math.ceil(context * longest), minimum), width, height)
    if side < longest:
        return frame
    x0 = min(max((region.x0 + region.x1 - side) // 2, 0), width - side)
    y0 = min(max((region.y0 + region.y1 - side) // 2, 0), height - side)
    return Window(x0, y0, x0 + side, y0 + side)


def paint_window(mask: np.ndarray, config: EngineConfig) -> Window:
    """The window the SDXL engine configured by `config` paints for this label (in `mask`'s frame)."""
    height, width = mask.shape[:2]
    if config.region == "frame":
        return Window(0, 0, width, height)
    return crop_window(region_bounds(mask, config.mask_dilation, config.mask_feather), width, height,
                       config.crop_context, config.crop_min)


def working_side(window: Window, config: EngineConfig) -> int:
    """The square side the model works at: `crop_resolution` for windows no larger than it, else
    `resolution` (two sizes at most, so batches stay full)."""
    small = config.crop_resolution
    return small if small is not None and window.side <= small else config.resolution


def square_padding(width: int, height: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padding that makes a width×height image square, split evenly."""
    extra_y, extra_x = max(width - height, 0), max(height - width, 0)
    return extra_y // 2, extra_y - extra_y // 2, extra_x // 2, extra_x - extra_x // 2


def pad_square(image: np.ndarray, value: int | None = None) -> np.ndarray:
    """`image` padded to a square: mirrored about its edge pixels (numpy's "reflect", OpenCV's
    BORDER_REFLECT_101) so the model sees plausible surroundings, or filled with `value` (labels: 0,
    nothing to repaint there)."""
    top, bottom, left, right = square_padding(image.shape[1], image.shape[0])
    widths = ((top, bottom), (left, right)) + ((0, 0),) * (image.ndim - 2)
    if value is not None:
        return np.pad(image, widths, mode="constant", constant_values=value)
    return np.pad(image, widths, mode="reflect")


def unpad_square(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Cut the padding `pad_square` added to a width×height image back off."""
    top, _, left, _ = square_padding(width, height)
    return image[top:top + height, left:left + width]
