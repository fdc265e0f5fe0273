"""Gaussians / DeformableGaussians: shapes, deformation at query times, interpolation, pruning, concatenation."""

from __future__ import annotations

import pytest
import torch

from diff4splat.gaussians import DeformableGaussians, Gaussians
from diff4splat.geometry.rotations import quat_multiply, quat_normalize, quat_to_matrix


def make(n: int = 6, batch: tuple[int, ...] = (), sh: int | None = None, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    colors = (
        torch.rand(*batch, n, 3, generator=g) if sh is None else torch.randn(*batch, n, (sh + 1) ** 2, 3, generator=g)
    )
    return Gaussians(
        means=torch.randn(*batch, n, 3, generator=g),
        quats=quat_normalize(torch.randn(*batch, n, 4, generator=g)),
        scales=torch.rand(*batch, n, 3, generator=g) * 0.1 + 0.01,
        opacities=torch.rand(*batch, n, generator=g),
        colors=colors,
    )


def deformable(batch=(), n=6, T=4, seed=0) -> DeformableGaussians:
    g = torch.Generator().manual_seed(seed)
    return DeformableGaussians(
        make(n, batch, seed=seed),
        torch.linspace(0, 1, T),
        torch.randn(*batch, T, n, 3, generator=g),
        quat_normalize(torch.randn(*batch, T, n, 4, generator=g)),
        torch.randn(*batch, T, n, 3, generator=g) * 0.1,
    )


def test_shapes_and_validation():
    g = make(5, (2,), sh=2)
    assert g.num_gaussians == 5 and g.batch_shape == (2,) and g.sh_degree == 2
    assert make(5).sh_degree is None
    with pytest.raises(ValueError, match=r"quats: expected shape \[\.\.\., 5, 4\]"):
        Gaussians(torch.zeros(5, 3), torch.zeros(5, 3), torch.ones(5, 3), torch.ones(5), torch.ones(5, 3))
    with pytest.raises(ValueError, match="K = \\(degree \\+ 1\\)\\^2"):
        Gaussians(torch.zeros(5, 3), torch.zeros(5, 4), torch.ones(5, 3), torch.ones(5), torch.ones(5, 3, 3))


def test_at_stored_times_is_exact():
    d = deformable()
    for i, t in enumerate(d.times.tolist()):
        g = d.at(t)
        torch.testing.assert_close(g.means, d.canonical.means + d.delta_means[i], atol=0, rtol=0)
        torch.testing.assert_close(g.scales, d.canonical.scales * torch.exp(d.delta_log_scales[i]))
        expected_q = quat_normalize(quat_multiply(d.canonical.quats, d.delta_quats[i]))
        torch.testing.assert_close(g.quats, expected_q)
        # q ⊗ Δq composes the rotation matrices R(q) @ R(Δq)
        torch.testing.assert_close(
            quat_to_matrix(g.quats),
            quat_to_matrix(d.canonical.quats) @ quat_to_matrix(d.delta_quats[i]),
            atol=1e-5,
            rtol=0,
        )
        torch.testing.assert_close(d.at_index(i).means, g.means)


def test_at_interpolates_and_clamps():
    d = deformable(T=3)
    mid = d.at(0.25)  # halfway between times 0 and 0.5
    torch.testing.assert_close(mid.means, d.canonical.means + 0.5 * (d.delta_means[0] + d.delta_means[1]))
    torch.testing.assert_close(
        mid.scales, d.canonical.scales * torch.exp(0.5 * (d.delta_log_scales[0] + d.delta_log_scales[1]))
    )
    torch.testing.assert_close(d.at(-1.0).means, d.at(0.0).means)
    torch.testing.assert_close(d.at(2.0).means, d.at(1.0).means)


def test_batched_times_per_scene():
    d = deformable(batch=(2,), T=3)
    g = d.at(torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(g.means[0], d.canonical.means[0] + d.delta_means[0, 0])
    torch.testing.assert_close(g.means[1], d.canonical.means[1] + d.delta_means[1, 2])


def test_static_has_identity_deltas():
    c = make()
    d = DeformableGaussians.static(c, torch.tensor([0.0, 0.5, 1.0]))
    g = d.at(0.7)
    torch.testing.assert_close(g.means, c.means, atol=0, rtol=0)
    torch.testing.assert_close(g.scales, c.scales, atol=0, rtol=0)
    torch.testing.assert_close(g.quats, c.quats)


def test_prune_cat_to():
    g = make(10)
    g.opacities[:4] = torch.tensor([0.0, 0.004, 0.005, 0.0051])
    kept = g.prune()
    assert kept.num_gaussians == 10 - 3 and kept.opacities.min() > 0.005
    assert g.prune(0.5).num_gaussians == int((g.opacities > 0.5).sum())
    cat = Gaussians.cat([g, make(3, seed=1)])
    assert cat.num_gaussians == 13 and torch.equal(cat.means[:10], g.means)
    assert g.to(torch.float64).means.dtype == torch.float64
    with pytest.raises(ValueError, match="ragged"):
        make(4, (2,)).prune()
    d = deformable(n=6)
    d.canonical.opacities[:2] = 0.0
    dp = d.prune()
    assert dp.num_gaussians == 4 and torch.equal(dp.delta_means, d.delta_means[:, 2:])
    dc = DeformableGaussians.cat([d, deformable(n=2, seed=3)])
    assert dc.num_gaussians == 8 and dc.delta_quats.shape == (4, 8, 4)
    parts = make(4, (3,)).unbind()
    assert len(parts) == 3 and torch.equal(Gaussians.stack(parts).means, make(4, (3,)).means)
