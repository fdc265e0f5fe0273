"""MoVieS's per-pixel outputs as Gaussians: the renderer's activations (`GaussianActivation`, `activate_gaussians`:
depth unprojected through the input cameras, scales, rotations, opacities, colours) and the `DeformableGaussians` of a
dynamic scene (`deformable_gaussians`: the static Gaussians plus their per-query-time states)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from diff4splat.gaussians.types import DeformableGaussians, Gaussians
from diff4splat.geometry.cameras import unproject_depth
from diff4splat.geometry.rotations import quat_conjugate, quat_multiply


@dataclass
class GaussianActivation:
    """MoVieS's renderer activations (``opt_dict["movies"]``)."""

    znear: float = 0.001  # depth clamp
    zfar: float = 100.0
    scale_factor: float = 0.001  # scale = min(scale_factor * softplus(x), scale_max)
    scale_max: float = 0.3
    opacity_bias: float = -1.0  # opacity = tanh(x + bias) / 2 + 1/2 (= sigmoid(2x - 2))


def _float32_geometry(device: torch.device) -> contextlib.AbstractContextManager:
    """Camera geometry (rays, poses, unprojection) in float32 even under autocast, as the reference computes it."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def activate_gaussians(
    outputs: Mapping[str, Tensor],
    c2w: Tensor,  # [B, F, 4, 4] the input cameras given to forward
    fxfycxcy: Tensor,  # [B, F, 4]
    activation: GaussianActivation | None = None,
    sh_degree: int = 0,
) -> dict[str, Tensor]:
    """Per-pixel Gaussians at each query time, activated as MoVieS's renderer does (the static model: one "query").

    Returns ``means`` [B, Q, F, 3, H, W] (world), ``colors`` [B, Q, F, 3(sh+1)², H, W] (tanh / 2 + 1/2, higher SH
    bands scaled by 0.1·0.25^degree), ``scales`` [B, Q, F, 3, H, W] (linear units), ``quats`` [B, Q, F, 4, H, W]
    (unit, wxyz as gsplat), ``opacities`` [B, Q, F, 1, H, W] in [0, 1]; colours with sh_degree 0 are RGB.
    """
    act = activation or GaussianActivation()
    depth = outputs["depth"].clamp(min=act.znear, max=act.zfar)[:, :, 0]  # [B, F, H, W]
    with _float32_geometry(depth.device):
        xyz = unproject_depth(depth.float(), c2w.float(), fxfycxcy.float())  # [B, F, H, W, 3]
    xyz = xyz.permute(0, 1, 4, 2, 3).to(depth.dtype)  # [B, F, 3, H, W]
    if "offset" in outputs:
        means = xyz[:, None] + outputs["offset"]
        raw = {k: outputs[f"{k}_t"] for k in ("color", "scale", "rotation", "opacity")}
    else:
        means = xyz[:, None]
        raw = {k: outputs[k][:, None] for k in ("color", "scale", "rotation", "opacity")}
    colors = torch.tanh(raw["color"]) * 0.5 + 0.5
    if sh_degree > 0:
        mask = torch.ones((sh_degree + 1) ** 2, dtype=colors.dtype, device=colors.device)
        for degree in range(1, sh_degree + 1):
            mask[degree**2 : (degree + 1) ** 2] = 0.1 * 0.25**degree
        colors = (colors.unflatten(3, (-1, 3)) * mask[:, None, None, None]).flatten(3, 4)
    return {
        "means": means,
        "colors": colors,
        "scales": (act.scale_factor * F.softplus(raw["scale"])).clamp(max=act.scale_max),
        "quats": F.normalize(raw["rotation"], dim=3),
        "opacities": torch.tanh(raw["opacity"] + act.opacity_bias) * 0.5 + 0.5,
    }


def deformable_gaussians(
    outputs: Mapping[str, Tensor],
    c2w: Tensor,  # [B, F, 4, 4] the input cameras given to forward
    fxfycxcy: Tensor,  # [B, F, 4]
    query_times: Tensor,  # [B, Q] (the static model: any Q; the scene does not change)
    activation: GaussianActivation | None = None,
    sh_degree: int = 0,
) -> tuple[DeformableGaussians, Tensor]:  # batch [B], N = F·H·W; depth [B, F, H, W]
    """MoVieS's outputs as our deformable Gaussians, exactly: at query time q every Gaussian has the position, rotation,
    scale, opacity and colour that MoVieS renders there (`activate_gaussians`).

    Gaussians are ordered frame-major, then row-major over the pixels. The canonical Gaussians are the static
    prediction (each pixel's unprojected depth with the static attributes, at its own frame's time); at query time q,
    Δμ = offset(q), Δq = conj(q0) ⊗ q(q) (so q0 ⊗ Δq = q(q)), Δs = log s(q) - log s0, and ``opacities_t`` /
    ``colors_t`` hold MoVieS's time-dependent opacity and colour (equal to the static ones where ‖offset‖ < 0.005).
    Also returns the clamped depth the depth loss reads."""
    act = activation or GaussianActivation()
    static_keys = ("depth", "color", "scale", "rotation", "opacity")
    static = activate_gaussians({k: outputs[k] for k in static_keys}, c2w, fxfycxcy, act, sh_degree)
    batch = c2w.shape[0]

    def flat(x: Tensor) -> Tensor:  # [B, Q, F, C, H, W] -> [B, Q, F·H·W, C]
        return x.permute(0, 1, 2, 4, 5, 3).reshape(batch, x.shape[1], -1, x.shape[3]).float()

    def colours(x: Tensor) -> Tensor:  # [..., N, 3(sh+1)²] -> [..., N, 3] (RGB) or [..., N, K, 3] (SH, k-major)
        return x if sh_degree == 0 else x.unflatten(-1, (-1, 3))

    q0 = flat(static["quats"])[:, 0]
    s0 = flat(static["scales"])[:, 0]
    canonical = Gaussians(
        means=flat(static["means"])[:, 0],
        quats=q0,
        scales=s0,
        opacities=flat(static["opacities"])[:, 0, :, 0],
        colors=colours(flat(static["colors"])[:, 0]),
    )
    depth = outputs["depth"][:, :, 0].clamp(min=act.znear, max=act.zfar).float()
    if "offset" not in outputs:
        return DeformableGaussians.static(canonical, query_times.float()), depth
    moving = activate_gaussians(outputs, c2w, fxfycxcy, act, sh_degree)
    q_t, s_t = flat(moving["quats"]), flat(moving["scales"])
    tiny = torch.finfo(torch.float32).tiny  # softplus underflows to 0 far below its range: keep the logs finite
    return (
        DeformableGaussians(
            canonical=canonical,
            times=query_times.float(),
            delta_means=flat(outputs["offset"]),
            delta_quats=quat_multiply(quat_conjugate(q0)[:, None], q_t),
            delta_log_scales=s_t.clamp_min(tiny).log() - s0.clamp_min(tiny).log()[:, None],
            opacities_t=flat(moving["opacities"])[..., 0],
            colors_t=colours(flat(moving["colors"])),
        ),
        depth,
    )
