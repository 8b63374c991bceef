"""No evaluation image reaches training, by any path: refused, not warned.

The paths an image can take into an experiment's training data: the real training ids themselves; a
synthetic sample that *is* an evaluation image; a synthetic set's donor lesions, host frames
(frames cut by `frames polyp-free` keep their source's id) and real masks (`masks.source: real`);
the gate that chose the set (its reference images and its probe's negatives). Each is checked
against every evaluation image (the labelled sets and the polyp-free frames), by id and by file
content (`core.lineage`), and any overlap is one line naming the path and the images. Beyond
leakage, with `--real-n` a synthetic set's donors and real masks must come from the trial's own real
images: otherwise a gain would measure extra real data. A synthetic set whose provenance is unknown
cannot be checked, so it is refused too.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.lineage import ImageKeys, Lineage
from pipeline.errors import TrainError

_NAMED = 3  # overlapping images named in a refusal


def _named(shared: list[str]) -> str:
    more = f", … ({len(shared)} in all)" if len(shared) > _NAMED else ""
    return ", ".join(shared[:_NAMED]) + more


@dataclass(frozen=True)
class SyntheticSet:
    """A synthetic set as the checks see it: its name and source, its samples' own keys and its lineage
    (None when its export did not record one)."""

    name: str
    source: str
    keys: ImageKeys
    lineage: Lineage | None


def check_real(real: ImageKeys, evaluation: ImageKeys, real_spec: str) -> None:
    shared = real.shared_with(evaluation)
    if shared:
        raise TrainError(f"--real {real_spec}: {len(shared)} training images are evaluation images "
                         f"({_named(shared)}); train and evaluate on disjoint splits")


def check_synthetic(synthetic: SyntheticSet, evaluation: ImageKeys, real: ImageKeys | None) -> None:
    """Refuse a synthetic set that an evaluation image reached, or (with `real`, the trial's real
    images under --real-n) whose donors are other real images."""
    where = f"synthetic set {synthetic.name} ({synthetic.source})"
    shared = synthetic.keys.shared_with(evaluation)
    if shared:
        raise TrainError(f"{where}: {len(shared)} of its samples are evaluation images ({_named(shared)})")
    if synthetic.lineage is None:
        raise TrainError(f"{where}: which real images it was made from and judged with is not known (a plain "
                         "folder, Parquet without provenance columns, an export's files without its manifest, "
                         "an export made by an older version, or a donor library that moved): give the export's "
                         "folder, the run or its shards")
    for path, images in synthetic.lineage.overlaps(evaluation).items():
        raise TrainError(f"{where}: {path} include {len(images)} evaluation images ({_named(images)}); "
                         "make it from training images only, and judge it with a reference and segmenter without them")
    for path, what, build in (("donors", "donor images", "build its donors"),
                              ("masks", "images whose labels are its masks", "take its real masks")):
        outside = getattr(synthetic.lineage, path).outside(real) if real is not None else []
        if outside:
            raise TrainError(f"{where}: {len(outside)} {what} are not among the trial's real images "
                             f"({_named(outside)}); {build} from the same --real-n subset")
