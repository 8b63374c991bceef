"""The gate's measures against the libraries that define them, on the same inputs."""

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

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
    wide = np.random.default_rng(1).normal(size=(5, 300)).astype(np.float32)  # n far below d
    value = metrics.fid(wide, wide[::-1] + 1)
    assert value is None or np.isfinite(value)


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


def test_nearest_other_similarity_matches_sklearn(sets):
    real, _ = sets
    best, index = metrics.nearest_other_similarity(real, block=32)
    distances, neighbours = NearestNeighbors(n_neighbors=2, metric="cosine").fit(real).kneighbors(real)
    np.testing.assert_array_equal(index, neighbours[:, 1])
    np.testing.assert_allclose(best, 1 - distances[:, 1], atol=1e-5)


def test_ms_ssim_is_one_for_identical_images_and_lower_for_different():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, size=(2, 176, 176, 3), dtype=np.uint8)
    values = metrics.ms_ssim(a, np.stack([a[0], a[0]]))
    assert values[0] == pytest.approx(1.0, abs=1e-5) and values[1] < 0.5
