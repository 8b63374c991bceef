"""Procedural masks against real Kvasir-SEG masks: shape statistics, fitting, attributes, placement."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from skimage.measure import label, regionprops

from pipeline.errors import MaskPresetError
from pipeline.plan.fov import FieldOfView
from pipeline.plan.masks.fit import fit_preset
from pipeline.plan.masks.params import MaskParams
from pipeline.plan.masks.preset import MaskPreset
from pipeline.plan.masks.sampling import sample_mask_params
from pipeline.plan.masks.shapes import draw_mask
from pipeline.plan.masks.stats import (
    KS_STATS,
    drawing_sizes,
    ks_report,
    load_reference_stats,
    mask_stats,
    stats_table,
)
from pipeline.plan.prompts.bank import PromptBank
from pipeline.testing.data import shared_data
from pipeline.tools.masks import check_against_reference

ROOT = Path(__file__).resolve().parents[1]
KVASIR = shared_data() / "kvasir-seg" / "masks"
DEFAULT = ROOT / "masks" / "default.yaml"
KS_LIMIT = 0.10

BANK = PromptBank.load(ROOT / "prompts" / "clinical.yaml")
SIZE = BANK.axes["size"].ids()


def bank_attributes(rng: np.random.Generator) -> dict[str, str]:
    """Attributes as the real prompt bank draws them (its weights and constraints)."""
    return BANK.sample(rng).attributes


def generated_stats(preset: MaskPreset, sizes: list[tuple[int, int]], seed: int) -> dict[str, np.ndarray]:
    """Masks as a job draws them, one per (width, height), measured like the reference."""
    rng = np.random.default_rng(seed)
    return stats_table(
        draw_mask(sample_mask_params(preset, bank_attributes(rng), FieldOfView.full(w, h), rng), w, h)
        for w, h in sizes
    )


@pytest.fixture(scope="module")
def kvasir() -> dict[str, np.ndarray]:
    return load_reference_stats(KVASIR)


@pytest.fixture(scope="module")
def preset() -> MaskPreset:
    return MaskPreset.load(DEFAULT)


def disc_fov(rows: int = 48, cols: int = 64, radius: float = 0.9) -> FieldOfView:
    """An endoscope-like field of view: an ellipse with an inset box cut out of its lower left."""
    y, x = np.mgrid[0:rows, 0:cols] + 0.5
    grid = ((x - cols / 2) / (radius * cols / 2)) ** 2 + ((y - rows / 2) / (radius * rows / 2)) ** 2 < 1
    grid[int(rows * 0.65) : int(rows * 0.85), int(cols * 0.08) : int(cols * 0.3)] = False
    return FieldOfView(grid)


def test_stats_are_regionprops_definitions(preset):
    rng = np.random.default_rng(3)
    masks = [draw_mask(sample_mask_params(preset, {}, FieldOfView.full(), rng), 300, 200) for _ in range(20)]
    masks += [cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) for path in sorted(KVASIR.glob("*.jpg"))[:20]]
    for mask in masks:
        binary = mask > 127
        largest = max(regionprops(label(binary)), key=lambda region: region.area)
        stats = mask_stats(mask)
        assert stats["area_fraction"] == pytest.approx(binary.mean(), abs=1e-12)
        assert stats["solidity"] == pytest.approx(largest.solidity, abs=1e-9)
        assert stats["eccentricity"] == pytest.approx(largest.eccentricity, abs=1e-9)


def test_reference_figures(kvasir):
    """The folder is what the published figures describe; JPEG specks are not counted as lesions."""
    assert kvasir["area_fraction"].size == 1000
    assert kvasir["area_fraction"].mean() == pytest.approx(0.154, abs=0.002)
    assert kvasir["solidity"].mean() == pytest.approx(0.952, abs=0.002)
    assert kvasir["eccentricity"].mean() == pytest.approx(0.663, abs=0.002)
    assert 0.93 < np.mean(kvasir["components"] == 1) < 0.97


def test_default_preset_matches_kvasir(preset, kvasir):
    generated = generated_stats(preset, drawing_sizes(kvasir, 1200, seed=11), seed=11)
    ks = ks_report(generated, kvasir)
    assert set(ks) == set(KS_STATS)
    assert max(ks.values()) <= KS_LIMIT, ks
    several = np.mean(generated["components"] >= 2)
    assert abs(several - np.mean(kvasir["components"] >= 2)) < 0.03


def test_fit_adapts_to_a_different_reference(tmp_path, preset, kvasir):
    """Fitted on the larger half of Kvasir-SEG, the preset matches that half, which the default does not."""
    paths = sorted(KVASIR.glob("*.jpg"))
    large = kvasir["area_fraction"] > np.median(kvasir["area_fraction"])
    folder = tmp_path / "large"
    folder.mkdir()
    for path in np.array(paths)[large]:
        (folder / path.name).symlink_to(path)
    reference = load_reference_stats(folder)
    assert ks_report(generated_stats(preset, drawing_sizes(reference, 600, 5), seed=5), reference)["area_fraction"] > 0.3

    fitted = fit_preset(folder, BANK, seed=1)
    ks = ks_report(generated_stats(fitted, drawing_sizes(reference, 1000, 12), seed=12), reference)
    assert max(ks.values()) <= KS_LIMIT, ks
    assert "large" in fitted.fitted_on


def test_fit_at_the_reference_pixel_size(tmp_path, kvasir):
    """Solidity depends on the pixel grid: Kvasir-SEG resampled to 384x288 is matched only by masks
    drawn at 384x288, which is what fit (and check) do, from the reference's own sizes."""
    folder = tmp_path / "small"
    folder.mkdir()
    for path in sorted(KVASIR.glob("*.jpg")):
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(folder / f"{path.stem}.png"), cv2.resize(mask, (384, 288), interpolation=cv2.INTER_NEAREST))
    reference = load_reference_stats(folder)
    assert set(drawing_sizes(reference, 50, 0)) == {(384, 288)}
    fitted = fit_preset(folder, BANK, seed=2)
    ks = ks_report(generated_stats(fitted, drawing_sizes(reference, 1000, 13), seed=13), reference)
    assert max(ks.values()) <= KS_LIMIT, ks


def test_check_draws_at_the_reference_sizes(kvasir):
    """`masks check` on Kvasir-SEG at its native sizes (332x487 up to 1920x1072) with the default preset."""
    report = check_against_reference(str(DEFAULT), str(ROOT / "prompts" / "clinical.yaml"), str(KVASIR), 1200, 3)
    assert report["pass"] and max(report["ks"].values()) <= KS_LIMIT, report["ks"]
    sizes = drawing_sizes(kvasir, 1200, 3)
    assert len(set(sizes)) > 20 and max(w for w, _ in sizes) >= 1280


@pytest.mark.parametrize("size", [(512, 512), (640, 480), (333, 517)])
def test_masks_are_binary_and_redrawn_from_their_params(preset, size):
    rng = np.random.default_rng(7)
    width, height = size
    for _ in range(40):
        params = sample_mask_params(preset, bank_attributes(rng), disc_fov(), rng)
        mask = draw_mask(params, width, height)
        assert mask.dtype == np.uint8 and mask.shape == (height, width)
        assert set(np.unique(mask)) == {0, 255}
        again = MaskParams.from_dict(json.loads(json.dumps(params.to_dict())))
        assert again == params
        assert np.array_equal(draw_mask(again, width, height), mask)
    first = sample_mask_params(preset, {"size": "large"}, FieldOfView.full(), np.random.default_rng(1))
    assert first == sample_mask_params(preset, {"size": "large"}, FieldOfView.full(), np.random.default_rng(1))


def test_masks_follow_attributes(preset):
    rng = np.random.default_rng(21)

    def drawn(morphology: str, size: str, n: int = 120) -> tuple[list[MaskParams], dict[str, float]]:
        params = [sample_mask_params(preset, {"morphology": morphology, "size": size}, FieldOfView.full(), rng)
                  for _ in range(n)]
        rows = [mask_stats(draw_mask(p, 256, 256)) for p in params]
        return params, {key: float(np.mean([row[key] for row in rows])) for key in KS_STATS}

    areas = [drawn("0-Is", size, 60)[1]["area_fraction"] for size in SIZE]  # diminutive → giant
    assert areas == sorted(areas) and areas[-1] > 5 * areas[0]
    sessile = drawn("0-Is", "large")[1]
    pedunculated, stalked = drawn("0-Ip", "large")
    assert np.mean([p.lesions[0].stalk is not None for p in pedunculated]) > 0.6
    assert stalked["eccentricity"] > sessile["eccentricity"] + 0.05
    assert stalked["solidity"] < sessile["solidity"] - 0.05
    for flat in ("0-IIa", "0-IIb"):
        stats = drawn(flat, "large")[1]
        assert stats["eccentricity"] > sessile["eccentricity"] + 0.1
        assert stats["solidity"] < sessile["solidity"]
    assert all(p.morphology == "0-Ip" and p.size == "large" for p in pedunculated)


@pytest.mark.parametrize("radius", [0.9, 0.35])
def test_placement_stays_inside_the_field_of_view(preset, radius):
    fov = disc_fov(radius=radius)
    rng = np.random.default_rng(4)
    visible = fov.to_mask(640, 480)
    for i in range(150):
        attributes = bank_attributes(rng) if i % 2 else {"size": "giant"}
        params = sample_mask_params(preset, attributes, fov, rng)
        mask = draw_mask(params, 640, 480)
        assert mask.any()
        assert not np.any((mask > 0) & ~visible), params
        assert not np.any((draw_mask(params, 320, 240) > 0) & ~fov.to_mask(320, 240))


def test_a_field_of_view_without_tissue_is_refused(preset):
    with pytest.raises(ValueError, match="no visible"):
        sample_mask_params(preset, {}, FieldOfView(np.zeros((48, 64), bool)), np.random.default_rng(0))


def test_unknown_attribute_value_names_it(preset):
    with pytest.raises(MaskPresetError, match="0-III"):
        sample_mask_params(preset, {"morphology": "0-III"}, FieldOfView.full(), np.random.default_rng(0))


def test_preset_round_trips_through_yaml(tmp_path, preset):
    path = tmp_path / "copy.yaml"
    preset.save(path)
    assert path.read_text().startswith("# polyp-synth mask preset")
    again = MaskPreset.load(path)
    assert again == preset and again.digest() == preset.digest()
    assert again.model_copy(update={"band_strength": 0.5}).digest() != preset.digest()


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda d: d.update(colour="red"), "colour: unknown key"),
        (lambda d: d["second_lesion"].update(probability=-0.1), "second_lesion.probability"),
        (lambda d: d["morphologies"]["0-Ip"]["stalk"].update(width=[0.5]), "morphologies.0-Ip.stalk.width"),
        (lambda d: d["size_classes"]["giant"].update(band=[0.95, 1.0]), "size_classes.*.band"),
        (lambda d: d.update(area_fraction=[0.2, 0.1]), "area_fraction"),
    ],
)
def test_bad_preset_files_name_the_field(tmp_path, edit, field):
    data = yaml.safe_load(DEFAULT.read_text())
    edit(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(MaskPresetError, match=str(path)) as error:
        MaskPreset.load(path)
    assert field in str(error.value)


def test_missing_preset_file(tmp_path):
    with pytest.raises(MaskPresetError, match="no such mask preset file"):
        MaskPreset.load(tmp_path / "nope.yaml")
