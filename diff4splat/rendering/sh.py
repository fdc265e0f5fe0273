"""Real spherical harmonics up to degree 3 evaluated at view directions, to turn SH colours into RGB (the basis
constants are `diff4splat.gaussians.sh`'s)."""

from __future__ import annotations

import torch
from torch import Tensor

from diff4splat.gaussians.sh import SH_C0, SH_C1, SH_C2, SH_C3

__all__ = ["eval_sh"]


def eval_sh(
    degree: int,
    coeffs: Tensor,  # [..., K, 3], K >= (degree + 1) ** 2
    dirs: Tensor,  # [..., 3] view directions (Gaussian centre minus camera centre; normalised inside)
) -> Tensor:  # [..., 3] raw SH value (add 0.5 and clamp at 0 to get the rendered colour)
    """Evaluate real SH of ``degree`` (0 to 3) at ``dirs``."""
    if not 0 <= degree <= 3:
        raise ValueError(f"eval_sh: degree must be in 0..3, got {degree}")
    if coeffs.shape[-2] < (degree + 1) ** 2:
        raise ValueError(f"eval_sh: degree {degree} needs {(degree + 1) ** 2} coefficients, got {coeffs.shape[-2]}")
    out = SH_C0 * coeffs[..., 0, :]
    if degree == 0:
        return out
    d = torch.nn.functional.normalize(dirs, dim=-1)
    x, y, z = (d[..., i : i + 1] for i in range(3))
    out = out - SH_C1 * y * coeffs[..., 1, :] + SH_C1 * z * coeffs[..., 2, :] - SH_C1 * x * coeffs[..., 3, :]
    if degree == 1:
        return out
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    out = (
        out
        + SH_C2[0] * xy * coeffs[..., 4, :]
        + SH_C2[1] * yz * coeffs[..., 5, :]
        + SH_C2[2] * (2 * zz - xx - yy) * coeffs[..., 6, :]
        + SH_C2[3] * xz * coeffs[..., 7, :]
        + SH_C2[4] * (xx - yy) * coeffs[..., 8, :]
    )
    if degree == 2:
        return out
    return (
        out
        + SH_C3[0] * y * (3 * xx - yy) * coeffs[..., 9, :]
        + SH_C3[1] * xy * z * coeffs[..., 10, :]
        + SH_C3[2] * y * (4 * zz - xx - yy) * coeffs[..., 11, :]
        + SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * coeffs[..., 12, :]
        + SH_C3[4] * x * (4 * zz - xx - yy) * coeffs[..., 13, :]
        + SH_C3[5] * z * (xx - yy) * coeffs[..., 14, :]
        + SH_C3[6] * x * (xx - 3 * yy) * coeffs[..., 15, :]
    )
