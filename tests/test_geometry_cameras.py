"""Cameras: intrinsics, poses, Plücker rays, unprojection / projection and conversions (some on real fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diff4splat.geometry.cameras import (
    K_to_fxfycxcy,
    canonicalize,
    crop_intrinsics,
    fxfycxcy_to_K,
    invert_c2w,
    look_at,
    ned_to_opencv,
    normalize_scene_scale,
    opengl_to_opencv,
    plucker_rays,
    project_points,
    pytorch3d_intrinsics_to_fxfycxcy,
    pytorch3d_to_opencv,
    resize_K,
    transform_points,
    unproject_depth,
)
from diff4splat.geometry.rotations import quat_to_matrix, quat_xyzw_to_wxyz

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def random_pose(seed: int, n: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c2w = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    c2w[:, :3, :3] = quat_to_matrix(torch.randn(n, 4, generator=g, dtype=torch.float64))
    c2w[:, :3, 3] = torch.randn(n, 3, generator=g, dtype=torch.float64) * 3
    return c2w


intr = st.tuples(st.floats(0.3, 3.0), st.floats(0.3, 3.0), st.floats(0.2, 0.8), st.floats(0.2, 0.8))


@settings(max_examples=50, deadline=None)
@given(intr, st.integers(8, 2000), st.integers(8, 2000))
def test_intrinsics_round_trip(f, h, w):
    f = torch.tensor(f, dtype=torch.float64)
    K = fxfycxcy_to_K(f, h, w)
    assert K[0, 0] == pytest.approx(f[0].item() * w) and K[1, 2] == pytest.approx(f[3].item() * h)
    torch.testing.assert_close(K_to_fxfycxcy(K, h, w), f, atol=1e-12, rtol=0)
    # resizing keeps normalised intrinsics: pixel K of the resized image matches
    torch.testing.assert_close(resize_K(K, h, w, 2 * h, 3 * w), fxfycxcy_to_K(f, 2 * h, 3 * w), atol=1e-9, rtol=0)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 20), st.integers(0, 30), st.integers(10, 40), st.integers(10, 40))
def test_crop_intrinsics_matches_pixels(seed, top, left, ch, cw):
    H, W = 64, 80
    g = torch.Generator().manual_seed(seed)
    f = torch.tensor([1.1, 1.3, 0.45, 0.55], dtype=torch.float64)
    c2w = random_pose(seed)[0]
    pts = transform_points(c2w, torch.randn(20, 3, generator=g, dtype=torch.float64) + torch.tensor([0, 0, 4.0]))
    full = project_points(pts, c2w, f, H, W)
    crop = project_points(pts, c2w, crop_intrinsics(f, H, W, top, left, ch, cw), ch, cw)
    torch.testing.assert_close(crop.uv, full.uv - torch.tensor([left, top], dtype=torch.float64), atol=1e-9, rtol=0)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000))
def test_pose_inverse_and_canonicalize(seed):
    c2w = random_pose(seed, 4)
    torch.testing.assert_close(invert_c2w(c2w) @ c2w, torch.eye(4, dtype=torch.float64).expand(4, 4, 4))
    torch.testing.assert_close(invert_c2w(c2w), torch.linalg.inv(c2w))
    can = canonicalize(c2w, ref_index=1)
    torch.testing.assert_close(can[1], torch.eye(4, dtype=torch.float64))
    # relative poses are unchanged
    torch.testing.assert_close(invert_c2w(can[0]) @ can[2], invert_c2w(c2w[0]) @ c2w[2])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000))
def test_unproject_project_round_trip(seed):
    g = torch.Generator().manual_seed(seed)
    H, W = 6, 9
    c2w = random_pose(seed, 2)
    f = torch.tensor([[0.9, 1.2, 0.5, 0.45], [1.4, 1.0, 0.52, 0.5]], dtype=torch.float64)
    depth = torch.rand(2, H, W, generator=g, dtype=torch.float64) * 5 + 0.5
    pts = unproject_depth(depth, c2w, f)  # [2, H, W, 3]
    proj = project_points(pts.reshape(2, -1, 3), c2w, f, H, W)
    jj, ii = torch.meshgrid(torch.arange(W), torch.arange(H), indexing="xy")
    centres = torch.stack([jj + 0.5, ii + 0.5], -1).reshape(-1, 2).double()
    torch.testing.assert_close(proj.uv, centres.expand(2, -1, -1), atol=1e-9, rtol=0)
    torch.testing.assert_close(proj.depth, depth.reshape(2, -1), atol=1e-9, rtol=0)
    assert proj.valid.all()
    # behind the camera and outside the image are invalid
    behind = project_points(
        transform_points(c2w[0], torch.tensor([[0.0, 0.0, -1.0], [50.0, 0.0, 1.0]]).double()), c2w[0], f[0], H, W
    )
    assert not behind.valid.any()


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_plucker_rays_match_brute_force(stride):
    H, W = 8, 12
    c2w = random_pose(3, 2).reshape(1, 2, 4, 4)
    f = torch.tensor([[[0.9, 1.2, 0.5, 0.45], [1.4, 1.0, 0.52, 0.5]]], dtype=torch.float64)
    rays = plucker_rays(c2w, f, H, W, stride=stride)
    h, w = H // stride, W // stride
    assert rays.shape == (1, 2, 6, h, w)
    for v in range(2):
        K = fxfycxcy_to_K(f[0, v], h, w)
        o = c2w[0, v, :3, 3]
        for i in range(h):
            for j in range(w):
                d_cam = torch.linalg.solve(K, torch.tensor([j + 0.5, i + 0.5, 1.0], dtype=torch.float64))
                d = c2w[0, v, :3, :3] @ d_cam
                d = d / d.norm()
                expected = torch.cat([torch.linalg.cross(o, d), d])
                torch.testing.assert_close(rays[0, v, :, i, j], expected, atol=1e-12, rtol=0)


def test_normalize_scene_scale_keeps_metric_factor():
    H, W = 5, 7
    c2w = canonicalize(random_pose(5, 3))
    f = torch.tensor([1.0, 1.0, 0.5, 0.5], dtype=torch.float64).expand(3, 4)
    depth = torch.rand(3, H, W, dtype=torch.float64) * 4 + 1
    valid = torch.rand(3, H, W) > 0.3
    c2w_n, depth_n, scale = normalize_scene_scale(c2w, depth, f, valid)
    pts = unproject_depth(depth_n, c2w_n, f)
    assert pts.norm(dim=-1)[valid].mean().item() == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(c2w_n[:, :3, :3], c2w[:, :3, :3])
    torch.testing.assert_close(c2w_n[:, :3, 3] / scale, c2w[:, :3, 3])
    torch.testing.assert_close(depth_n / scale, depth)


def test_look_at_points_camera_at_target():
    eye = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, -3.0]], dtype=torch.float64)
    c2w = look_at(eye, torch.zeros(2, 3, dtype=torch.float64))
    p = project_points(
        torch.zeros(2, 1, 3, dtype=torch.float64), c2w, torch.tensor([1.0, 1.0, 0.5, 0.5]).double().expand(2, 4), 10, 10
    )
    torch.testing.assert_close(p.uv[:, 0], torch.full((2, 2), 5.0, dtype=torch.float64))
    torch.testing.assert_close(
        c2w[1], torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -3.0], [0, 0, 0, 1]]).double()
    )


def test_pytorch3d_conversion_matches_pytorch3d_projection():
    """A world point projected with PyTorch3D's own formulas (row vectors, +x left, +y up, NDC isotropic) lands on
    the same pixel as with our converted OpenCV camera."""
    g = torch.Generator().manual_seed(0)
    R = quat_to_matrix(torch.randn(4, generator=g, dtype=torch.float64))
    T = torch.tensor([0.2, -0.1, 4.0], dtype=torch.float64)
    H, W = 720, 1280
    focal, pp = torch.tensor([1.8, 1.8], dtype=torch.float64), torch.tensor([0.05, -0.02], dtype=torch.float64)
    X = torch.randn(10, 3, generator=g, dtype=torch.float64) * 0.5
    cam = X @ R + T  # PyTorch3D view transform
    s = min(H, W) / 2
    ndc = focal * cam[:, :2] / cam[:, 2:] + pp  # NDC: +x left, +y up, scaled by min side
    u = W / 2 - ndc[:, 0] * s
    v = H / 2 - ndc[:, 1] * s
    c2w = pytorch3d_to_opencv(R, T)
    f = pytorch3d_intrinsics_to_fxfycxcy(focal, pp, H, W)
    proj = project_points(X, c2w, f, H, W)
    torch.testing.assert_close(proj.uv, torch.stack([u, v], -1), atol=1e-9, rtol=0)
    torch.testing.assert_close(proj.depth, cam[:, 2], atol=1e-12, rtol=0)
    f2 = pytorch3d_intrinsics_to_fxfycxcy(focal, pp, H, W, "ndc_norm_image_bounds")
    torch.testing.assert_close(f2, torch.tensor([1.8 / 2, 1.8 / 2, 0.5 - 0.05 / 2, 0.5 + 0.02 / 2]).double())


def test_lego_opengl_cameras_look_at_origin():
    path = FIXTURES / "nerf_synthetic_lego" / "transforms_train.json"
    frames = json.loads(path.read_text())["frames"]
    c2w = opencv = opengl_to_opencv(torch.tensor([f["transform_matrix"] for f in frames], dtype=torch.float64))
    assert len(frames) == 100
    to_origin = torch.nn.functional.normalize(-c2w[:, :3, 3], dim=-1)
    cos = (to_origin * opencv[:, :3, 2]).sum(-1)
    assert cos.min().item() > 0.9999  # every optical axis (+z) passes through the origin
    # and the origin projects to the image centre
    f = torch.tensor([1.0, 1.0, 0.5, 0.5], dtype=torch.float64).expand(100, 4)
    p = project_points(torch.zeros(100, 1, 3, dtype=torch.float64), c2w, f, 800, 800)
    assert (p.uv - 400).abs().max().item() < 5.0 and p.valid.all()
    torch.testing.assert_close(opengl_to_opencv(opencv), c2w.new_tensor([f["transform_matrix"] for f in frames]))


def test_tartanair_ned_axes_on_real_poses():
    """On the real NED pose file: the OpenCV camera's forward (+z), right (+x) and down (+y) axes are the NED body's
    x, y and z axes, so the direction of travel has the same components in both camera frames (permuted)."""
    path = FIXTURES / "tartanair" / "pose_gt.txt"
    a = torch.from_numpy(np.loadtxt(path))
    ned = torch.eye(4, dtype=torch.float64).repeat(len(a), 1, 1)
    ned[:, :3, :3] = quat_to_matrix(quat_xyzw_to_wxyz(a[:, 3:]))
    ned[:, :3, 3] = a[:, :3]
    cv = ned_to_opencv(ned)
    assert len(a) == 734
    torch.testing.assert_close(cv[:, :3, :3].transpose(1, 2) @ cv[:, :3, :3], torch.eye(3).double().expand(734, 3, 3))
    # the travel direction in each camera's own frame
    step_ned = ned[1:, :3, 3] - ned[:-1, :3, 3]
    local_ned = (ned[:-1, :3, :3].transpose(1, 2) @ step_ned[..., None])[..., 0]
    step_cv = cv[1:, :3, 3] - cv[:-1, :3, 3]
    local_cv = (cv[:-1, :3, :3].transpose(1, 2) @ step_cv[..., None])[..., 0]
    torch.testing.assert_close(local_cv, local_ned[:, [1, 2, 0]], atol=1e-12, rtol=0)
    # moving forward in NED (body +x) is moving along +z in OpenCV
    fwd = local_ned[:, 0] > 0
    assert ((local_cv[:, 2] > 0) == fwd).all()
    # identity NED pose -> identity OpenCV pose (world re-labelled like the camera)
    torch.testing.assert_close(ned_to_opencv(torch.eye(4).double()), torch.eye(4).double())
    # the first camera looks along NED body x = (cos yaw, sin yaw, 0) in NED world -> OpenCV world (y, z, x)
    yaw = 2 * torch.atan2(a[0, 5], a[0, 6])
    torch.testing.assert_close(cv[0, :3, 2], torch.stack([torch.sin(yaw), torch.zeros(()).double(), torch.cos(yaw)]))
