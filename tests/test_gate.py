"""The gate on real images: Kvasir-SEG test images as a "generated" run against a train-split reference.

One run holds every case (so features are extracted once): clean test images, the same blurred,
noised, colour-shifted and blanked, an output identical to its source frame, polyp-free frames with
a label, a repeated image, and an image whose frame changed outside the repaint region.
"""

import json
import urllib.error
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.config import config_from_dict
from pipeline.core import parquet
from pipeline.core.images import encode_png, resize_image
from pipeline.core.layout import RunLayout
from pipeline.errors import GateError, ShardError
from pipeline.executors.local import LocalExecutor
from pipeline.gate import metrics
from pipeline.gate.features import INCEPTION_FILE, InceptionExtractor, make_extractor
from pipeline.gate.reference import Reference, build_reference
from pipeline.gate.run import _read_features, load_or_build_reference, run_gate
from pipeline.gate.verdicts import load_gate
from pipeline.plan.frames import load_frame
from pipeline.testing.data import shared_data
from pipeline.testing.gate_runs import RunSample, image_run, remove_lesion

SIDE = 256
CLEAN, DEGRADED = 30, 12


def _kvasir(image_id: str) -> tuple[np.ndarray, np.ndarray]:
    root = shared_data() / "kvasir-seg"
    image, mask = load_frame(str(root / "images" / f"{image_id}.jpg")), load_frame(str(root / "masks" / f"{image_id}.jpg"))[..., 0]
    height, width = mask.shape
    scale = SIDE / max(height, width)
    size = (round(width * scale), round(height * scale))
    small = cv2.resize(mask, size, interpolation=cv2.INTER_AREA)
    return resize_image(image, size), np.where(small > 127, 255, 0).astype(np.uint8)


def _split(name: str) -> list[str]:
    return (shared_data() / "kvasir-seg" / "splits" / f"{name}.txt").read_text().split()


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    """A reference of 60 train-split images, their lesion crops and 60 polyp-free frames (probe)."""
    folder = tmp_path_factory.mktemp("reference")
    for sub in ("images", "masks"):
        (folder / sub).mkdir()
    for image_id in _split("train")[:60]:
        image, mask = _kvasir(image_id)
        (folder / "images" / f"{image_id}.png").write_bytes(encode_png(image))
        (folder / "masks" / f"{image_id}.png").write_bytes(encode_png(mask))
    extractor = make_extractor("efficientnet-lite0", device="cpu")
    reference = build_reference(str(folder / "images"), extractor, str(folder / "masks"),
                                str(shared_data() / "normal-mucosa"), limit=60)
    reference.save(str(folder / "ref"))
    return folder / "ref"


def _degrade(kind: str, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if kind == "blurred":
        return cv2.GaussianBlur(image, (0, 0), 6)
    if kind == "noised":
        return np.clip(image + rng.normal(0, 40, image.shape), 0, 255).astype(np.uint8)
    if kind == "colour":
        return image[..., ::-1].copy()  # red and blue swapped: a blue colon
    return np.full_like(image, 128)  # blanked


@pytest.fixture(scope="module")
def gated(tmp_path_factory, reference_dir):
    root = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(0)
    test_ids = _split("test")
    samples = []
    for image_id in test_ids[:CLEAN]:
        image, mask = _kvasir(image_id)
        samples.append(RunSample(image, mask, remove_lesion(image, mask), "clean", image_id))
    for n, kind in enumerate(("blurred", "noised", "colour", "blanked")):
        for image_id in test_ids[CLEAN + n * DEGRADED: CLEAN + (n + 1) * DEGRADED]:
            image, mask = _kvasir(image_id)
            degraded = _degrade(kind, image, rng)
            # painted on a frame equal outside the label: only the realism of what was made is in question
            samples.append(RunSample(degraded, mask, remove_lesion(degraded, mask), kind, image_id))
    for image_id in test_ids[80:84]:  # nothing painted: the output is its source frame
        image, mask = _kvasir(image_id)
        source = remove_lesion(image, mask)
        samples.append(RunSample(source, mask, source.copy(), "unpainted", image_id))
    mucosa = sorted((shared_data() / "normal-mucosa").glob("*.jpg"))[500:504]
    for path in mucosa:  # polyp-free frames with a polyp's label: the label's crop shows no lesion
        frame = load_frame(str(path))
        _, mask = _kvasir(test_ids[90])
        mask = cv2.resize(mask, frame.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        samples.append(RunSample(frame, mask, remove_lesion(frame, mask), "no_lesion", path.stem))
    first = samples[0]
    samples.append(RunSample(first.image.copy(), first.mask, first.source, "duplicate", first.name))
    image, mask = _kvasir(test_ids[85])
    moved = remove_lesion(image, mask)
    moved[: SIDE // 4] = 0  # the top of the frame changed: outside the repaint region
    samples.append(RunSample(image, mask, moved, "leaked", test_ids[85]))
    hosts = sorted((shared_data() / "normal-mucosa").glob("*.jpg"))[600:603]
    for path in [hosts[0], *hosts]:  # hard negatives: empty labels, the first frame twice (a reused frame)
        frame = load_frame(str(path))
        samples.append(RunSample(frame, np.zeros(frame.shape[:2], np.uint8), frame.copy(), "negative", path.stem,
                                 negative=True))
    for image_id in test_ids[86:88]:  # planned negatives that hold a polyp nobody labelled
        image, mask = _kvasir(image_id)
        samples.append(RunSample(image, np.zeros_like(mask), image.copy(), "unlabelled_polyp", image_id, negative=True))
    for image_id in test_ids[88:90]:  # polyp samples whose label came out empty: no lesion, not negatives
        image, mask = _kvasir(image_id)
        samples.append(RunSample(image, np.zeros_like(mask), image.copy(), "empty_label", image_id))

    run_dir = str(root / "run")
    image_run(run_dir, samples, shard_size=32, frames_dir=str(root / "frames"), random_weights=True)
    config = config_from_dict({"run_id": "run", "frames": {"source": "unused"},
                               "gate": {"reference": {"path": str(reference_dir)}, "device": "cpu"}})
    outcome = run_gate(run_dir, config, LocalExecutor("gating"))
    verdicts = parquet.read(str(root / "run" / "gate" / "verdicts.parquet")).to_pylist()
    kinds = [s.kind for s in samples]
    return run_dir, config, outcome, verdicts, kinds


def _reasons(verdicts, kinds, kind):
    return [v["reasons"] for v, k in zip(verdicts, kinds) if k == kind]


def test_real_test_images_are_accepted_and_close_to_the_reference(gated, reference_dir):
    run_dir, config, _, verdicts, kinds = gated
    clean = _reasons(verdicts, kinds, "clean")
    assert sum(not r for r in clean) >= 0.9 * len(clean), clean
    run = _read_features(RunLayout(run_dir), "efficientnet-lite0", [0, 1, 2])
    reference = Reference.load(str(reference_dir))
    groups = np.asarray(kinds)
    clean_kid = metrics.kid(reference.images, run.features[groups == "clean"])[0]
    assert abs(clean_kid) < 0.02
    for kind in ("blurred", "noised", "colour", "blanked"):
        kid = metrics.kid(reference.images, run.features[groups == kind])[0]
        assert kid > clean_kid + 0.05, (kind, kid, clean_kid)


def test_degraded_images_are_rejected_for_the_right_reasons(gated):
    _, _, _, verdicts, kinds = gated
    # Every degraded sample is rejected: by its own scores, or with its shard (lesion-crop KID). Noise
    # (σ 40) and swapped colour channels are what the per-sample scores see least (against this small
    # reference about half passes them alone); the shard's KID catches them all.
    for kind, own_share in (("blurred", 0.5), ("noised", 0.25), ("colour", 0.25)):
        reasons = _reasons(verdicts, kinds, kind)
        assert all(reasons), (kind, reasons)
        own = [set(r) - {"shard_kid"} for r in reasons]
        assert all(r <= {"unrealistic", "no_lesion"} for r in own), (kind, reasons)
        assert sum(bool(r) for r in own) >= own_share * len(own), (kind, reasons)
    assert all("blank" in r for r in _reasons(verdicts, kinds, "blanked"))


def test_unpainted_no_lesion_duplicate_and_leaked_samples(gated):
    _, _, _, verdicts, kinds = gated
    assert all("unpainted" in r for r in _reasons(verdicts, kinds, "unpainted"))
    assert all("no_lesion" in r for r in _reasons(verdicts, kinds, "no_lesion"))
    assert "near_duplicate" in _reasons(verdicts, kinds, "duplicate")[0]
    assert "leaked" in _reasons(verdicts, kinds, "leaked")[0]


def test_hard_negatives_are_not_judged_as_lesions_nor_counted_in_the_lesion_figures(gated):
    """Planned negatives pass the checks of a painted lesion untouched (none judges them; the frame
    negatives repeat one frame's pixels and are still no near-duplicate lesion); without gate.segmenter
    nothing tells a polyp nobody labelled (the segmenter's check: test_train). An empty label the plan
    did not ask for is a polyp sample without a lesion, rejected as before."""
    _, _, outcome, verdicts, kinds = gated
    assert _reasons(verdicts, kinds, "negative") == [[]] * 4
    assert _reasons(verdicts, kinds, "unlabelled_polyp") == [[]] * 2
    assert all("no_lesion" in r for r in _reasons(verdicts, kinds, "empty_label"))
    counts = outcome.metrics.samples
    assert (counts.negatives, counts.negatives_accepted) == (6, 6)
    assert outcome.metrics.run.n == len(kinds) - 6  # the set figures are of the polyp samples
    assert "(6/6 hard negatives)" in outcome.line()


def test_outputs_reader_report_and_regate_from_cache(gated, reference_dir, capsys):
    run_dir, _, outcome, verdicts, _ = gated
    result = load_gate(run_dir)
    assert result.accepted_ids == {v["sample_id"] for v in verdicts if v["accepted"]}
    assert result.reference.images == 60 and result.metrics.random_weights
    negatives = result.metrics.samples.negatives_accepted  # counted apart from the lesion figures
    assert result.metrics.run.kid is not None and result.metrics.accepted.n == len(result.accepted_ids) - negatives
    page = (Path(run_dir) / "gate" / "report.html").read_text()
    assert "RANDOM model weights" in page and page.count("data:image/png;base64,") >= 9
    assert "src=\"http" not in page and "<img alt=\"rejected\"" in page
    assert "Lesion sizes (share of the frame): generated and accepted" in page and "<th>&lt;2%</th>" in page

    features = Path(run_dir) / "gate" / "features" / "efficientnet-lite0"
    stamps = {p.name: p.stat().st_mtime_ns for p in features.iterdir()}
    # a stricter run-level bound through the CLI: nothing recomputed, the run fails, exit code 1
    with pytest.raises(SystemExit) as exit_info:
        main(["gate", run_dir, "--set", f"gate.reference.path={reference_dir}", "--set", "gate.device=cpu",
              "--set", "gate.run_kid_max=-1", "--set", "gate.realism_min=0.01"])
    assert exit_info.value.code == 1
    assert {p.name: p.stat().st_mtime_ns for p in features.iterdir()} == stamps
    regated = load_gate(run_dir)
    assert not regated.passed and "kid" in regated.metrics.failures[0] + regated.metrics.failures[-1]
    assert len(regated.accepted_ids) > len(result.accepted_ids)  # realism no longer rejects
    assert "FAILED" in capsys.readouterr().out
    metrics_json = json.loads((Path(run_dir) / "gate" / "metrics.json").read_text())
    assert metrics_json["bounds"]["realism_min"] == 0.01


def test_quality_compare_prints_json(reference_dir, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for image_id in _split("test")[:12]:
        (folder / f"{image_id}.png").write_bytes(encode_png(_kvasir(image_id)[0]))
    with pytest.raises(SystemExit) as exit_info:
        main(["quality", "compare", "--images", str(folder), "--reference", str(reference_dir), "--device", "cpu"])
    assert exit_info.value.code == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(figures) == {"fid", "kid", "kid_std", "precision", "recall", "density", "coverage", "n"}
    assert figures["n"] == 12 and abs(figures["kid"]) < 0.05


def test_missing_reference_and_never_generated_run_are_one_line_errors(tmp_path):
    with pytest.raises(GateError, match="no reference there; build one with `polyp-synth reference build"):
        Reference.load(str(tmp_path / "nothing"))
    config = config_from_dict({"frames": {"source": "x"}, "gate": {"reference": {"path": str(tmp_path)}}})
    with pytest.raises(ShardError, match="manifest.json; generate the run first"):
        run_gate(str(tmp_path / "run"), config, LocalExecutor())


def test_a_reference_built_from_another_split_or_limit_is_refused(reference_dir, tmp_path):
    """`gate.reference.images` means "build it on first use": an edited split or limit must not keep the old one."""
    def gate(path=reference_dir, **source):
        source = {"path": str(path), "images": str(reference_dir.parent / "images"), **source}
        return config_from_dict({"frames": {"source": "x"}, "gate": {"reference": source}}).gate

    assert load_or_build_reference(gate(limit=60)).identity.images == 60
    with pytest.raises(GateError, match="ref: it was built with limit 60, gate.reference.limit is 50; delete it"):
        load_or_build_reference(gate(limit=50))
    split = tmp_path / "ids.txt"
    split.write_text("\n".join(_split("train")[:60]))
    with pytest.raises(GateError, match=f"it was built from no split \\(every image\\), gate.reference.split is {split}"):
        load_or_build_reference(gate(limit=60, split=str(split)))
    split.write_text("\n".join(_split("train")[:4]))
    assert load_or_build_reference(gate(tmp_path / "small", split=str(split))).identity.images == 4  # built
    split.write_text("\n".join(_split("train")[4:8]))
    with pytest.raises(GateError, match=f"small: the contents of the split {split} changed since it was built"):
        load_or_build_reference(gate(tmp_path / "small", split=str(split)))
    split.unlink()
    with pytest.raises(GateError, match="gate.reference.split: .*ids.txt: no such split file \\(needed to check"):
        load_or_build_reference(gate(tmp_path / "small", split=str(split)))


class _Layers(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, 1).repeat(1, 683, 1, 1)[:, :2048]


class _FakeInception(torch.nn.Module):
    """clean-fid's TorchScript interface: `.layers(x)` on x in [-1, 1] at 299² gives (n, 2048, 1, 1)."""

    def __init__(self):
        super().__init__()
        self.layers = _Layers()

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return self.layers(x)


def test_inception_from_a_local_file_and_offline_without_it(tmp_path, monkeypatch):
    torch.jit.script(_FakeInception()).save(str(tmp_path / INCEPTION_FILE))
    extractor = InceptionExtractor(str(tmp_path / INCEPTION_FILE), device="cpu")
    image = np.zeros((40, 60, 3), np.uint8)
    image[..., 0] = 255
    features = extractor([image])
    assert features.shape == (1, 2048)
    np.testing.assert_allclose(features[0, :3], [127 / 128, -1, -1], atol=1e-5)  # (x − 128) / 128, per channel

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(GateError, match=f"inception weights unavailable at .*{INCEPTION_FILE}.* put {INCEPTION_FILE}"):
        InceptionExtractor(str(tmp_path / "empty"), device="cpu")


def test_a_sample_whose_source_frame_moved_or_changed_is_rejected_unscored(reference_dir, tmp_path):
    """Fail closed: without its source frame (or with other bytes than planned) `unpainted` and `leaked`
    cannot score a sample; it is rejected as `unscored`, not let through unchecked."""
    test_ids = _split("test")
    samples = []
    for image_id in test_ids[:3]:
        image, mask = _kvasir(image_id)
        samples.append(RunSample(image, mask, remove_lesion(image, mask), "clean", image_id))
    layout = image_run(str(tmp_path / "run"), samples, shard_size=3, frames_dir=str(tmp_path / "frames"))
    frames = sorted((tmp_path / "frames").glob("*.png"))
    rows = {r["sample_id"]: r for r in parquet.read(layout.shard(0)).to_pylist()}
    moved = next(r for r in rows.values() if r["source_frame"] == str(frames[0]))["sample_id"]
    changed = next(r for r in rows.values() if r["source_frame"] == str(frames[1]))["sample_id"]
    frames[0].unlink()
    frames[1].write_bytes(encode_png(np.zeros((8, 8, 3), np.uint8)))
    config = config_from_dict({"run_id": "run", "frames": {"source": "unused"},
                               "gate": {"reference": {"path": str(reference_dir)}, "device": "cpu", "shard_kid_max": None}})
    run_gate(str(tmp_path / "run"), config, LocalExecutor("gating"))
    gate = load_gate(str(tmp_path / "run"))
    assert "unscored" in gate.rejected[moved] and "unscored" in gate.rejected[changed]
    allowed = config.model_copy(update={"gate": config.gate.model_copy(update={"unscored_allowed": ["unpainted", "leaked"]})})
    run_gate(str(tmp_path / "run"), allowed, LocalExecutor("gating"))
    assert "unscored" not in load_gate(str(tmp_path / "run")).rejected.get(moved, [])
