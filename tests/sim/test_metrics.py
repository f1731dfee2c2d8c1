"""Frame metrics against values worked out by hand and against a slow independent SSIM."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sim.metrics import PSNR_CAP_DB, laplacian_variance, psnr, ssim, summarize


def random_frames(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def smooth_frames(shape, seed=0):
    """Natural-ish frames: a few soft blobs, so SSIM has structure to compare."""
    *lead, H, W, _ = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    out = np.zeros(shape, dtype=np.float64)
    flat = out.reshape(-1, H, W, 3)
    for f in flat:
        for _ in range(6):
            cy, cx, r = rng.uniform(0, H), rng.uniform(0, W), rng.uniform(3, H / 3)
            f += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r ** 2))[..., None] * rng.uniform(0, 120, 3)
    return np.clip(out, 0, 255).astype(np.uint8)


def add_noise(frames, sigma, seed=1):
    noise = np.random.default_rng(seed).normal(0, sigma, frames.shape)
    return np.clip(frames.astype(np.float64) + noise, 0, 255).round().astype(np.uint8)


# ---- PSNR ------------------------------------------------------------------------------------
def test_psnr_of_constant_offset_is_exact():
    a = random_frames((2, 3, 16, 16, 3)) // 2  # 0..127, so +10 never clips
    b = a + 10
    value = psnr(a, b)
    assert value.shape == (2, 3) and value.dtype == np.float64
    np.testing.assert_allclose(value, 20 * math.log10(255 / 10), rtol=1e-12)


def test_psnr_is_per_frame_not_pooled():
    a = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    b = a.copy()
    b[0] += 1   # MSE 1
    b[1] += 20  # MSE 400
    np.testing.assert_allclose(psnr(a, b), [20 * math.log10(255), 20 * math.log10(255 / 20)], rtol=1e-12)


def test_psnr_of_identical_frames_is_capped():
    a = random_frames((4, 16, 16, 3))
    value = psnr(a, a.copy())
    assert np.all(value == PSNR_CAP_DB) and np.isfinite(value).all()


def test_psnr_takes_torch_and_numpy_alike_and_max_val():
    a, b = random_frames((3, 16, 16, 3), 0), random_frames((3, 16, 16, 3), 1)
    np.testing.assert_array_equal(psnr(torch.from_numpy(a), torch.from_numpy(b)), psnr(a, b))
    np.testing.assert_allclose(psnr(a, b, max_val=1.0), psnr(a, b) - 20 * math.log10(255), rtol=1e-12)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        psnr(np.zeros((16, 16, 3), np.uint8), np.zeros((16, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[\.\.\., H, W, 3\]"):
        ssim(np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8))


# ---- SSIM ------------------------------------------------------------------------------------
def slow_ssim(a, b):
    """Wang et al. SSIM written the slow obvious way: every 11x11 window, every channel."""
    g = np.exp(-(np.arange(11) - 5.0) ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    a, b = a.astype(np.float64), b.astype(np.float64)
    H, W, _ = a.shape
    values = []
    for c in range(3):
        for i in range(H - 10):
            for j in range(W - 10):
                x, y = a[i:i + 11, j:j + 11, c], b[i:i + 11, j:j + 11, c]
                mx, my = (w * x).sum(), (w * y).sum()
                vx, vy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum()
                cov = (w * (x - mx) * (y - my)).sum()
                values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_matches_slow_reference():
    a = smooth_frames((2, 20, 24, 3), seed=3)
    b = add_noise(a, 15.0)
    fast = ssim(a, b)
    np.testing.assert_allclose(fast, [slow_ssim(a[0], b[0]), slow_ssim(a[1], b[1])], rtol=1e-9)


def test_ssim_of_identical_frames_is_one():
    a = smooth_frames((3, 32, 32, 3))
    np.testing.assert_allclose(ssim(a, a.copy()), 1.0, atol=1e-12)


def test_ssim_of_negative_is_low():
    a = smooth_frames((2, 32, 32, 3), seed=5)
    assert np.all(ssim(a, 255 - a) < 0.0)


def test_ssim_falls_with_noise_monotonically():
    a = smooth_frames((2, 32, 32, 3), seed=7)
    values = [ssim(a, add_noise(a, s)).mean() for s in (2, 5, 10, 20, 40, 80)]
    assert all(x > y for x, y in zip(values, values[1:])), values
    assert values[0] > 0.9 and values[-1] < 0.5


def test_ssim_is_symmetric_and_sees_colour_swaps():
    a = smooth_frames((2, 32, 32, 3), seed=9)
    b = add_noise(a, 20)
    np.testing.assert_allclose(ssim(a, b), ssim(b, a), rtol=1e-12)
    swapped = a[..., [1, 0, 2]]  # red <-> green: per-channel SSIM must notice
    assert np.all(ssim(a, swapped) < 0.99)


def test_ssim_chunks_agree_with_one_batch(monkeypatch):
    import sim.metrics as metrics
    a = smooth_frames((5, 16, 16, 3), seed=11)
    b = add_noise(a, 10)
    whole = ssim(a, b)
    monkeypatch.setattr(metrics, "CHUNK_FRAMES", 2)
    np.testing.assert_allclose(metrics.ssim(a, b), whole, rtol=1e-12)


def test_ssim_refuses_frames_smaller_than_its_window():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))


# ---- sharpness -------------------------------------------------------------------------------
def test_laplacian_variance_of_flat_frame_is_zero():
    assert np.all(laplacian_variance(np.full((2, 16, 16, 3), 77, np.uint8)) == 0.0)


def test_laplacian_variance_of_checkerboard_is_known():
    # 1-pixel black/white checkerboard: every interior Laplacian is +-4 * 255, half each
    yy, xx = np.mgrid[0:8, 0:8]
    board = np.repeat((((yy + xx) % 2) * 255).astype(np.uint8)[..., None], 3, axis=-1)
    np.testing.assert_allclose(laplacian_variance(board), (4 * 255) ** 2, rtol=1e-9)
    assert laplacian_variance(board).shape == ()


def test_laplacian_variance_falls_with_blur():
    a = random_frames((1, 32, 32, 3))
    blurred = ((a.astype(np.float64) + np.roll(a, 1, 1) + np.roll(a, 1, 2) + np.roll(a, (1, 1), (1, 2))) / 4).astype(np.uint8)
    assert laplacian_variance(blurred)[0] < laplacian_variance(a)[0] / 2


# ---- summaries -------------------------------------------------------------------------------
def test_summarize():
    s = summarize(np.arange(1, 12, dtype=np.float64).reshape(1, 11))  # 1..11
    assert s == {"mean": 6.0, "median": 6.0, "p10": 2.0, "p90": 10.0, "n": 11}
    assert summarize([1.0, np.nan, 3.0])["n"] == 2
    empty = summarize([])
    assert empty["n"] == 0 and math.isnan(empty["mean"])
