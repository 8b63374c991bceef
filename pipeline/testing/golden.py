"""The fixed inputs of the golden-pixel samples (tests/test_golden.py, bench/bench_same_pixels.py):
a real polyp-free frame and a real Kvasir-SEG test label, at a given size, and three seeds."""

from __future__ import annotations

import numpy as np

from pipeline.core.images import resize_image, resize_mask
from pipeline.plan.frames import load_frame
from pipeline.testing.data import shared_data

SEEDS = [3, 11, 2026]


def golden_inputs(side: int) -> tuple[np.ndarray, np.ndarray]:
    data = shared_data()
    frame = resize_image(load_frame(str(data / "normal-mucosa" / "1.jpg")), (side, side))
    test_id = (data / "kvasir-seg" / "splits" / "test.txt").read_text().split()[0]
    mask = load_frame(str(data / "kvasir-seg" / "masks" / f"{test_id}.jpg"))[..., 0]
    return frame, resize_mask(np.where(mask > 127, 255, 0).astype(np.uint8), (side, side))
