"""Crop-around-mask inpainting: the window maths, and the SDXL engine painting windows of real,
non-square Kvasir-SEG frames with the tiny model (frame and crop modes, mixed window sizes)."""

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import EngineConfig
from pipeline.errors import ConfigError
from pipeline.generate.composite import repaint_region
from pipeline.generate.sdxl import InpaintEngine
from pipeline.generate.window import (
    Window,
    crop_window,
    pad_square,
    region_bounds,
    unpad_square,
)
from pipeline.testing.data import shared_data

DATA = shared_data()
KVASIR = DATA / "kvasir-seg"
PROMPT = "a 4 mm sessile polyp (Paris 0-Is), white light colonoscopy"


def kvasir_frame(index: int) -> np.ndarray:
    """A real Kvasir-SEG frame at half size (about 311×265: not square)."""
    path = sorted((KVASIR / "images").glob("*.jpg"))[index]
    frame = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    return cv2.resize(frame, (frame.shape[1] // 2, frame.shape[0] // 2), interpolation=cv2.INTER_AREA)


def lesion(shape: tuple[int, int], centre: tuple[int, int], size: int, index: int = 0) -> np.ndarray:
    """A label of `shape` (H, W): a real Kvasir-SEG polyp outline scaled to `size` px, centred at
    `centre` (x, y), cut off where it leaves the frame."""
    real = cv2.imread(str(sorted((KVASIR / "masks").glob("*.jpg"))[index]), cv2.IMREAD_GRAYSCALE) > 127
    x, y, w, h = cv2.boundingRect(real.astype(np.uint8))
    outline = cv2.resize(real[y:y + h, x:x + w].astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
    canvas = np.zeros((shape[0] + 2 * size, shape[1] + 2 * size), np.uint8)
    cx, cy = centre[0] + size, centre[1] + size
    canvas[cy - size // 2:cy - size // 2 + size, cx - size // 2:cx - size // 2 + size] = outline
    return np.where(canvas[size:-size, size:-size] > 0, 255, 0).astype(np.uint8)


def bounds_of(region: np.ndarray) -> Window:
    x, y, w, h = cv2.boundingRect(region.astype(np.uint8))
    return Window(x, y, x + w, y + h)


# ------------------------------------------------------------------------------------------ window maths


@pytest.mark.parametrize("dilation, feather", [(8, 4), (6, 0), (0, 3), (0, 0), (3, 1)])
def test_region_bounds_is_the_bounding_box_of_the_repaint_region(dilation, feather):
    shape = kvasir_frame(0).shape[:2]
    for centre, size in (((150, 130), 40), ((4, 5), 30), ((shape[1] - 3, shape[0] // 2), 25), ((100, 100), 7)):
        mask = lesion(shape, centre, size, index=size)
        expected = bounds_of(repaint_region(mask, dilation, feather) > 0)
        assert region_bounds(mask, dilation, feather) == expected
    assert region_bounds(np.zeros(shape, np.uint8), dilation, feather) is None


@pytest.mark.parametrize("centre", [(0, 0), (310, 0), (0, 264), (310, 264), (155, 2), (2, 130), (155, 130)])
def test_crop_is_a_square_inside_the_frame_around_the_region_even_at_borders(centre):
    height, width = 265, 311
    mask = lesion((height, width), centre, 36)
    region = region_bounds(mask, 8, 4)
    window = crop_window(region, width, height, context=2.5, minimum=64)
    assert window.width == window.height == max(64, int(np.ceil(2.5 * max(region.width, region.height))))
    assert 0 <= window.x0 and window.x1 <= width and 0 <= window.y0 and window.y1 <= height
    assert window.x0 <= region.x0 and region.x1 <= window.x1 and window.y0 <= region.y0 and region.y1 <= window.y1


def test_crop_side_limits_and_the_whole_frame_fallback():
    assert crop_window(Window(100, 100, 110, 110), 311, 265, 2.5, 64).side == 64  # at least crop_min
    assert crop_window(Window(10, 10, 200, 100), 311, 265, 2.5, 64) == Window(0, 0, 265, 265)  # at most the short side
    assert crop_window(Window(0, 10, 300, 100), 311, 265, 2.5, 64) == Window(0, 0, 311, 265)  # wider than any square
    assert crop_window(None, 311, 265, 2.5, 64) == Window(0, 0, 311, 265)  # nothing to repaint
    assert crop_window(Window(0, 0, 20, 20), 50, 40, 2.5, 256) == Window(0, 0, 40, 40)  # frame smaller than crop_min


@pytest.mark.parametrize("height, width", [(265, 311), (311, 265), (200, 200), (40, 130)])
def test_padding_to_a_square_mirrors_like_opencv_and_comes_back_off(height, width):
    frame = cv2.resize(kvasir_frame(1), (width, height))
    padded = pad_square(frame)
    assert padded.shape == (max(height, width), max(height, width), 3)
    assert np.array_equal(unpad_square(padded, width, height), frame)
    if max(height, width) - min(height, width) < 2 * min(height, width):  # OpenCV reflects once only
        top, bottom = (max(width - height, 0) // 2, max(width - height, 0) - max(width - height, 0) // 2)
        left, right = (max(height - width, 0) // 2, max(height - width, 0) - max(height - width, 0) // 2)
        assert np.array_equal(padded, cv2.copyMakeBorder(frame, top, bottom, left, right, cv2.BORDER_REFLECT_101))
    label = pad_square(lesion((height, width), (width // 2, height // 2), 20), value=0)
    assert label.sum() == lesion((height, width), (width // 2, height // 2), 20).sum()


def test_crop_resolution_must_suit_the_model():
    from pipeline.config import config_from_dict

    with pytest.raises(ConfigError, match="engine.crop_resolution"):
        config_from_dict({"frames": {"source": "x"}, "engine": {"crop_resolution": 700}})
    with pytest.raises(ConfigError, match="engine.region"):
        config_from_dict({"frames": {"source": "x"}, "engine": {"region": "square"}})


# ------------------------------------------------------------------------------------------ the engine


def make_engine(model, **settings) -> InpaintEngine:
    settings = {"resolution": 128, "steps": 2, "batch_size": 4, "device": "cpu", "crop_min": 64, **settings}
    return InpaintEngine(EngineConfig(model=str(model), **settings))


def run(engine, frames, masks, seeds):
    return engine.inpaint(frames, masks, [PROMPT] * len(frames), ["blurry"] * len(frames), seeds)


def border_samples():
    """Real non-square frames with small real polyp outlines near the centre, an edge and a corner."""
    frames = [kvasir_frame(i) for i in (2, 3, 4)]
    places = [((150, 120), 30), ((6, 140), 24), ((frames[2].shape[1] - 5, frames[2].shape[0] - 5), 36)]
    masks = [lesion(f.shape[:2], c, s, index=i) for i, (f, (c, s)) in enumerate(zip(frames, places))]
    return frames, masks


@pytest.mark.parametrize("region", ["crop", "frame"])
def test_outside_the_repaint_region_is_the_source_exactly_and_the_label_is_painted(tiny_model_dir, region):
    engine = make_engine(tiny_model_dir, region=region)
    frames, masks = border_samples()
    results = run(engine, frames, masks, [1, 2, 3])
    for frame, mask, out in zip(frames, masks, results):
        window = engine.window(mask)
        assert out.shape == frame.shape and out.dtype == np.uint8
        if region == "crop":
            assert window.width == window.height < min(frame.shape[:2])
        else:
            assert window == Window(0, 0, frame.shape[1], frame.shape[0])
        outside = repaint_region(mask, 8, 4) == 0
        assert np.array_equal(out[outside], frame[outside])
        assert np.abs(out[mask > 0].astype(int) - frame[mask > 0]).mean() > 5


@pytest.mark.parametrize("region", ["crop", "frame"])
def test_the_model_sees_the_frame_unsquashed(tiny_model_dir, region):
    """A round lesion in a non-square frame stays round at the working resolution."""
    engine = make_engine(tiny_model_dir, region=region, mask_dilation=0, mask_feather=0)
    frame = kvasir_frame(5)
    height, width = frame.shape[:2]
    assert abs(width - height) > 30
    mask = cv2.circle(np.zeros((height, width), np.uint8), (width // 3, height // 2), 30, 255, -1)
    sample = engine.prepare_batch([frame], [mask], [PROMPT], [""], [0])[0]
    assert sample.image.size == sample.mask_image.size == (128, 128)
    painted = bounds_of(np.asarray(sample.mask_image) > 0)
    assert abs(painted.width - painted.height) <= 1
    scale = 128 / sample.window.side  # the same scale along both axes
    assert painted.width == pytest.approx(61 * scale, abs=2)


def test_deterministic_and_crop_differs_from_frame(tiny_model_dir):
    frames, masks = (values[1:] for values in border_samples())  # an edge and a corner
    crop = make_engine(tiny_model_dir)
    first, again = run(crop, frames, masks, [4, 5]), run(crop, frames, masks, [4, 5])
    whole = run(make_engine(tiny_model_dir, region="frame"), frames, masks, [4, 5])
    for a, b, c, mask in zip(first, again, whole, masks):
        assert np.array_equal(a, b)
        assert not np.array_equal(a[mask > 0], c[mask > 0])


def test_batches_mixing_window_sizes_match_one_at_a_time(tiny_model_dir):
    """Small windows work at crop_resolution, large ones at resolution: one shard mixes both."""
    settings = {"crop_resolution": 64, "crop_min": 48, "mask_dilation": 2, "mask_feather": 2}
    frame = kvasir_frame(6)
    shape = frame.shape[:2]
    places = [((60, 60), 10), ((150, 130), 70), ((250, 60), 12), ((100, 180), 60)]
    masks = [lesion(shape, c, s, index=i) for i, (c, s) in enumerate(places)]
    frames = [frame] * len(masks)
    batched = make_engine(tiny_model_dir, batch_size=4, **settings)
    sides = [batched.working_side(batched.window(m)) for m in masks]
    assert sides == [64, 128, 64, 128]
    mixed = run(batched, frames, masks, [20, 21, 22, 23])
    overlapped = run(make_engine(tiny_model_dir, batch_size=4, overlap_cpu=True, **settings), frames, masks,
                     [20, 21, 22, 23])  # CPU stages on a helper thread: the very same pixels
    assert all(np.array_equal(a, b) for a, b in zip(mixed, overlapped))
    one_by_one = make_engine(tiny_model_dir, batch_size=1, **settings)
    for mask, seed, out in zip(masks, [20, 21, 22, 23], mixed):
        alone = run(one_by_one, [frame], [mask], [seed])[0]
        assert np.abs(out.astype(int) - alone.astype(int)).max() <= 2
        assert not np.array_equal(out[mask > 0], frame[mask > 0])


# ------------------------------------------------------------------------------------------ in a run


def test_a_run_records_each_window_and_preview_draws_it(tmp_path, tiny_model_dir):
    import datasets

    from pipeline.config import config_from_dict
    from pipeline.core.images import decode_image
    from pipeline.core.layout import RunLayout
    from pipeline.core.timing import StageTimer
    from pipeline.executors.local import LocalExecutor
    from pipeline.generate.runner import run_generate
    from pipeline.generate.worker import prepare_sample
    from pipeline.plan.plan import Plan
    from pipeline.tools.preview import plan_sheet, run_sheet

    root = __import__("pathlib").Path(__file__).parents[1]
    config = config_from_dict({
        "run_id": "crop", "seed": 3, "samples": 3, "shard_size": 3, "output": str(tmp_path),
        "frames": {"source": str(KVASIR / "images"), "limit": 3},
        "prompts": {"bank": str(root / "prompts/clinical.yaml")}, "masks": {"preset": str(root / "masks/default.yaml")},
        "engine": {"model": str(tiny_model_dir), "resolution": 64, "steps": 2, "crop_min": 32, "device": "cpu"},
    })
    assert run_generate(config, LocalExecutor()).ok
    shard = RunLayout(config.run_dir()).shard(0)
    rows = pq.read_table(shard).to_pylist()
    plan = {r["sample_id"]: r for r in Plan.read(config.run_dir()).table.to_pylist()}
    for row in rows:
        mask = decode_image(row["mask"]["bytes"])
        planned = plan[row["sample_id"]]
        assert mask.shape == (planned["frame_height"], planned["frame_width"])  # each frame's own size
        _, label = prepare_sample(planned, None, StageTimer())
        assert np.array_equal(mask, label)  # the label is the planned mask, untouched
        x0, y0, x1, y1 = row["window"]
        assert x1 - x0 == y1 - y0 and 0 <= x0 and 0 <= y0 and x1 <= row["width"] and y1 <= row["height"]
        assert row["engine"]["region"] == "crop" and row["engine"]["crop_min"] == 32
    ds = datasets.load_dataset("parquet", data_files=shard, split="train", cache_dir=str(tmp_path / "cache"))
    assert ds[0]["window"] == rows[0]["window"]

    for draw, sheet in ((lambda out: run_sheet(config.run_dir(), 3, out, windows=True), tmp_path / "run.png"),
                        (lambda out: plan_sheet(config, 3, out, windows=True), tmp_path / "plan.png")):
        draw(str(sheet))
        pixels = cv2.cvtColor(cv2.imread(str(sheet)), cv2.COLOR_BGR2RGB)
        assert (np.abs(pixels.astype(int) - (255, 220, 0)).sum(axis=2) == 0).sum() > 50  # the window's outline
