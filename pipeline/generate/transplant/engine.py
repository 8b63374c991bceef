"""The `transplant` engine: a real polyp from the donor library, warped so that its outline lands on
the planned mask, colour-matched to the frame's mucosa and blended in. Weight-free, CPU only.

Per sample, deterministically from (frame, mask, seed):
1. choose a donor: among donors of the frame's modality (and, when there are enough, whose lesion
   and ring lie inside their frame's field of view), the `candidates` nearest in size (log area
   fraction) and shape (solidity, eccentricity) to the planned mask; the seed picks one of them;
2. warp its crop onto every lesion of the mask (`warp.warp_maps`, one radial warp per lesion);
3. Reinhard colour transfer in Lab from the donor's mucosa ring to the frame's ring just outside
   the repaint region, light reflections left white (applied to the donor's crop before the warp:
   it is per pixel, and the crop is smaller than the window it is warped into);
4. blend (`alpha`, `pyramid` or `poisson`), then composite through the repaint region, so every
   pixel outside it is the source frame's, bit for bit. The label is the planned mask, untouched.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
import pyarrow as pa

from pipeline.config import TransplantEngineConfig
from pipeline.core.timing import StageTimer
from pipeline.generate.composite import composite, repaint_region
from pipeline.generate.transplant.donors import (
    Donor,
    DonorLibrary,
    DonorTraits,
    mucosa_stats,
    ring_around,
    ring_width,
    to_lab,
)
from pipeline.generate.transplant.warp import (
    PROFILE_SMOOTHING,
    best_rotation,
    lesion_centre,
    poisson_blend,
    pyramid_blend,
    radial_profile,
    reinhard,
    smooth_profile,
    spare_reflections,
    warp_maps,
)
from pipeline.plan.fov import FieldOfView
from pipeline.plan.masks.stats import mask_stats
from pipeline.plan.modality import detect_modality

VISIBLE_ENOUGH = 0.9
"""Donors whose lesion and ring are at least this much inside their frame's field of view are
preferred (the rest may carry the endoscope's black border or an overlay into the warp)."""
_AREA_SCALE, _SOLIDITY_SCALE, _ECCENTRICITY_SCALE = np.log(2.0), 0.1, 0.2
_RING_STRIDE = 4  # every 4th ring pixel is plenty for a mean and a standard deviation


@dataclass(frozen=True)
class TargetTraits:
    """What a planned sample asks of its donor."""

    area_fraction: float
    solidity: float
    eccentricity: float
    modality: str


def target_traits(frame: np.ndarray, mask: np.ndarray) -> TargetTraits:
    """Size and shape of the planned mask (`mask_stats` of its bounding box) and the frame's modality,
    detected as the frame catalog does (over the whole frame: dark and unlit pixels are not counted)."""
    x, y, w, h = cv2.boundingRect((mask > 0).astype(np.uint8))
    shape = mask_stats(mask[y:y + h, x:x + w])
    return TargetTraits(float(np.count_nonzero(mask) / mask.size), shape["solidity"], shape["eccentricity"],
                        detect_modality(frame, FieldOfView.full()))


def donor_distance(traits: DonorTraits, target: TargetTraits) -> np.ndarray:
    """Per donor: |ln(a_d / a_t)| / ln 2 + |s_d − s_t| / 0.1 + |e_d − e_t| / 0.2 (a doubling of area
    weighs like 0.1 of solidity or 0.2 of eccentricity)."""
    area = np.abs(np.log(np.maximum(traits.area_fraction, 1e-9) / max(target.area_fraction, 1e-9))) / _AREA_SCALE
    solidity = np.nan_to_num(np.abs(traits.solidity - target.solidity)) / _SOLIDITY_SCALE
    eccentricity = np.nan_to_num(np.abs(traits.eccentricity - target.eccentricity)) / _ECCENTRICITY_SCALE
    return area + solidity + eccentricity


def choose_donor(traits: DonorTraits, target: TargetTraits, seed: int, candidates: int) -> int:
    """Index of the donor for a sample: the seed's pick among the `candidates` most compatible ones."""
    pool = np.flatnonzero(traits.modality == target.modality)
    if pool.size == 0:  # no donor of this modality: any donor beats no sample
        pool = np.arange(traits.modality.size)
    clear = pool[traits.visible_fraction[pool] >= VISIBLE_ENOUGH]
    if clear.size >= candidates:
        pool = clear
    nearest = pool[np.argsort(donor_distance(traits, target)[pool], kind="stable")[:candidates]]
    return int(nearest[np.random.default_rng([seed, 7919]).integers(nearest.size)])


def _bounds(region: np.ndarray, margin: int) -> tuple[slice, slice]:
    x, y, w, h = cv2.boundingRect(region.astype(np.uint8))
    height, width = region.shape
    return (slice(max(0, y - margin), min(height, y + h + margin)),
            slice(max(0, x - margin), min(width, x + w + margin)))


def lesion_maps(label: np.ndarray, donor: Donor) -> tuple[np.ndarray, np.ndarray]:
    """Remap maps (window coordinates) that put the donor's lesion on every lesion of `label`; each
    pixel follows the warp of its nearest lesion."""
    count, components = cv2.connectedComponents(label.astype(np.uint8), connectivity=8)
    maps = []
    for k in range(1, count):
        lesion = components == k
        centre = lesion_centre(lesion)
        profile = smooth_profile(radial_profile(lesion, centre), PROFILE_SMOOTHING)
        maps.append(warp_maps(label.shape, (0, 0), centre, profile, donor.centre, donor.profile,
                              best_rotation(profile, donor.profile)))
    if len(maps) == 1:
        return maps[0]
    _, nearest = cv2.distanceTransformWithLabels(np.where(label, 0, 255).astype(np.uint8), cv2.DIST_L2, 5,
                                                 labelType=cv2.DIST_LABEL_CCOMP)
    map_x, map_y = maps[0]
    for k in range(2, count):
        here = nearest == nearest[components == k][0]
        map_x, map_y = np.where(here, maps[k - 1][0], map_x), np.where(here, maps[k - 1][1], map_y)
    return map_x, map_y


def transplant(frame: np.ndarray, mask: np.ndarray, donor: Donor, config: TransplantEngineConfig) -> np.ndarray:
    """The frame with the donor's lesion warped onto `mask`; outside the repaint region, the frame exactly."""
    if frame.ndim != 3 or frame.shape[2] != 3 or mask.shape != frame.shape[:2]:
        raise ValueError(f"transplant: frame {frame.shape} must be HxWx3 and its mask {mask.shape} HxW")
    label = mask > 0
    alpha = repaint_region(mask, config.mask_dilation, config.mask_feather)
    if not label.any():
        return frame.copy()
    reach = config.mask_dilation + config.mask_feather
    ring = ring_width(int(np.count_nonzero(label)))
    window = _bounds(label, reach + ring + 2)
    source, label_w, alpha_w = frame[window], label[window], alpha[window]

    texture = donor.rgb
    if config.colour_transfer:  # per pixel, so done on the donor's crop, before the warp: far fewer pixels
        mucosa = ring_around(label_w, reach, ring)
        if np.count_nonzero(mucosa) >= 16:  # a mask filling the frame leaves no mucosa to match
            before = to_lab(texture)
            lab = spare_reflections(before, reinhard(before, (donor.ring_mean, donor.ring_std),
                                                     mucosa_stats(source[mucosa][::_RING_STRIDE])))
            texture = np.clip(np.rint(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB) * 255), 0, 255).astype(np.uint8)
    map_x, map_y = lesion_maps(label_w, donor)
    rgb = cv2.remap(texture, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)

    if config.blend == "pyramid":
        rgb = pyramid_blend(rgb, source, alpha_w)
    elif config.blend == "poisson":
        pad = 2  # seamlessClone needs the region off the image's edge
        padded = [cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REFLECT_101) for image in (rgb, source)]
        region = np.pad(alpha_w > 0, pad)
        rgb = poisson_blend(padded[0], padded[1], region)[pad:-pad, pad:-pad]
    painted = frame.copy()
    painted[window] = rgb
    return composite(frame, painted, alpha)


@functools.lru_cache(maxsize=2)
def load_library(url: str) -> DonorLibrary:
    """The donor library, read once per process."""
    return DonorLibrary.load(url)


class TransplantEngine:
    """The `Engine` of `pipeline.generate.worker` for `engine.kind: transplant`. It never reads the
    prompt: a sample looks like its donor, so its attributes are the frame's, its label's and the
    donor's measured shape (`own_attributes`), not the prompt's."""

    prompt_used = False
    attribute_types = {"donor_area": pa.float32(), "donor_solidity": pa.float32(), "donor_eccentricity": pa.float32()}

    def __init__(self, config: TransplantEngineConfig):
        self.config = config
        self.library = load_library(config.donors)

    @property
    def identity(self) -> dict:
        """Provenance for each shard's `engine` column: everything that decides the pixels."""
        c = self.config
        return {"kind": "transplant", "model": None, "donors": c.donors, "donors_sha256": self.library.sha256,
                "blend": c.blend, "colour_transfer": c.colour_transfer, "candidates": c.candidates,
                "output_resolution": c.output_resolution, "mask_dilation": c.mask_dilation,
                "mask_feather": c.mask_feather, "random_weights": False}

    def choose(self, frame: np.ndarray, mask: np.ndarray, seed: int) -> int:
        return choose_donor(self.library.traits, target_traits(frame, mask), seed, self.config.candidates)

    def donor_id(self, frame: np.ndarray, mask: np.ndarray, seed: int) -> str:
        """The donor a sample was (or will be) made from: recorded in the shard's `donor_id` column."""
        return self.library.ids[self.choose(frame, mask, seed)]

    def own_attributes(self, frame: np.ndarray, mask: np.ndarray, seed: int) -> dict[str, float]:
        """The chosen donor's lesion as measured in its own frame: area fraction, solidity, eccentricity."""
        index, traits = self.choose(frame, mask, seed), self.library.traits
        return {"donor_area": float(traits.area_fraction[index]), "donor_solidity": float(traits.solidity[index]),
                "donor_eccentricity": float(traits.eccentricity[index])}

    def inpaint(self, frames: list[np.ndarray], masks: list[np.ndarray], prompts: list[str],
                negatives: list[str], seeds: list[int], timer: StageTimer | None = None) -> list[np.ndarray]:
        """One transplanted frame per input; prompts are not read (the donor decides the look)."""
        timer = timer or StageTimer()
        if not len(frames) == len(masks) == len(prompts) == len(negatives) == len(seeds):
            raise ValueError("inpaint: frames, masks, prompts, negatives and seeds must have the same length")
        return [self._one(frame, mask, int(seed), timer) for frame, mask, seed in zip(frames, masks, seeds)]

    def _one(self, frame: np.ndarray, mask: np.ndarray, seed: int, timer: StageTimer) -> np.ndarray:
        donor = timer.time("donor", lambda: self.library.donor(self.choose(frame, mask, seed)))
        return timer.time("transplant", lambda: transplant(frame, mask, donor, self.config))
