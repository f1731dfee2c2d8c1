"""Frame quality metrics: PSNR, SSIM, sharpness, and a summary of many values.

    psnr(generated, real)            # uint8 [..., H, W, 3] x2 -> float64 [...] in dB, at most 100
    ssim(generated, real)            # -> float64 [...] in [-1, 1]
    laplacian_variance(frames)       # -> float64 [...]: how much fine detail a frame has
    summarize(values)                # -> {"mean", "median", "p10", "p90", "n"}

Frames are numpy arrays or torch tensors (any device) of 0..255 values, usually uint8,
with any leading axes: one value comes back per frame, as a float64 numpy array over the
leading axes (a 0-d array for a single frame).

Choices, fixed here so every figure in the project means the same thing:
- PSNR is per frame (MSE over H, W and the 3 channels, then dB), never of a pooled MSE.
  Identical frames have MSE 0 and PSNR +inf; that is capped at `PSNR_CAP_DB` = 100 dB
  (any PSNR above it is capped too), so means stay finite. 100 dB is beyond anything a
  non-identical uint8 frame can reach (one pixel off by one in 128x128x3 is ~96.9 dB).
- SSIM follows Wang et al. (2004): an 11x11 Gaussian window with sigma 1.5, K1 = 0.01,
  K2 = 0.03, L = 255, population (not sample) statistics, computed on each RGB channel
  separately and averaged over the three channels (not on luma: a colour swap of equal
  luma, e.g. a red sprite turned green, must count). Only windows that lie fully inside
  the frame are used ("valid" filtering), as in Wang's reference code; this matches
  scikit-image's `structural_similarity(..., channel_axis=-1, gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=255)`. Frames must be at least 11x11.
- Sharpness is the variance of the 3x3 Laplacian of the luma (BT.601, 0..255) over the
  interior pixels: blurry generations score far below the real frames.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

PSNR_CAP_DB = 100.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # BT.601
CHUNK_FRAMES = 64  # frames per filter batch: ~5 x 64 x 3 x H x W float64, 120 MB at 128x128


def _as_frames(x: Any, name: str) -> torch.Tensor:
    """numpy | torch [..., H, W, 3] -> float64 CPU tensor of the same shape."""
    # np.array copies: float64 is needed anyway, and the copy is writable (broadcast views are not)
    t = x.detach().cpu().to(torch.float64) if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x, dtype=np.float64))
    if t.ndim < 3 or t.shape[-1] != 3:
        raise ValueError(f"{name} must be frames of shape [..., H, W, 3], got {tuple(t.shape)}")
    return t


def _as_pair(a: Any, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _as_frames(a, "a"), _as_frames(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"frames to compare must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a, b


def psnr(a: Any, b: Any, max_val: float = 255.0) -> np.ndarray:
    """Peak signal-to-noise ratio per frame in dB, capped at PSNR_CAP_DB: float64 [...]."""
    a, b = _as_pair(a, b)
    mse = ((a - b) ** 2).mean(dim=(-3, -2, -1))  # [...]
    with np.errstate(divide="ignore"):
        db = 10.0 * np.log10(max_val ** 2 / mse.numpy())  # mse 0 -> +inf
    return np.minimum(db, PSNR_CAP_DB)


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalised 1-D Gaussian, float64 [size]; the 2-D window is its outer product."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def _band(n: int, g: torch.Tensor) -> torch.Tensor:
    """[n, n - s + 1] matrix whose column j holds g at rows j..j+s-1: x @ band filters along x's last axis."""
    s = g.numel()
    band = torch.zeros(n, n - s + 1, dtype=g.dtype)
    cols = torch.arange(n - s + 1)
    for k in range(s):
        band[cols + k, cols] = g[k]
    return band


def _filter_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, valid region only: [M, H, W] -> [M, H-s+1, W-s+1].

    As two matmuls with banded matrices rather than conv2d: CPU conv2d has no fast float64
    path, and float64 keeps E[x^2] - E[x]^2 exact enough at 0..255 scale. About 5x faster.
    """
    H, W = x.shape[-2:]
    return _band(H, g).T @ (x @ _band(W, g))


def ssim(a: Any, b: Any, max_val: float = 255.0) -> np.ndarray:
    """Structural similarity per frame (mean over RGB channels and valid windows): float64 [...]."""
    a, b = _as_pair(a, b)
    *lead, H, W, C = a.shape
    if H < SSIM_WINDOW or W < SSIM_WINDOW:
        raise ValueError(f"ssim needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {H}x{W}")
    c1 = (SSIM_K1 * max_val) ** 2
    c2 = (SSIM_K2 * max_val) ** 2
    g = _gaussian_window()
    # every channel of every frame is one grey image: [..., H, W, C] -> [M, H, W], M = frames * C
    a = a.reshape(-1, H, W, C).permute(0, 3, 1, 2).reshape(-1, H, W)
    b = b.reshape(-1, H, W, C).permute(0, 3, 1, 2).reshape(-1, H, W)
    out = []
    for i in range(0, a.shape[0], CHUNK_FRAMES * C):
        x, y = a[i:i + CHUNK_FRAMES * C], b[i:i + CHUNK_FRAMES * C]
        m = x.shape[0]
        # the five local moments in one filter pass: [5m, H', W'] -> five [m, H', W']
        mu_x, mu_y, xx, yy, xy = _filter_valid(torch.cat([x, y, x * x, y * y, x * y]), g).split(m)
        var_x = xx - mu_x ** 2
        var_y = yy - mu_y ** 2
        cov = xy - mu_x * mu_y
        s_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
        out.append(s_map.mean(dim=(-2, -1)))  # [m]
    per_channel = torch.cat(out).view(-1, C)  # [frames, C]
    return per_channel.mean(dim=-1).view(lead).numpy()


def luma(frames: Any) -> torch.Tensor:
    """BT.601 luma on the 0..255 scale: [..., H, W, 3] -> float64 [..., H, W]."""
    x = _as_frames(frames, "frames")
    return x @ torch.tensor(LUMA_WEIGHTS, dtype=torch.float64)


def laplacian_variance(frames: Any) -> np.ndarray:
    """Sharpness: variance of the 3x3 Laplacian of luma over interior pixels, float64 [...]."""
    y = luma(frames)
    *lead, H, W = y.shape
    if H < 3 or W < 3:
        raise ValueError(f"laplacian_variance needs frames of at least 3x3, got {H}x{W}")
    kernel = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=torch.float64).view(1, 1, 3, 3)
    lap = F.conv2d(y.reshape(-1, 1, H, W), kernel)  # [frames, 1, H-2, W-2]
    return lap.flatten(1).var(dim=1, unbiased=False).view(lead).numpy()


def summarize(values: Any) -> dict[str, float | int]:
    """Mean, median, 10th and 90th percentile and count of all values (NaNs dropped)."""
    v = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    if v.size == 0:
        return {"mean": math.nan, "median": math.nan, "p10": math.nan, "p90": math.nan, "n": 0}
    p10, median, p90 = np.percentile(v, [10, 50, 90])
    return {"mean": float(v.mean()), "median": float(median), "p10": float(p10), "p90": float(p90), "n": int(v.size)}
