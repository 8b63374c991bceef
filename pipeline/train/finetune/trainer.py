"""One fine-tuning process: the base pipeline with a LoRA on its UNet, trained on cached inputs.

The inputs are made the way generation makes them: the engine's own `prepare_batch` turns each real
frame and label into the working-resolution image and repaint region (dilation, feather), and the
pipeline's own processors and encoders turn those into latents, the latent-size mask, latents of the
image with the region erased, and text embeddings. They are encoded once, before the first step.

Every random draw of step s (the batch, the noise, the timesteps, LoRA dropout) comes from streams
seeded by (seed, s, rank), so a checkpoint's random state is its step number: a run killed after a
checkpoint and started again reproduces the weights of a run that was never interrupted.
Under Ray Train the same code runs on every worker; `distributed.py` passes the rank, the device and
the DDP wrapper.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import diffusers
import numpy as np
import peft
import torch
from diffusers import (
    DDPMScheduler,
    StableDiffusionXLInpaintPipeline,
    UNet2DConditionModel,
)
from diffusers.optimization import get_scheduler
from diffusers.training_utils import cast_training_params
from diffusers.utils import convert_state_dict_to_diffusers
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from pipeline.config import TINY_MODEL_ID, EngineConfig
from pipeline.core.devices import resolve_device
from pipeline.core.digests import seed_from
from pipeline.core.layout import LORA_FILE, FinetuneLayout
from pipeline.core.progress import ProgressReporter, progress_bar
from pipeline.core.sheets import contact_sheet, tile
from pipeline.errors import ConfigError, ModelLoadError, TrainError
from pipeline.generate.loading import (
    check_pipeline_folder,
    is_tiny_model,
    load_component,
    load_pipeline,
    local_path,
    reserved_tiny_model,
    resolve_dtype,
)
from pipeline.generate.sdxl import InpaintEngine
from pipeline.train.finetune.config import FinetuneConfig, TrainConfig
from pipeline.train.finetune.data import Example, FinetuneData, load_pair, prepare_data
from pipeline.train.finetune.objective import inpainting_loss, unet_input

log = logging.getLogger(__name__)

CHECKPOINT_LORA, CHECKPOINT_OPTIMIZER, CHECKPOINT_STATE = "lora.safetensors", "optimizer.pt", "state.json"
AESTHETIC_SCORES = (6.0, 2.5)  # the inpainting pipeline's defaults, used only by aesthetics-conditioned UNets


# ---------------------------------------------------------------------------------------------- model


class TrainingEngine(InpaintEngine):
    """The engine around the pipeline being trained (not loaded again): it prepares training inputs as
    generation does, and draws validation sheets with the UNet as it is now. One working side,
    `engine.resolution`, since a training batch has one size."""

    def __init__(self, config: EngineConfig, pipe: StableDiffusionXLInpaintPipeline, device: torch.device,
                 dtype: torch.dtype):
        self.config, self.pipe, self.device, self.dtype = config, pipe, device, dtype

    def working_side(self, window) -> int:
        return self.config.resolution


def _refuse_non_inpainting(engine: EngineConfig, channels: int) -> None:
    if channels != 9:
        raise ModelLoadError(
            f"engine.model: {engine.model} has a UNet with {channels} input channels, not an SDXL inpainting UNet "
            "(9: latents, mask, masked-image latents); fine-tune an inpainting pipeline"
        )


def check_base_model(engine: EngineConfig) -> None:
    """The engine's checks of the base model, and its UNet's input channels, from configs alone: a
    wrong model is refused before a cluster spends anything on it."""
    model = str(reserved_tiny_model()) if engine.model == TINY_MODEL_ID else engine.model
    path = local_path(model, "engine.model")
    if path is not None:
        check_pipeline_folder(path, engine.allow_pickle)
    unet = load_component("engine.model", model, path is None,
                 lambda: UNet2DConditionModel.load_config(model, subfolder="unet", revision=engine.revision))
    _refuse_non_inpainting(engine, unet.get("in_channels", 0))


def load_base(engine: EngineConfig, device: torch.device, dtype: torch.dtype) -> StableDiffusionXLInpaintPipeline:
    """The base pipeline through the engine's loader (its checks, its messages), never from its cache:
    training changes the UNet."""
    pipe = load_pipeline.__wrapped__(engine.model, engine.revision, engine.variant, engine.vae, None,
                                     engine.allow_pickle, engine.scheduler, dtype, device)
    _refuse_non_inpainting(engine, pipe.unet.config.in_channels)
    return pipe


def add_lora(pipe: StableDiffusionXLInpaintPipeline, config: FinetuneConfig) -> list[torch.nn.Parameter]:
    """Freeze the pipeline and give its UNet trainable LoRA layers (float32); their parameters."""
    for module in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.unet):
        module.requires_grad_(False)
    lora = config.lora
    torch.manual_seed(seed_from(f"{config.seed}:lora-init"))
    try:
        pipe.unet.add_adapter(peft.LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                              init_lora_weights="gaussian", target_modules=list(lora.targets)))
    except ValueError as exc:  # peft: no module matches the targets
        raise ConfigError(f"lora.targets: {list(lora.targets)}: {str(exc).splitlines()[0]}") from None
    cast_training_params(pipe.unet, dtype=torch.float32)
    if config.train.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    return [p for p in pipe.unet.parameters() if p.requires_grad]


def make_optimizer(params: list[torch.nn.Parameter], config: FinetuneConfig, device: torch.device):
    train = config.train
    kind = train.optimizer
    if kind == "auto":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            kind = "adamw"
        else:
            kind = "adamw8bit" if device.type == "cuda" else "adamw"
    if kind == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ConfigError("train.optimizer: adamw8bit needs bitsandbytes (pip install bitsandbytes)") from None
        optimizer = bnb.optim.AdamW8bit(params, lr=train.learning_rate, weight_decay=train.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=train.learning_rate, weight_decay=train.weight_decay)
    schedule = get_scheduler(train.lr_scheduler, optimizer, num_warmup_steps=train.lr_warmup_steps,
                             num_training_steps=train.steps)
    return optimizer, schedule


# ---------------------------------------------------------------------------------------------- inputs


@dataclass
class TrainingSet:
    """Every training example encoded once: the UNet's inputs except the noise."""

    latents: torch.Tensor  # N x 4 x h x w, scaled by the VAE's scaling factor
    masks: torch.Tensor  # N x 1 x h x w, the repaint region at latent size
    masked_latents: torch.Tensor  # N x 4 x h x w, the image with the region erased
    prompt_embeds: torch.Tensor  # N x tokens x width (both text encoders)
    pooled_embeds: torch.Tensor  # N x projection
    time_ids: torch.Tensor  # 1 x 6: original size, crop corner, target size

    def __len__(self) -> int:
        return len(self.latents)


@torch.no_grad()
def encode_examples(engine: TrainingEngine, examples: tuple[Example, ...], seed: int) -> TrainingSet:
    pipe, device, dtype, side = engine.pipe, engine.device, engine.dtype, engine.config.resolution
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in ("latents", "masks", "masked", "embeds", "pooled")}
    for example in progress_bar(examples, "encoding the training set", len(examples), "image"):
        frame, label = load_pair(example.image, example.mask, engine.config.output_resolution)
        [sample] = engine.prepare_batch([frame], [label], [example.caption], [""], [0])
        image = pipe.image_processor.preprocess(sample.image, height=side, width=side).to(device, dtype)
        region = pipe.mask_processor.preprocess(sample.mask_image, height=side, width=side)
        generator = torch.Generator(device).manual_seed(seed_from(f"{seed}:latents:{example.id}"))
        parts["latents"].append(pipe._encode_vae_image(image, generator=generator))
        mask, masked = pipe.prepare_mask_latents(region, image * (region.to(device) < 0.5), 1, side, side, dtype,
                                                 device, generator, False)
        parts["masks"].append(mask)
        parts["masked"].append(masked)
        embeds, _, pooled, _ = pipe.encode_prompt(example.caption, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        parts["embeds"].append(embeds)
        parts["pooled"].append(pooled)
    time_ids, _ = pipe._get_add_time_ids(
        (side, side), (0, 0), (side, side), *AESTHETIC_SCORES, (side, side), (0, 0), (side, side),
        dtype=dtype, text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
    )
    stacked = {name: torch.cat(values).to(device, dtype) for name, values in parts.items()}
    return TrainingSet(stacked["latents"], stacked["masks"], stacked["masked"], stacked["embeds"],
                       stacked["pooled"], time_ids.to(device))


def batch_indices(step: int, rank: int, world_size: int, per_worker: int, size: int, seed: int) -> list[int]:
    """Examples of one worker's batch. Global positions p = (step·W + rank)·B + k walk through one
    seeded permutation of the training set per epoch (epoch = p // N), so every example is seen once
    per epoch whatever the number of workers."""
    indices = []
    for k in range(per_worker):
        epoch, offset = divmod((step * world_size + rank) * per_worker + k, size)
        indices.append(int(np.random.default_rng(seed_from(f"{seed}:epoch:{epoch}")).permutation(size)[offset]))
    return indices


def batch_loss(unet: torch.nn.Module, scheduler: DDPMScheduler, data: TrainingSet, indices: list[int],
               generator: torch.Generator, snr_gamma: float | None) -> torch.Tensor:
    """The min-SNR weighted loss of one batch, with noise and timesteps drawn from `generator`."""
    latents = data.latents[indices]
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(indices),), generator=generator,
                              device=latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction = unet(
        unet_input(noisy, data.masks[indices], data.masked_latents[indices]), timesteps,
        encoder_hidden_states=data.prompt_embeds[indices],
        added_cond_kwargs={"text_embeds": data.pooled_embeds[indices],
                           "time_ids": data.time_ids.repeat(len(indices), 1)},
        return_dict=False,
    )[0]
    return inpainting_loss(scheduler, prediction, latents, noise, timesteps, snr_gamma)


def train_step(model: torch.nn.Module, scheduler: DDPMScheduler, data: TrainingSet, indices: list[int],
               generator: torch.Generator, params: list[torch.nn.Parameter], optimizer, schedule,
               train: TrainConfig, precision: contextlib.AbstractContextManager) -> float:
    """One optimiser step on one batch (forward under `precision`, clipped gradients); its loss."""
    with precision:
        loss = batch_loss(model, scheduler, data, indices, generator, train.snr_gamma)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


# ---------------------------------------------------------------------------------------------- checkpoints


@dataclass
class CheckpointState:
    step: int
    losses: list[float]
    training_digest: str
    world_size: int


def latest_checkpoint(layout: FinetuneLayout) -> Path | None:
    """The completed checkpoint of the highest step (a folder is renamed into place only when whole)."""
    if not layout.checkpoint_dir.is_dir():
        return None
    done = [(FinetuneLayout.checkpoint_step(p), p) for p in layout.checkpoint_dir.iterdir()
            if (p / CHECKPOINT_STATE).is_file()]
    done = [(step, p) for step, p in done if step is not None]
    return max(done)[1] if done else None


def save_checkpoint(layout: FinetuneLayout, state: CheckpointState, unet: torch.nn.Module, optimizer,
                    schedule, keep: int) -> Path:
    """LoRA weights, optimizer and schedule, step and losses, written whole or not at all; old ones pruned."""
    final = layout.checkpoint(state.step)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = get_peft_model_state_dict(unet)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in weights.items()}, tmp / CHECKPOINT_LORA)
    torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}, tmp / CHECKPOINT_OPTIMIZER)
    (tmp / CHECKPOINT_STATE).write_text(json.dumps(asdict(state)))
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    steps = sorted(s for p in layout.checkpoint_dir.iterdir() if (s := FinetuneLayout.checkpoint_step(p)) is not None)
    for old in steps[:-keep]:
        shutil.rmtree(layout.checkpoint(old), ignore_errors=True)
    return final


def load_checkpoint(folder: Path, config: FinetuneConfig, world_size: int, unet: torch.nn.Module, optimizer,
                    schedule, device: torch.device) -> CheckpointState:
    state = CheckpointState(**json.loads((folder / CHECKPOINT_STATE).read_text()))
    if state.training_digest != config.training_digest():
        raise TrainError(f"output: {folder} was made with other training settings (base model, data, captions, "
                         "LoRA or optimiser): choose another output folder, or delete it to start over")
    if state.world_size != world_size:
        raise TrainError(f"output: {folder} was trained on {state.world_size} workers, this run has {world_size}: "
                         "resume with the same number of GPUs (the data order depends on it)")
    set_peft_model_state_dict(unet, load_file(folder / CHECKPOINT_LORA, device=str(device)))
    saved = torch.load(folder / CHECKPOINT_OPTIMIZER, map_location=device, weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])
    return state


# ---------------------------------------------------------------------------------------------- outputs


def plot_losses(losses: list[float], out: Path) -> None:
    """Loss per step and its exponential moving average (α = 0.1)."""
    from matplotlib.figure import Figure

    smooth, value = [], losses[0] if losses else 0.0
    for loss in losses:
        value = 0.9 * value + 0.1 * loss
        smooth.append(value)
    figure = Figure(figsize=(7, 3.5), dpi=100)
    axes = figure.subplots()
    steps = np.arange(1, len(losses) + 1)
    axes.plot(steps, losses, lw=0.6, alpha=0.4, label="loss")
    axes.plot(steps, smooth, lw=1.5, label="moving average")
    axes.set_xlabel("step")
    axes.set_ylabel("min-SNR weighted MSE")
    axes.legend()
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)


@dataclass
class ValidationSet:
    examples: tuple[Example, ...]
    frames: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)


def draw_validation(engine: TrainingEngine, validation: ValidationSet, negative: str, seed: int, step: int,
                    out: Path) -> None:
    """Each held-out frame beside its inpainting by the model as it is at `step`, with fixed seeds."""
    was_training = engine.pipe.unet.training
    engine.pipe.unet.eval()
    try:
        painted = engine.inpaint(validation.frames, validation.masks, [e.caption for e in validation.examples],
                                 [negative] * len(validation.frames),
                                 [seed_from(f"{seed}:validation:{e.id}") for e in validation.examples])
    finally:
        engine.pipe.unet.train(was_training)
    cells = []
    for example, frame, mask, image in zip(validation.examples, validation.frames, validation.masks, painted):
        cells += [tile(frame, mask, f"{example.id} (real)"), tile(image, mask, f"step {step}: {example.caption}")]
    contact_sheet(cells, str(out))


@dataclass(frozen=True)
class FinetuneResult:
    lora: Path
    steps: int
    resumed_from: int | None
    losses: tuple[float, ...]
    seconds_per_step: float

    @classmethod
    def from_card(cls, layout: FinetuneLayout) -> FinetuneResult:
        """The summary of a finished run, read back from its card (how a Ray driver learns it)."""
        training = json.loads(layout.card_json.read_text())["training"]
        return cls(layout.lora, training["steps"], training["resumed_from"], tuple(training["last_losses"]),
                   training["seconds_per_step"])

    def line(self) -> str:
        start = f"resumed at step {self.resumed_from}, " if self.resumed_from else ""
        tail = np.mean(self.losses[-10:]) if self.losses else float("nan")
        return (f"{self.lora}: {self.steps} steps ({start}{self.seconds_per_step:.2f} s/step), "
                f"loss (last 10 steps) {tail:.4f}")


def write_card(layout: FinetuneLayout, config: FinetuneConfig, data: FinetuneData, pipe, world_size: int,
               result: FinetuneResult) -> None:
    """What the LoRA is: base model, data hashes, settings; JSON for tools and README.md for people."""
    engine = config.engine
    card = {
        "lora": LORA_FILE,
        "base_model": {"model": engine.model, "revision": engine.revision, "variant": engine.variant,
                       "vae": engine.vae, "prediction_type": pipe.scheduler.config.get("prediction_type"),
                       "random_weights": is_tiny_model(pipe.config._name_or_path)},
        "data": {"images": config.data.images, "masks": config.data.masks, "split": config.data.split,
                 "train_examples": len(data.train), "train_digest": data.digest(),
                 "train_sha256": {e.id: e.sha256 for e in data.train},
                 "validation_ids": [e.id for e in data.validation],
                 "captions": config.captions.csv or f"{config.captions.bank} (size from {config.captions.preset})"},
        "training": {"steps": result.steps, "resumed_from": result.resumed_from, "workers": world_size,
                     "global_batch": world_size * config.train.batch_size,
                     "last_losses": list(result.losses[-10:]),
                     "seconds_per_step": result.seconds_per_step, "training_digest": config.training_digest()},
        "settings": config.model_dump(mode="json"),
        "versions": {"diffusers": diffusers.__version__, "peft": peft.__version__, "torch": torch.__version__},
    }
    layout.card_json.write_text(json.dumps(card, indent=2))
    random_note = ("\n**The base model has random weights (a test model): this LoRA paints noise.**\n"
                   if card["base_model"]["random_weights"] else "")
    layout.card.write_text(
        f"# Polyp inpainting LoRA\n{random_note}\n"
        f"- base model: `{engine.model}`" + (f" (revision {engine.revision})" if engine.revision else "") + "\n"
        f"- trained on {len(data.train)} image/mask pairs from `{config.data.images}` (digest {data.digest()})\n"
        f"- LoRA rank {config.lora.rank}, alpha {config.lora.alpha}, on {', '.join(config.lora.targets)}\n"
        f"- {result.steps} steps, {world_size} worker(s) × batch {config.train.batch_size}, "
        f"learning rate {config.train.learning_rate}, min-SNR γ {config.train.snr_gamma}, "
        f"resolution {engine.resolution}\n\n"
        f"Use it in a generation job:\n\n```yaml\nengine:\n  model: {engine.model}\n"
        f"  lora: {layout.lora}\n```\n\nEverything else is in `{layout.card_json.name}`.\n"
    )


def save_lora(layout: FinetuneLayout, unet: torch.nn.Module) -> None:
    """`pytorch_lora_weights.safetensors` in diffusers' format, with its rank and alpha in the metadata,
    so `engine.lora` loads it with no conversion (written aside, then renamed into place)."""
    tmp = layout.root / f".lora-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    StableDiffusionXLInpaintPipeline.save_lora_weights(
        tmp, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(), weight_name=LORA_FILE,
    )
    os.replace(tmp / LORA_FILE, layout.lora)
    shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- the loop


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on the GPU when the frozen weights are half precision; nothing on the CPU."""
    if device.type == "cuda" and dtype != torch.float32:
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def finetune(config: FinetuneConfig, data: FinetuneData | None = None, rank: int = 0, world_size: int = 1,
             device: torch.device | None = None,
             wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda module: module,
             report: Callable[[dict], None] | None = None) -> FinetuneResult:
    """Train (or resume, or just finish) the LoRA of `config`; rank 0 writes every file."""
    data = data or prepare_data(config)
    device = device or resolve_device(config.engine.device, "engine.device")
    dtype = resolve_dtype(config.engine.dtype, device)
    layout, train, main = FinetuneLayout(Path(config.output)), config.train, rank == 0
    layout.root.mkdir(parents=True, exist_ok=True)

    pipe = load_base(config.engine, device, dtype)
    params = add_lora(pipe, config)
    optimizer, schedule = make_optimizer(params, config, device)
    found = latest_checkpoint(layout)
    state = CheckpointState(0, [], config.training_digest(), world_size)
    if found is not None:
        state = load_checkpoint(found, config, world_size, pipe.unet, optimizer, schedule, device)
        log.info("resuming from %s (step %d of %d)", found, state.step, train.steps)
    resumed_from = state.step or None

    engine = TrainingEngine(config.engine, pipe, device, dtype)
    training_set = encode_examples(engine, data.train, config.seed) if state.step < train.steps else None
    validation = ValidationSet(data.validation if main else ())
    for example in validation.examples:
        frame, mask = load_pair(example.image, example.mask, config.engine.output_resolution)
        validation.frames.append(frame)
        validation.masks.append(mask)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    model = wrap(pipe.unet)

    def validate(step: int) -> None:
        if main and validation.examples:
            draw_validation(engine, validation, data.negative, config.validation.seed, step,
                            layout.validation_sheet(step))
        if main and state.losses:
            plot_losses(state.losses, layout.loss_curve)

    if state.step == 0:
        validate(0)  # the base model's sheet: what the LoRA is compared with
    training_seconds, first_step = 0.0, state.step  # the steps alone: not validation, not checkpoints
    reporter = ProgressReporter("finetuning", train.steps, "step") if main else None
    if reporter:
        reporter.update(state.step)
    model.train()
    while state.step < train.steps:
        step = state.step
        torch.manual_seed(seed_from(f"{config.seed}:step:{step}:rank:{rank}"))  # LoRA dropout
        generator = torch.Generator(device).manual_seed(seed_from(f"{config.seed}:noise:{step}:rank:{rank}"))
        indices = batch_indices(step, rank, world_size, train.batch_size, len(training_set), config.seed)
        started = time.perf_counter()
        state.losses.append(train_step(model, scheduler, training_set, indices, generator, params, optimizer,
                                       schedule, train, autocast(device, dtype)))
        training_seconds += time.perf_counter() - started
        state.step += 1
        if reporter:
            reporter.update(extra=f"loss {state.losses[-1]:.4f}")
        if state.step % train.checkpoint_every == 0 or state.step == train.steps:
            if main:
                save_checkpoint(layout, state, pipe.unet, optimizer, schedule, train.keep_checkpoints)
            if report:  # every worker reports at the same steps (Ray Train waits for all)
                report({"step": state.step, "loss": float(np.mean(state.losses[-train.checkpoint_every:])),
                        "lr": schedule.get_last_lr()[0]})
        if state.step % config.validation.every == 0 or state.step == train.steps:
            validate(state.step)
    if reporter:
        reporter.close()
    done = state.step - first_step
    result = FinetuneResult(layout.lora, state.step, resumed_from, tuple(state.losses),
                            training_seconds / done if done else 0.0)
    if main:
        save_lora(layout, pipe.unet)
        write_card(layout, config, data, pipe, world_size, result)
        log.info("%s", result.line())
    return result
