"""Placing a lesion inside the field of view: a visibility grid, clearance, and fitting outlines.

The grid is the frame catalog's field of view (`pipeline.plan.fov`), with its aspect ratio taken as
the image's. A lesion that fits nowhere is shrunk until it does.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

_SHRINK = 0.85  # scale factor per placement retry
_MAX_SHRINKS = 16
_CANDIDATES = 24  # positions tried per scale before shrinking
_SECOND_TRIES = 8  # directions tried for a second lesion before dropping it
_SURE_MARGIN = 3.5  # grid cells of clearance beyond which a disc around the shape certainly fits
_MARGIN_KERNEL = np.ones((5, 5), np.uint8)  # keeps outlines two grid cells off anything invisible


@dataclass(frozen=True, eq=False)
class VisibleField:
    """A visibility grid prepared for placement: cell units, distance of each cell to the invisible."""

    visible: np.ndarray  # bool (rows, cols)
    clearance: np.ndarray  # float32 distance (cells) from each cell centre to the nearest invisible cell or the edge
    full: bool

    @staticmethod
    def of(grid: np.ndarray) -> VisibleField:
        return _prepared(grid.shape, grid.tobytes())

    @property
    def unit(self) -> float:
        """Grid cells per sqrt(W*H)."""
        return math.sqrt(self.visible.shape[0] * self.visible.shape[1])

    def _to_normalised(self, cells: np.ndarray) -> tuple[float, float]:
        return float(cells[0]) / self.visible.shape[1], float(cells[1]) / self.visible.shape[0]

    def place(self, outline: np.ndarray, scale: float, rng: np.random.Generator) -> tuple[tuple[float, float], float]:
        """Centre (normalised) and final scale for a lesion with this scale-1 convex outline."""
        for _ in range(_MAX_SHRINKS):
            cells = outline * (scale * self.unit)
            center = self._full_center(cells, rng) if self.full else self._fitted_center(cells, rng)
            if center is not None:
                return self._to_normalised(center), scale
            scale *= _SHRINK
        return self._last_resort(outline, scale)

    def _full_center(self, cells: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """Uniform over the positions that keep the outline one cell inside the image."""
        rows, cols = self.visible.shape
        low = 1.0 - cells.min(axis=0)
        high = np.array([cols, rows]) - 1.0 - cells.max(axis=0)
        if np.any(high < low):
            return None
        return low + rng.random(2) * (high - low)

    def _fitted_center(self, cells: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """A visible position: anywhere far enough from the invisible, else where the footprint erodes to."""
        reach = float(np.hypot(cells[:, 0], cells[:, 1]).max())
        sure = np.flatnonzero(self.clearance.ravel() > reach + _SURE_MARGIN)
        if sure.size:
            return self._jittered(int(sure[rng.integers(sure.size)]), rng)
        half = math.ceil(reach) + 3
        kernel = _footprint(cells + half + 0.5, (2 * half + 1, 2 * half + 1))
        valid = cv2.erode(self.visible.view(np.uint8), kernel, anchor=(half, half),
                          borderType=cv2.BORDER_CONSTANT, borderValue=0)
        options = np.flatnonzero(valid.ravel())
        for index in rng.permutation(options)[:_CANDIDATES]:  # the kernel is for the cell centre: check the jitter
            center = self._jittered(int(index), rng)
            if self.fits(cells + center):
                return center
        return None

    def _jittered(self, index: int, rng: np.random.Generator) -> np.ndarray:
        row, col = divmod(index, self.visible.shape[1])
        return np.array([col, row], dtype=float) + rng.random(2)

    def fits(self, cells: np.ndarray) -> bool:
        """Whether an outline (grid coordinates, cell edges at integers) keeps off invisible cells."""
        rows, cols = self.visible.shape
        if cells.min() < 1.0 or np.any(cells.max(axis=0) > np.array([cols, rows]) - 1.0):
            return False
        return self.full or not np.any(_footprint(cells, self.visible.shape).view(bool) & ~self.visible)

    def place_beside(self, first: np.ndarray, second: np.ndarray, center: tuple[float, float], gap: float,
                     rng: np.random.Generator) -> tuple[float, float] | None:
        """Centre for a second lesion clear of the first (convex outlines in sqrt(W*H) units), or None."""
        reach = float(np.hypot(first[:, 0], first[:, 1]).max() + np.hypot(second[:, 0], second[:, 1]).max())
        origin = np.array(center) * np.array([self.visible.shape[1], self.visible.shape[0]])
        for angle in rng.uniform(0.0, 2.0 * np.pi, _SECOND_TRIES):
            offset = reach * (1.0 + gap) * np.array([math.cos(angle), math.sin(angle)]) * self.unit
            if self.fits(second * self.unit + origin + offset):
                return self._to_normalised(origin + offset)
        return None

    def _last_resort(self, outline: np.ndarray, scale: float) -> tuple[tuple[float, float], float]:
        """The most interior cell, with the lesion shrunk to fit its clearance."""
        index = int(np.argmax(self.clearance))
        if self.clearance.ravel()[index] <= 0:
            raise ValueError("field of view has no visible cell to place a polyp in")
        row, col = divmod(index, self.visible.shape[1])
        reach = float(np.hypot(outline[:, 0], outline[:, 1]).max()) * self.unit
        room = max(float(self.clearance.ravel()[index]) - _SURE_MARGIN, 0.25)
        center = np.array([col + 0.5, row + 0.5])
        return self._to_normalised(center), min(scale, room / reach)


def _footprint(cells: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """uint8 0/1 grid of the cells an outline touches, grown by a safety margin of two cells."""
    footprint = np.zeros(shape, dtype=np.uint8)
    points = [np.round((cells - 0.5) * 16).astype(np.int32)]
    cv2.fillPoly(footprint, points, 1, shift=4)
    cv2.polylines(footprint, points, True, 1, thickness=1, shift=4)
    return cv2.dilate(footprint, _MARGIN_KERNEL)


@functools.lru_cache(maxsize=64)
def _prepared(shape: tuple[int, int], cells: bytes) -> VisibleField:
    visible = np.frombuffer(cells, dtype=bool).reshape(shape)
    padded = np.pad(visible, 1).astype(np.uint8)
    clearance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    return VisibleField(visible, clearance, bool(visible.all()))
