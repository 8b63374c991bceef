"""How the reference segmenter sees an image and answers: resized to its training size, scaled to
[-1, 1] as its encoder was trained (x / 127.5 − 1), and its prediction (sigmoid > 0.5) resized back
to the image's own size. Training (`data.dataset`), evaluation and the gate's label check all go
through here, so the three never disagree on a pixel."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F


def model_resize(size: int) -> A.Resize:
    """How every image reaches the segmenter's square input: area averaging (no aliasing when a
    1920-px frame shrinks to a few hundred), nearest neighbour for labels (they stay labels)."""
    return A.Resize(size, size, interpolation=cv2.INTER_AREA, mask_interpolation=cv2.INTER_NEAREST)


def eval_transform(size: int) -> A.Compose:
    return A.Compose([model_resize(size)])


def to_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 HxWx3 image and {0,255} HxW mask → (3,H,W) in [-1, 1] and (1,H,W) in {0, 1}."""
    image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 127.5 - 1.0
    mask_t = torch.from_numpy(np.ascontiguousarray(mask > 0)).float()[None]
    return image_t, mask_t


@torch.no_grad()
def predict(model: torch.nn.Module, image: np.ndarray, size: int, device: torch.device) -> np.ndarray:
    """Boolean HxW prediction at the image's own size."""
    resized = eval_transform(size)(image=image)["image"]
    tensor, _ = to_tensors(resized, np.zeros(resized.shape[:2], np.uint8))
    logits = model(tensor[None].to(device))
    logits = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
    return (logits[0, 0] > 0).cpu().numpy()
