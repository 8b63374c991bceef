"""Lesion geometry: outlines from parameters, their area and solidity, and `draw_mask`.

A lesion is an ellipse whose radius is perturbed by a few low-order Fourier harmonics (smooth but
irregular outlines), optionally with a stalk (pedunculated shapes), rotated and scaled. Everything
here is a pure function of the parameters.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from pipeline.plan.masks.params import Lesion, MaskParams, Stalk

MIN_RADIUS = 0.3  # of the base radius: keeps every outline star-shaped and free of pinches
_STALK_TAPER = 0.75  # stalk width at the tip over width at the base
_STALK_POINTS = 6  # centre-line points of a stalk outline
_STALK_STEPS = np.linspace(0.0, 1.0, _STALK_POINTS)


@functools.lru_cache(maxsize=8)
def angles(vertices: int) -> np.ndarray:
    return np.linspace(0.0, 2.0 * np.pi, vertices, endpoint=False)


@functools.lru_cache(maxsize=8)
def _circle(vertices: int) -> np.ndarray:
    """(vertices, 2) unit circle points."""
    phi = angles(vertices)
    return np.stack([np.cos(phi), np.sin(phi)], axis=1)


def _radius(harmonics: tuple[tuple[int, float, float], ...], vertices: int) -> np.ndarray:
    orders, amplitudes, phases = np.array(harmonics).T
    return np.maximum(1.0 + np.cos(np.outer(angles(vertices), orders) + phases) @ amplitudes, MIN_RADIUS)


def local_polygons(radius: np.ndarray, aspect: float, stalk: Stalk | None) -> list[np.ndarray]:
    """Head (and stalk) polygons in the lesion's own frame, in units of its scale."""
    head = _circle(radius.size) * radius[:, None]
    head[:, 1] *= aspect
    return [head] if stalk is None else [head, _stalk_outline(head, stalk)]


def _stalk_outline(head: np.ndarray, stalk: Stalk) -> np.ndarray:
    """A tapered band from mid-head to past the rim in direction `stalk.angle`."""
    direction = np.array([math.cos(stalk.angle), math.sin(stalk.angle)])
    normal = np.array([-direction[1], direction[0]])
    lengths = np.hypot(head[:, 0], head[:, 1])
    rim = float(lengths[int(np.argmax(head @ direction / lengths))])  # the head's radius towards the stalk
    start, stop = 0.5 * rim, rim + stalk.length
    along = start + _STALK_STEPS * (stop - start)
    side = stalk.bend * stalk.length * _STALK_STEPS**2
    half = 0.5 * stalk.width * (1 - (1 - _STALK_TAPER) * _STALK_STEPS)
    across = np.concatenate([side + half, (side - half)[::-1]])
    return np.outer(np.concatenate([along, along[::-1]]), direction) + np.outer(across, normal)


def turn(rotation: float) -> np.ndarray:
    """Right-multiplying (n, 2) points by this rotates them by `rotation`."""
    c, s = math.cos(rotation), math.sin(rotation)
    return np.array([[c, s], [-s, c]])


def _outlines(lesion: Lesion, vertices: int) -> list[np.ndarray]:
    """Head (and stalk) polygons in units of the lesion's scale, centred on the lesion, rotated."""
    polygons = local_polygons(_radius(lesion.harmonics, vertices), lesion.aspect, lesion.stalk)
    return [polygon @ turn(lesion.rotation) for polygon in polygons]


def outline_area(polygons: list[np.ndarray], stalk: Stalk | None) -> float:
    """Area of the head plus the part of the stalk outside it."""
    area = cv2.contourArea(polygons[0].astype(np.float32))
    return area if stalk is None else area + stalk.length * stalk.width * (1 + _STALK_TAPER) / 2


def convex_hull(polygons: list[np.ndarray]) -> np.ndarray:
    """(n, 2) float32 convex hull of all the polygons' points."""
    return cv2.convexHull(np.concatenate(polygons).astype(np.float32)).reshape(-1, 2)


def outline_solidity(polygons: list[np.ndarray], stalk: Stalk | None) -> float:
    return outline_area(polygons, stalk) / max(cv2.contourArea(convex_hull(polygons)), 1e-12)


def draw_mask(params: MaskParams, width: int, height: int) -> np.ndarray:
    """uint8 HxW mask, 255 inside the lesions, 0 elsewhere; a pure function of the parameters."""
    mask = np.zeros((height, width), dtype=np.uint8)
    unit = math.sqrt(width * height)
    for lesion in params.lesions:
        origin = np.array([lesion.center[0] * width, lesion.center[1] * height]) - 0.5  # pixel centres
        for polygon in _outlines(lesion, params.vertices):
            points = np.round((origin + polygon * (lesion.scale * unit)) * 16).astype(np.int32)
            cv2.fillPoly(mask, [points], 255, lineType=cv2.LINE_8, shift=4)
    return mask
