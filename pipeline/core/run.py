"""The run context: what every worker of a run needs besides its shard's rows.

Built once by the runner from the plan and handed to executors, which pass it (pickled, for Ray) to
each worker: where the run lives, which job it is, and the provenance every shard carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline import __version__
from pipeline.config import JobConfig
from pipeline.core.layout import RunLayout


@dataclass(frozen=True)
class RunContext:
    layout: RunLayout
    config: JobConfig
    run_id: str
    plan_digest: str
    attributes_type: pa.DataType  # struct of the prompt bank's axes, as the plan drew them
    frame_axes: tuple[str, ...] = ()  # axes the frames decide (modality, metadata columns): true of the frame
    pipeline_version: str = __version__

    def provenance(self) -> dict[str, Any]:
        """Copied into every shard's schema metadata."""
        return {"run_id": self.run_id, "pipeline_version": self.pipeline_version,
                "plan_digest": self.plan_digest, "config": self.config.model_dump(mode="json")}
