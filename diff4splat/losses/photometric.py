"""Photometric losses and metrics on images (..., 3, H, W) in [0, 1]: MSE, PSNR, SSIM."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB over all elements of ``pred`` vs ``target`` (any equal shapes)."""
    mse = F.mse_loss(pred.float(), target.float())
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


@functools.lru_cache(maxsize=8)
def _gaussian_window(size: int, sigma: float, device: str, dtype: torch.dtype) -> Tensor:
    # cached: always a normal tensor, even when first built under torch.inference_mode (Lightning's evaluation
    # loops), or every later training step that saves it for backward fails
    with torch.inference_mode(False):
        x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        g = torch.exp(-(x**2) / (2 * sigma**2))
        return (g / g.sum()).to(device=device, dtype=dtype)


def ssim(
    pred: Tensor,  # [..., C, H, W]
    target: Tensor,  # [..., C, H, W]
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    reduction: str = "mean",
) -> Tensor:
    """Structural similarity (Wang et al. 2004) with a separable Gaussian window and no padding ("valid" region,
    as torchmetrics and pytorch_msssim). ``reduction="none"`` gives one value per image [...]."""
    if pred.shape != target.shape:
        raise ValueError(f"ssim: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}")
    lead, (c, h, w) = pred.shape[:-3], pred.shape[-3:]
    if min(h, w) < window_size:
        raise ValueError(f"ssim: images of {h}x{w} are smaller than the {window_size}-pixel window")
    x = pred.reshape(-1, c, h, w).float()
    y = target.reshape(-1, c, h, w).float()
    g = _gaussian_window(window_size, sigma, str(x.device), x.dtype)
    kh = g.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    kw = g.view(1, 1, 1, -1).expand(c, 1, 1, -1)

    def blur(z: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(z, kh, groups=c), kw, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    per_image = s.mean(dim=(1, 2, 3)).reshape(lead)
    if reduction == "mean":
        return per_image.mean()
    if reduction == "none":
        return per_image
    raise ValueError(f"ssim: reduction must be 'mean' or 'none', got {reduction!r}")
