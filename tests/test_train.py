"""Reference trainer: pretrained encoder weights really loaded, a short run lowers the loss, a seed
repeats itself, checkpoints round-trip, and the metrics' conventions (perfect, empty, shifted)."""

import json
import math

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from pipeline.cli import main
from pipeline.core.backbones import lite_state_dict
from pipeline.core.lesion_bins import position_bin, size_bin
from pipeline.data.dataset import PairStream, collate
from pipeline.data.sources import resolve
from pipeline.errors import TrainError
from pipeline.segmenter.metrics import (
    BinFigures,
    by_bins,
    false_positive,
    largest_region,
    segment_metrics,
)
from pipeline.segmenter.model import build_unet, load_checkpoint, read_record
from pipeline.segmenter.predict import eval_transform
from pipeline.testing.data import shared_data
from pipeline.testing.runs import kvasir_pairs, write_gated_run
from pipeline.train.paired import paired_difference
from pipeline.train.segment import TrainSettings, train

KVASIR = shared_data() / "kvasir-seg"


@pytest.mark.parametrize("encoder", ["efficientnet-lite0", "efficientnet-lite2"])
def test_encoder_weights_are_the_pretrained_ones(encoder):
    expected = lite_state_dict(encoder)
    encoder_state = build_unet(encoder).encoder.model.state_dict()
    assert len(encoder_state) > 250
    for key, value in encoder_state.items():
        assert torch.equal(value, expected[key]), key
    random = build_unet(encoder, weights=None).encoder.model.state_dict()
    assert not torch.equal(random["conv_stem.weight"], expected["conv_stem.weight"])


def test_bad_encoders_and_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(TrainError, match="not an smp encoder"):
        build_unet("no-such-encoder")
    with pytest.raises(TrainError, match="does not fit encoder"):
        torch.save({"x": torch.zeros(1)}, tmp_path / "enc.pt")
        build_unet("resnet18", str(tmp_path / "enc.pt"))
    with pytest.raises(TrainError, match="no such checkpoint"):
        read_record(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainError, match="not a polyp-synth segmentation checkpoint"):
        read_record(tmp_path / "bad.safetensors")


def _loss(model, refs):
    model.eval()
    dice, bce = smp.losses.DiceLoss(smp.losses.BINARY_MODE, from_logits=True), torch.nn.BCEWithLogitsLoss()
    with torch.no_grad():
        batch = collate(list(PairStream(refs, eval_transform(64), shuffle=False)))
        logits = model(batch.images)
        return (dice(logits, batch.masks) + bce(logits, batch.masks)).item()


def test_short_training_lowers_the_loss_and_a_seed_repeats(tmp_path):
    refs = resolve(f"{KVASIR}:train")[:4]
    settings = TrainSettings(size=64, epochs=5, batch_size=4, lr=3e-3, seed=5)
    torch.manual_seed(settings.seed)
    before = _loss(build_unet(), refs)  # the trainer's own starting point: same seed, same init
    result = train(refs, settings, tmp_path / "a.safetensors", real_specs=[f"{KVASIR}:train"])
    model, record = load_checkpoint(result.checkpoint)
    assert record == result.record and record.steps == 5 and record.real_ids == sorted(r.sample_id for r in refs)
    assert record.samples_seen == 20
    after = _loss(model, refs)
    assert after < 0.85 * before, (before, after)

    short = settings.model_copy(update={"steps": 1})
    one = train(refs, short, tmp_path / "b.safetensors").checkpoint
    two = train(refs, short, tmp_path / "c.safetensors").checkpoint
    a, b = load_checkpoint(one)[0].state_dict(), load_checkpoint(two)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_metrics_conventions():
    label = np.zeros((40, 50), bool)
    label[10:20, 10:30] = True
    perfect = segment_metrics(label, label)
    assert perfect.dice == perfect.iou == perfect.precision == perfect.recall == 1 and perfect.hd95 == 0
    empty = segment_metrics(np.zeros_like(label), label)
    assert empty.dice == empty.iou == empty.recall == 0 and empty.hd95 == pytest.approx(math.hypot(40, 50))
    assert segment_metrics(np.zeros_like(label), np.zeros_like(label)).dice == 1
    shifted = segment_metrics(np.roll(label, 3, axis=1), label)  # 3 px right: overlap 17 of 20 columns
    assert shifted.dice == pytest.approx(17 / 20) and shifted.iou == pytest.approx(17 / 23)
    assert shifted.hd95 == pytest.approx(3, abs=0.01) and shifted.area == pytest.approx(200 / 2000)


def test_sizes_misses_and_false_positives():
    assert [size_bin(a) for a in (0.0, 0.0199, 0.02, 0.0799, 0.08, 1.0)] == ["small", "small", "medium", "medium",
                                                                              "large", "large"]
    label = np.zeros((100, 100), bool)
    label[:10, :10] = True  # 1 % of the frame: small
    hit, miss = segment_metrics(label, label), segment_metrics(np.roll(label, 50, axis=0), label)
    bins = by_bins({"hit": hit, "miss": miss}, {"hit": {"paris": "0-Is"}, "miss": {"paris": "0-IIa"}})
    sizes = bins["size"]
    assert sizes["small"] == BinFigures(2, 0.5, 0.5, 0.5) and sizes["large"].n == 0 and sizes["large"].dice is None
    # the corner square sits on the periphery (r ≈ 1.27), rolled half a frame down it still does (r ≈ 0.9)
    assert bins["position"]["periphery"] == BinFigures(2, 0.5, 0.5, 0.5) and bins["position"]["centre"].n == 0
    assert bins["paris"] == {"0-IIa": BinFigures(1, 0.0, 0.0, 1.0), "0-Is": BinFigures(1, 1.0, 1.0, 0.0)}
    middle = np.zeros((100, 100), bool)
    middle[45:55, 40:50] = True
    assert position_bin(segment_metrics(middle, middle).radius) == "centre"
    speck = np.zeros((100, 100), bool)
    speck[5, 5] = True  # one pixel, and a 3×3 blob: 9 of 10,000 pixels
    speck[50:53, 50:53] = True
    assert largest_region(speck) == pytest.approx(9 / 10000) and not false_positive(largest_region(speck))
    speck[60:64, 60:64] = True  # 16 pixels: 0.16 % of the frame
    assert false_positive(largest_region(speck)) and largest_region(np.zeros((4, 4), bool)) == 0


def test_paired_differences_match_the_paired_t_interval():
    from scipy import stats

    arm, control = [0.61, 0.66, 0.58, 0.70, 0.64], [0.58, 0.62, 0.55, 0.66, 0.61]
    d = np.subtract(arm, control)
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / np.sqrt(5)
    result = paired_difference(arm, control)
    assert result.mean == pytest.approx(d.mean()) and (result.low, result.high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert result.verdict() == "better" and result.verdict(higher_is_better=False) == "worse"
    assert paired_difference([0.5, 0.7], [0.6, 0.5]).verdict() == "no claim"
    same = paired_difference([0.5, 0.6, 0.7], [0.4, 0.5, 0.6])
    assert (same.low, same.high) == pytest.approx((0.1, 0.1)) and same.verdict() == "no claim"  # 3 seeds: none
    assert paired_difference([0.5], [0.4]) is None


def test_train_and_evaluate_commands_on_a_folder_export(tmp_path, capsys):
    run = str(tmp_path / "run")
    write_gated_run(run, kvasir_pairs(KVASIR, "test", 4), "eval", size=64)
    with pytest.raises(SystemExit) as done:
        main(["export", run, "--out", str(tmp_path / "ex"), "--format", "folders"])
    assert done.value.code == 0
    ckpt = str(tmp_path / "m.safetensors")
    with pytest.raises(SystemExit) as done:
        main(["train", "--real", str(tmp_path / "ex"), "--size", "32", "--steps", "1", "--batch-size", "2",
              "--out", ckpt])
    assert done.value.code == 0
    capsys.readouterr()
    (tmp_path / "three.txt").write_text("10\n11\n12\n")
    with pytest.raises(SystemExit) as done:
        main(["evaluate", ckpt, "--data", str(tmp_path / "ex"), "--data", f"{tmp_path / 'ex'}",
              "--negatives", f"{shared_data() / 'normal-mucosa'}:{tmp_path / 'three.txt'}"])
    assert done.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert [s["n"] for s in report["sets"]] == [4, 4, 3]
    assert set(report["sets"][0]["mean"]) == {"dice", "iou", "precision", "recall", "hd95"}
    assert sum(f["n"] for f in report["sets"][0]["bins"]["size"].values()) == 4 and 0 <= report["sets"][0]["miss_rate"] <= 1
    assert sum(f["n"] for f in report["sets"][0]["bins"]["position"].values()) == 4
    assert set(report["sets"][2]["largest_region"]) == {"10", "11", "12"} and 0 <= report["sets"][2]["fp_rate"] <= 1
    with pytest.raises(SystemExit) as done:
        main(["train", "--real", str(tmp_path / "ex"), "--size", "65", "--out", ckpt])
    assert done.value.code == 2 and "size" in capsys.readouterr().err


def test_label_mismatch_check_in_the_gate_registry(tmp_path):
    from pipeline.config import GateConfig
    from pipeline.data.sources import read_pairs
    from pipeline.gate import checks
    from pipeline.segmenter.predict import predict

    refs = resolve(f"{KVASIR}:train")[:2]
    checkpoint = train(refs, TrainSettings(size=64, steps=1, batch_size=2), tmp_path / "s.safetensors").checkpoint
    _, image, mask = next(read_pairs(refs[:1]))
    config = GateConfig(segmenter=str(checkpoint), device="cpu", label_iou_min=0.8)
    scorer = checks.pixel_scorers(config)["label_iou"]
    assert "_model" not in vars(scorer)  # nothing loaded until a sample needs scoring
    model, size, device = scorer._model
    prediction = predict(model, image, size, device)
    assert prediction.any() and not prediction.all()  # a 1-step model still draws a boundary somewhere
    as_label = np.where(prediction, 255, 0).astype(np.uint8)
    samples = [checks.Sample(name, image, label, None, None, {})
               for name, label in (("real", mask), ("agrees", as_label), ("elsewhere", 255 - as_label))]
    scores = scorer(samples)
    assert scores[0] == segment_metrics(prediction, mask > 0).iou and list(scores[1:]) == [1.0, 0.0]
    only = {spec.score: np.full(3, np.nan) for spec in checks.CHECKS}  # every other check off: NaN is no score
    off = {name: None for name in ("blank_std_min", "saturated_fraction_max", "unpainted_ms_ssim_max",
                                   "leaked_fraction_max", "lesion_score_min", "realism_min", "duplicate_similarity_max",
                                   "shard_kid_max")}
    reasons = checks.judge({**only, "label_iou": scores, "features_finite": np.ones(3)}, config.model_copy(update=off),
                           np.zeros(3, bool))
    assert reasons[1:] == [[], ["label_mismatch"]]
    assert checks.judge({**only, "label_iou": scores, "features_finite": np.ones(3)},
                        GateConfig(**off), np.zeros(3, bool)) == [[], [], []]  # off without a segmenter
    assert np.isnan(checks.pixel_scorers(GateConfig())["label_iou"](samples)).all()

    # a hard negative (empty label): not a label to match, but an image where nothing may be found
    area = checks.pixel_scorers(config)["negative_lesion_area"]
    empty = checks.Sample("negative", image, np.zeros_like(mask), None, None, {})
    assert area([empty, samples[0]])[0] == prediction.mean() > 0 and np.isnan(area([samples[0]])[0])
    assert np.isnan(scorer([empty])[0])
    one = {spec.score: np.full(1, np.nan) for spec in checks.CHECKS}
    reasons = checks.judge({**one, "negative_lesion_area": area([empty]), "features_finite": np.ones(1)},
                           config.model_copy(update=off), np.ones(1, bool))
    assert reasons == [["lesion_in_negative"]]  # the polyp image it was trained on, given an empty label


def test_the_label_bound_follows_the_segmenters_own_iou_on_held_out_real_images(tmp_path):
    from pipeline.config import GateConfig
    from pipeline.errors import GateError
    from pipeline.gate.checks import resolve_label_bound

    refs = resolve(f"{KVASIR}:train")
    settings = TrainSettings(size=32, steps=2, batch_size=2)
    with_holdout = train(refs[:2], settings, tmp_path / "h.safetensors", holdout=refs[2:6],
                         holdout_spec="held-out four").record
    assert with_holdout.holdout.n == 4 and 0 <= with_holdout.holdout.iou_p10 <= with_holdout.holdout.iou_mean <= 1
    gate, note = resolve_label_bound(GateConfig(segmenter=str(tmp_path / "h.safetensors")))
    assert gate.label_iou_min == with_holdout.holdout.iou_p10 and "4 held-out real images (held-out four)" in note
    assert resolve_label_bound(GateConfig(segmenter=str(tmp_path / "h.safetensors"), label_iou_min=0.7))[0].label_iou_min == 0.7
    train(refs[:2], settings, tmp_path / "plain.safetensors")
    with pytest.raises(GateError, match="records no IoU on held-out real images"):
        resolve_label_bound(GateConfig(segmenter=str(tmp_path / "plain.safetensors")))
    with pytest.raises(TrainError, match="of its images are training images"):
        train(refs[:2], settings, tmp_path / "x.safetensors", holdout=refs[1:3], holdout_spec="overlapping")


def test_polyp_free_frames_of_a_labelled_set_are_no_lesions_to_size_or_miss():
    label = np.zeros((100, 100), bool)
    label[:10, :10] = True
    empty = np.zeros_like(label)
    items = {"hit": segment_metrics(label, label), "free, quiet": segment_metrics(empty, empty),
             "free, fired": segment_metrics(label, empty)}
    sizes = by_bins(items)["size"]
    assert sizes["small"].n == 1 and sizes["small"].dice == 1.0 and sum(f.n for f in sizes.values()) == 1


def test_a_metadata_csv_is_read_or_refused_in_one_line(tmp_path):
    from pipeline.train.evaluate import read_metadata

    (tmp_path / "meta.csv").write_text("id,paris,site\n10,0-Is,A\n11,0-IIa,\n")
    assert read_metadata(str(tmp_path / "meta.csv")) == {"10": {"paris": "0-Is", "site": "A"}, "11": {"paris": "0-IIa"}}
    (tmp_path / "clash.csv").write_text("id,size\n10,large\n")
    with pytest.raises(TrainError, match="column 'size' names a bin measured from the labels"):
        read_metadata(str(tmp_path / "clash.csv"))
    with pytest.raises(TrainError, match="missing.csv: no such --metadata file"):
        read_metadata(str(tmp_path / "missing.csv"))
    (tmp_path / "noid.csv").write_text("image,paris\n10,0-Is\n")
    with pytest.raises(TrainError, match="expected a CSV with an 'id' column"):
        read_metadata(str(tmp_path / "noid.csv"))
