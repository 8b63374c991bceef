"""The SDXL inpainting engine on a real (tiny, random) diffusers pipeline and real endoscopy frames."""

import json
import shutil

import cv2
import numpy as np
import pytest
import safetensors.torch
import torch

from pipeline.config import EngineConfig
from pipeline.errors import ModelLoadError
from pipeline.generate.composite import repaint_region
from pipeline.generate.sdxl import InpaintEngine
from pipeline.testing.data import shared_data
from pipeline.tools.tiny_model import build_tiny_model

DATA = shared_data()
PROMPT = "a 6 mm sessile polyp (Paris 0-Is) with a smooth pink surface, white light colonoscopy"
NEGATIVE = "blurry, text, watermark"


def make_engine(model, **settings) -> InpaintEngine:
    settings = {"resolution": 128, "steps": 4, "batch_size": 4, "device": "cpu", **settings}
    return InpaintEngine(EngineConfig(model=str(model), **settings))


def real_samples(count: int, height: int = 256, width: int = 256):
    """Normal-mucosa frames with real Kvasir-SEG polyp outlines as labels, cropped to height x width."""
    frames, masks = [], []
    mask_paths = sorted((DATA / "kvasir-seg" / "masks").glob("*.jpg"))
    for i in range(count):
        frame = cv2.cvtColor(cv2.imread(str(DATA / "normal-mucosa" / f"{i + 1}.jpg")), cv2.COLOR_BGR2RGB)
        outline = cv2.imread(str(mask_paths[i]), cv2.IMREAD_GRAYSCALE)
        outline = cv2.resize(outline, (256, 256), interpolation=cv2.INTER_NEAREST)
        frames.append(frame[:height, :width].copy())
        masks.append(np.where(outline[:height, :width] > 127, 255, 0).astype(np.uint8))
    return frames, masks


def run(engine, frames, masks, seeds):
    return engine.inpaint(frames, masks, [PROMPT] * len(frames), [NEGATIVE] * len(frames), seeds)


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory):
    """The same tiny pipeline with a 4-channel (base SDXL) UNet."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sdxl-base", unet_channels=4)


def test_same_seeds_give_identical_pixels_and_other_seeds_do_not(tiny_model_dir):
    engine = make_engine(tiny_model_dir)
    frames, masks = real_samples(2)
    first = run(engine, frames, masks, [11, 12])
    again = run(engine, frames, masks, [11, 12])
    other = run(engine, frames, masks, [13, 14])
    for a, b, c, mask in zip(first, again, other, masks):
        assert np.array_equal(a, b)
        assert not np.array_equal(a[mask > 0], c[mask > 0])


@pytest.mark.parametrize("scheduler", ["euler", "euler_a"])
def test_batch_of_four_matches_one_at_a_time(tiny_model_dir, scheduler):
    frames, masks = real_samples(4)
    seeds = [101, 102, 103, 104]
    batched = run(make_engine(tiny_model_dir, scheduler=scheduler, batch_size=4), frames, masks, seeds)
    single = run(make_engine(tiny_model_dir, scheduler=scheduler, batch_size=1), frames, masks, seeds)
    for a, b in zip(batched, single):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


@pytest.mark.parametrize("unet", ["inpainting", "base"])
def test_outside_the_repaint_region_is_the_source_exactly(tiny_model_dir, base_model_dir, unet):
    model = tiny_model_dir if unet == "inpainting" else base_model_dir
    engine = make_engine(model, mask_dilation=6, mask_feather=3)
    frames, masks = real_samples(3, height=256, width=200)  # not square: sizes must round-trip
    results = run(engine, frames, masks, [1, 2, 3])
    assert engine.identity["unet_in_channels"] == (9 if unet == "inpainting" else 4)
    for frame, mask, out in zip(frames, masks, results):
        assert out.shape == frame.shape and out.dtype == np.uint8
        alpha = repaint_region(mask, 6, 3)
        assert (alpha == 0).mean() > 0.1
        assert np.array_equal(out[alpha == 0], frame[alpha == 0])
        # and the model did paint the label
        assert np.abs(out[mask > 0].astype(int) - frame[mask > 0]).mean() > 5


def test_identity_records_what_decides_the_pixels(tiny_model_dir):
    engine = make_engine(tiny_model_dir, scheduler="dpmpp_2m", guidance_scale=5.0, strength=0.9)
    identity = engine.identity
    assert identity["model"] == str(tiny_model_dir)
    assert identity["scheduler"] == "dpmpp_2m" and identity["scheduler_class"] == "DPMSolverMultistepScheduler"
    assert (identity["steps"], identity["guidance_scale"], identity["strength"]) == (4, 5.0, 0.9)
    assert (identity["resolution"], identity["dtype"], identity["device"]) == (128, "float32", "cpu")
    assert (identity["mask_dilation"], identity["mask_feather"]) == (8, 4)
    assert identity["diffusers_version"] and identity["torch_version"]
    json.dumps(identity)  # plain values, ready for a Parquet struct


def test_a_compiled_unet_paints_the_eager_pictures(tiny_model_dir):
    """engine.compile wraps the UNet in torch.compile (inductor's C++ kernels on this CPU); the pictures
    differ by float rounding at most, so the setting is not part of a sample's identity. Three samples in
    batches of two: the partial batch goes through the compiled UNet too (a second graph)."""
    settings = {"resolution": 64, "steps": 2, "batch_size": 2}
    frames, masks = real_samples(3)
    eager = make_engine(tiny_model_dir, **settings)
    expected = run(eager, frames, masks, [5, 6, 7])
    compiled = make_engine(tiny_model_dir, compile=True, **settings)
    assert isinstance(compiled.pipe.unet, torch._dynamo.eval_frame.OptimizedModule)
    for a, b, frame, mask in zip(expected, run(compiled, frames, masks, [5, 6, 7]), frames, masks):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
        assert not np.array_equal(b[mask > 0], frame[mask > 0])
    assert compiled.config.pixel_settings() == eager.config.pixel_settings()


@pytest.mark.parametrize(
    "name, cls",
    [("euler", "EulerDiscreteScheduler"), ("euler_a", "EulerAncestralDiscreteScheduler"), ("ddim", "DDIMScheduler"),
     ("dpmpp_2m", "DPMSolverMultistepScheduler"), ("unipc", "UniPCMultistepScheduler"), ("lcm", "LCMScheduler"),
     ("default", "EulerDiscreteScheduler")],
)
def test_scheduler_names(tiny_model_dir, name, cls):
    engine = make_engine(tiny_model_dir, scheduler=name, steps=2)
    assert type(engine.pipe.scheduler).__name__ == cls
    frames, masks = real_samples(1)
    assert run(engine, frames, masks, [0])[0].shape == frames[0].shape


def test_separate_vae_and_lora(tiny_model_dir, tmp_path):
    from diffusers import StableDiffusionXLInpaintPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionXLInpaintPipeline.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    pipe.unet.add_adapter(LoraConfig(r=4, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False))
    lora = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    StableDiffusionXLInpaintPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=lora)

    frames, masks = real_samples(1)
    plain = run(make_engine(tiny_model_dir), frames, masks, [5])[0]
    with_vae = run(make_engine(tiny_model_dir, vae=str(tiny_model_dir / "vae")), frames, masks, [5])[0]
    assert np.array_equal(plain, with_vae)  # the same VAE weights, loaded separately
    engine = make_engine(tiny_model_dir, lora=str(tmp_path / "lora" / "pytorch_lora_weights.safetensors"))
    with_lora = run(engine, frames, masks, [5])[0]
    assert engine.identity["lora"].endswith("pytorch_lora_weights.safetensors")
    assert not np.array_equal(plain[masks[0] > 0], with_lora[masks[0] > 0])


def test_missing_model_path_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match=r"engine.model: .*nope.*no such file or folder"):
        make_engine(tmp_path / "nope")


def test_unreachable_hub_id_is_wrapped_with_a_hint():
    expected = r"engine.model: cannot load polyp-synth-tests/no-such-model: .*HF_HUB_OFFLINE"
    with pytest.raises(ModelLoadError, match=expected):
        make_engine("polyp-synth-tests/no-such-model")


def test_folder_that_is_not_an_sdxl_pipeline_is_named(tiny_model_dir, tmp_path):
    with pytest.raises(ModelLoadError, match=r"no model_index.json: it is a single UNet2DConditionModel model"):
        make_engine(tiny_model_dir / "unet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"no model_index.json: it is a folder of 0 entries"):
        make_engine(tmp_path / "empty")
    sd15 = tmp_path / "sd15"
    sd15.mkdir()
    (sd15 / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionInpaintPipeline"}))
    with pytest.raises(ModelLoadError, match=r"holds a StableDiffusionInpaintPipeline, not an SDXL pipeline"):
        make_engine(sd15)
    with pytest.raises(ModelLoadError, match=r"is a file"):
        make_engine(tiny_model_dir / "model_index.json")


def test_pickle_only_weights_need_allow_pickle(tiny_model_dir, tmp_path):
    pickled = shutil.copytree(tiny_model_dir, tmp_path / "pickled")
    for weights in pickled.rglob("*.safetensors"):
        name = "pytorch_model.bin" if weights.name == "model.safetensors" else "diffusion_pytorch_model.bin"
        torch.save(safetensors.torch.load_file(weights), weights.with_name(name))
        weights.unlink()
    with pytest.raises(ModelLoadError, match=r"only as pickle .*engine.allow_pickle=true"):
        make_engine(pickled)
    frames, masks = real_samples(1)
    trusted = run(make_engine(pickled, allow_pickle=True), frames, masks, [3])[0]
    assert np.array_equal(trusted, run(make_engine(tiny_model_dir), frames, masks, [3])[0])


def test_oom_split_halves_down_to_single_samples(tiny_model_dir):
    engine = make_engine(tiny_model_dir)
    sizes = []

    def fits_two(batch):
        sizes.append(len(batch))
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [x * 10 for x in batch]

    assert engine._run_with_oom_split([1, 2, 3, 4, 5], fits_two) == [10, 20, 30, 40, 50]
    assert sizes == [5, 2, 3, 1, 2]

    def never_fits(batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        engine._run_with_oom_split([1, 2, 3], never_fits)


def test_oom_split_gives_the_same_pixels(tiny_model_dir, monkeypatch):
    engine = make_engine(tiny_model_dir)
    frames, masks = real_samples(4)
    expected = run(engine, frames, masks, [7, 8, 9, 10])
    generate = engine.generate_batch

    def only_one_fits(batch):
        if len(batch) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return generate(batch)

    monkeypatch.setattr(engine, "generate_batch", only_one_fits)
    for a, b in zip(expected, run(engine, frames, masks, [7, 8, 9, 10])):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_inputs_must_line_up(tiny_model_dir):
    engine = make_engine(tiny_model_dir)
    frames, masks = real_samples(2)
    with pytest.raises(ValueError, match="same length"):
        engine.inpaint(frames, masks, [PROMPT], [NEGATIVE] * 2, [1, 2])
    with pytest.raises(ValueError, match="HxWx3"):
        engine.inpaint(frames[:1], [masks[0][:100]], [PROMPT], [NEGATIVE], [1])
