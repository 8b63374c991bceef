"""The per-sample check registry and its pixel scorers, on a real frame."""

import numpy as np

from pipeline.config import GateConfig
from pipeline.gate import checks
from pipeline.plan.frames import load_frame
from pipeline.testing.data import shared_data
from pipeline.testing.gate_runs import remove_lesion


def _sample(image, source, mask):
    return checks.Sample("s", image, mask, source, mask > 0, {})


def test_pixel_scores_of_a_real_frame():
    frame = load_frame(str(shared_data() / "normal-mucosa" / "1.jpg"))
    mask = np.zeros(frame.shape[:2], np.uint8)
    mask[80:180, 60:200] = 255
    painted = frame.copy()
    painted[mask > 0] = 255 - painted[mask > 0]
    clipped = frame.copy()
    clipped[: frame.shape[0] // 2] = 255
    samples = [_sample(painted, frame, mask), _sample(frame, frame, mask), _sample(clipped, frame, mask),
               _sample(frame, None, mask)]
    unpainted = checks.unpainted_ms_ssim(samples)
    assert unpainted[0] < 0.5 and unpainted[1] > 0.999 and np.isnan(unpainted[3])
    leaked = [checks.leaked_fraction(s) for s in samples]
    assert leaked[0] == 0.0 and leaked[1] == 0.0 and leaked[2] > 0.3 and np.isnan(leaked[3])
    assert checks.saturated_fraction(samples[2]) > 0.45 > checks.saturated_fraction(samples[1])
    assert checks.grey_std(_sample(np.full_like(frame, 90), frame, mask)) == 0.0 < checks.grey_std(samples[1])
    assert (remove_lesion(frame, mask)[mask == 0] == frame[mask == 0]).all()  # only the label's pixels change


def _scores(n: int, **given) -> dict[str, np.ndarray]:
    """Every check's score, passing unless given (so a test sees only what it sets)."""
    passing = {"features_finite": 1.0, "grey_std": 50.0, "saturated_fraction": 0.0, "unpainted_ms_ssim": 0.1,
               "leaked_fraction": 0.0, "lesion_score": 0.9, "realism": 1.0, "duplicate_similarity": 0.1,
               "label_iou": np.nan, "shard_kid": 0.01, "negative_lesion_area": 0.0}
    return {name: np.asarray(given.get(name, np.full(n, value)), np.float64) for name, value in passing.items()}


def test_registry_judges_in_order_and_takes_one_more_check():
    config = GateConfig()
    n = 3
    scores = _scores(n, features_finite=[1.0, 0.0, 1.0], grey_std=[50.0, 50.0, 0.0], realism=[1.0, 0.95, 0.1])
    assert checks.judge(scores, config, np.zeros(n, bool)) == [[], ["non_finite"], ["blank", "unrealistic"]]

    extra = checks.CheckSpec("too_dark", "brightness", True, lambda c: 40.0, checks._fixed(checks.each(
        lambda s: float(s.image.mean()))))
    registry = (*checks.CHECKS, extra)
    assert set(checks.pixel_scorers(config, registry)) >= {"brightness", "grey_std", "unpainted_ms_ssim"}
    scores["brightness"] = np.array([100.0, 100.0, 10.0])
    assert checks.judge(scores, config, np.zeros(n, bool), registry)[2] == ["blank", "unrealistic", "too_dark"]
    disabled = config.model_copy(update={"blank_std_min": None})
    assert checks.judge(scores, disabled, np.zeros(n, bool))[2] == ["unrealistic"]


def test_a_sample_a_check_cannot_score_is_rejected_unless_that_check_is_named():
    """Fail closed: a moved source frame leaves unpainted and leaked without a score (NaN)."""
    scores = _scores(3, unpainted_ms_ssim=[0.1, np.nan, 0.1], leaked_fraction=[0.0, np.nan, np.nan])
    assert checks.judge(scores, GateConfig(), np.zeros(3, bool)) == [[], ["unscored"], ["unscored"]]
    allowed = GateConfig(unscored_allowed=["unpainted", "leaked"])
    assert checks.judge(scores, allowed, np.zeros(3, bool)) == [[], [], []]
    off = GateConfig(unpainted_ms_ssim_max=None, leaked_fraction_max=None)  # a check that is off scores nothing
    assert checks.judge(scores, off, np.zeros(3, bool)) == [[], [], []]
    no_segmenter = checks.judge(_scores(1, label_iou=[np.nan]), GateConfig(), np.zeros(1, bool))
    assert no_segmenter == [[]]  # no segmenter: no label check


def test_shard_kid_is_a_check_of_the_registry():
    scores = _scores(3, shard_kid=[0.2, 0.01, np.nan])  # NaN: a shard of one sample has no KID
    assert checks.judge(scores, GateConfig(), np.zeros(3, bool)) == [["shard_kid"], [], []]
    assert checks.judge(scores, GateConfig(shard_kid_max=None), np.zeros(3, bool)) == [[], [], []]
    assert "shard_kid" in {spec.reason for spec in checks.CHECKS}


def test_an_empty_label_has_nothing_left_unpainted():
    frame = load_frame(str(shared_data() / "normal-mucosa" / "1.jpg"))
    empty = np.zeros(frame.shape[:2], np.uint8)
    assert checks.unpainted_ms_ssim([_sample(frame, frame, empty)])[0] == 0.0


def test_hard_negatives_are_judged_as_negatives():
    """An empty label is no lesion left unpainted, unrealistic or missing: those checks do not judge it;
    with a segmenter, it fails where the segmenter finds a lesion in it."""
    negative = np.array([False, True, True, True])
    scores = _scores(4, lesion_score=[0.9, np.nan, np.nan, np.nan], realism=[1.0, 0.0, 0.0, 0.0],
                     shard_kid=[0.01, np.nan, np.nan, np.nan], unpainted_ms_ssim=[0.1, 0.0, 0.0, 0.0],
                     leaked_fraction=[0.0, 0.2, 0.0, 0.0], negative_lesion_area=[np.nan, 0.0, 0.08, np.nan],
                     grey_std=[50.0, 50.0, 50.0, 0.0], label_iou=[0.9, np.nan, np.nan, np.nan])
    with_segmenter = GateConfig(segmenter="unet.safetensors", label_iou_min=0.5)
    assert checks.judge(scores, with_segmenter, negative) == [[], [], ["lesion_in_negative"], ["blank", "unscored"]]
    assert checks.judge(scores, GateConfig(), negative) == [[], [], [], ["blank"]]  # nothing to look with
    as_lesions = checks.judge(scores, GateConfig(), np.zeros(4, bool))  # the same scores, read as lesions
    assert as_lesions[1] == ["leaked", "unrealistic", "unscored"]
