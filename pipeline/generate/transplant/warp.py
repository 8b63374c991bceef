"""Pixel maths of the transplant engine: a radial warp between two outlines, Reinhard colour transfer
in Lab, and the blends. Pure functions on numpy arrays; OpenCV does the per-pixel work.

Radial warp. Each outline is described from an interior centre c (the mask's pole of inaccessibility,
the interior pixel farthest from the edge, so the centre is inside even for a crescent) by its outer
radius R(θ) in `ANGLE_BINS` directions. A target pixel p = c_t + r·u(θ) takes the donor pixel

    q = c_d + r · R_d(θ + φ) / R_t(θ) · u(θ + φ)

so the target outline (r = R_t(θ)) lands exactly on the donor outline, the interior maps onto the
interior, the surroundings onto the donor's surroundings, and the whole map is continuous. φ is the
rotation that best aligns the two profiles (circular cross-correlation), which keeps the stretch small.
"""

from __future__ import annotations

import cv2
import numpy as np

ANGLE_BINS = 720
"""Directions of a radial profile (half a degree each)."""
PROFILE_SMOOTHING = 2.0
"""Gaussian sigma, in bins, applied to every profile before warping (rasterised outlines are ragged)."""


def lesion_centre(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of the mask's interior pixel farthest from its edge: inside the lesion whatever its shape."""
    inside = np.pad((mask > 0).astype(np.uint8), 1)  # the image edge counts as the lesion's edge
    distance = cv2.distanceTransform(inside, cv2.DIST_L2, cv2.DIST_MASK_5)  # any deep interior point will do
    _, _, _, (x, y) = cv2.minMaxLoc(distance)
    return float(x - 1), float(y - 1)


def radial_profile(mask: np.ndarray, centre: tuple[float, float], bins: int = ANGLE_BINS) -> np.ndarray:
    """R(θ_i), θ_i = 2πi/bins: distance from `centre` to where the mask ends in direction θ_i.

    The mask is sampled along each ray with bilinear interpolation and R is where the outermost
    0.5 crossing lies, interpolated between samples (sub-pixel: whole-pixel steps would show as
    seams in the warped texture). Angles are those of `cv2.phase(dx, dy)` in image coordinates
    (x right, y down). Never below half a pixel, so ratios of profiles are finite.
    """
    height, width = mask.shape
    corners = np.array([[0, 0], [width, 0], [0, height], [width, height]], np.float64) - centre
    max_radius = int(np.ceil(np.hypot(corners[:, 0], corners[:, 1]).max())) + 2
    polar = cv2.warpPolar((mask > 0).astype(np.float32), (max_radius, bins), centre, max_radius,
                          cv2.WARP_POLAR_LINEAR | cv2.INTER_LINEAR | cv2.WARP_FILL_OUTLIERS)  # else garbage
    inside = polar >= 0.5
    last = max_radius - 1 - np.argmax(inside[:, ::-1], axis=1)  # outermost sample inside, per ray
    rows = np.arange(bins)
    here, beyond = polar[rows, last], polar[rows, np.minimum(last + 1, max_radius - 1)]
    step = np.where(here > beyond, (here - 0.5) / np.maximum(here - beyond, 1e-6), 0.0)
    radius = np.where(inside.any(axis=1), last + np.clip(step, 0.0, 1.0), 0.0)
    return np.maximum(radius, 0.5).astype(np.float32)


def smooth_profile(profile: np.ndarray, sigma_bins: float) -> np.ndarray:
    """Circular Gaussian smoothing of a radial profile (JPEG-ragged outlines would shear the texture)."""
    if sigma_bins <= 0:
        return profile
    radius = int(np.ceil(3 * sigma_bins))
    wrapped = np.concatenate([profile[-radius:], profile, profile[:radius]])
    kernel = cv2.getGaussianKernel(2 * radius + 1, sigma_bins).ravel()
    return np.convolve(wrapped, kernel, mode="valid").astype(np.float32)


def best_rotation(target: np.ndarray, donor: np.ndarray) -> int:
    """The shift s (in bins) maximising Σ_i t̂[i]·d̂[(i + s) mod n], t̂ and d̂ the profiles with their
    means removed and scaled to unit norm: the rotation that lines the donor's outline up with the
    target's (computed with the FFT, `corr = irfft(conj(rfft(t̂)) · rfft(d̂))`)."""

    def normalised(profile: np.ndarray) -> np.ndarray:
        centred = profile.astype(np.float64) - profile.mean()
        norm = np.linalg.norm(centred)
        return centred / norm if norm > 0 else centred

    t, d = normalised(target), normalised(donor)
    correlation = np.fft.irfft(np.conj(np.fft.rfft(t)) * np.fft.rfft(d), n=t.size)
    return int(np.argmax(correlation))


def warp_maps(shape: tuple[int, int], origin: tuple[int, int], target_centre: tuple[float, float],
              target_profile: np.ndarray, donor_centre: tuple[float, float], donor_profile: np.ndarray,
              shift: int) -> tuple[np.ndarray, np.ndarray]:
    """`cv2.remap` maps (x, y float32, `shape` = (h, w)) that pull donor pixels into a target window
    whose top-left pixel is `origin` = (x0, y0) in the coordinates of `target_centre`: the formula of
    the module docstring, with φ = 2π·shift/bins."""
    height, width = shape
    bins = target_profile.size
    xs = np.arange(width, dtype=np.float32) + (origin[0] - target_centre[0])
    ys = np.arange(height, dtype=np.float32) + (origin[1] - target_centre[1])
    dx, dy = np.broadcast_to(xs[None, :], shape), np.broadcast_to(ys[:, None], shape)
    dx, dy = np.ascontiguousarray(dx), np.ascontiguousarray(dy)
    # the ratio R_d(θ + φ) / R_t(θ), linearly interpolated between bins (a step per bin would draw rays)
    position = cv2.phase(dx, dy) * np.float32(bins / (2 * np.pi))
    floor = np.floor(position)
    fraction, lower = position - floor, floor.astype(np.int32)
    ratio = (np.roll(donor_profile, -shift) / target_profile).astype(np.float32)
    ratio = np.append(ratio, ratio[:2])  # wrap-around: bins and bins + 1 are 0 and 1
    scale = ratio[lower] * (1 - fraction) + ratio[lower + 1] * fraction
    phi = 2 * np.pi * shift / bins
    cos, sin = np.float32(np.cos(phi)), np.float32(np.sin(phi))
    map_x = scale * (cos * dx - sin * dy) + np.float32(donor_centre[0])
    map_y = scale * (sin * dx + cos * dy) + np.float32(donor_centre[1])
    return map_x, map_y


def lab_stats(lab: np.ndarray, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of the Lab pixels selected by the boolean `where`."""
    pixels = lab[where].reshape(-1, 3).astype(np.float64)
    return pixels.mean(axis=0), pixels.std(axis=0)


SPECULAR_L = 95.0
"""Lab lightness above which a pixel is a light reflection (the light source's colour), not tissue's."""


def spare_reflections(before: np.ndarray, after: np.ndarray, ramp: float = 7.0) -> np.ndarray:
    """`after` (Lab) with the light reflections of `before` (Lab) put back: per pixel
    w = clip((L_before − (SPECULAR_L − ramp)) / ramp, 0, 1) and out = w · before + (1 − w) · after.

    A colour transfer is meant for tissue: shifting a and b of a white reflection tints it (towards cyan
    when the target mucosa is less red than the donor's), which no endoscope shows.
    """
    weight = np.clip((before[..., :1] - (SPECULAR_L - ramp)) / ramp, 0.0, 1.0)
    return (weight * before + (1.0 - weight) * after).astype(np.float32)


def reinhard(lab: np.ndarray, source: tuple[np.ndarray, np.ndarray], target: tuple[np.ndarray, np.ndarray],
             max_gain: float = 2.0) -> np.ndarray:
    """Reinhard et al. (2001) colour transfer in Lab: out = (x − μ_s) · σ_t/σ_s + μ_t per channel.

    (μ_s, σ_s) describe the donor's mucosa and (μ_t, σ_t) the target's, so the donor's mucosa takes
    the target's colour and the lesion keeps its contrast to it. The gain σ_t/σ_s is clipped to
    [1/max_gain, max_gain]: a flat ring must not blow up the lesion's texture.
    """
    (mean_s, std_s), (mean_t, std_t) = source, target
    gain = np.clip(std_t / np.maximum(std_s, 1e-6), 1 / max_gain, max_gain)
    offset = mean_t - mean_s * gain
    return cv2.transform(lab, np.hstack([np.diag(gain), offset[:, None]]).astype(np.float32))


def pyramid_blend(foreground: np.ndarray, background: np.ndarray, weight: np.ndarray, levels: int = 4) -> np.ndarray:
    """Laplacian-pyramid blending (Burt & Adelson 1983): each band-pass level of the two images is
    mixed with the Gaussian-pyramid level of `weight` (float32 HxW in [0, 1]), then collapsed, so
    coarse colour blends over a wide seam and fine texture over a narrow one. Returns uint8."""
    height, width = weight.shape
    levels = max(1, min(levels, int(np.log2(max(1, min(height, width)))) - 2))
    a, b = foreground.astype(np.float32), background.astype(np.float32)
    w = weight.astype(np.float32)
    gauss_a, gauss_b, gauss_w = [a], [b], [w]
    for _ in range(levels):
        gauss_a.append(cv2.pyrDown(gauss_a[-1]))
        gauss_b.append(cv2.pyrDown(gauss_b[-1]))
        gauss_w.append(cv2.pyrDown(gauss_w[-1]))
    mixed = gauss_w[-1][..., None] * gauss_a[-1] + (1 - gauss_w[-1][..., None]) * gauss_b[-1]
    for level in range(levels - 1, -1, -1):
        size = gauss_a[level].shape[1::-1]
        band_a = gauss_a[level] - cv2.pyrUp(gauss_a[level + 1], dstsize=size)
        band_b = gauss_b[level] - cv2.pyrUp(gauss_b[level + 1], dstsize=size)
        weight_here = gauss_w[level][..., None]
        mixed = cv2.pyrUp(mixed, dstsize=size) + weight_here * band_a + (1 - weight_here) * band_b
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def poisson_blend(foreground: np.ndarray, background: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Poisson image editing (Pérez et al. 2003) through `cv2.seamlessClone`: inside `region` (bool
    HxW, at least a pixel from every side) the result has the foreground's gradients and the
    background's values on the region's edge. Both images are the same window, so the clone is placed
    back where it came from (OpenCV centres the region's bounding box on `center`)."""
    x, y, w, h = cv2.boundingRect(region.astype(np.uint8))
    center = (x + w // 2, y + h // 2)
    return cv2.seamlessClone(foreground, background, np.where(region, 255, 0).astype(np.uint8), center,
                             cv2.NORMAL_CLONE)
