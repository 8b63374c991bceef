"""Polyp look-alikes painted into polyp-free frames: hard negatives for segmentation training.

A segmenter that only ever sees polyps and plain mucosa learns shortcuts: anything bright, round or
raised fires. Real colonoscopy is full of such things that are not lesions: specular highlights,
bubbles, mucosal folds, stool fragments. A frame with one of them painted in and an empty mask teaches
the segmenter not to fire on them.

Like the masks' `Lesion`, a `Distractor` (planned in `pipeline.plan.negatives`) is resolution-free
(normalised centre, size relative to sqrt(W*H)) and its seed drives every finer detail, so a plan
stores one small JSON record and `draw_distractor` redraws it deterministically at any output size.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from pipeline.plan.negatives import Distractor

_REACH = 2.5  # every kind stays within this many `scale` sizes of its centre, blur tails included (plus a few pixels)
_SHIFT = 4  # sub-pixel bits for OpenCV drawing, so small shapes keep their size at low resolution
_WHITE = np.array([255.0, 255.0, 255.0], np.float32)


def draw_distractor(image: np.ndarray, distractor: Distractor) -> np.ndarray:
    """A copy of the RGB uint8 `image` with the distractor painted in; the same inputs give the same bytes.

    Only a box around the centre is drawn on, which keeps large frames cheap and the rest untouched."""
    height, width = image.shape[:2]
    size = max(distractor.scale * math.sqrt(width * height), 1.0)
    cx, cy = distractor.center[0] * width, distractor.center[1] * height
    reach = math.ceil(_REACH * size) + 3
    x0, y0 = max(int(cx) - reach, 0), max(int(cy) - reach, 0)
    x1, y1 = min(int(cx) + reach + 1, width), min(int(cy) + reach + 1, height)
    out = image.copy()
    if x0 >= x1 or y0 >= y1:
        return out
    crop = out[y0:y1, x0:x1].astype(np.float32)
    center = np.array([cx - x0, cy - y0])
    mucosa = _local_colour(crop, center, size)
    _PAINTERS[distractor.kind](crop, center, size, mucosa, np.random.default_rng(distractor.seed))
    out[y0:y1, x0:x1] = np.clip(np.rint(crop), 0, 255).astype(np.uint8)
    return out


def _local_colour(crop: np.ndarray, center: np.ndarray, size: float) -> np.ndarray:
    """Median colour within `size` of the centre: what the distractor's shading is adapted to."""
    h, w = crop.shape[:2]
    r = max(int(size), 1)
    cx, cy = int(np.clip(center[0], 0, w - 1)), int(np.clip(center[1], 0, h - 1))
    patch = crop[max(cy - r, 0):cy + r + 1, max(cx - r, 0):cx + r + 1]
    return np.median(patch.reshape(-1, 3), axis=0).astype(np.float32)


def _paint(crop: np.ndarray, mask: np.ndarray, colour: np.ndarray, opacity: float, blur: float) -> None:
    """Alpha-blend `colour` (RGB, or a per-pixel layer) into `crop` in place through a soft-edged mask."""
    alpha = cv2.GaussianBlur(mask, (0, 0), max(blur, 0.5)) * opacity
    crop += (colour - crop) * alpha[..., None]


def _fixed(points: np.ndarray) -> np.ndarray:
    """Pixel coordinates as OpenCV's fixed-point integers (see `_SHIFT`)."""
    return np.rint(np.asarray(points) * (1 << _SHIFT)).astype(np.int32)


def _ellipse(mask: np.ndarray, center: np.ndarray, axes: tuple[float, float], angle: float, rim: int = -1) -> None:
    """An anti-aliased ellipse of 1s on `mask`, at least a pixel across; filled, or a ring `rim` pixels thick."""
    semi = (round(max(axes[0], 0.5) * (1 << _SHIFT)), round(max(axes[1], 0.5) * (1 << _SHIFT)))
    cv2.ellipse(mask, tuple(_fixed(center)), semi, angle, 0, 360, 1.0, rim, cv2.LINE_AA, _SHIFT)


def _specular(crop: np.ndarray, center: np.ndarray, size: float, mucosa: np.ndarray, rng: np.random.Generator) -> None:
    """A cluster of small near-white glints: light reflected off wet mucosa, often mistaken for a lesion's sheen."""
    mask = np.zeros(crop.shape[:2], np.float32)
    for _ in range(int(rng.integers(3, 13))):
        offset = rng.normal(0.0, 0.45 * size, 2).clip(-size, size)
        major = size * rng.uniform(0.04, 0.2)
        _ellipse(mask, center + offset, (major, major * rng.uniform(0.35, 1.0)), rng.uniform(0, 180))
    glint = 0.04 * size
    _paint(crop, mask, 0.7 * _WHITE + 0.3 * mucosa, 0.5, 3 * glint)  # halo
    _paint(crop, mask, _WHITE, 1.0, glint)


def _bubble(crop: np.ndarray, center: np.ndarray, size: float, mucosa: np.ndarray, rng: np.random.Generator) -> None:
    """Round bubbles: a thin bright rim, a faintly lighter inside and a highlight dot, round like a sessile polyp."""
    for _ in range(int(rng.integers(1, 7))):
        radius = size * rng.uniform(0.25, 0.6)
        at = center + rng.normal(0.0, 0.5 * size, 2).clip(-0.8 * size, 0.8 * size)
        axes = (radius, radius * rng.uniform(0.85, 1.0))
        angle = rng.uniform(0, 180)
        blur = max(0.06 * radius, 0.5)
        inside = np.zeros(crop.shape[:2], np.float32)
        _ellipse(inside, at, axes, angle)
        _paint(crop, inside, mucosa + (255 - mucosa) * 0.5, rng.uniform(0.15, 0.3), blur)
        ring = np.zeros_like(inside)
        _ellipse(ring, at, axes, angle, rim=max(round(0.12 * radius), 1))
        _paint(crop, ring, 0.85 * _WHITE + 0.15 * mucosa, rng.uniform(0.4, 0.6), blur)
        dot = np.zeros_like(inside)
        toward = rng.uniform(0.6, 1.0) * math.pi  # upper left, where the endoscope's light comes from
        _ellipse(dot, at + 0.6 * radius * np.array([math.cos(toward), -math.sin(toward)]), (0.16 * radius,) * 2, 0)
        _paint(crop, dot, _WHITE, 0.95, blur)


def _fold(crop: np.ndarray, center: np.ndarray, size: float, mucosa: np.ndarray, rng: np.random.Generator) -> None:
    """A mucosal fold: a long curved ridge, lit on one side and shadowed on the other, that reads as a raised edge."""
    length = 2 * size
    direction = rng.uniform(0, math.pi)
    along = np.array([math.cos(direction), math.sin(direction)])
    across = np.array([-along[1], along[0]])
    control = center + across * rng.uniform(-0.5, 0.5) * length
    t = np.linspace(0.0, 1.0, 48)[:, None]
    start, end = center - along * length / 2, center + along * length / 2
    curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end  # quadratic Bezier
    tangent = np.gradient(curve, axis=0)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1) / np.linalg.norm(tangent, axis=1, keepdims=True)
    width = length * rng.uniform(0.08, 0.14) * np.sin(np.pi * t[:, 0]) ** 0.5  # tapering to both ends
    side = rng.choice([-1.0, 1.0])
    lit, shadow = crop + (255 - crop) * 0.4, crop * 0.6  # shading the mucosa itself keeps its vessels visible
    for offset, share, layer, opacity in ((-0.15, 1.0, lit, 0.6), (0.5, 0.35, shadow, 0.6)):
        mask = np.zeros(crop.shape[:2], np.float32)
        line = curve + side * normal * (offset * width)[:, None]
        for i in range(len(line) - 1):
            thickness = max(round(share * (width[i] + width[i + 1]) / 2), 1)
            cv2.line(mask, tuple(_fixed(line[i])), tuple(_fixed(line[i + 1])), 1.0, thickness, cv2.LINE_AA, _SHIFT)
        _paint(crop, mask, layer, opacity, 0.3 * width.max())


def _stool(crop: np.ndarray, center: np.ndarray, size: float, mucosa: np.ndarray, rng: np.random.Generator) -> None:
    """An irregular yellow-brown to greenish-brown fragment: a lump of residue the size of a small polyp."""
    theta = np.linspace(0.0, 2 * math.pi, 64, endpoint=False)
    radius = np.ones_like(theta)
    for order in range(2, 6):
        radius += rng.uniform(0.0, 0.25) / order * np.cos(order * theta + rng.uniform(0, 2 * math.pi))
    rotation = rng.uniform(0, 2 * math.pi)
    aspect = rng.uniform(0.55, 1.0)
    x, y = size * radius * np.cos(theta), size * aspect * radius * np.sin(theta)
    outline = center + np.stack([x * math.cos(rotation) - y * math.sin(rotation),
                                 x * math.sin(rotation) + y * math.cos(rotation)], axis=1)
    mask = np.zeros(crop.shape[:2], np.float32)
    cv2.fillPoly(mask, [_fixed(outline)], 1.0, cv2.LINE_AA, _SHIFT)
    brown = np.array([190.0, 125.0, 40.0]) + rng.uniform(0, 1) * np.array([-50.0, -5.0, 0.0])  # toward green
    colour = (0.85 * brown + 0.15 * mucosa).astype(np.float32)
    cells = [max(int(side / max(size / 3, 1)), 2) for side in crop.shape[:2]]  # a grain a third of the size
    grain = cv2.resize(rng.normal(0.0, 1.0, cells).astype(np.float32), crop.shape[1::-1], interpolation=cv2.INTER_CUBIC)
    ys, xs = np.indices(crop.shape[:2], np.float32)
    relief = ((center[0] - xs) + (center[1] - ys)) / (2 * size)  # lit from the upper left, like a lump
    layer = colour * (1 + 0.07 * grain + 0.15 * relief.clip(-1, 1))[..., None]
    _paint(crop, mask, layer, rng.uniform(0.75, 0.9), 0.08 * size)

_PAINTERS = {"specular": _specular, "bubble": _bubble, "fold": _fold, "stool": _stool}
