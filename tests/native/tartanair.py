"""Write a `GroundTruth` scene as a TartanAir trajectory in its native format.

``<root>/<seq>/image_left/NNNNNN_left.png``, ``depth_left/NNNNNN_left_depth.npy`` (float32 metres, with a sky patch
at 10000 m), ``flow/{a}_{a+1}_flow.npy`` (float32 pixels, from the ground-truth depth and poses of the static scene)
with ``_mask.npy`` (uint8, 1 where the flow leaves the image), ``pose_left.txt`` (NED c2w, ``tx ty tz qx qy qz qw``).
The scene must be static (``make_scene(dynamic=False)``) and 480x640 for the converter's fixed intrinsics check;
``fxfycxcy`` of the scene is ignored by TartanAir (fixed K), so build it with a 90 degree field of view.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.native.scene import GroundTruth

SKY_ROWS = 3  # top rows of every depth map set to the sky value
SKY_DEPTH = 10000.0
# OpenCV camera axes written in NED body axes (columns): x_cv = y_ned, y_cv = z_ned, z_cv = x_ned.
M = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def matrix_to_quat_xyzw(R: np.ndarray) -> np.ndarray:
    """(3,3) rotation -> unit quaternion (x, y, z, w), w >= 0."""
    w = np.sqrt(max(0.0, 1 + R[0, 0] + R[1, 1] + R[2, 2])) / 2
    x = np.sqrt(max(0.0, 1 + R[0, 0] - R[1, 1] - R[2, 2])) / 2
    y = np.sqrt(max(0.0, 1 - R[0, 0] + R[1, 1] - R[2, 2])) / 2
    z = np.sqrt(max(0.0, 1 - R[0, 0] - R[1, 1] + R[2, 2])) / 2
    x = np.copysign(x, R[2, 1] - R[1, 2])
    y = np.copysign(y, R[0, 2] - R[2, 0])
    z = np.copysign(z, R[1, 0] - R[0, 1])
    q = np.array([x, y, z, w])
    return q / np.linalg.norm(q)


def opencv_to_ned(c2w: np.ndarray) -> np.ndarray:
    """Inverse of `ned_to_opencv(convert_world=True)`: OpenCV c2w (4,4) -> NED c2w."""
    T = np.eye(4)
    T[:3, :3] = M
    return T @ c2w @ T.T


def forward_flow(gt: GroundTruth, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """(H,W,2) flow of the static scene from frame a to b and a (H,W) bool of pixels that land outside frame b."""
    F, H, W = gt.shape
    fx, fy, cx, cy = gt.K[a, 0, 0], gt.K[a, 1, 1], gt.K[a, 0, 2], gt.K[a, 1, 2]
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    z = gt.depth[a]
    p = np.stack([(u - cx) / fx * z, (v - cy) / fy * z, z], -1)
    T = np.linalg.inv(gt.c2w[b]) @ gt.c2w[a]
    q = p @ T[:3, :3].T + T[:3, 3]
    ub = q[..., 0] / q[..., 2] * gt.K[b, 0, 0] + gt.K[b, 0, 2]
    vb = q[..., 1] / q[..., 2] * gt.K[b, 1, 1] + gt.K[b, 1, 2]
    flow = np.stack([ub - u, vb - v], -1)
    outside = (ub < 0) | (ub >= W) | (vb < 0) | (vb >= H) | (q[..., 2] <= 0)
    return flow, outside


def write_trajectory(root: Path, gt: GroundTruth, sequence: str = "office/Easy/P000", flow: bool = True) -> Path:
    """Write the left camera of ``gt`` as a native trajectory; returns its folder."""
    d = root / sequence
    for sub in ("image_left", "depth_left") + (("flow",) if flow else ()):
        (d / sub).mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(len(gt.c2w)):
        Image.fromarray(gt.rgb[i]).save(d / "image_left" / f"{i:06d}_left.png")
        depth = gt.depth[i].astype(np.float32)
        depth[:SKY_ROWS] = SKY_DEPTH
        np.save(d / "depth_left" / f"{i:06d}_left_depth.npy", depth)
        ned = opencv_to_ned(gt.c2w[i])
        q = matrix_to_quat_xyzw(ned[:3, :3])
        lines.append(" ".join(f"{v:.18e}" for v in [*ned[:3, 3], *q]))
        if flow and i + 1 < len(gt.c2w):
            f, outside = forward_flow(gt, i, i + 1)
            np.save(d / "flow" / f"{i:06d}_{i + 1:06d}_flow.npy", f.astype(np.float32))
            np.save(d / "flow" / f"{i:06d}_{i + 1:06d}_mask.npy", outside.astype(np.uint8))
    (d / "pose_left.txt").write_text("\n".join(lines) + "\n")
    return d
