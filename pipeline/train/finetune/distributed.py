"""Fine-tuning on a Ray cluster: Ray Train's `TorchTrainer`, one data-parallel worker per GPU.

The driver checks the data (pairs, split, captions) before anything starts, joins the cluster the
generate stage uses (`executor.address`, `RAY_ADDRESS`), and runs `trainer.finetune` on every worker
with its rank, its device and DDP around the UNet. `config.output` must be a folder every worker sees
(a shared mount): rank 0 writes the checkpoints there, and a worker group that Ray restarts after a
failure (`executor.shard_retries` times) resumes from the last of them. A cluster without GPUs trains
on one CPU worker.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.core.layout import FinetuneLayout
from pipeline.errors import ExecutorError, PolypSynthError
from pipeline.train.finetune.config import FinetuneConfig
from pipeline.train.finetune.data import FinetuneData, prepare_data
from pipeline.train.finetune.trainer import FinetuneResult, check_base_model, finetune

log = logging.getLogger(__name__)


def _train_on_worker(settings: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from pipeline.core import logsetup

    logsetup.configure()
    context = ray.train.get_context()
    finetune(settings["config"], settings["data"], rank=context.get_world_rank(),
             world_size=context.get_world_size(), device=ray.train.torch.get_device(),
             wrap=ray.train.torch.prepare_model, report=ray.train.report)


def worker_count(gpus: float, max_workers: int | None) -> int:
    """One worker per whole GPU of the cluster (at most `max_workers`); one CPU worker without GPUs."""
    count = int(gpus)
    if max_workers is not None:
        count = min(count, max_workers)
    return max(count, 1)


def workers_that_fit(nodes: list[dict[str, Any]], resources: dict[str, float]) -> int:
    """How many workers asking for `resources` the alive nodes can hold at once (Ray's `ray.nodes()`)."""
    total = 0
    for node in nodes:
        if not node.get("Alive"):
            continue
        have = node.get("Resources", {})
        total += int(min(have.get(name, 0.0) / amount for name, amount in resources.items() if amount > 0))
    return total


def _user_error(exc: BaseException) -> PolypSynthError | None:
    """The user error a worker raised, found in Ray Train's wrapping (worker failures, causes)."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, PolypSynthError):
            return error
        pending += list(getattr(error, "worker_failures", {}).values())
        pending += [getattr(error, "cause", None), error.__cause__, error.__context__]
    return None


def finetune_on_ray(config: FinetuneConfig, data: FinetuneData | None = None) -> FinetuneResult:
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.executors.ray import connect

    data = data or prepare_data(config)
    check_base_model(config.engine)
    executor = config.executor
    connect(executor.address, executor.connect_timeout_s)
    gpus = ray.cluster_resources().get("GPU", 0.0)
    workers = worker_count(gpus, executor.max_workers)
    resources = {"CPU": executor.num_cpus_per_worker, **({"GPU": 1} if gpus >= 1 else {})}
    room = workers_that_fit(ray.nodes(), resources)
    if room < workers:  # Ray Train would wait for them forever
        raise ExecutorError(f"executor: {workers} fine-tuning worker(s) need {resources} each, but the cluster's "
                            f"nodes hold {room}; lower executor.num_cpus_per_worker or executor.max_workers")
    log.info("fine-tuning on %d Ray Train worker(s) (%s)", workers, "one GPU each" if gpus >= 1 else "CPU")
    output = Path(config.output).resolve()
    trainer = TorchTrainer(
        _train_on_worker,
        train_loop_config={"config": config, "data": data},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus >= 1, resources_per_worker=resources),
        run_config=RunConfig(name="ray-train", storage_path=str(output),
                             failure_config=FailureConfig(max_failures=executor.shard_retries)),
    )
    try:
        trainer.fit()
    except Exception as exc:  # Ray Train wraps what a worker raised
        user = _user_error(exc)
        if user is not None:
            raise user from None
        raise ExecutorError(f"fine-tuning on Ray failed: {' '.join(str(exc).split())[:400]}") from exc
    return FinetuneResult.from_card(FinetuneLayout(Path(config.output)))
