"""Pixels in and out: lossless PNG coding and resizing that keeps labels labels.

Images are RGB uint8 HxWx3 numpy arrays; masks are uint8 HxW with values {0, 255}. Masks are labels:
they are resized by area coverage and a threshold, never interpolated into grey.
"""

from __future__ import annotations

from typing import Literal

import cv2
import fpng
import numpy as np


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of an RGB (HxWx3) or single-channel (HxW) uint8 array; lossless, so labels stay exact.

    RGB goes through fpng (about 5x faster than libpng at 1024², slightly larger files), so encoding
    never limits a GPU; single-channel labels are tiny once compressed and go through OpenCV.
    """
    if array.ndim == 3:
        return fpng.from_ndarray(np.ascontiguousarray(array))
    # Labels are long runs of 0 and 255: no row filter plus run-length coding is 5x faster and smaller.
    ok, buffer = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER,
                                              cv2.IMWRITE_PNG_FILTER_NONE, cv2.IMWRITE_PNG_STRATEGY,
                                              cv2.IMWRITE_PNG_STRATEGY_RLE])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buffer.tobytes()


_READ_MODES = {"unchanged": cv2.IMREAD_UNCHANGED,  # never rotated by EXIF orientation: as PIL reads the frames
               "color": cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION,
               "gray": cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION}


def cut_short(data: bytes) -> bool:
    """Whether a JPEG or PNG file lacks its end marker: decoders fill a truncated image with grey
    instead of failing (OpenCV always; PIL while `ImageFile.LOAD_TRUNCATED_IMAGES` is on)."""
    if data.startswith(b"\xff\xd8"):  # JPEG: the last scan (SOS) must be followed by end-of-image
        return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return b"IEND" not in data[-32:]
    return False


def decode_image(data: bytes, mode: Literal["unchanged", "color", "gray"] = "unchanged") -> np.ndarray:
    """RGB (HxWx3) or single-channel (HxW) pixels of an encoded image (PNG, JPEG, … by content;
    `color` and `gray` force 3 or 1 channels); ValueError, for the caller to name the file, when the
    bytes are empty, cut short or not an image."""
    if not data:
        raise ValueError("empty file")
    if cut_short(data):
        raise ValueError("truncated: the file ends before its image data does")
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _READ_MODES[mode])
    except cv2.error:
        pixels = None
    if pixels is None:
        raise ValueError(f"not a decodable image ({len(data)} bytes)")
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = pixels[..., :3]
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB) if pixels.ndim == 3 else pixels


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB uint8 image to `size` = (width, height).

    Area averaging when shrinking (no aliasing of the mucosa texture), bicubic when enlarging.
    """
    height, width = image.shape[:2]
    if (width, height) == tuple(size):
        return image.copy()
    shrinking = size[0] * size[1] < width * height
    return cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def resize_mask(mask: np.ndarray, size: tuple[int, int], cover: Literal["half", "any"] = "half") -> np.ndarray:
    """Resize a label mask to `size` = (width, height); the result is uint8 {0, 255}.

    Each output pixel gets the fraction of it the label covers, then a threshold: `cover="half"`
    keeps the label's area honest (the label itself); `cover="any"` marks every pixel the label
    touches (a region the model must repaint, so that nothing of it is missed).
    """
    height, width = mask.shape[:2]
    if (width, height) == tuple(size):
        return np.where(mask > 0, 255, 0).astype(np.uint8)
    shrinking = size[0] * size[1] < width * height
    covered = cv2.resize(
        (mask > 0).astype(np.float32),
        tuple(size),
        interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR,
    )
    inside = covered >= 0.5 if cover == "half" else covered > 0
    return np.where(inside, 255, 0).astype(np.uint8)
