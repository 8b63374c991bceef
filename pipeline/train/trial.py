"""One trial of an experiment (an arm at a seed) and its result: the unit experiments resume by
(`trials.jsonl`) and summaries read."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

Budget = Literal["epochs", "steps", "compute"]


class Trial(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    synthetic: str | None  # name of the synthetic set; None: real only
    ratio: float
    seed: int
    budget: Budget
    steps: int | None = None  # for budgets "steps" and "compute"

    @property
    def key(self) -> str:
        """e.g. `gated-r1-s0-epochs`; `real-r1-s0-compute` is real only, as long as ratio 1 trains."""
        return f"{self.synthetic or 'real'}-r{self.ratio:g}-s{self.seed}-{self.budget}"


class TrialResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    trial: Trial
    experiment: str = ""  # ExperimentSpec.digest(content), stamped by run_experiment: never reused by another
    real_ids: list[str]
    synthetic_per_epoch: int
    steps: int
    samples_seen: int
    epochs: int
    seconds: float
    node: str = ""  # the Ray node that ran it ("" in-process)
    metrics: dict[str, dict[str, float | None]]  # eval set → figure → value (`SetReport.figures`)
