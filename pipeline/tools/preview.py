"""Contact sheets: look at a plan before spending GPU hours, and at a run's shards afterwards.

Each tile is the frame (or generated image) with the label's outline drawn on it, and the prompt
printed underneath.
"""

from __future__ import annotations

from pipeline.config import EngineConfig, JobConfig
from pipeline.core import storage
from pipeline.core.images import decode_image
from pipeline.core.layout import RunLayout
from pipeline.core.sheets import contact_sheet, tile
from pipeline.core.timing import StageTimer
from pipeline.errors import ConfigError, ShardError
from pipeline.generate.shards import read_shard
from pipeline.generate.window import paint_window
from pipeline.generate.worker import NEGATIVE, prepare_sample
from pipeline.plan.modality import MODALITY_AXIS
from pipeline.plan.negatives import negative_of
from pipeline.plan.plan import build_plan
from pipeline.plan.targets import planned_areas, shares_table, size_shares


def caption(row: dict) -> str:
    """The prompt, led by the frame's modality (which the frame decides, so the prompt must agree); for
    a sample whose engine never read its prompt (transplant), what it did honour: its donor, the
    label's size class and position; for a hard negative, what it shows."""
    attributes = row.get("attributes") or {}
    modality = attributes.get(MODALITY_AXIS)
    text = row["prompt"]
    shows = attributes.get(NEGATIVE)  # a shard's; a plan row says it in its mask parameters
    if shows is None and row.get("mask_params"):
        planned = negative_of(row["mask_params"])
        shows = planned.shows if planned else None
    if shows:
        text = f"hard negative, no label: {shows}"
    elif row.get("prompt_used") is False:
        text = (f"donor {row.get('donor_id')}: {attributes.get('size')} polyp, {attributes.get('position')} "
                "of the view (prompt not used)")
    return f"[{modality.upper()} frame] {text}" if modality else text


def plan_sheet(config: JobConfig, n: int, out: str, windows: bool = False) -> str | None:
    """Frames, planned masks and prompts of the first n samples of a job; with `windows`, also the
    square the engine will paint each in. A plan aimed at lesion sizes (`targets`) is planned whole,
    and the sizes it holds are returned against the asked ones."""
    if windows and not isinstance(config.engine, EngineConfig):
        raise ConfigError(f"--windows: engine.kind {config.engine.kind} paints no window (only sdxl does)")
    plan = build_plan(config, None if config.targets else n)
    cells = []
    for row in plan.table.slice(0, n).to_pylist():
        frame, mask = prepare_sample(row, config.engine.output_resolution, StageTimer())
        window = paint_window(mask, config.engine).as_list() if windows and mask.any() else None  # negatives: none
        cells.append(tile(frame, mask, caption(row), window))
    contact_sheet(cells, out)
    if plan.meta.targets is None:
        return None
    return shares_table(plan.meta.targets, {"planned": size_shares(planned_areas(plan.table))})


def run_sheet(run_dir: str, n: int, out: str, windows: bool = False) -> None:
    """Generated images, label outlines and prompts of the first n samples in a run's shards; with
    `windows`, also the square each was painted in (the shard's `window` column, where not null)."""
    cells = []
    shard_dir = RunLayout(run_dir).shard_dir
    for name in storage.list_names(shard_dir):
        if len(cells) >= n:
            break
        if not name.endswith(".parquet"):
            continue
        table = read_shard(storage.join(shard_dir, name))
        columns = ["sample_id", "image", "mask", "prompt", "attributes"] + (
            ["window"] if windows and "window" in table.column_names else []) + [
            name for name in ("prompt_used", "donor_id") if name in table.column_names]
        for row in table.select(columns).slice(0, n - len(cells)).to_pylist():
            try:
                image, mask = decode_image(row["image"]["bytes"]), decode_image(row["mask"]["bytes"])
            except ValueError as exc:
                raise ShardError(f"{storage.join(shard_dir, name)}: sample {row['sample_id']}: {exc}") from None
            cells.append(tile(image, mask, caption(row), row.get("window")))
    if not cells:
        raise ShardError(f"{run_dir}: no shards to preview (is this a run directory?)")
    contact_sheet(cells, out)
