"""A free-parameter 4D Gaussian field for one scene: canonical Gaussians plus a per-time deformation table.

This is per-scene optimisation (the "†" baselines of the paper, and the quickest check that rendering, losses and
the training stack work end to end): no network, every Gaussian's attributes are parameters fitted to the views of
one clip. Attributes are stored raw and activated on read: means as is, scales as log, rotations as unnormalised
wxyz quaternions, opacity as logit, colour as logit (RGB in [0, 1], SH degree 0). The deformation of time index k
is Δμ_k (3), Δq_k (4, composed q ⊗ Δq_k) and Δs_k (3, added to log-scales), all starting at the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diff4splat.gaussians import DeformableGaussians, Gaussians
from diff4splat.geometry.rotations import quat_multiply, quat_normalize


@dataclass
class GaussianFieldConfig:
    """Architecture of a `GaussianField`."""

    num_gaussians: int = 20_000
    num_times: int = 1  # rows of the deformation table; 1 = static scene
    deformable: bool = True  # False: no deformation table (a static 3D scene)
    init_opacity: float = 0.1
    init_scale: float = 0.01  # initial Gaussian size, in scene units
    init_extent: float = 1.0  # random initialisation: half-size of the cube the means are drawn in
    init_center: tuple[float, float, float] = (0.0, 0.0, 1.5)  # centre of that cube (first camera looks down +z)


class GaussianField(nn.Module):
    def __init__(self, config: GaussianFieldConfig) -> None:
        super().__init__()
        self.config = c = config
        if c.num_gaussians < 1 or c.num_times < 1:
            raise ValueError(f"GaussianField needs num_gaussians >= 1 and num_times >= 1, got {c}")
        n = c.num_gaussians
        center = torch.tensor(c.init_center, dtype=torch.float32)
        self.means = nn.Parameter(center + (torch.rand(n, 3) * 2 - 1) * c.init_extent)  # [N, 3]
        self.log_scales = nn.Parameter(torch.full((n, 3), float(torch.log(torch.tensor(c.init_scale)))))  # [N, 3]
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        self.quats = nn.Parameter(quats)  # [N, 4] wxyz, normalised on read
        self.opacity_logits = nn.Parameter(torch.full((n,), float(torch.logit(torch.tensor(c.init_opacity)))))
        self.color_logits = nn.Parameter(torch.zeros(n, 3))  # [N, 3] -> sigmoid = 0.5 grey
        if c.deformable:
            t = c.num_times
            self.delta_means = nn.Parameter(torch.zeros(t, n, 3))  # [T, N, 3]
            dq = torch.zeros(t, n, 4)
            dq[..., 0] = 1.0
            self.delta_quats = nn.Parameter(dq)  # [T, N, 4]
            self.delta_log_scales = nn.Parameter(torch.zeros(t, n, 3))  # [T, N, 3]
        else:
            self.register_parameter("delta_means", None)
            self.register_parameter("delta_quats", None)
            self.register_parameter("delta_log_scales", None)

    @torch.no_grad()
    def initialize_from_points(self, points: Tensor, colors: Tensor | None = None) -> None:
        """Place the Gaussians on ``points`` [M, 3] (sampled with replacement when M < N), colours [M, 3] in [0,1],
        with a size from the mean nearest-sample spacing."""
        n = self.config.num_gaussians
        idx = torch.randperm(points.shape[0])[:n] if points.shape[0] >= n else torch.randint(points.shape[0], (n,))
        self.means.copy_(points[idx])
        if colors is not None:
            self.color_logits.copy_(torch.logit(colors[idx].clamp(0.02, 0.98)))
        extent = (points.max(0).values - points.min(0).values).norm().clamp_min(1e-6)
        spacing = extent / n ** (1 / 2)  # points lie on surfaces: spacing ~ extent / sqrt(N)
        self.log_scales.fill_(float(torch.log(spacing * 0.5)))

    def canonical(self) -> Gaussians:
        """The activated canonical Gaussians (N of them)."""
        return Gaussians(
            means=self.means,
            quats=quat_normalize(self.quats),
            scales=torch.exp(self.log_scales),
            opacities=torch.sigmoid(self.opacity_logits),
            colors=torch.sigmoid(self.color_logits),
        )

    def at_index(self, k: int) -> Gaussians:
        """The Gaussians at time index ``k`` of the deformation table (canonical when static)."""
        if self.delta_means is None:
            return self.canonical()
        if not 0 <= k < self.config.num_times:
            raise IndexError(f"time index {k} outside the deformation table of {self.config.num_times} times")
        return Gaussians(
            means=self.means + self.delta_means[k],
            quats=quat_normalize(quat_multiply(quat_normalize(self.quats), quat_normalize(self.delta_quats[k]))),
            scales=torch.exp(self.log_scales + self.delta_log_scales[k]),
            opacities=torch.sigmoid(self.opacity_logits),
            colors=torch.sigmoid(self.color_logits),
        )

    def deformable(self, times: Tensor) -> DeformableGaussians:
        """The whole field as `DeformableGaussians` with query ``times`` [T] in [0, 1] (for export)."""
        g = self.canonical()
        t = self.config.num_times
        if times.shape != (t,):
            raise ValueError(f"times must have shape ({t},), got {tuple(times.shape)}")
        if self.delta_means is None:
            return DeformableGaussians.static(g, times)
        return DeformableGaussians(
            canonical=g,
            times=times,
            delta_means=self.delta_means,
            delta_quats=F.normalize(self.delta_quats, dim=-1),
            delta_log_scales=self.delta_log_scales,
        )
