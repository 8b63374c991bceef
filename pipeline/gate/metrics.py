"""Set-level and per-sample measures on image features: pure functions, NumPy in, numbers out.

Features are rows (n, d). Real = the reference, fake = the samples judged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def kid(real: np.ndarray, fake: np.ndarray, num_subsets: int = 100, max_subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float] | tuple[None, None]:
    """Kernel Inception Distance (Bińkowski et al. 2018), clean-fid's estimator, plus its spread.

    With the cubic kernel k(a, b) = (a·b / d + 1)³, each of `num_subsets` random subsets of
    m = min(n_real, n_fake, max_subset_size) rows per set gives the unbiased MMD²
        t = [Σ_{i≠j} k(x_i, x_j) + Σ_{i≠j} k(y_i, y_j)] / (m (m − 1)) − 2 Σ_{i,j} k(x_i, y_j) / m²;
    KID is the mean of t over subsets and `kid_std` its standard deviation. Subsets are drawn
    exactly as clean-fid's `kernel_distance` draws them (fake first, then real) from
    `np.random.RandomState(seed)`, so the mean equals clean-fid's under the same seed.
    (None, None) when either set has fewer than 2 rows.
    """
    m = min(len(real), len(fake), max_subset_size)
    if m < 2:
        return None, None
    d = real.shape[1]
    rng = np.random.RandomState(seed)
    values = np.empty(num_subsets)
    for s in range(num_subsets):
        x = fake[rng.choice(len(fake), m, replace=False)].astype(np.float64)
        y = real[rng.choice(len(real), m, replace=False)].astype(np.float64)
        a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        b = (x @ y.T / d + 1) ** 3
        values[s] = ((a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m) / m
    return float(values.mean()), float(values.std())


def fid(real: np.ndarray, fake: np.ndarray) -> float | None:
    """Fréchet distance ‖μ_r − μ_f‖² + Tr Σ_r + Tr Σ_f − 2 Tr (Σ_r Σ_f)^½ (Heusel et al. 2017).

    Tr (Σ_r Σ_f)^½ = Σ √λ_i(A Σ_f A) with A = Σ_r^½ (symmetric): Σ_r Σ_f is similar to A Σ_f A, which
    is symmetric positive semi-definite, so two symmetric eigendecompositions replace clean-fid's
    general `sqrtm` (30 s at d = 1280 on two cores, and a crash on singular products: n < d).
    Equals clean-fid's `frechet_distance` where that one works (tested). None for fewer than 2 rows;
    below about d rows the covariances are singular and FID is biased upwards: compare KID then.
    """
    if min(len(real), len(fake)) < 2:
        return None
    mu_r, mu_f = real.mean(0, dtype=np.float64), fake.mean(0, dtype=np.float64)
    sigma_r, sigma_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    values, vectors = np.linalg.eigh(sigma_r)
    root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ sigma_f @ root), 0, None)).sum()
    value = float(((mu_r - mu_f) ** 2).sum() + np.trace(sigma_r) + np.trace(sigma_f) - 2 * cross)
    return value if np.isfinite(value) else None


def pairwise_distances(a: np.ndarray, b: np.ndarray, block: int = 4096) -> np.ndarray:
    """Euclidean distances ‖a_i − b_j‖ (float32), computed in row blocks with torch."""
    tb = torch.from_numpy(np.ascontiguousarray(b, np.float32))
    out = np.empty((len(a), len(b)), np.float32)
    for start in range(0, len(a), block):
        ta = torch.from_numpy(np.ascontiguousarray(a[start:start + block], np.float32))
        out[start:start + block] = torch.cdist(ta, tb).numpy()
    return out


def knn_radii(features: np.ndarray, k: int) -> np.ndarray:
    """Distance of each row to its k-th nearest other row (the row itself excluded)."""
    distances = pairwise_distances(features, features)
    return np.partition(distances, k, axis=1)[:, k]


@dataclass(frozen=True)
class Manifold:
    """k-NN balls of the reference: row i covers the ball of radius `radii[i]` around `features[i]`."""

    features: np.ndarray
    radii: np.ndarray
    k: int

    @classmethod
    def of(cls, features: np.ndarray, k: int) -> Manifold:
        return cls(features, knn_radii(features, k), k)


@dataclass(frozen=True)
class PRDC:
    precision: float
    recall: float
    density: float
    coverage: float


def prdc(real: Manifold, fake: np.ndarray) -> PRDC | None:
    """Precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020).

    With B(x, r) the ball around x of radius r and NND_k the distance to the k-th nearest neighbour
    within the same set:
      precision = 1/M Σ_j 1[∃i: Y_j ∈ B(X_i, NND_k(X_i))]
      recall    = 1/N Σ_i 1[∃j: X_i ∈ B(Y_j, NND_k(Y_j))]
      density   = 1/(kM) Σ_j Σ_i 1[Y_j ∈ B(X_i, NND_k(X_i))]
      coverage  = 1/N Σ_i 1[∃j: Y_j ∈ B(X_i, NND_k(X_i))]
    for N real rows X and M fake rows Y. None when the fake set has k rows or fewer.
    """
    if len(fake) <= real.k:
        return None
    distances = pairwise_distances(real.features, fake)  # (N, M)
    inside = distances < real.radii[:, None]
    fake_radii = knn_radii(fake, real.k)
    return PRDC(
        precision=float(inside.any(axis=0).mean()),
        recall=float((distances < fake_radii[None, :]).any(axis=1).mean()),
        density=float(inside.sum(axis=0).mean() / real.k),
        coverage=float(inside.any(axis=1).mean()),
    )


def realism(real: Manifold, fake: np.ndarray) -> np.ndarray:
    """Per-sample realism score (Kynkäänniemi et al. 2019, §5):
        R(y) = max_i NND_k(X_i) / ‖y − X_i‖,
    over the half of the reference with the smallest radii (outliers' large balls would make
    anything look real). R ≥ 1 means y lies inside some real sample's k-NN ball."""
    keep = real.radii <= np.median(real.radii)
    distances = pairwise_distances(fake, real.features[keep])
    return (real.radii[keep][None, :] / np.maximum(distances, 1e-12)).max(axis=1)


def nearest_earlier_similarity(features: np.ndarray, block: int = 2048) -> np.ndarray:
    """For row i, max_{j<i} u_i·u_j / (‖u_i‖‖u_j‖): its highest cosine similarity to any EARLIER row
    (0 for row 0: nothing earlier to repeat), so of two near-duplicates only the later one scores high. Exact, in row blocks:
    O(n²·d) multiply-adds (1.3·10¹¹ at 10,000 samples of 1280-d features, seconds on a CPU)."""
    n = len(features)
    best = np.zeros(n, np.float32)
    unit = torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(features, np.float32)), dim=1)
    for start in range(1, n, block):
        stop = min(n, start + block)
        similarity = unit[start:stop] @ unit[:stop].T
        later = torch.arange(stop)[None, :] >= torch.arange(start, stop)[:, None]
        best[start:stop] = similarity.masked_fill(later, -2.0).max(dim=1).values.numpy()
    return best


def ms_ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Multi-scale SSIM (Wang et al. 2003) of image pairs by torchmetrics: uint8 (n, H, W, 3) each,
    H and W at least 161 (five scales of an 11-pixel window); one value per pair, 1 = identical."""
    from torchmetrics.functional.image import (
        multiscale_structural_similarity_index_measure,
    )

    ta = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float()
    tb = torch.from_numpy(np.ascontiguousarray(b)).permute(0, 3, 1, 2).float()
    return multiscale_structural_similarity_index_measure(
        ta, tb, data_range=255.0, reduction="none", normalize="relu").numpy()
