"""The gate's measures against the libraries that define them, on the same inputs."""

import numpy as np
import pytest

from pipeline.gate import metrics


@pytest.fixture(scope="module")
def sets():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(120, 16)).astype(np.float32)
    fake = (rng.normal(size=(90, 16)) + 0.3).astype(np.float32)
    return real, fake


def test_kid_equals_clean_fid(sets):
    from cleanfid.fid import kernel_distance

    real, fake = sets
    ours, spread = metrics.kid(real, fake, num_subsets=20, max_subset_size=50, seed=3)
    np.random.seed(3)
    assert ours == pytest.approx(kernel_distance(real, fake, num_subsets=20, max_subset_size=50), rel=1e-6)
    assert spread > 0
    same_distribution = np.random.default_rng(9).normal(size=(120, 16)).astype(np.float32)
    assert abs(metrics.kid(real, same_distribution, num_subsets=20, max_subset_size=50, seed=3)[0]) < ours / 5
    assert metrics.kid(real[:1], fake) == (None, None)


def test_fid_matches_clean_fid_and_never_crashes_on_small_sets(sets):
    from cleanfid.fid import frechet_distance

    real, fake = sets
    expected = frechet_distance(real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False))
    assert metrics.fid(real, fake) == pytest.approx(expected)
    assert metrics.fid(real[:1], fake) is None
    wide = np.random.default_rng(1).normal(size=(20, 300)).astype(np.float32)  # n far below d: singular
    assert np.isfinite(metrics.fid(wide[:10], wide[10:] + 1)) and metrics.fid(wide[:10], wide[:10]) == pytest.approx(0, abs=1e-3)


def test_prdc_equals_reference_implementation(sets):
    from prdc import compute_prdc

    real, fake = sets
    ours = metrics.prdc(metrics.Manifold.of(real, 5), fake)
    expected = compute_prdc(real, fake, nearest_k=5)
    for name in ("precision", "recall", "density", "coverage"):
        assert getattr(ours, name) == pytest.approx(float(expected[name]), abs=1e-6), name
    assert metrics.prdc(metrics.Manifold.of(real, 5), fake[:5]) is None


def test_realism_inside_and_far_from_the_reference(sets):
    real, _ = sets
    manifold = metrics.Manifold.of(real, 3)
    assert np.median(metrics.realism(manifold, real + 0.01)) >= 1.0
    assert metrics.realism(manifold, real[:10] + 100.0).max() < 0.2


def test_nearest_earlier_similarity_matches_brute_force(sets):
    real, _ = sets
    unit = real / np.linalg.norm(real, axis=1, keepdims=True)
    similarity = unit @ unit.T
    expected = [0.0] + [similarity[i, :i].max() for i in range(1, len(real))]
    np.testing.assert_allclose(metrics.nearest_earlier_similarity(real, block=32), expected, atol=1e-5)
    duplicated = np.concatenate([real[:3], real[1:2]])  # row 3 repeats row 1: only row 3 scores 1
    scores = metrics.nearest_earlier_similarity(duplicated)
    assert scores[3] == pytest.approx(1.0) and np.nanmax(scores[:3]) < 0.99


def test_ms_ssim_is_one_for_identical_images_and_lower_for_different():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, size=(2, 176, 176, 3), dtype=np.uint8)
    values = metrics.ms_ssim(a, np.stack([a[0], a[0]]))
    assert values[0] == pytest.approx(1.0, abs=1e-5) and values[1] < 0.5
