"""LRDM: zero-initialised conditioning is the identity, shapes for both encoders and both modes."""

from __future__ import annotations

import pytest
import torch

from diff4splat.models.lrdm import LRDM, gaussians_at_all_times, lrdm_preset, pose_encoding

B, F, H, W = 2, 5, 32, 48


def _cams(seed: int = 0, frames: int = F):
    g = torch.Generator().manual_seed(seed)
    c2w = torch.eye(4).repeat(B, frames, 1, 1)
    c2w[..., :3, 3] = 0.3 * torch.randn(B, frames, 3, generator=g)
    angle = 0.2 * torch.randn(B, frames, generator=g)
    c2w[..., 0, 0], c2w[..., 0, 2], c2w[..., 2, 0], c2w[..., 2, 2] = angle.cos(), angle.sin(), -angle.sin(), angle.cos()
    fx = torch.tensor([0.9, 1.3, 0.5, 0.5]) + 0.05 * torch.randn(B, frames, 4, generator=g)
    return c2w, fx


def _model(**kw):
    torch.manual_seed(0)
    return LRDM(lrdm_preset("tiny", dim=48, depth=2, num_heads=4, decoder_channels=8, **kw)).eval()


def _run(model, c2w, fx, query=None, images=None, latents=None):
    times = torch.linspace(0, 1, c2w.shape[1]).repeat(B, 1)
    query = torch.tensor([[0.0, 0.5, 1.0]]).repeat(B, 1) if query is None else query
    with torch.no_grad():
        return model(c2w, fx, times, query, images=images, latents=latents, image_size=(H, W))


def test_plucker_and_pose_zero_init_is_identity():
    """At init the predicted depth, colours, opacities and scales' log-ratios do not depend on the cameras."""
    model = _model()
    images = torch.rand(B, F, 3, H, W)
    a = _run(model, *_cams(0), images=images)
    b = _run(model, *_cams(1), images=images)
    torch.testing.assert_close(a.depth, b.depth)
    torch.testing.assert_close(a.gaussians.canonical.colors, b.gaussians.canonical.colors)
    torch.testing.assert_close(a.gaussians.canonical.opacities, b.gaussians.canonical.opacities)
    # after a non-zero camera embedding, the cameras matter
    with torch.no_grad():
        model.plucker_embed.weight.normal_(0, 0.1)
    c = _run(model, *_cams(0), images=images)
    d = _run(model, *_cams(1), images=images)
    assert (c.depth - d.depth).abs().max() > 1e-4


def test_deformation_adaln_zero_init_is_identity():
    """At init every query time sees the static scene: Δμ = 0, Δq = identity, Δs = 0."""
    model = _model()
    out = _run(model, *_cams(), images=torch.rand(B, F, 3, H, W), query=torch.rand(B, 4))
    dg = out.gaussians
    assert dg.delta_means.shape == (B, 4, F * H * W, 3)
    assert torch.count_nonzero(dg.delta_means) == 0 and torch.count_nonzero(dg.delta_log_scales) == 0
    torch.testing.assert_close(dg.delta_quats, torch.tensor([1.0, 0, 0, 0]).expand_as(dg.delta_quats))
    g0 = dg.at_index(0)
    torch.testing.assert_close(g0.means, dg.canonical.means)
    torch.testing.assert_close(g0.quats, dg.canonical.quats)


def test_static_mode_has_no_deformation_head_and_is_static():
    model = _model(dynamic=False)
    assert model.deform_head is None
    out = _run(model, *_cams(), images=torch.rand(B, F, 3, H, W))
    assert torch.count_nonzero(out.gaussians.delta_means) == 0


@pytest.mark.parametrize("dynamic", [True, False])
@pytest.mark.parametrize("stride,step", [(1, 1), (2, 2)])
def test_rgb_shapes(dynamic, stride, step):
    model = _model(dynamic=dynamic, gaussian_stride=stride, gaussian_frame_step=step)
    c2w, fx = _cams()
    out = _run(model, c2w, fx, images=torch.rand(B, F, 3, H, W))
    fg = len(range(0, F, step))
    h, w = H // stride, W // stride
    assert out.grid == (fg, h, w) and out.depth.shape == (B, fg, h, w)
    assert out.frame_indices.tolist() == list(range(0, F, step))
    g = out.gaussians.canonical
    assert g.means.shape == (B, fg * h * w, 3) and g.colors.shape == (B, fg * h * w, 3)
    assert (g.opacities > 0).all() and (g.opacities < 1).all() and (g.scales > 0).all()
    torch.testing.assert_close(g.quats.norm(dim=-1), torch.ones(B, fg * h * w))
    # Gaussians sit on their pixels' rays at the predicted depth: reprojection lands on the cell centres
    first = g.means[:, : h * w].reshape(B, h, w, 3)
    w2c = torch.linalg.inv(c2w[:, 0])
    p = first @ w2c[:, None, :3, :3].transpose(-1, -2) + w2c[:, None, None, :3, 3]
    u = p[..., 0] / p[..., 2] * fx[:, 0, None, None, 0] + fx[:, 0, None, None, 2]
    torch.testing.assert_close(u[:, 0, :], ((torch.arange(w) + 0.5) / w).expand(B, w), atol=1e-4, rtol=0)
    torch.testing.assert_close(p[..., 2], out.depth[:, 0], atol=1e-4, rtol=1e-4)


def test_all_times_batch_matches_at_index():
    model = _model()
    with torch.no_grad():
        model.deform_head.weight.normal_(0, 0.05)
        model.deform_norm.mod.weight.normal_(0, 0.05)
    out = _run(model, *_cams(), images=torch.rand(B, F, 3, H, W))
    allg = gaussians_at_all_times(out.gaussians)
    for k in range(3):
        gk = out.gaussians.at_index(k)
        torch.testing.assert_close(allg.means[:, k], gk.means)
        torch.testing.assert_close(allg.quats[:, k], gk.quats)
        torch.testing.assert_close(allg.scales[:, k], gk.scales)
    assert (allg.means[:, 0] - allg.means[:, 2]).abs().max() > 1e-4


def test_means_only_deformation_moves_means_and_keeps_rotation_and_scale():
    """deformation="means" (the ablation): the head predicts Δμ only; with the Δμ rows of a full head copied in, the
    means move exactly as the full model's while rotations and scales stay canonical at every query time."""
    full, means = _model(), _model(deformation="means")
    with torch.no_grad():
        full.deform_head.weight.normal_(0, 0.05)
        full.deform_head.bias.normal_(0, 0.05)
        full.deform_norm.mod.weight.normal_(0, 0.05)
    rows = means.deform_head.out_features
    assert rows * 10 == full.deform_head.out_features * 3  # 3 of the 10 channels per cell
    state = {k: v for k, v in full.state_dict().items() if not k.startswith("deform_head.")}
    state["deform_head.weight"] = full.deform_head.weight[:rows]  # channel-major blocks: Δμ comes first
    state["deform_head.bias"] = full.deform_head.bias[:rows]
    means.load_state_dict(state)
    images, cams = torch.rand(B, F, 3, H, W), _cams()
    a, b = _run(full, *cams, images=images).gaussians, _run(means, *cams, images=images).gaussians
    assert a.delta_means.abs().max() > 1e-3
    torch.testing.assert_close(b.delta_means, a.delta_means)
    assert torch.equal(b.delta_quats, torch.tensor([1.0, 0, 0, 0]).expand_as(b.delta_quats))
    assert torch.count_nonzero(b.delta_log_scales) == 0
    assert (a.delta_quats[..., 0] - 1).abs().max() > 1e-4 and a.delta_log_scales.abs().max() > 1e-3
    allg = gaussians_at_all_times(b)
    torch.testing.assert_close(allg.scales, b.canonical.scales[:, None].expand_as(allg.scales))
    with pytest.raises(ValueError, match="deformation must be"):
        _model(deformation="rotations")


@pytest.mark.parametrize("channels,stride", [(48, 16), (16, 8)])
def test_latent_encoder_shapes(channels, stride):
    model = _model(encoder="latent", latent_channels=channels, latent_stride_s=stride)
    t_lat, frames = 3, 9
    c2w, fx = _cams(frames=frames)
    latents = torch.randn(B, channels, t_lat, H // stride, W // stride)
    out = _run(model, c2w, fx, latents=latents)
    assert out.grid == (frames, H, W) and out.depth.shape == (B, frames, H, W)
    assert out.gaussians.canonical.means.shape == (B, frames * H * W, 3)
    with pytest.raises(ValueError, match="latent frames decode to"):
        _run(model, *_cams(frames=8), latents=latents)


def test_clear_errors():
    model = _model()
    with pytest.raises(ValueError, match="needs images"):
        _run(model, *_cams())
    with pytest.raises(ValueError, match="divisible by patch_size"):
        _run(model, *_cams(), images=torch.rand(B, F, 3, H + 4, W))


def test_pose_encoding_identity():
    enc = pose_encoding(torch.eye(4)[None], torch.tensor([[0.5, 0.5, 0.5, 0.5]]))
    torch.testing.assert_close(enc[0, :7], torch.tensor([0.0, 0, 0, 1, 0, 0, 0]))
    torch.testing.assert_close(enc[0, 7:], torch.full((2,), torch.pi / 2))
