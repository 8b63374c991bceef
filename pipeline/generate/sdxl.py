"""The SDXL inpainting engine: paints a polyp into each frame's repaint region, guided by a prompt.

One `InpaintEngine` per process holds the diffusers pipeline (loaded once) and turns a batch of
(frame, label mask, prompt, negative prompt, seed) into composited frames in three stages that can be
timed separately:

    prepare_batch    the window the model paints (a square around the repaint region, or the whole
                     frame padded to a square: see `window.py`) to the working resolution (CPU, numpy)
    generate_batch   the diffusers pipeline call, one torch.Generator per sample (GPU)
    composite_batch  back to the window's size, pasted into the source through a soft alpha (CPU)

Every pixel outside the repaint region is returned bit-identical to the source frame; each sample's
pixels depend on its own seed only, not on the batch it was generated in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import diffusers
import numpy as np
import torch
from PIL import Image

from pipeline.config import EngineConfig
from pipeline.core.devices import resolve_device
from pipeline.core.images import resize_image, resize_mask
from pipeline.core.timing import StageTimer
from pipeline.generate.composite import composite, repaint_region
from pipeline.generate.loading import is_tiny_model, load_pipeline, resolve_dtype
from pipeline.generate.window import (
    Window,
    pad_square,
    paint_window,
    unpad_square,
    working_side,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- engine


def _run_now(fn: Callable, *args) -> Future:
    """`fn(*args)` on this thread, as a finished Future (the engine's loop without a helper thread)."""
    future: Future = Future()
    try:
        future.set_result(fn(*args))
    except Exception as exc:  # re-raised by .result(), like a pool's future
        future.set_exception(exc)
    return future


@dataclass
class PreparedSample:
    """One sample ready for the model, and what compositing needs afterwards."""

    frame: np.ndarray  # source RGB uint8 at output size
    alpha: np.ndarray  # blend weight of the generated image over the window, float32 in [0, 1]
    window: Window  # the part of the frame the model paints
    image: Image.Image  # the window, padded to a square, at working resolution
    mask_image: Image.Image  # repaint region likewise, L mode {0, 255}
    prompt: str
    negative: str
    seed: int

    @property
    def working_side(self) -> int:
        return self.image.size[0]


class InpaintEngine:
    """SDXL inpainting with exact compositing; see the module docstring."""

    prompt_used = True  # the prompt guides what is painted: every prompt attribute was asked for

    def __init__(self, config: EngineConfig):
        self.config = config
        self.device = resolve_device(config.device, "engine.device")
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.pipe = load_pipeline(
            config.model,
            config.revision,
            config.variant,
            config.vae,
            config.lora,
            config.allow_pickle,
            config.scheduler,
            self.dtype,
            self.device,
            config.compile,
        )

    @property
    def identity(self) -> dict:
        """Provenance for each shard's `engine` column: everything that decides the pixels."""
        c = self.config
        return {
            "kind": "sdxl",
            "model": c.model,
            "revision": c.revision,
            "variant": c.variant,
            "vae": c.vae,
            "lora": c.lora,
            "unet_in_channels": int(self.pipe.unet.config.in_channels),
            "scheduler": c.scheduler,
            "scheduler_class": type(self.pipe.scheduler).__name__,
            "steps": c.steps,
            "guidance_scale": c.guidance_scale,
            "strength": c.strength,
            "resolution": c.resolution,
            "output_resolution": c.output_resolution,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "mask_dilation": c.mask_dilation,
            "mask_feather": c.mask_feather,
            "region": c.region,
            "crop_context": c.crop_context,
            "crop_min": c.crop_min,
            "crop_resolution": c.crop_resolution,
            "random_weights": is_tiny_model(self.pipe.config._name_or_path),
            "diffusers_version": diffusers.__version__,
            "torch_version": torch.__version__,
        }

    def window(self, mask: np.ndarray) -> Window:
        """The part of the frame (of `mask`'s size) the model paints for this label; see `window.py`."""
        return paint_window(mask, self.config)

    def working_side(self, window: Window) -> int:
        return working_side(window, self.config)

    def inpaint(
        self,
        frames: list[np.ndarray],
        masks: list[np.ndarray],
        prompts: list[str],
        negatives: list[str],
        seeds: list[int],
        timer: StageTimer | None = None,
    ) -> list[np.ndarray]:
        """Composited RGB uint8 frames, one per input, each the size of its source frame.

        Samples are batched by working side (a pipeline call takes one size); per-sample generators
        make the pixels independent of the grouping, and results come back in input order.
        """
        timer = timer or StageTimer()
        if not len(frames) == len(masks) == len(prompts) == len(negatives) == len(seeds):
            raise ValueError("inpaint: frames, masks, prompts, negatives and seeds must have the same length")
        for frame, mask in zip(frames, masks):
            if frame.ndim != 3 or frame.shape[2] != 3 or mask.shape != frame.shape[:2]:
                raise ValueError(f"inpaint: frame {frame.shape} must be HxWx3 and its mask {mask.shape} HxW")
        sides = [self.working_side(self.window(mask)) for mask in masks]
        order = sorted(range(len(frames)), key=lambda i: sides[i])  # stable: input order within a side
        batches = [
            chunk
            for side in sorted(set(sides))
            for group in [[i for i in order if sides[i] == side]]
            for chunk in (group[start:start + self.config.batch_size]
                          for start in range(0, len(group), self.config.batch_size))
        ]
        results: dict[int, np.ndarray] = {}

        def prepare(chunk: list[int]) -> list[PreparedSample]:
            inputs = ([values[i] for i in chunk] for values in (frames, masks, prompts, negatives, seeds))
            return timer.time("prepare", lambda: self.prepare_batch(*inputs))

        def paste(chunk: list[int], batch: list[PreparedSample], generated: list[np.ndarray]) -> None:
            results.update(zip(chunk, timer.time("composite", lambda: self.composite_batch(batch, generated))))

        # With overlap_cpu, one helper thread prepares batch k+1 and composites batch k-1 while the model
        # runs batch k on this thread (stage seconds then overlap the model's).
        pool = ThreadPoolExecutor(1, thread_name_prefix="inpaint-cpu") if self.config.overlap_cpu else None
        submit = pool.submit if pool else _run_now
        try:
            upcoming = submit(prepare, batches[0]) if batches else None
            pasting = []
            for k, chunk in enumerate(batches):
                batch = upcoming.result()
                if k + 1 < len(batches):
                    upcoming = submit(prepare, batches[k + 1])
                generated = timer.time("model", lambda: self._run_with_oom_split(batch, self.generate_batch))
                pasting.append(submit(paste, chunk, batch, generated))
            for done in pasting:
                done.result()
        finally:
            if pool:
                pool.shutdown(cancel_futures=True)
        return [results[i] for i in range(len(frames))]

    def prepare_batch(self, frames, masks, prompts, negatives, seeds) -> list[PreparedSample]:
        """Repaint region at output size (the config's pixels are output pixels); its window, padded to a
        square, to the working side."""
        batch = []
        for frame, mask, prompt, negative, seed in zip(frames, masks, prompts, negatives, seeds):
            window = self.window(mask)
            alpha = repaint_region(mask[window.slices], self.config.mask_dilation, self.config.mask_feather)
            # The model repaints everywhere alpha > 0, so the soft seam blends two plausible images.
            region = np.where(alpha > 0, 255, 0).astype(np.uint8)
            side = (self.working_side(window),) * 2
            batch.append(
                PreparedSample(
                    frame=frame,
                    alpha=alpha,
                    window=window,
                    image=Image.fromarray(resize_image(pad_square(frame[window.slices]), side)),
                    mask_image=Image.fromarray(resize_mask(pad_square(region, value=0), side, cover="any")),
                    prompt=prompt,
                    negative=negative,
                    seed=int(seed),
                )
            )
        return batch

    def generate_batch(self, batch: list[PreparedSample]) -> list[np.ndarray]:
        """The model call. One generator per sample keeps a sample's pixels independent of its batch."""
        side = batch[0].working_side
        if any(s.working_side != side for s in batch):
            raise ValueError("generate_batch: one pipeline call takes one working size")
        generators = [torch.Generator(device=self.device).manual_seed(s.seed) for s in batch]
        images = self.pipe(
            prompt=[s.prompt for s in batch],
            negative_prompt=[s.negative for s in batch],
            image=[s.image for s in batch],
            mask_image=[s.mask_image for s in batch],
            height=side,
            width=side,
            strength=self.config.strength,
            guidance_scale=self.config.guidance_scale,
            num_inference_steps=self.config.steps,
            generator=generators,
            output_type="np",
        ).images
        return [np.clip(np.rint(image * 255), 0, 255).astype(np.uint8) for image in images]

    def composite_batch(self, batch: list[PreparedSample], generated: list[np.ndarray]) -> list[np.ndarray]:
        """Back to each window's size and pasted into the frame: outside the repaint region, the source
        exactly (the region lies inside the window, and `composite` keeps every alpha == 0 pixel)."""
        results = []
        for sample, image in zip(batch, generated):
            window = sample.window
            painted = unpad_square(resize_image(image, (window.side, window.side)), window.width, window.height)
            result = sample.frame.copy()
            result[window.slices] = composite(sample.frame[window.slices], painted, sample.alpha)
            results.append(result)
        return results

    def _run_with_oom_split(self, batch: list, call: Callable[[list], list]) -> list:
        """`call(batch)`; on CUDA out-of-memory, retry each half, down to single samples, then give up."""
        try:
            return call(batch)
        except torch.cuda.OutOfMemoryError:
            if len(batch) == 1:
                raise
        # Outside the except block: the traceback, and the activations its frames hold, are released.
        torch.cuda.empty_cache()
        half = len(batch) // 2
        log.warning("CUDA out of memory on a batch of %d: retrying as %d + %d", len(batch), half, len(batch) - half)
        return self._run_with_oom_split(batch[:half], call) + self._run_with_oom_split(batch[half:], call)
