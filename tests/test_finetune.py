"""`polyp-synth finetune` on the tiny model and real Kvasir-SEG pairs at 64²: the loss falls, the LoRA
loads through the engine as trained, a killed run resumes to the same weights, bad inputs are one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr
from PIL import Image
from safetensors.torch import load_file

from pipeline.cli import main
from pipeline.config import EngineConfig, config_from_dict
from pipeline.errors import ConfigError, DataError, ModelLoadError, TrainError
from pipeline.generate.sdxl import InpaintEngine
from pipeline.plan.masks.preset import MaskPreset
from pipeline.plan.masks.sampling import log_quantile, size_class_of
from pipeline.testing.data import shared_data
from pipeline.tools.tiny_model import build_tiny_model
from pipeline.train.finetune import trainer
from pipeline.train.finetune.config import FinetuneConfig
from pipeline.train.finetune.data import load_pair, prepare_data
from pipeline.train.finetune.objective import min_snr_weights, training_target

KVASIR = shared_data() / "kvasir-seg"
TRAIN_IDS = sorted(p.stem for p in (KVASIR / "images").iterdir())[:5]


def make_config(model: Path, output: Path, split: Path, **sections) -> FinetuneConfig:
    tree = {
        "output": str(output), "seed": 3,
        "engine": {"model": str(model), "resolution": 64, "output_resolution": 128, "steps": 2},
        "data": {"images": str(KVASIR / "images"), "masks": str(KVASIR / "masks"), "split": str(split)},
        "lora": {"rank": 4, "alpha": 8},  # alpha != rank: the LoRA file must carry the scale
        "train": {"steps": 4, "batch_size": 2, "learning_rate": 5e-3, "checkpoint_every": 2,
                  "gradient_checkpointing": False},
        "validation": {"count": 0},
    }
    for section, values in sections.items():
        tree[section] = {**tree.get(section, {}), **values} if isinstance(values, dict) else values
    return config_from_dict(tree, "test", model=FinetuneConfig)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tensors of a few kB: one thread each is several times faster than two fighting on a busy CI box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("split") / "train.txt"
    path.write_text("\n".join(TRAIN_IDS[:3]) + "\n")
    return path


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, split, tmp_path_factory):
    """A whole 4-step run with one validation frame (held out: outside the split)."""
    config = make_config(tiny_model_dir, tmp_path_factory.mktemp("run") / "a", split,
                         validation={"count": 1, "every": 2})
    return config, trainer.finetune(config)


def test_run_writes_lora_card_checkpoints_and_sheets(uninterrupted):
    config, result = uninterrupted
    out = Path(config.output)
    assert result.steps == 4 and result.resumed_from is None and len(result.losses) == 4
    assert (out / "pytorch_lora_weights.safetensors").is_file() and (out / "loss_curve.png").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    assert sorted(p.name for p in (out / "validation").iterdir()) == [
        "step-000000.png", "step-000002.png", "step-000004.png"]
    card = json.loads((out / "lora_card.json").read_text())
    assert card["base_model"]["random_weights"] is True
    assert sorted(card["data"]["train_sha256"]) == TRAIN_IDS[:3]
    assert card["data"]["validation_ids"] == [TRAIN_IDS[3]]  # the first pair outside the split
    sheet = Image.open(out / "validation" / "step-000004.png")
    assert sheet.width > 2 * 256  # real frame and its inpainting side by side


def test_lora_file_loads_through_the_engine_as_trained(uninterrupted, tiny_model_dir):
    config, result = uninterrupted
    # the UNet as trained: base + the LoRA of the last checkpoint, in peft's own format
    pipe = trainer.load_base(config.engine, torch.device("cpu"), torch.float32)
    trainer.add_lora(pipe, config)
    from peft.utils import set_peft_model_state_dict

    set_peft_model_state_dict(pipe.unet, load_file(Path(config.output) / "checkpoints/step-000004/lora.safetensors"))
    engine_config = EngineConfig(model=str(tiny_model_dir), resolution=64, output_resolution=128, steps=2,
                                 lora=str(result.lora))
    with_lora, without = InpaintEngine(engine_config), InpaintEngine(engine_config.model_copy(update={"lora": None}))

    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 9, 8, 8, generator=generator)
    text = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=generator)
    added = {"text_embeds": torch.randn(1, 32, generator=generator), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    pipe.unet.eval()
    with torch.no_grad():
        trained = pipe.unet(sample, 500, encoder_hidden_states=text, added_cond_kwargs=added).sample
        loaded = with_lora.pipe.unet(sample, 500, encoder_hidden_states=text, added_cond_kwargs=added).sample
        base = without.pipe.unet(sample, 500, encoder_hidden_states=text, added_cond_kwargs=added).sample
    torch.testing.assert_close(loaded, trained, rtol=1e-5, atol=1e-5)  # rank, alpha and names survive the file
    assert (loaded - base).abs().max() > 1e-3

    frame, mask = load_pair(KVASIR / "images" / f"{TRAIN_IDS[4]}.jpg", KVASIR / "masks" / f"{TRAIN_IDS[4]}.jpg", 128)
    args = ([frame], [mask], ["a polyp"], [""], [7])
    painted, plain = with_lora.inpaint(*args)[0], without.inpaint(*args)[0]
    assert np.abs(painted.astype(int) - plain.astype(int)).max() > 0


def test_killed_run_resumes_to_the_same_weights(uninterrupted, tiny_model_dir, split, tmp_path, monkeypatch):
    reference, _ = uninterrupted
    config = make_config(tiny_model_dir, tmp_path / "b", split)
    real_loss = trainer.batch_loss
    calls = []

    def dies_at_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed after the step-2 checkpoint
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(trainer, "batch_loss", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        trainer.finetune(config)
    monkeypatch.setattr(trainer, "batch_loss", real_loss)
    assert not (tmp_path / "b" / "pytorch_lora_weights.safetensors").exists()

    result = trainer.finetune(config)
    assert (result.resumed_from, result.steps) == (2, 4)
    resumed = load_file(result.lora)
    whole = load_file(Path(reference.output) / "pytorch_lora_weights.safetensors")
    assert resumed.keys() == whole.keys()
    for key in whole:
        assert torch.equal(resumed[key], whole[key]), key


def test_loss_falls_on_a_fixed_batch(tiny_model_dir, split, tmp_path):
    config = make_config(tiny_model_dir, tmp_path, split)
    device, dtype = torch.device("cpu"), torch.float32
    pipe = trainer.load_base(config.engine, device, dtype)
    params = trainer.add_lora(pipe, config)
    data = trainer.encode_examples(trainer.TrainingEngine(config.engine, pipe, device, dtype),
                                   prepare_data(config).train, config.seed)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    optimizer, _ = trainer.make_optimizer(params, config, device)

    def loss() -> torch.Tensor:  # the same batch, noise and timesteps every time
        return trainer.batch_loss(pipe.unet, scheduler, data, [0, 1, 2], torch.Generator().manual_seed(1), None)

    with torch.no_grad():
        before = loss().item()
    for _ in range(6):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    with torch.no_grad():
        after = loss().item()
    assert after < 0.9 * before, (before, after)


def test_size_class_inverts_the_planner(tmp_path):
    """An area the planner draws for a class (a level inside its band) is measured as that class."""
    preset = MaskPreset.load("masks/default.yaml")
    for name, entry in preset.size_classes.items():
        low, high = entry.band
        for u in np.linspace(low, high, 7)[1:-1]:
            assert size_class_of(log_quantile(preset.area_fraction, float(u)), preset) == name


def test_captions_carry_the_measured_size_and_known_attributes(tiny_model_dir, split, tmp_path):
    config = make_config(tiny_model_dir, tmp_path, split, captions={"known": {"modality": "nbi"}})
    data = prepare_data(config)
    preset = MaskPreset.load("masks/default.yaml")
    bank_size_words = {"diminutive": ["diminutive", "3 mm", "4 mm"], "small": ["small", "7 mm", "8 mm"],
                       "large": ["large", "12 mm", "15 mm"], "giant": ["giant", "25 mm"]}
    for example in data.train:
        _, label = load_pair(example.image, example.mask, None)
        size = size_class_of(float((label > 0).mean()), preset)
        assert any(word in example.caption for word in bank_size_words[size]), example.caption
        assert "NBI" in example.caption or "narrow-band" in example.caption
    assert prepare_data(config).train == data.train  # seeded per image: the same captions every run


def test_captions_from_a_csv_and_a_missing_one_named(tiny_model_dir, split, tmp_path):
    table = tmp_path / "captions.csv"
    table.write_text("id,caption\n" + "".join(f"{stem},polyp number {i}\n" for i, stem in enumerate(TRAIN_IDS)))
    config = make_config(tiny_model_dir, tmp_path, split, captions={"csv": str(table)})
    assert [e.caption for e in prepare_data(config).train] == ["polyp number 0", "polyp number 1", "polyp number 2"]
    table.write_text(f"id,caption\n{TRAIN_IDS[0]},a polyp\n")
    with pytest.raises(DataError, match=f"captions.csv: {table} has no caption for '{TRAIN_IDS[1]}'"):
        prepare_data(config)


def test_min_snr_weights_follow_the_formula():
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    timesteps = torch.tensor([0, 100, 500, 999])
    snr = compute_snr(scheduler, timesteps)
    alpha_bar = scheduler.alphas_cumprod[timesteps]
    torch.testing.assert_close(snr, alpha_bar / (1 - alpha_bar))
    eps = min_snr_weights(snr, 5.0, "epsilon")
    v = min_snr_weights(snr, 5.0, "v_prediction")
    assert snr[0] > 5 and snr[-1] < 5
    torch.testing.assert_close(eps, torch.where(snr > 5, 5 / snr, torch.ones_like(snr)))
    torch.testing.assert_close(v, torch.minimum(snr, torch.tensor(5.0)) / (snr + 1))
    assert torch.equal(min_snr_weights(snr, None, "epsilon"), torch.ones(4))
    latents, noise = torch.randn(4, 4, 2, 2), torch.randn(4, 4, 2, 2)
    scheduler.register_to_config(prediction_type="v_prediction")
    a, s = alpha_bar.sqrt().view(-1, 1, 1, 1), (1 - alpha_bar).sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(training_target(scheduler, latents, noise, timesteps), a * noise - s * latents)


def test_batches_cover_each_example_once_per_epoch():
    for world, per_worker in ((1, 3), (2, 2), (4, 1)):
        seen = [i for step in range(5) for rank in range(world)
                for i in trainer.batch_indices(step, rank, world, per_worker, 10, seed=1)]
        for epoch in range(len(seen) // 10):
            assert sorted(seen[10 * epoch:10 * epoch + 10]) == list(range(10))


# ---------------------------------------------------------------------------------------------- bad inputs


def _pairs(folder: Path, ids: list[str]) -> tuple[Path, Path]:
    images, masks = folder / "images", folder / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    for stem in ids:
        shutil.copy(KVASIR / "images" / f"{stem}.jpg", images)
        shutil.copy(KVASIR / "masks" / f"{stem}.jpg", masks)
    return images, masks


def _data_config(images: Path, masks: Path, output: Path) -> FinetuneConfig:
    return config_from_dict({"output": str(output), "data": {"images": str(images), "masks": str(masks)},
                             "validation": {"count": 1}}, "test", model=FinetuneConfig)


def test_an_image_without_a_mask_is_named(tmp_path):
    images, masks = _pairs(tmp_path, TRAIN_IDS[:3])
    (masks / f"{TRAIN_IDS[1]}.jpg").unlink()
    with pytest.raises(DataError, match=f"{TRAIN_IDS[1]}.jpg: no mask for it in"):
        prepare_data(_data_config(images, masks, tmp_path / "out"))


def test_a_mask_of_another_size_is_named(tmp_path):
    images, masks = _pairs(tmp_path, TRAIN_IDS[:3])
    mask = masks / f"{TRAIN_IDS[2]}.jpg"
    Image.open(mask).resize((50, 40)).save(mask)
    with pytest.raises(DataError, match=rf"{mask}: the mask is 50x40 but its image .*{TRAIN_IDS[2]}.jpg is"):
        prepare_data(_data_config(images, masks, tmp_path / "out"))


def test_a_split_naming_a_missing_pair_is_named(tmp_path, split):
    images, masks = _pairs(tmp_path, TRAIN_IDS[:2])
    bad = tmp_path / "split.txt"
    bad.write_text(f"{TRAIN_IDS[0]}\nnot-there\n")
    config = _data_config(images, masks, tmp_path / "out").model_copy(
        update={"data": _data_config(images, masks, tmp_path).data.model_copy(update={"split": str(bad)})})
    with pytest.raises(DataError, match=f"data.split: {bad} lists 'not-there'"):
        prepare_data(config)


def test_a_base_model_that_is_not_sdxl_inpainting_is_refused(tmp_path, split, capsys):
    base = build_tiny_model(tmp_path / "base-sdxl", unet_channels=4)
    config = make_config(base, tmp_path / "out", split)
    with pytest.raises(ModelLoadError, match=f"engine.model: {base} has a UNet with 4 input channels"):
        trainer.finetune(config)
    # a folder that is no pipeline at all, through the CLI: one line, exit code 2
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps(make_config(base / "unet", tmp_path / "out", split).model_dump(mode="json")))
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--config", str(job)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "engine.model" in err and "model_index.json" in err, err


def test_the_shipped_job_validates_and_takes_overrides():
    from pipeline.train.finetune.config import load_finetune_config

    config = load_finetune_config("jobs/finetune.yaml", ["train.steps=7", "lora.rank=4"])
    assert (config.train.steps, config.lora.rank, config.captions.known) == (7, 4, {"modality": "wli"})
    assert config.training_digest() == load_finetune_config("jobs/finetune.yaml").model_copy(
        update={"lora": config.lora}).training_digest()  # the length of a run is not what it trains


def test_a_checkpoint_of_other_settings_is_not_resumed(uninterrupted):
    config, _ = uninterrupted
    changed = config.model_copy(update={"lora": config.lora.model_copy(update={"rank": 8})})
    with pytest.raises(TrainError, match=r"output: .*step-000004 was made with other training settings"):
        trainer.finetune(changed)


def test_lora_targets_that_match_nothing_are_named(tiny_model_dir, split, tmp_path):
    config = make_config(tiny_model_dir, tmp_path, split, lora={"targets": ["to_nowhere"]})
    pipe = trainer.load_base(config.engine, torch.device("cpu"), torch.float32)
    with pytest.raises(ConfigError, match=r"lora.targets: \['to_nowhere'\]"):
        trainer.add_lora(pipe, config)


def test_workers_that_do_not_fit_the_cluster_are_refused_not_awaited():
    """Ray Train waits forever for workers no node can hold; the driver counts them first."""
    from pipeline.train.finetune.distributed import workers_that_fit

    nodes = [{"Alive": True, "Resources": {"CPU": 16.0, "GPU": 2.0}}, {"Alive": True, "Resources": {"CPU": 4.0}},
             {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]
    assert workers_that_fit(nodes, {"CPU": 2.0, "GPU": 1}) == 2  # GPUs bound the first node; the dead one counts not
    assert workers_that_fit(nodes, {"CPU": 2.0}) == 10
    assert workers_that_fit(nodes, {"CPU": 32.0}) == 0
