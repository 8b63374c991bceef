"""Field of view: where in an endoscopy frame a synthetic polyp may be painted.

Endoscopes show tissue inside a rounded region surrounded by black, with burnt-in text and inset
boxes (Kvasir's green scope-position box, coloured status banners) on top. A polyp painted over any
of those would be a mislabelled sample, so detection is deliberately conservative: everything
doubtful is excluded and the result is shrunk by a margin. It is classic image processing on a
downscaled copy (a few milliseconds a frame), with no learned model.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

GRID_SIDE = 64
"""Longest side of the stored grid; fine enough to place masks, small enough for a catalog row."""

_WORK_SIDE = 384  # the copy that detection works on has at most this longest side
_BLACK_V = 32  # max(R, G, B) at or below this is the endoscope's black surround
_MARGIN = 3  # work pixels the field of view is shrunk by, on top of the grid's own rounding
_OVERLAY_S, _OVERLAY_V, _OVERLAY_HUE = 110, 80, (35, 135)  # bright saturated green..blue: boxes, banners
_TEXT_MIN_RGB, _TEXT_CONTRAST = 110, 25  # text is near-white: its darkest channel stands out of red tissue
_GLYPH_MIN = 5  # work pixels: the shortest glyph height counted as text


@dataclass(frozen=True, eq=False)
class FieldOfView:
    """Low-resolution visibility grid (True = tissue where a polyp may go) covering the whole image."""

    grid: np.ndarray

    def __post_init__(self) -> None:
        grid = np.array(self.grid, dtype=bool)  # a private read-only copy keeps the object immutable
        if grid.ndim != 2 or 0 in grid.shape:
            raise ValueError(f"field-of-view grid must be a non-empty 2-D array, got shape {grid.shape}")
        grid.setflags(write=False)
        object.__setattr__(self, "grid", grid)

    @classmethod
    def full(cls, width: int = GRID_SIDE, height: int = GRID_SIDE) -> FieldOfView:
        """Everything visible: frames without a border, or when detection is not wanted. The grid has
        the image's aspect, which placement takes as the image's."""
        return cls(np.ones(grid_shape(width, height), dtype=bool))

    def to_mask(self, width: int, height: int) -> np.ndarray:
        """Full-resolution boolean mask by nearest upscaling (pixel row y maps to cell y*gh//height)."""
        gh, gw = self.grid.shape
        rows = np.arange(height) * gh // height
        cols = np.arange(width) * gw // width
        return self.grid[rows[:, None], cols[None, :]]

    def visible_fraction(self) -> float:
        return float(self.grid.mean())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FieldOfView):
            return NotImplemented
        return self.grid.shape == other.grid.shape and bool(np.array_equal(self.grid, other.grid))

    def __hash__(self) -> int:
        return hash((self.grid.shape, self.grid.tobytes()))


CENTRE_RADIUS = 0.5
"""A lesion is central when its centroid lies within this share of the view's equivalent radius of
the view's centroid."""


def position_in_view(label: np.ndarray, view: np.ndarray) -> str:
    """`centre` or `periphery`: where a (boolean) label's centroid c_l lies in the (boolean) visible
    field of view, of centroid c_v and area A: centre when |c_l − c_v| < 0.5 · √(A / π) (half the
    radius of a disc of the view's area); periphery otherwise, or when either is empty."""
    if not label.any() or not view.any():
        return "periphery"
    centroid = np.argwhere(label).mean(axis=0)
    centre = np.argwhere(view).mean(axis=0)
    radius = np.sqrt(np.count_nonzero(view) / np.pi)
    return "centre" if np.linalg.norm(centroid - centre) < CENTRE_RADIUS * radius else "periphery"


def grid_shape(width: int, height: int) -> tuple[int, int]:
    """(rows, cols) of the grid for an image: longest side GRID_SIDE (or the image's), aspect kept."""
    scale = min(1.0, GRID_SIDE / max(width, height))
    return max(1, round(height * scale)), max(1, round(width * scale))


def detect_fov(rgb: np.ndarray) -> FieldOfView:
    """Visible tissue of an RGB uint8 frame: not black surround, not overlay text, not inset boxes."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB array, got {rgb.dtype} {rgb.shape}")
    height, width = rgb.shape[:2]
    scale = min(1.0, _WORK_SIDE / max(height, width))
    small = cv2.resize(
        rgb,
        (max(1, round(width * scale)), max(1, round(height * scale))),
        # bilinear still reads every pixel (thin glyph strokes) down to half size, and is much faster
        interpolation=cv2.INTER_LINEAR if scale > 0.5 else cv2.INTER_AREA,
    )
    red, green, blue = cv2.split(small)
    excluded = _overlay_boxes(cv2.cvtColor(small, cv2.COLOR_RGB2HSV)) | _text_boxes(
        cv2.min(cv2.min(red, green), blue)
    )
    tissue = _fill_holes(_largest_component((cv2.max(cv2.max(red, green), blue) > _BLACK_V) & ~excluded))
    visible = cv2.erode(
        (tissue & ~excluded).astype(np.uint8),
        cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * _MARGIN + 1, 2 * _MARGIN + 1)),
    ).astype(bool)
    grid_rows, grid_cols = grid_shape(width, height)
    if visible.all():
        return FieldOfView(np.ones((grid_rows, grid_cols), dtype=bool))
    visible = _all_true_per_cell(visible, axis=0, cells=grid_rows, size=height)
    return FieldOfView(_all_true_per_cell(visible, axis=1, cells=grid_cols, size=width))


def _overlay_boxes(hsv: np.ndarray) -> np.ndarray:
    """Rectangles of saturated green-to-blue overlays; the whole box goes, including what it shows."""
    hue, saturation, value = cv2.split(hsv)
    colour = (saturation > _OVERLAY_S) & (value > _OVERLAY_V) & (hue >= _OVERLAY_HUE[0]) & (hue <= _OVERLAY_HUE[1])
    boxes = np.zeros(colour.shape, dtype=np.uint8)
    if np.count_nonzero(colour) < 0.001 * colour.size:
        return boxes.astype(bool)
    count, _, stats, _ = cv2.connectedComponentsWithStats(colour.astype(np.uint8), connectivity=8)
    for x, y, w, h, area in stats[1:count]:
        if area >= 0.001 * colour.size and area >= 0.4 * w * h:  # box-like, unlike greenish tissue
            cv2.rectangle(boxes, (x - 2, y - 2), (x + w + 1, y + h + 1), 1, thickness=-1)
    return boxes.astype(bool)


def _text_boxes(darkest: np.ndarray) -> np.ndarray:
    """Burnt-in text: the side-margin column that holds glyphs which are surely overlay text.

    Overlay text (patient data, clock, counters, the `■■■■` bar, `⊞:A5` labels) is laid out in a
    column at the side of the screen, and only part of it is readable where it crosses pale tissue
    or glare. So once some of it is found, the whole column goes, from the nearer side of the image
    to the right end of what was found, top to bottom, with text-sized bright pieces just beside it.
    """
    tophat = cv2.morphologyEx(darkest, cv2.MORPH_TOPHAT, cv2.getStructuringElement(cv2.MORPH_RECT, (7, 7)))
    ink = ((tophat > _TEXT_CONTRAST) & (darkest > _TEXT_MIN_RGB)).astype(np.uint8)
    _, _, pieces, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
    height, width = ink.shape
    pieces = pieces[1:][pieces[1:, cv2.CC_STAT_HEIGHT] <= height // 20]
    glyphs = _text_glyphs(pieces)
    boxes = np.zeros(ink.shape, dtype=np.uint8)
    for side in (0, 1):  # left and right margin
        column = glyphs[(glyphs[:, 0] + glyphs[:, 2] / 2 >= width / 2) == side]
        if not len(column):
            continue
        left, right = (0, (column[:, 0] + column[:, 2]).max() + 2) if side == 0 else (column[:, 0].min() - 2, width)
        cv2.rectangle(boxes, (int(left), 0), (int(right), height), 1, thickness=-1)
        reach = (right - left) // 2
        for x, y, w, h, _ in _inside(pieces, (left - reach, 0, right - left + 2 * reach, height)):
            cv2.rectangle(boxes, (int(x) - 2, int(y) - 2), (int(x + w) + 1, int(y + h) + 1), 1, thickness=-1)
    return boxes.astype(bool)


def _text_glyphs(pieces: np.ndarray) -> np.ndarray:
    """The pieces that are surely overlay text: stroke-like glyphs in a line of five, or of three
    with another line just above or below, and rows of four equal squares (the `■■■■` bar).
    Specular highlights are round, of mixed sizes and scattered, so they do not line up like that."""
    _, _, w, h, area = pieces.T.astype(np.int64)
    sized = w <= 2 * h
    blob = (2 * w > h) & (area > 0.7 * w * h)  # round specular dots, not strokes
    square = sized & (h >= _GLYPH_MIN - 1) & (np.abs(w - h) <= 1) & (area >= 0.8 * w * h)
    stroke = sized & (h >= _GLYPH_MIN) & ~blob
    keep = square | stroke
    pieces, square, stroke = pieces[keep], square[keep], stroke[keep]
    x, y, w, h, _ = pieces.T.astype(np.int64)
    centre = x + w // 2
    dy = np.abs(y[:, None] - y[None, :])
    near = (np.abs(centre[:, None] - centre[None, :]) <= 4 * h[:, None]) & (np.abs(h[:, None] - h[None, :]) <= 1)
    strokes_in_line = ((dy <= 1) & near & stroke[None, :]).sum(axis=1) * stroke
    squares_in_line = ((dy <= 1) & near & square[None, :]).sum(axis=1) * square
    line_nearby = ((strokes_in_line[None, :] >= 3) & (dy > h[:, None]) & (dy <= 4 * h[:, None]) & near).any(axis=1)
    return pieces[(strokes_in_line >= 5) | ((strokes_in_line >= 3) & line_nearby) | (squares_in_line >= 4)]


def _inside(pieces: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The pieces (connected-component stats rows) whose bounding box lies within `box` (x, y, w, h)."""
    x, y, w, h = box
    px, py, pw, ph = pieces[:, 0], pieces[:, 1], pieces[:, 2], pieces[:, 3]
    return pieces[(px >= x) & (py >= y) & (px + pw <= x + w) & (py + ph <= y + h)]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    if mask.all():  # frames without a border: nothing to label
        return mask
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)
    if count <= 1:
        return np.zeros(mask.shape, dtype=bool)
    return labels == 1 + int(np.argmax(np.bincount(labels.ravel(), minlength=count)[1:]))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Dark lumen inside the tissue is still inside the field of view."""
    padded = np.pad(mask, 1).astype(np.uint8)
    cv2.floodFill(padded, None, (0, 0), 1)
    return mask | (padded[1:-1, 1:-1] == 0)


def _all_true_per_cell(mask: np.ndarray, axis: int, cells: int, size: int) -> np.ndarray:
    """Reduce one axis of the work mask to grid cells: a cell is visible only if the work pixels of
    all its image pixels are (image pixel p lies in cell p * cells // size, as in `to_mask`)."""
    pixel = np.arange(size)
    work = pixel * mask.shape[axis] // size
    cell = pixel * cells // size
    first = work[np.searchsorted(cell, np.arange(cells))]
    last = work[np.searchsorted(cell, np.arange(cells), side="right") - 1]
    # A cell spans work pixels first..last; the next cell may share `last`, so add it separately.
    return np.logical_and.reduceat(mask, first, axis=axis) & np.take(mask, last, axis=axis)
