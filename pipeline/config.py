"""Typed job configuration: one YAML file per job, validated before any work starts.

Unknown keys and bad values are `ConfigError`s naming the offending field, and `--set a.b=value`
overrides any field from the command line (the value is parsed as YAML, so `--set engine.steps=30`
gives an int and `--set engine.vae=null` clears a field).
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from pipeline.core.digests import json_digest
from pipeline.core.lesion_bins import SIZE_BINS
from pipeline.core.yamlio import read_mapping, validate
from pipeline.errors import UNION_TAG_PREFIX, ConfigError

M = TypeVar("M", bound=BaseModel)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelledSetConfig(_Section):
    """A labelled real set (images/ + masks/) whose training split a job builds an input from: the
    donor library, or host frames cut from the polyp-free side of its frames."""

    images: str = Field(description="folder of images (<id>.jpg/.png)")
    masks: str = Field(description="folder of binary masks with the same ids (JPEG masks are thresholded at 127)")
    split: str | None = Field(None, description="file of the ids to use (one per line): the TRAINING split")


class FramesConfig(_Section):
    """Where the normal (polyp-free) frames come from."""

    source: str = Field(description="folder, glob pattern or fsspec URL (s3://bucket/prefix/*.jpg)")
    polyp_free_from: LabelledSetConfig | None = Field(
        None, description="cut `source` (a folder) from this labelled set on first use: real framings "
        "(lumen, light fall-off, the endoscope's field of view) decide realism more than the engine does")
    min_size: int = Field(128, gt=0, description="frames smaller than this on either side are skipped")
    limit: int | None = Field(None, gt=0, description="use at most this many frames (sorted by URI)")
    metadata: str | None = Field(
        None, description="CSV with a 'frame' column (file name or URI) and prompt-bank axis columns "
        "(e.g. modality, location): values the frame decides, overriding modality detection"
    )

    @model_validator(mode="after")
    def _a_folder_to_cut_into(self) -> FramesConfig:
        if self.polyp_free_from is not None and any(c in self.source for c in "*?["):
            raise ValueError(f"source: {self.source}: polyp_free_from cuts frames into a folder, not a glob pattern")
        return self


class PromptsConfig(_Section):
    bank: str = "prompts/clinical.yaml"


class RealMasksConfig(_Section):
    """How real labels are augmented (`masks.source: real`, `pipeline/plan/masks/real.py`); their size
    is always the one the sample's size class asks for."""

    labelled: LabelledSetConfig = Field(description="the labelled set whose training split's masks are used")
    flip: bool = Field(True, description="mirror half of them left-right")
    rotate: float = Field(180.0, ge=0, le=180, description="turn each by up to this many degrees either way")


class MasksConfig(_Section):
    preset: str = Field("masks/default.yaml", description="procedural shapes, and the lesion sizes of every source")
    source: Literal["procedural", "real"] = Field(
        "procedural", description="real: labels of a labelled set's training split (masks.real), flipped, "
        "rotated, scaled to the planned size and shifted into the field of view")
    real: RealMasksConfig | None = None

    @model_validator(mode="after")
    def _real_needs_a_set(self) -> MasksConfig:
        if (self.source == "real") != (self.real is not None):
            raise ValueError("source: real takes its labels from masks.real.labelled (images, masks, split); "
                             "masks.real is for source: real only")
        return self


class TargetsConfig(_Section):
    """Aim the plan's lesion sizes at the bins a segmenter fails in (`pipeline/plan/targets.py`)."""

    from_evaluation: str | None = Field(None, description="an `evaluate --json` report: each size bin weighted "
                                        "by its natural share times (1 - its Dice)")
    size: dict[str, float] | None = Field(None, description="or the weights of the size bins themselves "
                                          f"({', '.join(f'{n}: {label}' for n, _, _, label in SIZE_BINS)} of the frame)")
    max_boost: float = Field(3.0, ge=1.0, description="no bin above this multiple of its natural share")

    @model_validator(mode="after")
    def _one_source(self) -> TargetsConfig:
        if (self.from_evaluation is None) == (self.size is None):
            raise ValueError("give from_evaluation (an evaluate --json report) or size (weights per bin), not both")
        names = [name for name, *_ in SIZE_BINS]
        if self.size is not None and (set(self.size) - set(names) or any(w < 0 for w in self.size.values())
                                      or not any(self.size.values())):
            raise ValueError(f"size: {self.size}: expected non-negative weights of the bins {', '.join(names)}")
        return self


NegativeKind = Literal["frame", "lookalike"]
LookalikeKind = Literal["specular", "bubble", "fold", "stool"]
NEGATIVE_KINDS: tuple[str, ...] = get_args(NegativeKind)
LOOKALIKE_KINDS: tuple[str, ...] = get_args(LookalikeKind)


class NegativesConfig(_Section):
    """Hard negatives: samples whose label is empty, so trainers learn where not to fire: the
    polyp-free frame as it is (`frame`), or with a polyp-like distractor painted in without a label
    (`lookalike`: a specular cluster, bubbles, a fold, a stool fragment)."""

    ratio: float = Field(gt=0, le=4, description="negatives per polyp sample: 0.25 makes one sample in five a negative")
    kinds: list[NegativeKind] = Field(list(NEGATIVE_KINDS), min_length=1)
    lookalikes: list[LookalikeKind] = Field(
        list(LOOKALIKE_KINDS), min_length=1, description="the distractors a lookalike draws from")

    @property
    def share(self) -> float:
        """The chance that a planned sample is a negative: ratio / (1 + ratio)."""
        return self.ratio / (1 + self.ratio)


TINY_MODEL_ID = "testing/tiny-random"
"""The only name under which a job reaches random weights (a tiny SDXL built locally, for tests): a
model path the user typed never builds one."""

SDXL_ALGORITHM = 1
"""Raised whenever the SDXL engine makes other pixels from the same settings and weights (its window,
compositing, seeding), so a resumed run never mixes shards of two versions; the golden-pixel test
(tests/test_golden.py) fails when the pixels change and this does not."""

_SDXL_PIXEL_SETTINGS = (
    "model", "revision", "variant", "vae", "lora", "resolution", "output_resolution", "scheduler",
    "steps", "guidance_scale", "strength", "dtype", "mask_dilation", "mask_feather",
    "region", "crop_context", "crop_min", "crop_resolution",
)


class EngineConfig(_Section):
    """SDXL inpainting settings; everything here is recorded in each shard's `engine` column."""

    kind: Literal["sdxl"] = "sdxl"
    model: str = Field("diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
                       description=f"hub id, local folder, or {TINY_MODEL_ID} (random weights, for tests)")
    revision: str | None = None
    variant: str | None = None
    vae: str | None = Field(None, description="separate VAE (hub id or path), e.g. the fp16-fix VAE")
    lora: str | None = Field(None, description="LoRA weights (hub id, folder or .safetensors file)")
    allow_pickle: bool = Field(False, description="allow loading non-safetensors checkpoints")
    batch_size: int = Field(4, gt=0)
    resolution: int = Field(1024, gt=0, multiple_of=8, description="working resolution (square)")
    output_resolution: int | None = Field(
        None, gt=0, description="output side length; None keeps each source frame's own size"
    )
    scheduler: Literal["euler", "euler_a", "ddim", "dpmpp_2m", "unipc", "lcm", "default"] = Field(
        "euler", description="lcm: for an LCM-distilled LoRA (4–8 steps, guidance_scale 1); changes the "
        "pictures, so check a run with the gate before adopting it"
    )
    steps: int = Field(30, gt=0)
    guidance_scale: float = Field(7.5, ge=0)
    strength: float = Field(0.99, gt=0, le=1)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: str = "auto"
    mask_dilation: int = Field(
        8, ge=0, description="pixels (at output resolution) the repaint region extends past the label"
    )
    mask_feather: int = Field(4, ge=0, description="width of the soft blend at the repaint edge, pixels")
    region: Literal["crop", "frame"] = Field(
        "crop", description="crop: paint a square window around the repaint region; frame: the whole frame, "
        "padded to a square (never squashed)"
    )
    crop_context: float = Field(2.5, ge=1, description="crop side = this × the repaint region's longer side")
    crop_min: int = Field(256, gt=0, description="smallest crop side, output pixels")
    crop_resolution: int | None = Field(
        None, gt=0, multiple_of=8,
        description="working resolution for windows no larger than this (e.g. 768); None: always `resolution`",
    )
    overlap_cpu: bool = Field(
        False, description="prepare the next batch and composite the last one on a thread while the model runs "
        "(same pixels; pays on a GPU, where the model call leaves the CPU idle)"
    )
    compile: bool = Field(
        False, description="torch.compile the UNet (fuses its GroupNorms, GEGLUs and adds): a 1024² step 18 % "
        "shorter on an H200 in bf16, for about 2 minutes of compiling per worker, and again for its first "
        "partial batch and second working side (BENCHMARKS.md); pixels differ from eager by float rounding only"
    )

    def pixel_settings(self) -> dict[str, Any]:
        """Settings that decide a sample's pixels (part of its id), and the engine's algorithm version.
        Batch size and device are not: the same sample comes out of any batch; on another device or
        dtype it differs only by float rounding (README, "Same sample, same pixels")."""
        return {**{key: getattr(self, key) for key in _SDXL_PIXEL_SETTINGS}, "algorithm": SDXL_ALGORITHM}


TRANSPLANT_ALGORITHM = 2
"""Raised whenever the transplant engine makes other pixels from the same settings (2: light
reflections spared by the colour transfer), so a resumed run never mixes shards of two versions;
the golden-pixel test (tests/test_golden.py) fails when the pixels change and this does not."""


class TransplantEngineConfig(_Section):
    """Weight-free engine: real lesions from a donor library, warped onto the planned mask and blended."""

    kind: Literal["transplant"]
    donors: str = Field(description="donor library (Parquet, from `polyp-synth donors build`)")
    donors_source: LabelledSetConfig | None = Field(
        None, description="build `donors` from this labelled set when the file is missing; None: it must exist"
    )
    blend: Literal["alpha", "pyramid", "poisson"] = Field(
        "pyramid", description="alpha: feathered paste; pyramid: Laplacian-pyramid blend; poisson: cv2.seamlessClone"
    )
    colour_transfer: bool = Field(True, description="Reinhard transfer in Lab from the donor's mucosa to the frame's")
    candidates: int = Field(8, gt=0, description="the seed picks among this many most compatible donors")
    output_resolution: int | None = Field(
        None, gt=0, description="output side length; None keeps each source frame's own size"
    )
    mask_dilation: int = Field(3, ge=0, description="pixels the repaint region extends past the label")
    mask_feather: int = Field(6, ge=0, description="width of the soft blend at the repaint edge, pixels")

    def pixel_settings(self) -> dict[str, Any]:
        """Settings that decide a sample's pixels (part of its id), and the engine's algorithm version;
        where the library came from does not."""
        return {**self.model_dump(mode="json", exclude={"donors_source"}), "algorithm": TRANSPLANT_ALGORITHM}


def _engine_kind(value: Any) -> str:
    kind = value.get("kind", "sdxl") if isinstance(value, dict) else getattr(value, "kind", None)
    return f"{UNION_TAG_PREFIX}{kind}"


AnyEngineConfig = Annotated[
    Annotated[EngineConfig, Tag(f"{UNION_TAG_PREFIX}sdxl")]
    | Annotated[TransplantEngineConfig, Tag(f"{UNION_TAG_PREFIX}transplant")],
    Discriminator(_engine_kind, custom_error_type="engine_kind",
                  custom_error_message="kind must be sdxl or transplant"),
]
"""The `engine` section: `kind: sdxl` (the default, so older job files keep working) or `kind: transplant`."""


class ExecutorConfig(_Section):
    kind: Literal["local", "ray"] = "local"
    address: str | None = Field(None, description="Ray address; None uses RAY_ADDRESS or 'auto'")
    num_gpus_per_worker: float = Field(1.0, ge=0)
    num_cpus_per_worker: float = Field(0.5, gt=0)
    max_workers: int | None = Field(None, gt=0, description="None: one worker per GPU (CPU: 1)")
    shard_retries: int = Field(2, ge=0)
    timeout_s: float = Field(3600.0, gt=0, description="longest wait for any single shard")
    connect_timeout_s: float = Field(60.0, gt=0, description="longest wait for a named Ray cluster to answer")


class GateReferenceConfig(_Section):
    """Real polyp images the gate measures against (`polyp-synth reference build` writes `path`)."""

    path: str = Field("references/default", description="reference folder; built from `images` when missing")
    images: str | None = Field(None, description="folder of real polyp images to build the reference from")
    masks: str | None = Field(None, description="their masks (same file stems): lesion crops and the probe")
    negatives: str | None = Field(None, description="polyp-free frames: the probe's negative class")
    split: str | None = Field(None, description="file of the image ids (file stems) to use, one per line")
    limit: int | None = Field(None, gt=0, description="use at most this many images (sorted by name)")


class GateConfig(_Section):
    """Quality gate: per-sample bounds (each failed bound is a named reason), a per-shard KID bound
    (a shard above it is rejected whole), and run-level bounds (a run outside them fails the gate)."""

    enabled: bool = Field(True, description="false: `polyp-synth run` stops after generating (gate it later)")
    reference: GateReferenceConfig = GateReferenceConfig()
    extractor: Literal["efficientnet-lite0", "efficientnet-lite2", "inception"] = "efficientnet-lite0"
    inception_path: str | None = Field(None, description="folder or file of clean-fid's inception-2015-12-05.pt")
    device: str = "auto"
    batch_size: int = Field(32, gt=0)
    # per sample
    unpainted_ms_ssim_max: float | None = Field(0.98, description="MS-SSIM of the repaint window vs its source frame")
    leaked_fraction_max: float | None = Field(0.001, description="fraction of pixels changed outside the repaint region")
    blank_std_min: float | None = Field(4.0, description="grey-level standard deviation of the image")
    saturated_fraction_max: float | None = Field(0.3, description="fraction of pixels with a channel at 0 or 255 "
                                                                  "inside the field of view")
    lesion_score_min: float | None = Field(0.5, description="probe probability of a polyp in the label's crop")
    realism_min: float | None = Field(0.85, description="k-NN realism score of the label's crop against the "
                                                       "reference's lesion crops (1 = inside them)")
    duplicate_similarity_max: float | None = Field(0.995, description="cosine similarity of features to another sample")
    negative_lesion_max: float | None = Field(0.01, description="hard negatives (empty labels), with gate.segmenter: "
                                              "the share of the image it marks as lesion; above it, a lesion was "
                                              "found where the label says there is none")
    segmenter: str | None = Field(None, description="segmentation checkpoint (polyp-synth train, on real data): "
                                                    "turns on the label_mismatch check")
    label_iou_min: float | Literal["auto"] | None = Field(
        "auto", description="IoU of the segmenter's prediction with the label (checked only with gate.segmenter); "
        "auto: the IoU 90 % of held-out real images reach with that segmenter (recorded by `train --holdout`)")
    nearest_k: int = Field(5, gt=0, description="k of the k-NN balls (precision/recall/density/coverage, realism)")
    unscored_allowed: list[str] = Field(
        [], description="checks (by reason, e.g. unpainted, leaked) whose missing score does not reject a sample; by "
        "default a sample a check cannot score (e.g. its source frame cannot be read) is rejected as `unscored`")
    # per shard and per run
    shard_kid_max: float | None = Field(0.05, description="a shard whose lesion-crop KID exceeds this is rejected whole")
    run_kid_max: float | None = Field(None, description="the run fails when the KID of its samples exceeds this")
    run_fid_max: float | None = None
    run_precision_min: float | None = None
    acceptance_min: float | None = Field(
        0.5, ge=0, le=1, description="the run fails when fewer are accepted (a job that asks for "
        "samples.accepted is bounded by its max_attempts instead)")
    diversity_pairs: int = Field(8, ge=0, description="sampled image pairs per shard for the MS-SSIM diversity")


class AcceptedSamplesConfig(_Section):
    """Ask for N *accepted* samples: plan N, generate, gate, and plan replacements for the rejected
    (fresh seeds, the same distribution) round after round until N are accepted or the budget of
    attempts is spent (`pipeline/gate/rounds.py`)."""

    accepted: int = Field(gt=0, description="samples the gate must accept")
    max_attempts: float = Field(1.5, ge=1, description="at most this many samples planned per sample asked "
                                "(1.5: 150 attempts for 100 accepted); then the run stops and says why")

    @property
    def budget(self) -> int:
        """The most samples all rounds together may plan."""
        return int(self.accepted * self.max_attempts + 1e-9)


def _samples_kind(value: Any) -> str:
    return f"{UNION_TAG_PREFIX}{'accepted' if isinstance(value, (dict, AcceptedSamplesConfig)) else 'count'}"


SamplesSetting = Annotated[
    Annotated[int, Tag(f"{UNION_TAG_PREFIX}count")]
    | Annotated[AcceptedSamplesConfig, Tag(f"{UNION_TAG_PREFIX}accepted")],
    Discriminator(_samples_kind),
]
"""`samples`: a count, or `{accepted: N, max_attempts: 1.5}`; a mapping's errors name its own fields."""


class JobConfig(_Section):
    """A whole job. `run_id` may contain `{date}`, expanded when the job starts."""

    run_id: str = "run-{date}"
    seed: int = 0
    samples: SamplesSetting = Field(
        100, description="samples to plan, or {accepted: N, max_attempts: 1.5}: N the gate accepts")
    shard_size: int = Field(64, gt=0)
    output: str = "runs"
    frames: FramesConfig
    prompts: PromptsConfig = PromptsConfig()
    masks: MasksConfig = MasksConfig()
    targets: TargetsConfig | None = None
    negatives: NegativesConfig | None = None
    engine: AnyEngineConfig = EngineConfig()
    executor: ExecutorConfig = ExecutorConfig()
    gate: GateConfig = GateConfig()

    @field_validator("run_id")
    @classmethod
    def _run_id_is_a_name(cls, value: str) -> str:
        if not value or "/" in value or value.strip() != value:
            raise ValueError("must be a non-empty name without '/' or surrounding spaces")
        return value

    @field_validator("samples")
    @classmethod
    def _positive(cls, value: int | AcceptedSamplesConfig) -> int | AcceptedSamplesConfig:
        if isinstance(value, int) and value <= 0:
            raise ValueError("must be > 0 (or {accepted: N, max_attempts: 1.5})")
        return value

    @model_validator(mode="after")
    def _accepted_needs_the_gate(self) -> JobConfig:
        if self.until_accepted and not self.gate.enabled:
            raise ValueError("samples.accepted: the gate decides what is accepted; set gate.enabled: true, "
                             "or ask for a number of samples")
        return self

    @property
    def first_round(self) -> int:
        """Samples the first plan holds: all of them, or the N accepted ones asked for."""
        return self.samples if isinstance(self.samples, int) else self.samples.accepted

    @property
    def until_accepted(self) -> AcceptedSamplesConfig | None:
        """The `samples: {accepted: N}` form, when the job asks for accepted samples."""
        return None if isinstance(self.samples, int) else self.samples

    def resolved_run_id(self, today: _dt.date | None = None) -> str:
        return self.run_id.format(date=(today or _dt.date.today()).isoformat())

    def run_dir(self) -> str:
        """Output location of this run: `<output>/<run_id>` (local path or fsspec URL)."""
        return f"{self.output.rstrip('/')}/{self.resolved_run_id()}"

    def plan_digest(self) -> str:
        """Hash of what defines the plan (seed, size, frames, prompts, masks, the engine's pixel
        settings), to tell whether a run's plan still matches its job. Gate bounds, executor and
        output are not in it: changing them must not orphan a run."""
        return json_digest({
            "seed": self.seed, "shard_size": self.shard_size,
            # only what decides the first round: raising max_attempts to finish a run must not orphan it
            "samples": self.samples if isinstance(self.samples, int) else {"accepted": self.samples.accepted},
            **self.model_dump(mode="json", include={"frames", "prompts", "masks"},
                              exclude={"frames": {"polyp_free_from"} if self.frames.polyp_free_from is None else set(),
                                       "masks": {"source", "real"} if self.masks.source == "procedural" else set()}),
            **({"targets": self.targets.model_dump(mode="json")} if self.targets else {}),
            **({"negatives": self.negatives.model_dump(mode="json")} if self.negatives else {}),
            "engine": {"kind": self.engine.kind, **self.engine.pixel_settings()},
        })


def _set_path(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: --set {dotted}: '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str, source: str) -> tuple[str, Any]:
    """Split `a.b=value` and parse the value as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{source}: --set {text!r}: expected KEY=VALUE, e.g. --set engine.steps=30")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: --set {text!r}: value is not valid YAML ({exc.problem})") from None
    return key.strip(), value


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """A deep copy of `data` with each `a.b=value` override set (values parsed as YAML)."""
    tree = json.loads(json.dumps(data))  # deep copy, plain types only
    for text in overrides:
        key, value = parse_override(text, source)
        _set_path(tree, key, value, source)
    return tree


def config_from_dict(data: dict[str, Any], source: str = "config", overrides: list[str] = (),
                     model: type[M] = JobConfig) -> M:
    """Override and validate `data` as a `model` (a job, or another stage's config such as finetune)."""
    return validate(model, apply_overrides(data, overrides, source), ConfigError, source)


def load_config(path: str | Path, overrides: list[str] = (), model: type[M] = JobConfig) -> M:
    """Read, override and validate a job config; every problem is a one-line `ConfigError`."""
    return config_from_dict(read_mapping(path, ConfigError, "config"), str(path), overrides, model)
