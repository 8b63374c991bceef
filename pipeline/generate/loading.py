"""Loading SDXL inpainting components for real: a hub id, a local folder (safetensors), or the one
reserved name under which a job reaches random weights (`testing/tiny-random`, for tests).

Every failure is one `ModelLoadError` line naming the setting and the value: a misspelt folder is an
error, never a fresh model; weights only in pickle are refused unless allowed. The engine
(`sdxl.py`) and the LoRA fine-tuning both load through here.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    StableDiffusionXLInpaintPipeline,
    UniPCMultistepScheduler,
)
from huggingface_hub.errors import EntryNotFoundError

from pipeline.config import TINY_MODEL_ID
from pipeline.core import logsetup
from pipeline.errors import ModelLoadError

log = logging.getLogger(__name__)

TINY_MODEL_MARKER = "tiny_model.json"
"""Written into every tiny random model's folder: shards made with one say `random_weights`."""


def is_tiny_model(path: str | os.PathLike) -> bool:
    """Whether a model folder holds random weights built here (shards made with it must say so)."""
    return (Path(path) / TINY_MODEL_MARKER).is_file()


def cache_dir() -> Path:
    return Path(os.environ.get("POLYP_SYNTH_CACHE", Path.home() / ".cache" / "polyp-synth"))


def reserved_model_dir() -> Path:
    """Where the model behind `testing/tiny-random` lives (`polyp-synth build-tiny-model --reserved`
    builds it there; the CLI does on first use)."""
    return cache_dir() / "tiny-random-sdxl-inpaint"


def reserved_tiny_model() -> Path:
    """The folder behind `engine.model: testing/tiny-random`; an error when it was never built."""
    folder = reserved_model_dir()
    if not is_tiny_model(folder):
        raise ModelLoadError(f"engine.model: {TINY_MODEL_ID} is not built at {folder}: run "
                             "`polyp-synth build-tiny-model --reserved` (the CLI builds it on first use)")
    return folder


SCHEDULERS = {
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "ddim": DDIMScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
    "lcm": LCMScheduler,  # with an LCM-LoRA (engine.lora): a few steps, no CFG
}
# Pipelines with SDXL's components (two text encoders, text_time UNet): the inpainting pipeline loads
# any of them; a base SDXL checkpoint gives a 4-channel UNet, which diffusers inpaints by latent blending.
SDXL_PIPELINES = {"StableDiffusionXLInpaintPipeline", "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PICKLE_SUFFIXES = {".bin", ".ckpt", ".pt", ".pth", ".pkl"}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
LOAD_ERRORS = (OSError, ValueError, EntryNotFoundError)  # what from_pretrained raises for a bad model or no network



def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto" is bfloat16 on CUDA (SDXL's VAE overflows in float16) and float32 on the CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def local_path(value: str, field: str) -> Path | None:
    """The local file or folder `value` names, or None when it is a hub id (org/name)."""
    path = Path(value).expanduser()
    if path.exists():
        return path
    if HUB_ID.fullmatch(value):
        return None
    raise ModelLoadError(f"{field}: {value}: no such file or folder, and not a Hugging Face hub id (org/name)")


def _describe(folder: Path) -> str:
    """What a folder that is not a pipeline looks like, for the error message."""
    config = folder / "config.json"
    if config.is_file():
        try:
            info = json.loads(config.read_text())
        except json.JSONDecodeError:
            info = {}
        class_name = info.get("_class_name") or (info.get("architectures") or ["unknown"])[0]
        return f"a single {class_name} model (config.json), not a whole pipeline"
    names = sorted(p.name for p in folder.iterdir())
    return f"a folder of {len(names)} entries ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"


def _refuse_pickle_only(path: Path, field: str) -> None:
    """Unpickling can run arbitrary code: refuse weights that exist only as pickle unless allowed."""
    files = [path] if path.is_file() else [f for f in sorted(path.rglob("*")) if f.is_file()]
    safe_folders = {f.parent for f in files if f.suffix == ".safetensors"}
    pickled = [f for f in files if f.suffix in PICKLE_SUFFIXES and f.parent not in safe_folders]
    if pickled:
        names = ", ".join(str(f.relative_to(path)) if f != path else f.name for f in pickled[:4])
        raise ModelLoadError(
            f"{field}: {path} has weights only as pickle ({names}), and pickle can run code when loaded: "
            "convert them to safetensors, or set engine.allow_pickle=true if you trust them"
        )


def check_pipeline_folder(path: Path, allow_pickle: bool) -> None:
    """Fail early, naming what the folder is, when it is not an SDXL pipeline."""
    if not path.is_dir():
        raise ModelLoadError(
            f"engine.model: {path} is a file; expected a diffusers SDXL pipeline folder (with model_index.json)"
        )
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelLoadError(f"engine.model: {path} has no model_index.json: it is {_describe(path)}")
    try:
        class_name = json.loads(index.read_text()).get("_class_name")
    except (json.JSONDecodeError, AttributeError):
        raise ModelLoadError(f"engine.model: {index} is not a valid model_index.json") from None
    if class_name not in SDXL_PIPELINES:
        raise ModelLoadError(
            f"engine.model: {path} holds a {class_name}, not an SDXL pipeline ({', '.join(sorted(SDXL_PIPELINES))})"
        )
    if not allow_pickle:
        _refuse_pickle_only(path, "engine.model")


def load_component(field: str, value: str, is_hub: bool, load: Callable):
    """Run a from_pretrained call; turn its failure into one line naming the setting and the value."""
    try:
        return load()
    except LOAD_ERRORS as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        hint = ""
        if is_hub:
            hint = (
                f" (no local folder of that name, so it was looked up as a hub id; without network, download it"
                f" beforehand (huggingface-cli download {value}) and set HF_HUB_OFFLINE=1,"
                f" or set {field} to a local folder)"
            )
        raise ModelLoadError(f"{field}: cannot load {value}: {reason}{hint}") from exc


def _load_vae(value: str, dtype: torch.dtype, allow_pickle: bool) -> AutoencoderKL:
    """A separate VAE: a VAE folder, a pipeline folder (its vae/), or a hub id."""
    path = local_path(value, "engine.vae")
    subfolder = None
    if path is not None:
        if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
            subfolder = "vae"
        if not allow_pickle:
            _refuse_pickle_only(path, "engine.vae")
    return load_component(
        "engine.vae",
        value,
        path is None,
        lambda: AutoencoderKL.from_pretrained(
            value, subfolder=subfolder, torch_dtype=dtype, use_safetensors=True if not allow_pickle else None
        ),
    )


def _load_lora(pipe: StableDiffusionXLInpaintPipeline, value: str, allow_pickle: bool) -> None:
    path = local_path(value, "engine.lora")
    kwargs = {"use_safetensors": True if not allow_pickle else None}
    if path is not None:
        if not allow_pickle:
            _refuse_pickle_only(path, "engine.lora")
        if path.is_file():
            value, kwargs["weight_name"] = str(path.parent), path.name
    load_component("engine.lora", value, path is None, lambda: pipe.load_lora_weights(value, **kwargs))


@functools.lru_cache(maxsize=1)
def load_pipeline(
    model: str,
    revision: str | None,
    variant: str | None,
    vae: str | None,
    lora: str | None,
    allow_pickle: bool,
    scheduler: str,
    dtype: torch.dtype,
    device: torch.device,
    compile: bool = False,
) -> StableDiffusionXLInpaintPipeline:
    """Load the pipeline once per process (cached on everything that shapes it)."""
    logsetup.quiet_model_libraries()
    if model == TINY_MODEL_ID:
        model = str(reserved_tiny_model())
    path = local_path(model, "engine.model")
    if path is not None:
        check_pipeline_folder(path, allow_pickle)
    kwargs = {
        "revision": revision,
        "variant": variant,
        "torch_dtype": dtype,
        # True refuses pickle; None prefers safetensors and falls back to pickle (False would demand pickle)
        "use_safetensors": True if not allow_pickle else None,
        "add_watermarker": False,  # the invisible watermark would alter the synthetic training images
    }
    if vae is not None:
        kwargs["vae"] = _load_vae(vae, dtype, allow_pickle)
    pipe = load_component(
        "engine.model", model, path is None, lambda: StableDiffusionXLInpaintPipeline.from_pretrained(model, **kwargs)
    )
    if lora is not None:
        _load_lora(pipe, lora, allow_pickle)
    if scheduler != "default":
        pipe.scheduler = SCHEDULERS[scheduler].from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)  # the shard worker reports progress, not every denoising step
    log.info("loaded %s (UNet with %d input channels) on %s as %s", model, pipe.unet.config.in_channels, device, dtype)
    pipe.to(device)
    if compile:
        # Automatic dynamic shapes: the first batch compiles a static graph; a shard's partial last batch or a
        # second working side recompiles once with that dimension symbolic, not once per shape.
        pipe.unet = torch.compile(pipe.unet)
        log.info("the UNet compiles on its first batch, and once more for a new batch size or side (minutes each "
                 "on a full-size model)")
    return pipe
