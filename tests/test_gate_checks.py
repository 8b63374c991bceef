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


def test_registry_judges_in_order_and_takes_one_more_check():
    config = GateConfig()
    n = 3
    scores = {spec.score: np.full(n, np.nan) for spec in checks.CHECKS}
    scores["features_finite"] = np.array([1.0, 0.0, 1.0])
    scores["grey_std"] = np.array([50.0, 50.0, 0.0])
    scores["realism"] = np.array([1.0, np.nan, 0.1])  # NaN: not applicable, never a failure
    assert checks.judge(scores, config, n) == [[], ["non_finite"], ["blank", "unrealistic"]]

    extra = checks.CheckSpec("too_dark", "brightness", True, lambda c: 40.0, checks._fixed(checks.each(
        lambda s: float(s.image.mean()))))
    registry = (*checks.CHECKS, extra)
    assert set(checks.pixel_scorers(config, registry)) >= {"brightness", "grey_std", "unpainted_ms_ssim"}
    scores["brightness"] = np.array([100.0, 100.0, 10.0])
    assert checks.judge(scores, config, n, registry)[2] == ["blank", "unrealistic", "too_dark"]
    disabled = config.model_copy(update={"blank_std_min": None})
    assert checks.judge(scores, disabled, n)[2] == ["unrealistic"]
