"""Job configs: validated before work starts, one-line errors naming the field, --set overrides."""

from pathlib import Path

import pytest
import yaml

from pipeline.config import JobConfig, config_from_dict, load_config
from pipeline.errors import ConfigError
from pipeline.train.finetune.config import FinetuneConfig

JOBS = Path(__file__).parents[1] / "jobs"


@pytest.mark.parametrize("job", sorted(set(JOBS.glob("*.yaml")) - {JOBS / "runtime_env.yaml"}), ids=lambda p: p.name)
def test_every_shipped_job_validates(job):
    model = FinetuneConfig if job.name == "finetune.yaml" else JobConfig  # the one job that is not a run
    assert isinstance(load_config(job, model=model), model)


def test_overrides_are_parsed_as_yaml_and_nested():
    config = load_config(JOBS / "demo-sdxl.yaml", ["engine.steps=9", "engine.vae=null", "seed=7", "output=s3://b/x"])
    assert config.engine.steps == 9 and config.engine.vae is None and config.seed == 7
    assert config.run_dir() == "s3://b/x/demo-sdxl"


@pytest.mark.parametrize(
    ("data", "overrides", "expected"),
    [
        ({"frames": {"source": "x"}, "engine": {"stepz": 3}}, [], "engine.stepz: unknown key"),
        ({"frames": {"source": "x"}}, ["engine.steps=-1"], "engine.steps: Input should be greater than 0 (got -1)"),
        ({"frames": {"source": "x"}}, ["engine.dtype=float8"], "engine.dtype"),
        ({"frames": {"source": "x"}}, ["engine.resolution=1001"], "engine.resolution"),
        ({}, [], "frames: Field required"),
        ({"frames": {"source": "x"}, "run_id": "a/b"}, [], "run_id"),
        ({"frames": {"source": "x"}}, ["nokey"], "expected KEY=VALUE"),
        ({"frames": {"source": "x"}}, ["frames.source.deep=1"], "'source' is not a section"),
    ],
)
def test_bad_values_name_the_field(data, overrides, expected):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, "job.yaml", overrides)
    message = str(info.value)
    assert message.startswith("job.yaml") and expected in message and "\n" not in message


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")


def test_dated_run_id_and_digest():
    import datetime

    config = config_from_dict({"frames": {"source": "x"}, "run_id": "nightly-{date}"})
    assert config.resolved_run_id(datetime.date(2026, 1, 2)) == "nightly-2026-01-02"
    other = config_from_dict({"frames": {"source": "x"}, "run_id": "nightly-{date}"}, overrides=["seed=1"])
    assert config.plan_digest() != other.plan_digest()
    stored = yaml.safe_load(yaml.safe_dump(config.model_dump(mode="json")))  # as run metadata stores it
    assert config_from_dict(stored) == config and config_from_dict(stored).plan_digest() == config.plan_digest()


def test_plan_digest_ignores_what_does_not_define_the_plan():
    """Tightening a gate bound, switching executor or batch size must not orphan a run's plan."""
    base = load_config(JOBS / "demo-sdxl.yaml")
    same = ["executor.kind=ray", "engine.batch_size=1", "engine.device=cpu", "output=elsewhere",
            "gate.shard_kid_max=0.01", "run_id=other"]
    assert all(load_config(JOBS / "demo-sdxl.yaml", [o]).plan_digest() == base.plan_digest() for o in same)
    changed = ["seed=1", "samples=7", "engine.steps=9", "frames.limit=3", "masks.preset=x.yaml"]
    assert all(load_config(JOBS / "demo-sdxl.yaml", [o]).plan_digest() != base.plan_digest() for o in changed)
