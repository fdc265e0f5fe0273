"""A tiny DL3DV scene in the released nerfstudio layout, written from a `GroundTruth` scene.

``transforms.json`` with OpenGL c2w ``transform_matrix``, ``w, h, fl_x, fl_y, cx, cy`` of the full-resolution images
(``factor`` times the scene's size), OPENCV distortion coefficients, frames listed out of order with
``file_path = "images/frame_%05d.png"`` (1-based, as DL3DV), and the PNG frames in ``image_dir`` (``images_4`` for a
960P-style download where the JSON still names ``images/``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.native.scene import GroundTruth

DISTORTION = {"k1": -0.012, "k2": 0.003, "p1": 0.0004, "p2": -0.0002}


def opencv_to_opengl(c2w: np.ndarray) -> np.ndarray:
    """(…,4,4) OpenCV c2w -> OpenGL/nerfstudio c2w (camera y and z axes negated)."""
    out = c2w.copy()
    out[..., :3, 1:3] *= -1
    return out


def write_dl3dv(
    scene_dir: Path, gt: GroundTruth, factor: int = 4, image_dir: str = "images_4", points: np.ndarray | None = None
) -> Path:
    """Write ``gt`` as one DL3DV scene folder; return the path of its ``transforms.json``. ``points`` (P,3): a sparse
    cloud written as nerfstudio's binary ``sparse_pc.ply`` (named by ``ply_file_path``), in the poses' world."""
    scene_dir = Path(scene_dir)
    (scene_dir / image_dir).mkdir(parents=True, exist_ok=True)
    F, H, W = gt.shape
    K = gt.K[0]
    frames = []
    for i in np.random.default_rng(0).permutation(F):
        name = f"frame_{i + 1:05d}.png"
        Image.fromarray(gt.rgb[i]).save(scene_dir / image_dir / name)
        frames.append(
            {
                "file_path": f"images/{name}",
                "transform_matrix": opencv_to_opengl(gt.c2w[i]).tolist(),
                "colmap_im_id": int(i + 1),
            }
        )
    data = {
        "w": W * factor,
        "h": H * factor,
        "fl_x": K[0, 0] * factor,
        "fl_y": K[1, 1] * factor,
        "cx": K[0, 2] * factor,
        "cy": K[1, 2] * factor,
        "camera_model": "OPENCV",
        **DISTORTION,
        "frames": frames,
        "applied_transform": [[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [-0.0, -0.0, -1.0, -0.0]],
    }
    if points is not None:
        from plyfile import PlyData, PlyElement

        v = np.zeros(
            len(points), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
        )
        v["x"], v["y"], v["z"] = np.asarray(points, np.float32).T
        PlyData([PlyElement.describe(v, "vertex")]).write(str(scene_dir / "sparse_pc.ply"))
        data["ply_file_path"] = "sparse_pc.ply"
    path = scene_dir / "transforms.json"
    path.write_text(json.dumps(data, indent=2))
    return path
