"""Fine-tuning through Ray Train (`TorchTrainer`) on a local Ray started by the test, one CPU worker:
the same LoRA as the single process; a base model that cannot be fine-tuned is refused before Ray starts work."""

from __future__ import annotations

import pytest
import ray
import torch
from safetensors.torch import load_file

from pipeline.errors import ModelLoadError
from pipeline.tools.tiny_model import build_tiny_model
from pipeline.train.finetune import trainer
from pipeline.train.finetune.distributed import finetune_on_ray
from tests.test_finetune import TRAIN_IDS, make_config


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def test_ray_train_gives_the_single_process_weights(local_ray, tiny_model_dir, tmp_path):
    split = tmp_path / "train.txt"
    split.write_text("\n".join(TRAIN_IDS[:3]))
    settings = {"validation": {"count": 1, "every": 4},
                "executor": {"kind": "ray", "num_cpus_per_worker": 1, "connect_timeout_s": 30}}
    on_ray = finetune_on_ray(make_config(tiny_model_dir, tmp_path / "ray", split, **settings))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the worker (Ray gives a 1-CPU worker one thread): the same float sums
    try:
        local = trainer.finetune(make_config(tiny_model_dir, tmp_path / "local", split, **settings))
    finally:
        torch.set_num_threads(threads)
    assert (on_ray.steps, len(on_ray.losses)) == (4, 4)
    assert on_ray.losses == local.losses
    ray_weights, local_weights = load_file(on_ray.lora), load_file(local.lora)
    assert ray_weights.keys() == local_weights.keys()
    for key, value in local_weights.items():
        assert torch.equal(ray_weights[key], value), key
    assert (tmp_path / "ray" / "validation" / "step-000004.png").is_file()

    base = build_tiny_model(tmp_path / "base-sdxl", unet_channels=4)  # refused on the driver, from its configs
    with pytest.raises(ModelLoadError, match="has a UNet with 4 input channels"):
        finetune_on_ray(make_config(base, tmp_path / "bad", split, **settings))

