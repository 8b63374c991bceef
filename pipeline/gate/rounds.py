"""A job that asks for accepted samples (`samples: {accepted: N, max_attempts: 1.5}`): rounds of
generate → gate, each planning replacements for what the gate rejected, until N are accepted or the
budget of attempts (N × max_attempts samples planned) is spent.

A round plans what is missing divided by the acceptance so far (100 planned, 60 accepted → 40
missing / 0.6 → 67 more), rounded up to whole shards (a shard of three samples would be judged by a
KID of three crops) and within the budget: enough to finish in one more round about half the time,
and in few rounds always, since each round is a pass of the cluster and of the gate. The gate then
keeps the first N accepted in plan order, rejects the rest as `surplus`, and fails the run while
fewer than N are accepted (so export refuses a run that fell short, or one between rounds). Replacements are
the job's next samples (fresh seeds, drawn from the same asked distribution), in shards of their
own, so no written shard changes. Every round is recorded in the plan (`PlanMeta.rounds`) and every
step is the resumable one of its stage, so a run killed anywhere resumes where it stopped: what a
round plans is a function of the verdicts, which are a function of the shards (and of the gate's
settings, which a resumed run must keep), so the same job takes the same rounds and accepts the
same samples.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.config import JobConfig
from pipeline.core.lesion_bins import SIZE_BINS
from pipeline.executors.base import Executor, WorkerFactory
from pipeline.gate.checks import SURPLUS
from pipeline.gate.run import GateOutcome, run_gate
from pipeline.generate.runner import RunSummary, run_generate
from pipeline.generate.worker import make_worker
from pipeline.plan.plan import Plan, PlanInputs, PlanRound, extend_plan, round_inputs

log = logging.getLogger(__name__)

_REASONS_NAMED = 3


@dataclass
class RoundsOutcome:
    """Where a job that asks for accepted samples stands after its last round."""

    run_dir: str
    asked: int
    budget: int
    rounds: list[PlanRound]
    generated: RunSummary  # the last round's generation
    gate: GateOutcome | None  # None when generation failed

    @property
    def accepted(self) -> int:
        return self.gate.metrics.samples.accepted if self.gate else 0

    @property
    def planned(self) -> int:
        return sum(r.samples for r in self.rounds)

    @property
    def ok(self) -> bool:
        return self.gate is not None and self.accepted >= self.asked and self.gate.passed

    def line(self) -> str:
        if self.gate is None:
            return self.generated.line()
        text = (f"{self.run_dir}: {self.accepted} accepted of {self.asked} asked; {self.planned} planned in "
                f"{len(self.rounds)} round(s) ({' + '.join(str(r.samples) for r in self.rounds)}) of a budget "
                f"of {self.budget}")
        if self.accepted < self.asked:
            why = short_of(self.gate, self.generated.failed_samples)
            text += (f"; FAILED: the budget of attempts is spent ({why}): raise samples.max_attempts, or find why "
                     "the gate rejects so many in its report")
        return text + "\n" + sizes_line(self.gate) + "\n" + self.gate.line()


def short_of(gate: GateOutcome, failed: int) -> str:
    """The commonest reasons for rejection (and samples that failed to generate), for a message that
    says why a run fell short."""
    counts = Counter(gate.metrics.samples.by_reason)
    counts.pop(SURPLUS, None)
    parts = [f"{reason} ({n})" for reason, n in counts.most_common(_REASONS_NAMED)]
    return ", ".join(([f"{failed} failed to generate"] if failed else []) + (["rejected mostly for " + ", ".join(parts)]
                                                                            if parts else []))


def sizes_line(gate: GateOutcome) -> str:
    """Generated against accepted share of each lesion size bin: rejection must not skew it unseen."""
    sizes = gate.metrics.sizes
    return "sizes generated → accepted: " + ", ".join(
        f"{label} {sizes['generated'][name]:.2f} → {sizes['accepted'][name]:.2f}" for name, _, _, label in SIZE_BINS)


def replacements(asked: int, accepted: int, planned: int, budget: int, shard_size: int) -> int:
    """Samples the next round plans: those missing over the acceptance so far, in whole shards, within
    what the budget leaves (all of it when nothing was accepted yet; 0: stop)."""
    missing, left = asked - accepted, budget - planned
    if missing <= 0 or left <= 0:
        return 0
    wanted = math.ceil(missing * planned / accepted) if accepted else left
    return min(math.ceil(wanted / shard_size) * shard_size, left)


def run_until_accepted(config: JobConfig, executor_for: Callable[[str], Executor],
                       factory: WorkerFactory = make_worker) -> RoundsOutcome:
    """generate → gate → plan replacements, round after round (see the module docstring)."""
    wanted = config.until_accepted
    if wanted is None:
        raise ValueError("run_until_accepted needs a job with samples: {accepted: N}")
    run_dir = config.run_dir()
    inputs: PlanInputs | None = None  # frames and real masks, read once for every later round
    while True:
        generated = run_generate(config, executor_for("generating"), factory=factory)
        plan = Plan.read(run_dir)
        if not generated.ok:
            return RoundsOutcome(run_dir, wanted.accepted, wanted.budget, plan.rounds, generated, None)
        gate = run_gate(run_dir, config, executor_for("gating"))
        more = replacements(wanted.accepted, gate.metrics.samples.accepted, plan.num_samples, wanted.budget,
                            config.shard_size)
        if more == 0:
            return RoundsOutcome(run_dir, wanted.accepted, wanted.budget, plan.rounds, generated, gate)
        why = (f"{gate.metrics.samples.accepted} of {plan.num_samples} accepted after round {len(plan.rounds) - 1}; "
               f"{short_of(gate, generated.failed_samples)}")
        inputs = inputs or round_inputs(plan, config)
        extend_plan(plan, inputs, more, why).write(run_dir)
