"""Real spherical harmonics up to degree 3 (the 3DGS basis and sign convention), used to turn SH colours into RGB."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SH_C0", "eval_sh", "rgb_to_sh_dc", "sh_dc_to_rgb"]

SH_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def rgb_to_sh_dc(rgb: Tensor) -> Tensor:  # [..., 3] -> [..., 3]
    """Degree-0 SH coefficient whose colour is ``rgb`` (``(rgb - 0.5) / C0``)."""
    return (rgb - 0.5) / SH_C0


def sh_dc_to_rgb(dc: Tensor) -> Tensor:  # [..., 3] -> [..., 3]
    """Inverse of ``rgb_to_sh_dc``."""
    return dc * SH_C0 + 0.5


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
    out = out - _C1 * y * coeffs[..., 1, :] + _C1 * z * coeffs[..., 2, :] - _C1 * x * coeffs[..., 3, :]
    if degree == 1:
        return out
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    out = (
        out
        + _C2[0] * xy * coeffs[..., 4, :]
        + _C2[1] * yz * coeffs[..., 5, :]
        + _C2[2] * (2 * zz - xx - yy) * coeffs[..., 6, :]
        + _C2[3] * xz * coeffs[..., 7, :]
        + _C2[4] * (xx - yy) * coeffs[..., 8, :]
    )
    if degree == 2:
        return out
    return (
        out
        + _C3[0] * y * (3 * xx - yy) * coeffs[..., 9, :]
        + _C3[1] * xy * z * coeffs[..., 10, :]
        + _C3[2] * y * (4 * zz - xx - yy) * coeffs[..., 11, :]
        + _C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * coeffs[..., 12, :]
        + _C3[4] * x * (4 * zz - xx - yy) * coeffs[..., 13, :]
        + _C3[5] * z * (xx - yy) * coeffs[..., 14, :]
        + _C3[6] * x * (xx - 3 * yy) * coeffs[..., 15, :]
    )
