"""The fine-tuning job (`jobs/finetune.yaml`): validated before any work starts, `--set` like every job.

The `engine` section is the generate job's own: the base model is loaded with the engine's checks,
and the repaint region is made with its `mask_dilation` and `mask_feather`, so the LoRA learns the
task the engine later asks of it. `engine.resolution` is the training resolution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config import EngineConfig, ExecutorConfig, _Section, load_config
from pipeline.core.digests import json_digest


class FinetuneDataConfig(_Section):
    """Real labelled polyps: `images/<id>.*` and `masks/<id>.*` with the same file stem."""

    images: str = Field(description="folder of RGB frames")
    masks: str = Field(description="folder of label masks (grey > 127 is the lesion), same stems as the images")
    split: str | None = Field(None, description="text file of ids (file stems) to train on, one a line; "
                              "None: every pair not held out for validation")
    limit: int | None = Field(None, gt=0, description="train on at most this many pairs (the first by id)")


class CaptionsConfig(_Section):
    """Captions rendered from the prompt bank with what can be measured, or read from a CSV."""

    bank: str = "prompts/clinical.yaml"
    preset: str = Field("masks/default.yaml", description="mask preset whose area bands give the size class")
    known: dict[str, str] = Field(default_factory=dict,
                                  description="bank attributes true of every image, e.g. {modality: wli}")
    csv: str | None = Field(None, description="CSV with columns id,caption; replaces the bank")


class LoraConfig(_Section):
    rank: int = Field(16, gt=0)
    alpha: float = Field(16.0, gt=0, description="LoRA scale is alpha / rank")
    targets: tuple[str, ...] = Field(("to_k", "to_q", "to_v", "to_out.0"), min_length=1,
                                     description="UNet module names that get LoRA layers")
    dropout: float = Field(0.0, ge=0, lt=1)


class TrainConfig(_Section):
    steps: int = Field(1000, gt=0)
    batch_size: int = Field(1, gt=0, description="samples per worker and step")
    learning_rate: float = Field(1e-4, gt=0)
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant"
    lr_warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(1e-2, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    snr_gamma: float | None = Field(5.0, gt=0, description="min-SNR weighting; None weighs every step alike")
    optimizer: Literal["auto", "adamw", "adamw8bit"] = Field(
        "auto", description="auto: 8-bit AdamW when bitsandbytes and a GPU are there, else AdamW")
    gradient_checkpointing: bool = True
    checkpoint_every: int = Field(100, gt=0)
    keep_checkpoints: int = Field(2, gt=0)


class ValidationConfig(_Section):
    """Contact sheets of held-out frames inpainted with fixed seeds, so a person sees the LoRA learn."""

    split: str | None = Field(None, description="text file of ids to draw; None: pairs left out of training")
    count: int = Field(4, ge=0, description="frames on each sheet; 0: no sheets")
    every: int = Field(100, gt=0)
    seed: int = 0


class FinetuneConfig(_Section):
    output: str = Field("runs/finetune", description="folder of this fine-tuning run (shared by every worker)")
    seed: int = 0
    engine: EngineConfig = EngineConfig()
    data: FinetuneDataConfig
    captions: CaptionsConfig = CaptionsConfig()
    lora: LoraConfig = LoraConfig()
    train: TrainConfig = TrainConfig()
    validation: ValidationConfig = ValidationConfig()
    executor: ExecutorConfig = ExecutorConfig()

    @field_validator("engine")
    @classmethod
    def _no_lora_to_start_from(cls, engine: EngineConfig) -> EngineConfig:
        if engine.lora is not None:
            raise ValueError("lora: fine-tuning trains a new LoRA on the base model; unset engine.lora")
        return engine

    @model_validator(mode="after")
    def _local_output(self) -> FinetuneConfig:
        if "://" in self.output:
            raise ValueError(f"output: {self.output}: checkpoints need a file system path (a shared mount on a "
                             "cluster), not a URL")
        return self

    def training_digest(self) -> str:
        """Identity of what the weights depend on: a checkpoint resumes only a run of the same digest.

        Length, bookkeeping, placement and the sampler of the validation sheets are left out, so a run
        can be extended (`train.steps`), moved to another machine, or checkpointed and drawn at other
        intervals."""
        tree = self.model_dump(mode="json", exclude={
            "output": True, "executor": True, "validation": True,
            "train": {"steps", "checkpoint_every", "keep_checkpoints"},
            "engine": {"device", "batch_size", "scheduler", "steps", "guidance_scale", "strength"},
        })
        return json_digest(tree)


def load_finetune_config(path: str | Path, overrides: list[str] = ()) -> FinetuneConfig:
    return load_config(path, overrides, FinetuneConfig)
