"""The one render API: Gaussians + cameras -> RGB, expected depth and alpha, with a gsplat or a pure-torch backend.

Both backends take the same arguments and return the same ``RenderOutput``:

- ``rgb = Σ w_i c_i + (1 - alpha) · background`` (``w_i = α_i Π_{j<i} (1 - α_j)``),
- ``depth = Σ w_i z_i / max(alpha, 1e-10)``: the **expected** camera z-depth, alpha-normalised (gsplat's "RGB+ED";
  the background does not enter it; pixels with no coverage get 0),
- ``alpha = Σ w_i = 1 - final transmittance``.

Rendering always runs in float32 with autocast off (as the reference does), whatever the input dtype.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from diff4splat.gaussians.types import Gaussians
from diff4splat.geometry.cameras import fxfycxcy_to_K, invert_c2w
from diff4splat.rendering.sh import eval_sh
from diff4splat.rendering.torch_backend import project_gaussians, rasterize_tiles

log = logging.getLogger(__name__)

__all__ = ["Backend", "RenderConfig", "RenderOutput", "gsplat_available", "render", "resolve_backend"]

Backend = Literal["auto", "gsplat", "torch"]


@dataclass
class RenderOutput:
    """Rendered images, channels first. Leading dims ``[...]`` = the Gaussians' batch shape (e.g. B), then V views."""

    rgb: Tensor  # [..., V, 3, H, W]
    depth: Tensor  # [..., V, 1, H, W] expected z-depth (alpha-normalised)
    alpha: Tensor  # [..., V, 1, H, W]


@dataclass
class RenderConfig:
    """Render settings as a structured config (``render(g, c2w, K, h, w, **asdict(cfg))``)."""

    backend: Backend = "auto"
    near: float = 0.001
    far: float = 100.0
    eps2d: float = 0.3
    tile_size: int = 16


@functools.cache
def gsplat_available() -> bool:
    """Whether ``gsplat`` imports (its CUDA code is compiled on first use)."""
    try:
        import gsplat  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    return True


@functools.cache
def _warn_torch_fallback() -> None:
    """Once per process: CUDA tensors rendered by the slow pure-torch rasteriser because gsplat does not import."""
    try:
        import gsplat  # noqa: F401
    except Exception as e:  # noqa: BLE001 - the reason is what the user needs
        reason = f"{type(e).__name__}: {e}"
    else:
        reason = "unknown"
    log.warning(
        "render backend 'auto': gsplat does not import (%s); rendering CUDA tensors with the pure-torch rasteriser, "
        "which is much slower. Install gsplat (see the README's GPU set-up) or pass backend=torch to silence this.",
        reason,
    )


def resolve_backend(backend: Backend, device: torch.device) -> Literal["gsplat", "torch"]:
    """``auto`` -> gsplat on CUDA tensors when it imports, torch otherwise; explicit names are checked."""
    if backend == "auto":
        if device.type != "cuda":
            return "torch"
        if gsplat_available():
            return "gsplat"
        _warn_torch_fallback()
        return "torch"
    if backend == "gsplat":
        if device.type != "cuda":
            raise ValueError(f"render: backend 'gsplat' needs CUDA tensors, got device {device}")
        if not gsplat_available():
            raise ImportError("render: backend 'gsplat' requested but `import gsplat` fails")
        return "gsplat"
    if backend == "torch":
        return "torch"
    raise ValueError(f"render: backend must be 'auto', 'gsplat' or 'torch', got {backend!r}")


def _background(
    background: Tensor | float | None, batch: tuple[int, ...], device: torch.device
) -> Tensor | None:  # [..., V, 3] or None
    if background is None:
        return None
    bg = torch.as_tensor(background, dtype=torch.float32, device=device)
    if bg.dim() == 0:
        bg = bg.expand(3)
    if bg.shape[-1] != 3:
        raise ValueError(f"render: background must be a float, [3] or [..., V, 3], got shape {tuple(bg.shape)}")
    return bg.expand(*batch, 3)


def render(
    gaussians: Gaussians,  # batch shape [...] (e.g. [B])
    c2w: Tensor,  # [..., V, 4, 4] OpenCV camera-to-world
    fxfycxcy: Tensor,  # [..., V, 4] normalised intrinsics
    height: int,
    width: int,
    *,
    backend: Backend = "auto",
    background: Tensor | float | None = None,  # float, [3] or [..., V, 3]; None = black
    near: float = 0.001,
    far: float = 100.0,
    eps2d: float = 0.3,
    tile_size: int = 16,
    max_elements: int = 1 << 22,  # torch backend: floats per compositing temporary
) -> RenderOutput:
    """Render each scene of a batch of Gaussians from its V cameras.

    The gsplat backend calls ``gsplat.rasterization`` once for the whole batch (viewmats = w2c, Ks in pixels,
    ``render_mode="RGB+ED"``, ``rasterize_mode="classic"``, unpacked); the torch backend is the reference in
    ``torch_backend``. See the module docstring for what the outputs hold.
    """
    batch = tuple(gaussians.batch_shape)
    if c2w.dim() != len(batch) + 3 or tuple(c2w.shape[: len(batch)]) != batch or c2w.shape[-2:] != (4, 4):
        raise ValueError(f"render: c2w must be [..., V, 4, 4] with ... = Gaussians batch {batch}, got {c2w.shape}")
    V = c2w.shape[-3]
    if tuple(fxfycxcy.shape) != batch + (V, 4):
        raise ValueError(f"render: fxfycxcy must be {list(batch + (V, 4))}, got {list(fxfycxcy.shape)}")
    device = gaussians.device
    name = resolve_backend(backend, device)
    bg = _background(background, batch + (V,), device)

    autocast_on = torch.is_autocast_enabled(device.type)
    with torch.autocast(device_type=device.type, enabled=False) if autocast_on else contextlib.nullcontext():
        fields = (gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, gaussians.colors)
        g = gaussians if all(x.dtype == torch.float32 for x in fields) else gaussians.to(torch.float32)
        viewmats = invert_c2w(c2w.float())
        Ks = fxfycxcy_to_K(fxfycxcy.float(), height, width)
        if name == "gsplat":
            import gsplat

            colors, alphas, _ = gsplat.rasterization(
                g.means,
                g.quats,
                g.scales,
                g.opacities,
                g.colors,
                viewmats,
                Ks,
                width,
                height,
                near_plane=near,
                far_plane=far,
                eps2d=eps2d,
                sh_degree=g.sh_degree,
                packed=False,
                tile_size=tile_size,
                backgrounds=bg,
                render_mode="RGB+ED",
                rasterize_mode="classic",
            )
        else:
            colors, alphas = _render_torch(g, viewmats, Ks, height, width, near, far, eps2d, tile_size, max_elements)
            colors = torch.cat([colors[..., :3], colors[..., 3:] / alphas.clamp(min=1e-10)], dim=-1)
            if bg is not None:
                colors = torch.cat([colors[..., :3] + (1.0 - alphas) * bg[..., None, None, :], colors[..., 3:]], -1)
    channels_first = colors.movedim(-1, -3)
    return RenderOutput(
        rgb=channels_first[..., :3, :, :], depth=channels_first[..., 3:, :, :], alpha=alphas.movedim(-1, -3)
    )


def _render_torch(
    g: Gaussians,
    viewmats: Tensor,  # [..., V, 4, 4]
    Ks: Tensor,  # [..., V, 3, 3]
    height: int,
    width: int,
    near: float,
    far: float,
    eps2d: float,
    tile_size: int,
    max_elements: int,
) -> tuple[Tensor, Tensor]:  # [..., V, H, W, 4] (rgb + accumulated depth), [..., V, H, W, 1]
    means2d, conics, depths, radii = project_gaussians(
        g.means, g.quats, g.scales, g.opacities, viewmats, Ks, width, height, near, far, eps2d
    )  # [..., V, N, *]
    lead = depths.shape[:-1]  # [..., V]
    N = g.num_gaussians
    if g.sh_degree is None:
        colors = g.colors[..., None, :, :].expand(*lead, N, 3)
    else:
        campos = invert_c2w(viewmats)[..., :3, 3]  # [..., V, 3]
        dirs = g.means[..., None, :, :] - campos[..., :, None, :]  # [..., V, N, 3]
        sh = g.colors[..., None, :, :, :].expand(*lead, *g.colors.shape[-3:])
        colors = torch.clamp_min(eval_sh(g.sh_degree, sh, dirs) + 0.5, 0.0)
    features = torch.cat([colors, depths[..., None]], dim=-1)
    opac = g.opacities[..., None, :].expand(*lead, N)
    I = lead.numel()
    feat, alpha = rasterize_tiles(
        means2d.reshape(I, N, 2),
        conics.reshape(I, N, 3),
        features.reshape(I, N, 4),
        opac.reshape(I, N),
        radii.reshape(I, N, 2),
        depths.reshape(I, N),
        width,
        height,
        tile_size=tile_size,
        max_elements=max_elements,
    )
    return feat.reshape(*lead, height, width, 4), alpha.reshape(*lead, height, width, 1)
