"""A ground-truth scene for converter tests: analytic geometry, exact cameras, depth, images and world tracks.

The scene is a textured back wall (z = 4), a textured floor (y = 1, OpenCV y down) and a set of world points, some
moving. A camera moves along a smooth path; depth is ray-traced analytically (z-depth of the first plane hit), the
image colour is a function of the world hit point (so views agree), and tracks are the world points over time with
visibility = in front of the camera, inside the image and not behind the nearest surface.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class GroundTruth:
    c2w: np.ndarray  # (F,4,4) float64, OpenCV
    fxfycxcy: np.ndarray  # (F,4) float64, normalised
    K: np.ndarray  # (F,3,3) float64, pixels
    rgb: np.ndarray  # (F,H,W,3) uint8
    depth: np.ndarray  # (F,H,W) float64 z-depth (metres)
    tracks_world: np.ndarray  # (F,N,3) float64
    tracks_visible: np.ndarray  # (F,N) bool
    timestamps: np.ndarray  # (F,) float64 seconds

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.rgb.shape[:3]


def _rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def make_scene(
    num_frames: int = 6,
    height: int = 48,
    width: int = 64,
    fov_x_deg: float = 70.0,
    num_tracks: int = 40,
    dynamic: bool = True,
    seed: int = 0,
    fps: float = 10.0,
) -> GroundTruth:
    rng = np.random.default_rng(seed)
    f = num_frames
    fx = 0.5 / np.tan(np.deg2rad(fov_x_deg) / 2)  # normalised by W
    fy = fx * width / height  # square pixels
    cx, cy = 0.5 + 0.01 * rng.standard_normal(), 0.5 + 0.01 * rng.standard_normal()
    fxfycxcy = np.tile([fx, fy, cx, cy], (f, 1))
    K = np.zeros((f, 3, 3))
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = fx * width, fy * height, cx * width, cy * height, 1

    c2w = np.tile(np.eye(4), (f, 1, 1))
    s = np.linspace(0, 1, f)
    for i in range(f):
        c2w[i, :3, :3] = _rot_y(0.15 * s[i] - 0.05) @ _rot_x(0.05 * np.sin(3 * s[i]))
        c2w[i, :3, 3] = [0.4 * s[i] - 0.2, -0.05 * s[i], 0.3 * s[i]]

    # ray-trace: rays through pixel centres
    u = (np.arange(width) + 0.5) / width
    v = (np.arange(height) + 0.5) / height
    uu, vv = np.meshgrid(u, v)
    rgb = np.zeros((f, height, width, 3), np.uint8)
    depth = np.zeros((f, height, width))
    for i in range(f):
        d_cam = np.stack([(uu - cx) / fx, (vv - cy) / fy, np.ones_like(uu)], -1)  # z = 1
        R, o = c2w[i, :3, :3], c2w[i, :3, 3]
        d_w = d_cam @ R.T
        t_wall = (4.0 - o[2]) / d_w[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            t_floor = np.where(d_w[..., 1] > 1e-9, (1.0 - o[1]) / d_w[..., 1], np.inf)
        t = np.minimum(np.where(t_wall > 0, t_wall, np.inf), np.where(t_floor > 0, t_floor, np.inf))
        p = o + t[..., None] * d_w
        depth[i] = t  # d_cam has z = 1, so the ray parameter is the z-depth
        checker = ((np.floor(p[..., 0] * 4) + np.floor(p[..., 1] * 4) + np.floor(p[..., 2] * 4)) % 2).astype(float)
        base = np.stack(
            [0.5 + 0.4 * np.sin(2 * p[..., 0]), 0.5 + 0.4 * np.cos(3 * p[..., 1]), 0.5 + 0.4 * np.sin(p[..., 2])], -1
        )
        rgb[i] = np.clip(255 * (0.6 * base + 0.4 * checker[..., None]), 0, 255).astype(np.uint8)

    # world tracks on the wall, some moving
    start = np.stack(
        [rng.uniform(-1.5, 1.5, num_tracks), rng.uniform(-1.0, 0.9, num_tracks), np.full(num_tracks, 3.9)], -1
    )
    vel = rng.normal(0, 0.3, (num_tracks, 3)) * (np.arange(num_tracks) % 2 == 0)[:, None] if dynamic else 0
    vel = np.asarray(vel) * np.array([1, 1, 0])
    tracks = start[None] + s[:, None, None] * vel[None] if dynamic else np.repeat(start[None], f, 0)
    visible = np.zeros((f, num_tracks), bool)
    for i in range(f):
        w2c = np.linalg.inv(c2w[i])
        pc = tracks[i] @ w2c[:3, :3].T + w2c[:3, 3]
        z = pc[:, 2]
        px = (pc[:, 0] / z * fx + cx) * width
        py = (pc[:, 1] / z * fy + cy) * height
        inside = (z > 0) & (px >= 0) & (px < width) & (py >= 0) & (py < height)
        col = np.clip(px.astype(int), 0, width - 1)
        row = np.clip(py.astype(int), 0, height - 1)
        visible[i] = inside & (z <= depth[i, row, col] + 1e-6)
    return GroundTruth(
        c2w=c2w,
        fxfycxcy=fxfycxcy,
        K=K,
        rgb=rgb,
        depth=depth,
        tracks_world=tracks,
        tracks_visible=visible,
        timestamps=np.arange(f) / fps,
    )
