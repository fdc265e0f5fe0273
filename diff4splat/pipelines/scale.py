"""The automatic rescale between the user's camera units and the LRDM's scene units (`diff4splat.geometry.scale`).

An LRDM is trained on scenes whose mean distance from the first camera is 1. Generation and reconstruction receive
cameras in whatever unit the user's trajectory has, so `rescaled_reconstruction`:

1. divides the translations by the trajectory's extent ``a`` (its largest camera distance from camera 0; 1 for a
   trajectory that only turns) — a factor that scales with the input, so everything after it is the same for a
   trajectory in metres or in millimetres;
2. runs a first LRDM pass on those cameras and measures the scene's mean distance ``d`` from camera 0 (the mean
   distance of the per-pixel Gaussians' canonical means: the quantity training normalises to 1); the canonical means
   need no deformation, so this pass skips the time-conditioned heads (``canonical_only``: the same ``d``, and for
   VGGSplaT about half the FLOPs of a full pass);
3. runs the full pass with the cameras in LRDM units (translations × ``s = 1 / (a · d)``), and
4. scales the Gaussians back by ``1 / s`` (`scale_gaussians`): means, scales and deformation offsets.

The scene, its cameras, the renders' cameras and ``meta.json`` are then in the user's units: a trajectory × 10 gives
the same renders and the Gaussians × 10. ``translation_scale`` (a number) replaces steps 1-2 with a fixed
user → LRDM factor (one pass), for users who know their units.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

from torch import Tensor

from diff4splat.gaussians import DeformableGaussians, Gaussians
from diff4splat.geometry.scale import trajectory_extent


@dataclass
class SceneScale:
    """How the user's cameras were brought to LRDM units (``meta.json``'s ``scale``)."""

    mode: str  # "auto" (two passes) or "fixed" (translation_scale)
    lrdm_scale: float  # user units x this = LRDM units (mean scene distance 1)
    trajectory_extent: float  # user units: largest camera distance from camera 0
    scene_mean_distance: float  # user units: the scene's mean distance from camera 0 (1 / lrdm_scale when auto)

    def to_json(self) -> dict:
        return asdict(self)


def scale_gaussians(g: DeformableGaussians, factor: float) -> DeformableGaussians:
    """The scene × ``factor`` about the origin: means, scales and deformation offsets scale; rotations, opacities,
    colours and the log-scale offsets do not (renders from cameras whose translations are × ``factor`` match)."""
    c = g.canonical
    canonical = Gaussians(c.means * factor, c.quats, c.scales * factor, c.opacities, c.colors)
    return DeformableGaussians(
        canonical, g.times, g.delta_means * factor, g.delta_quats, g.delta_log_scales, g.opacities_t, g.colors_t
    )


def scale_cameras(c2w: Tensor, factor: float) -> Tensor:  # [..., 4, 4] -> [..., 4, 4]
    """c2w with translations × ``factor`` (computed in float64, returned in c2w's dtype)."""
    out = c2w.clone()
    out[..., :3, 3] = (c2w[..., :3, 3].double() * factor).to(c2w.dtype)
    return out


def scene_mean_distance(g: DeformableGaussians) -> float:
    """Mean distance of the canonical Gaussian means from the origin (camera 0): per-pixel Gaussians stand for the
    input pixels, so this is the training normalisation's quantity. NaN when there are none."""
    means = g.canonical.means.reshape(-1, 3).double()
    return float(means.norm(dim=-1).mean()) if means.shape[0] else math.nan


def rescaled_reconstruction(
    run: Callable[[Tensor, bool], DeformableGaussians],  # (cameras [F, 4, 4] in LRDM units, canonical_only) -> unpruned
    c2w: Tensor,  # [F, 4, 4] canonical cameras in the user's units
    translation_scale: float | None = None,  # None: automatic; a number: user units x this = LRDM units
) -> tuple[DeformableGaussians, SceneScale]:
    """The LRDM's Gaussians in the user's units and how they were scaled (module docstring)."""
    extent = trajectory_extent(c2w)
    if translation_scale is not None:
        g = run(scale_cameras(c2w, translation_scale), False)
        info = SceneScale("fixed", float(translation_scale), extent, math.nan)
        out = scale_gaussians(g, 1.0 / translation_scale)
        info.scene_mean_distance = scene_mean_distance(out)
        return out, info
    a = extent if extent > 1e-12 and math.isfinite(extent) else 1.0
    d = scene_mean_distance(run(scale_cameras(c2w, 1.0 / a), True))
    if not (math.isfinite(d) and d > 1e-12):
        d = 1.0
    s = 1.0 / (a * d)
    g = run(scale_cameras(c2w, s), False)
    return scale_gaussians(g, 1.0 / s), SceneScale("auto", s, extent, a * d)
