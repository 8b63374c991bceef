"""The transplant engine and its donor library, on real Kvasir-SEG polyps and real polyp-free frames."""

import json
import shutil

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import cli
from pipeline.config import TransplantEngineConfig, config_from_dict
from pipeline.core.images import decode_image
from pipeline.core.parquet import provenance
from pipeline.core.timing import StageTimer
from pipeline.errors import ConfigError, DonorError, ShardError
from pipeline.executors.local import LocalExecutor
from pipeline.generate.composite import repaint_region
from pipeline.generate.runner import run_generate
from pipeline.generate.transplant.donors import (
    DonorLibrary,
    DonorTraits,
    build_donors,
    ensure_donors,
    to_lab,
)
from pipeline.generate.transplant.engine import (
    TargetTraits,
    TransplantEngine,
    choose_donor,
    lesion_maps,
    target_traits,
)
from pipeline.generate.transplant.warp import (
    best_rotation,
    lesion_centre,
    radial_profile,
    reinhard,
    spare_reflections,
)
from pipeline.generate.worker import prepare_sample
from pipeline.plan.masks.preset import MaskPreset
from pipeline.plan.masks.sampling import size_class_of
from pipeline.plan.masks.stats import mask_stats
from pipeline.plan.plan import Plan
from pipeline.testing.data import shared_data

DATA = shared_data()
KVASIR = DATA / "kvasir-seg"
TRAIN = (KVASIR / "splits/train.txt").read_text().split()
TEST = (KVASIR / "splits/test.txt").read_text().split()
MULTI_LESION = "cju0roawvklrq0799vmjorwfv"  # a training image whose mask holds two lesions
ROOT = cli.__file__.rsplit("/pipeline/", 1)[0]


def read_rgb(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def kvasir_mask(source_id, size):
    mask = cv2.resize(cv2.imread(str(KVASIR / "masks" / f"{source_id}.jpg"), cv2.IMREAD_GRAYSCALE), size,
                      interpolation=cv2.INTER_NEAREST)
    return np.where(mask > 127, 255, 0).astype(np.uint8)


@pytest.fixture(scope="module")
def split_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("split") / "train-part.txt"
    path.write_text("\n".join([*TRAIN[:10], MULTI_LESION, MULTI_LESION]) + "\n")  # listed twice: one entry
    return path


@pytest.fixture(scope="module")
def library(tmp_path_factory, split_file):
    out = tmp_path_factory.mktemp("donors") / "donors.parquet"
    build_donors(KVASIR / "images", KVASIR / "masks", str(out), split_file)
    return out


def engine(library, **settings):
    return TransplantEngine(TransplantEngineConfig(kind="transplant", donors=str(library), **settings))


def frame_and_mask(index=1, side=256, label=TEST[0]):
    """A polyp-free frame with a real (test-split) polyp outline as the planned mask."""
    frame = cv2.resize(read_rgb(DATA / "normal-mucosa" / f"{index}.jpg"), (side, side), interpolation=cv2.INTER_CUBIC)
    return frame, kvasir_mask(label, (side, side))


# ---------------------------------------------------------------------------------------- donor library


def test_library_holds_every_lesion_of_the_split_and_nothing_else(library, split_file):
    table = pq.read_table(library)
    ids = list(dict.fromkeys(split_file.read_text().split()))
    assert set(table.column("source_id").to_pylist()) == set(ids)
    assert not set(table.column("source_id").to_pylist()) & set(TEST)  # the split is honoured
    meta = provenance(table.schema)
    assert meta["kind"] == "donor-library" and meta["split"] == str(split_file)
    expected = 0
    for source_id in ids:
        expected += int(mask_stats(cv2.imread(str(KVASIR / "masks" / f"{source_id}.jpg"), 0))["components"])
    assert table.num_rows == expected and table.num_rows > len(ids)  # the two-lesion image gives two donors
    rows = [r for r in table.to_pylist() if r["source_id"] == MULTI_LESION]
    assert [r["donor_id"] for r in rows] == [f"{MULTI_LESION}/0", f"{MULTI_LESION}/1"]
    assert rows[0]["area_fraction"] > rows[1]["area_fraction"]
    for row in rows:  # each crop's mask is that lesion alone, where the source mask has it
        x0, y0, x1, y1 = row["crop_box"]
        source = cv2.imread(str(KVASIR / "masks" / f"{MULTI_LESION}.jpg"), 0)[y0:y1, x0:x1] > 127
        crop_mask = decode_image(row["mask"]["bytes"]) > 0
        assert crop_mask.shape == source.shape and decode_image(row["image"]["bytes"]).shape == (*source.shape, 3)
        assert crop_mask.any() and not (crop_mask & ~source).any()
        assert row["modality"] == "wli" and 0 < row["solidity"] <= 1 and 0 <= row["eccentricity"] < 1


def bad_folder(tmp_path, ids=TRAIN[:2]):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for source_id in ids:
        shutil.copy(KVASIR / "images" / f"{source_id}.jpg", images)
        shutil.copy(KVASIR / "masks" / f"{source_id}.jpg", masks)
    return images, masks


def missing_mask(images, masks):
    (masks / f"{TRAIN[1]}.jpg").unlink()
    return images / f"{TRAIN[1]}.jpg", "no mask for it"


def wrong_size(images, masks):
    small = cv2.resize(cv2.imread(str(masks / f"{TRAIN[0]}.jpg")), (50, 40))
    cv2.imwrite(str(masks / f"{TRAIN[0]}.jpg"), small)
    return masks / f"{TRAIN[0]}.jpg", "mask is 50x40 but its image"


def unreadable(images, masks):
    (images / f"{TRAIN[1]}.jpg").write_bytes(b"not a jpeg")
    return images / f"{TRAIN[1]}.jpg", "not a readable image"


@pytest.mark.parametrize("breakage", [missing_mask, wrong_size, unreadable])
def test_bad_donor_folders_are_one_line_errors_naming_the_file(tmp_path, capsys, breakage):
    images, masks = bad_folder(tmp_path)
    culprit, reason = breakage(images, masks)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["donors", "build", "--images", str(images), "--masks", str(masks), "--out", str(tmp_path / "d.parquet")])
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(error.splitlines()) == 1
    assert error.startswith("polyp-synth: error:") and str(culprit) in error and reason in error
    assert not (tmp_path / "d.parquet").exists()


def test_split_ids_without_images_and_missing_libraries_are_errors(tmp_path):
    images, masks = bad_folder(tmp_path)
    split = tmp_path / "split.txt"
    split.write_text(f"{TRAIN[0]}\nno-such-id\n")
    with pytest.raises(DonorError, match=f"no image for id no-such-id \\(listed in {split}\\)"):
        build_donors(images, masks, str(tmp_path / "d.parquet"), split)
    config = TransplantEngineConfig(kind="transplant", donors=str(tmp_path / "misspelt.parquet"))
    with pytest.raises(DonorError, match="engine.donors: .*misspelt.parquet: no such donor library"):
        ensure_donors(config)
    assert not (tmp_path / "misspelt.parquet").exists()  # never built from a guess
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not parquet")
    with pytest.raises(DonorError, match="junk.parquet: not a donor library"):
        DonorLibrary.load(str(tmp_path / "junk.parquet"))


def test_a_configured_source_builds_the_library_on_first_use(tmp_path):
    images, masks = bad_folder(tmp_path)
    split = tmp_path / "split.txt"
    split.write_text(f"{TRAIN[1]}\n")
    config = TransplantEngineConfig.model_validate({
        "kind": "transplant", "donors": str(tmp_path / "lib" / "donors.parquet"),
        "donors_source": {"images": str(images), "masks": str(masks), "split": str(split)}})
    ensure_donors(config)
    assert DonorLibrary.load(config.donors).table.column("source_id").to_pylist() == [TRAIN[1]]
    ensure_donors(config)  # the same source: the library is kept
    split.write_text(f"{TRAIN[2]}\n")  # an edited split must not keep the old donors
    with pytest.raises(DonorError, match="donors.parquet: the split's contents changed since it was built; delete"):
        ensure_donors(config)
    assert DonorLibrary.load(config.donors).table.column("source_id").to_pylist() == [TRAIN[1]]


# --------------------------------------------------------------------------------------------- maths


def test_radial_profile_and_rotation_match_brute_force():
    mask = np.zeros((200, 240), np.uint8)
    cv2.ellipse(mask, (120, 100), (70, 40), 25, 0, 360, 255, -1)
    centre = lesion_centre(mask)
    assert mask[round(centre[1]), round(centre[0])]
    profile = radial_profile(mask, centre, bins=72)
    ys, xs = np.nonzero(mask)
    angles = np.arctan2(ys - centre[1], xs - centre[0]) % (2 * np.pi)
    radii = np.hypot(ys - centre[1], xs - centre[0])
    for i in range(72):  # the farthest mask pixel within a degree of each direction
        near = np.abs(((angles - 2 * np.pi * i / 72) + np.pi) % (2 * np.pi) - np.pi) < np.radians(1)
        assert abs(profile[i] - radii[near].max()) < 1.5
    rotated = np.roll(profile, -9)
    brute = max(range(72), key=lambda s: float(np.dot(profile - profile.mean(), np.roll(rotated, -s) - rotated.mean())))
    assert best_rotation(profile, rotated) == brute == 72 - 9


def test_reinhard_matches_the_formula():
    rng = np.random.default_rng(0)
    lab = rng.uniform(0, 80, (8, 9, 3)).astype(np.float32)
    source = (np.array([50.0, 10, 20]), np.array([5.0, 3, 4]))
    target = (np.array([60.0, 15, 18]), np.array([6.0, 3, 6]))
    expected = (lab - source[0]) * (target[1] / source[1]) + target[0]
    assert np.allclose(reinhard(lab, source, target), expected, atol=1e-3)


def test_colour_transfer_tints_tissue_and_leaves_reflections_white():
    """A transfer towards less red mucosa turns a white reflection cyan unless it is spared."""
    rgb = np.array([[[200, 90, 80], [255, 255, 255], [250, 248, 246], [238, 234, 232]]], np.uint8)  # tissue,
    lab = to_lab(rgb)  # two reflections, and a pixel on the ramp (L 92.8)
    moved = reinhard(lab, (np.array([50.0, 30, 20]), np.ones(3)), (np.array([50.0, 10, 20]), np.ones(3)))
    tinted = cv2.cvtColor(moved, cv2.COLOR_Lab2RGB)[0, 1] * 255
    assert tinted[0] < tinted[2] - 20  # the reflection left alone would be cyan
    spared = spare_reflections(lab, moved)
    assert np.allclose(spared[0, 1:3], lab[0, 1:3], atol=1e-4)  # both reflections keep their colour
    assert 88 < lab[0, 3, 0] < 95 and abs(spared[0, 3, 1] - lab[0, 3, 1]) < abs(moved[0, 3, 1] - lab[0, 3, 1]) / 2 + 1e-3
    assert not np.allclose(spared[0, 3], lab[0, 3]) and not np.allclose(spared[0, 3], moved[0, 3])  # in between
    assert np.allclose(spared[0, 0], moved[0, 0])  # tissue takes the transfer


def test_the_donor_outline_lands_on_the_planned_mask(library):
    """Warping the donor's own mask with the texture's maps reproduces the planned label."""
    lib = DonorLibrary.load(str(library))
    for label_id, index in ((TEST[0], 0), (TEST[3], 5)):
        label = kvasir_mask(label_id, (320, 320)) > 0
        _, components = cv2.connectedComponents(label.astype(np.uint8))
        label = components == 1 + int(np.argmax(np.bincount(components.ravel())[1:]))  # the main lesion
        donor = lib.donor(index)
        map_x, map_y = lesion_maps(label, donor)
        warped = cv2.remap(donor.mask, map_x, map_y, cv2.INTER_NEAREST, borderValue=0) > 0
        iou = (warped & label).sum() / (warped | label).sum()
        assert iou > 0.95, (label_id, iou)


# ---------------------------------------------------------------------------------------------- engine


def test_same_sample_same_pixels_and_outside_the_repaint_region_the_source_exactly(library):
    frame, mask = frame_and_mask()
    for blend in ("alpha", "pyramid", "poisson"):
        transplant = engine(library, blend=blend)
        first = transplant.inpaint([frame], [mask], [""], [""], [7])[0]
        again = engine(library, blend=blend).inpaint([frame.copy()], [mask.copy()], ["x"], ["y"], [7])[0]
        assert np.array_equal(first, again)
        outside = repaint_region(mask, transplant.config.mask_dilation, transplant.config.mask_feather) == 0
        assert np.array_equal(first[outside], frame[outside])
        inside = mask > 0
        assert np.abs(first[inside].astype(int) - frame[inside].astype(int)).mean() > 5  # a lesion was put there


def test_donors_follow_the_seed_deterministically(library):
    transplant = engine(library, candidates=4)
    frame, mask = frame_and_mask()
    chosen = {transplant.donor_id(frame, mask, seed) for seed in range(40)}
    assert 2 <= len(chosen) <= 4  # the seed picks among the 4 most compatible donors
    assert transplant.donor_id(frame, mask, 3) == transplant.donor_id(frame.copy(), mask.copy(), 3)


def test_choice_prefers_the_frames_modality_size_and_shape():
    traits = DonorTraits(area_fraction=np.array([0.01, 0.2, 0.2, 0.21]), solidity=np.array([0.95, 0.95, 0.6, 0.94]),
                         eccentricity=np.array([0.5, 0.5, 0.5, 0.52]), modality=np.array(["wli", "wli", "wli", "nbi"]),
                         visible_fraction=np.ones(4))
    wli = TargetTraits(area_fraction=0.19, solidity=0.96, eccentricity=0.5, modality="wli")
    assert {choose_donor(traits, wli, seed, 1) for seed in range(10)} == {1}
    nbi = TargetTraits(area_fraction=0.01, solidity=0.6, eccentricity=0.5, modality="nbi")
    assert {choose_donor(traits, nbi, seed, 2) for seed in range(10)} == {3}  # the only NBI donor
    assert target_traits(*frame_and_mask()).modality == "wli"


# ------------------------------------------------------------------------------------------ end to end


def test_a_transplant_run_writes_valid_shards_with_donor_ids(tmp_path, library):
    data = {
        "run_id": "tp", "seed": 3, "samples": 6, "shard_size": 3, "output": str(tmp_path),
        "frames": {"source": str(DATA / "normal-mucosa"), "limit": 6},
        "prompts": {"bank": f"{ROOT}/prompts/clinical.yaml"}, "masks": {"preset": f"{ROOT}/masks/default.yaml"},
        "engine": {"kind": "transplant", "donors": str(library), "output_resolution": 160},
    }
    config = config_from_dict(data)
    summary = run_generate(config, LocalExecutor())
    assert summary.ok and summary.written_samples == 6
    rows = [row for path in sorted((tmp_path / "tp" / "shards").glob("*.parquet")) for row in pq.read_table(path).to_pylist()]
    plan = {r["sample_id"]: r for r in Plan.read(config.run_dir()).table.to_pylist()}
    donors = DonorLibrary.load(str(library))
    preset = MaskPreset.load(config.masks.preset)
    for row in rows:
        assert row["donor_id"] in donors.ids and row["engine"]["kind"] == "transplant"
        assert row["engine"]["donors_sha256"] and row["engine"]["blend"] == "pyramid"
        frame, planned = prepare_sample(plan[row["sample_id"]], 160, StageTimer())
        image, mask = decode_image(row["image"]["bytes"]), decode_image(row["mask"]["bytes"])
        assert np.array_equal(mask, planned)  # the label is the planned mask, exactly
        outside = repaint_region(planned, config.engine.mask_dilation, config.engine.mask_feather) == 0
        assert np.array_equal(image[outside], frame[outside])
        # it painted a donor, not the prompt: what it honoured is the frame's, the label's and the donor's
        attributes, asked = row["attributes"], plan[row["sample_id"]]["attributes"]
        assert not row["prompt_used"] and set(attributes) == {"modality", "size", "position", "donor_area",
                                                              "donor_solidity", "donor_eccentricity"}
        assert attributes["modality"] == asked["modality"] and attributes["position"] in ("centre", "periphery")
        assert attributes["size"] == size_class_of(float((planned > 0).mean()), preset)
        index = donors.ids.index(row["donor_id"])
        assert attributes["donor_solidity"] == pytest.approx(donors.traits.solidity[index])
    manifest = json.loads((tmp_path / "tp" / "manifest.json").read_text())
    assert {"donor", "transplant"} <= set(manifest["timings"]["stage_seconds"])

    import datasets

    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "tp" / "shards" / "*.parquet"), split="train",
                                   cache_dir=str(tmp_path / "hf"))
    assert loaded[0]["image"].size == (160, 160) and loaded[0]["donor_id"] in donors.ids


def test_a_library_rebuilt_at_the_same_path_is_another_input(tmp_path):
    """Sample ids cover what the library holds, not only its path: a rebuild from other images makes a
    re-run refuse the old plan instead of mixing shards of two libraries."""
    images, masks = bad_folder(tmp_path)
    library = tmp_path / "lib.parquet"
    build_donors(images, masks, str(library))
    data = {"run_id": "rb", "seed": 1, "samples": 2, "shard_size": 2, "output": str(tmp_path / "out"),
            "frames": {"source": str(DATA / "normal-mucosa"), "limit": 2},
            "prompts": {"bank": f"{ROOT}/prompts/clinical.yaml"}, "masks": {"preset": f"{ROOT}/masks/default.yaml"},
            "engine": {"kind": "transplant", "donors": str(library), "output_resolution": 96}}
    config = config_from_dict(data)
    assert run_generate(config, LocalExecutor()).ok
    first_ids = Plan.read(config.run_dir()).table.column("sample_id").to_pylist()
    (masks / f"{TRAIN[0]}.jpg").unlink()
    (images / f"{TRAIN[0]}.jpg").unlink()
    build_donors(images, masks, str(library))  # same path, other donors
    with pytest.raises(ShardError, match="the donor library .*lib.parquet changed since this run was planned"):
        run_generate(config, LocalExecutor())
    config = config_from_dict({**data, "output": str(tmp_path / "fresh")})
    assert run_generate(config, LocalExecutor()).ok
    assert set(Plan.read(config.run_dir()).table.column("sample_id").to_pylist()).isdisjoint(first_ids)


def test_engine_kind_is_a_typed_section():
    base = {"frames": {"source": "x"}}
    assert config_from_dict(base).engine.kind == "sdxl"
    with pytest.raises(ConfigError, match="engine.donors: Field required"):
        config_from_dict({**base, "engine": {"kind": "transplant"}})
    with pytest.raises(ConfigError, match="engine.steps: unknown key"):
        config_from_dict({**base, "engine": {"kind": "transplant", "donors": "d", "steps": 3}})
    with pytest.raises(ConfigError, match="engine: kind must be sdxl or transplant"):
        config_from_dict({**base, "engine": {"kind": "gan"}})
