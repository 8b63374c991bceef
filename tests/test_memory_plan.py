"""The memory planner: amounts parsed or refused, activations counted on fake tensors (linear in the
batch, as its formula assumes), and the largest batch the one that fits."""

import pytest
import torch

from pipeline.cli import main
from pipeline.config import config_from_dict
from pipeline.errors import ConfigError
from pipeline.tools.memory_plan import GIB, Footprint, _peak_activations, footprint, parse_memory


def test_amounts_are_parsed_and_nonsense_refused():
    assert parse_memory("80GiB") == 80 * GIB and parse_memory("24 GB") == 24_000_000_000
    assert parse_memory("512MiB") == 512 * 2**20 and parse_memory("16") == 16 * GIB
    with pytest.raises(ConfigError, match="--gpu-memory: 'lots'"):
        parse_memory("lots")


def test_the_largest_batch_is_the_last_that_fits():
    fp = Footprint(1024, weights=6 * GIB, unet=GIB // 4, vae_encode=GIB, vae_decode=GIB + GIB // 2)
    memory = 40 * GIB
    batch = fp.largest_batch(memory)
    assert fp.need(batch, memory) <= memory < fp.need(batch + 1, memory)
    assert Footprint(1024, 100 * GIB, 1, 1, 1).largest_batch(memory) == 0


def test_activations_grow_with_the_batch_and_the_pixels(tiny_model_dir):
    from diffusers import UNet2DConditionModel
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(tiny_model_dir / "unet"))

        def step(rows, side):
            latents = torch.randn(rows, unet.config.in_channels, side, side)
            context = torch.randn(rows, 77, unet.config.cross_attention_dim)
            added = {"text_embeds": torch.randn(rows, unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim),
                     "time_ids": torch.randn(rows, 6)}
            return _peak_activations(unet, lambda: unet(latents, torch.tensor([500] * rows), encoder_hidden_states=context,
                                                        added_cond_kwargs=added))

        one, two, bigger = step(1, 16), step(2, 16), step(1, 32)
    assert one > 0 and two == 2 * one  # the planner's need(B) is linear in B
    assert 3 * one < bigger  # four times the pixels


def test_preview_prints_the_plan_of_a_job(tiny_model_dir, capsys):
    config = config_from_dict({"frames": {"source": "unused"}, "engine": {"model": str(tiny_model_dir), "resolution": 64,
                                                                         "crop_resolution": 32}})
    small, _ = footprint(config.engine, 32)
    large, source = footprint(config.engine, 64)
    assert str(tiny_model_dir) in source and small.weights == large.weights and small.per_sample < large.per_sample
    with pytest.raises(SystemExit) as done:
        main(["preview", "--config", "jobs/smoke.yaml", "--set", f"engine.model={tiny_model_dir}",
              "--set", "engine.crop_resolution=32", "--gpu-memory", "1GiB"])
    assert done.value.code == 0
    table = capsys.readouterr().out
    assert "| 32² |" in table and "| 64² |" in table and "largest batch" in table


def test_a_malformed_amount_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="--gpu-memory: '1.2.3GiB'"):
        parse_memory("1.2.3GiB")
    assert parse_memory(".5GiB") == GIB // 2


def finetune_config(tiny_model_dir, **train):
    from pipeline.train.finetune.config import FinetuneConfig

    return FinetuneConfig.model_validate({"engine": {"model": str(tiny_model_dir), "resolution": 64},
                                          "data": {"images": "unused", "masks": "unused"}, "train": train})


def test_fine_tuning_counts_lora_state_and_what_backward_keeps(tiny_model_dir):
    from diffusers import UNet2DConditionModel

    from pipeline.tools.memory_plan import training_footprint

    checkpointed, source = training_footprint(finetune_config(tiny_model_dir))
    whole, _ = training_footprint(finetune_config(tiny_model_dir, gradient_checkpointing=False))
    eight_bit, _ = training_footprint(finetune_config(tiny_model_dir, optimizer="adamw8bit"))
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(tiny_model_dir / "unet"))
    targets = [m for name, m in unet.named_modules() if name.split(".")[-1] in ("to_q", "to_k", "to_v")
               or name.endswith("to_out.0")]
    assert checkpointed.lora_parameters == sum(16 * (m.in_features + m.out_features) for m in targets) > 0
    assert checkpointed.weights - eight_bit.weights == 6 * checkpointed.lora_parameters  # fp32 moments vs 8-bit
    assert 0 < checkpointed.per_sample < whole.per_sample  # checkpointing keeps block inputs only
    assert str(tiny_model_dir) in source


def test_finetune_prints_its_plan_instead_of_training(tiny_model_dir, capsys, tmp_path):
    with pytest.raises(SystemExit) as done:
        main(["finetune", "jobs/finetune.yaml", "--set", f"engine.model={tiny_model_dir}", "--set", "engine.resolution=64",
              "--out", str(tmp_path / "never"), "--gpu-memory", "2GiB"])
    assert done.value.code == 0
    table = capsys.readouterr().out
    assert "| 64² |" in table and "largest batch" in table and not (tmp_path / "never").exists()
