"""Spherical-harmonic colours of Gaussians: the real SH basis constants up to degree 3 (the 3DGS basis and sign
convention) and the conversions between an RGB colour and its degree-0 coefficient. Evaluating SH at view
directions is rendering's (`diff4splat.rendering.sh.eval_sh`)."""

from __future__ import annotations

from torch import Tensor

__all__ = ["SH_C0", "SH_C1", "SH_C2", "SH_C3", "rgb_to_sh_dc", "sh_dc_to_rgb"]

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
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
