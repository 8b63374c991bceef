"""Pixel maths around the inpainting model: the repaint region and the final composite.

The model works on a square `resolution` and its VAE round trip changes every pixel it sees, so the
engine never returns the model's image as is: it pastes the generated pixels back into the source
frame through a soft `alpha`, and every pixel with alpha == 0 is the source frame's pixel, bit for bit.
Masks are labels: they are resized as labels (area fraction + threshold) and stay {0, 255}, never grey.
"""

from __future__ import annotations

import cv2
import numpy as np


def _window(label: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The label's bounding box grown by `margin` pixels, clipped to the image."""
    x, y, w, h = cv2.boundingRect(label.astype(np.uint8))
    height, width = label.shape
    return (slice(max(0, y - margin), min(height, y + h + margin)),
            slice(max(0, x - margin), min(width, x + w + margin)))


def repaint_region(mask: np.ndarray, dilation_px: int, feather_px: int) -> np.ndarray:
    """Blend weight of the generated image: float32 HxW in [0, 1].

    alpha is 1 on the label and up to `dilation_px` from it (so the polyp's surroundings can adapt),
    then falls linearly to 0 at `dilation_px + feather_px` (a soft seam OUTSIDE the dilated label),
    and is exactly 0 beyond. Distances are Euclidean, so the region grows round, not square. Only the
    label's neighbourhood is computed: every pixel farther away than the seam is 0 anyway.
    """
    label = mask > 0
    alpha = np.zeros(mask.shape[:2], np.float32)
    if not label.any():
        return alpha
    window = _window(label, dilation_px + feather_px + 1)
    # distance of every pixel to the nearest label pixel (0 on the label)
    distance = cv2.distanceTransform(np.where(label[window], 0, 255).astype(np.uint8), cv2.DIST_L2,
                                     cv2.DIST_MASK_PRECISE)
    if feather_px == 0:
        alpha[window] = distance <= dilation_px
    else:
        alpha[window] = np.clip((dilation_px + feather_px - distance) / feather_px, 0.0, 1.0)
    return alpha


def composite(source: np.ndarray, generated: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """alpha * generated + (1 - alpha) * source, as uint8; where alpha == 0 the source pixel, exactly."""
    if source.shape != generated.shape or source.shape[:2] != alpha.shape:
        raise ValueError(
            f"composite: source {source.shape}, generated {generated.shape} and alpha {alpha.shape} differ in size"
        )
    result = source.copy()
    region = alpha > 0
    if not region.any():
        return result
    window = _window(region, 0)  # blend only where alpha can be non-zero
    weight = alpha[window][..., None]
    blended = weight * generated[window].astype(np.float32) + (1.0 - weight) * source[window].astype(np.float32)
    blended = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    result[window] = np.where(weight > 0, blended, source[window])
    return result
