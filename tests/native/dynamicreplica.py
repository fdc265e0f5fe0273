"""A tiny DynamicReplica split in the released layout, written from `GroundTruth` scenes.

Per split folder: ``frame_annotations_<split>.jgz`` (gzip'd JSON list of implicitron FrameAnnotations with PyTorch3D
cameras: row-vector ``R``, ``T``, NDC ``focal_length``/``principal_point``), and per sequence and camera
``<seq>_source_<cam>/images/<seq>_source_<cam>-0000.png``, ``depths/<seq>_source_<cam>_0000.geometric.png`` (uint16
PNG whose bits are float16 metres) and ``trajectories/000000.pth`` (torch-saved dict of tensors). Paths in the
annotations are relative to the split folder. The right camera sits 0.1 m to the right of the left one.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from tests.native.pointodyssey import project
from tests.native.scene import GroundTruth

IntrinsicsFormat = Literal["ndc_isotropic", "ndc_norm_image_bounds"]
BASELINE = 0.1


def to_pytorch3d(c2w: np.ndarray, K: np.ndarray, height: int, width: int, fmt: IntrinsicsFormat) -> dict:
    """An OpenCV camera (c2w 4x4, K 3x3 px) as a DynamicReplica ``viewpoint`` (PyTorch3D R, T and NDC intrinsics)."""
    R = c2w[:3, :3] * np.array([-1.0, -1.0, 1.0])  # columns x, y flipped: OpenCV -> PyTorch3D camera axes
    T = -R.T @ c2w[:3, 3]
    s = np.full(2, min(width, height) / 2.0) if fmt == "ndc_isotropic" else np.array([width / 2.0, height / 2.0])
    focal = np.array([K[0, 0], K[1, 1]]) / s
    pp = (np.array([width / 2.0, height / 2.0]) - np.array([K[0, 2], K[1, 2]])) / s
    return {
        "R": R.tolist(),
        "T": T.tolist(),
        "focal_length": focal.tolist(),
        "principal_point": pp.tolist(),
        "intrinsics_format": fmt,
    }


def float16_png(depth: np.ndarray, path: Path) -> None:
    """Write (H,W) metres as a uint16 PNG holding the float16 bits (DynamicReplica's depth encoding)."""
    bits = np.ascontiguousarray(depth.astype(np.float16)).view(np.uint16)
    Image.fromarray(bits).save(path)


def write_sequence(
    split_dir: Path, name: str, gt: GroundTruth, fmt: IntrinsicsFormat = "ndc_isotropic", invalid_block: int = 2
) -> list[dict]:
    """Write both cameras of one sequence under ``split_dir``; return its frame annotations (left, then right).

    The top-left ``invalid_block`` x ``invalid_block`` pixels of every left depth map are 0 (invalid).
    """
    F, H, W = gt.shape
    uv = project(gt)
    entries = []
    for cam in ("left", "right"):
        shift = np.eye(4)
        shift[0, 3] = 0.0 if cam == "left" else BASELINE
        d = Path(f"{name}_source_{cam}")
        for sub in ("images", "depths", "trajectories"):
            (split_dir / d / sub).mkdir(parents=True, exist_ok=True)
        for i in range(F):
            image = d / "images" / f"{name}_source_{cam}-{i:04d}.png"
            depth = d / "depths" / f"{name}_source_{cam}_{i:04d}.geometric.png"
            traj = d / "trajectories" / f"{i:06d}.pth"
            Image.fromarray(gt.rgb[i]).save(split_dir / image)
            z = gt.depth[i].copy()
            if cam == "left":
                z[:invalid_block, :invalid_block] = 0.0
            float16_png(z, split_dir / depth)
            pc_z = (np.linalg.inv(gt.c2w[i]) @ np.c_[gt.tracks_world[i], np.ones(len(uv[i]))].T)[2]
            torch.save(
                {
                    "traj_2d": torch.from_numpy(np.c_[uv[i], pc_z].astype(np.float32)),
                    "traj_3d_world": torch.from_numpy(gt.tracks_world[i].astype(np.float32)),
                    "verts_inds_vis": torch.from_numpy(gt.tracks_visible[i]),
                    "img": torch.from_numpy(gt.rgb[i]),
                    "instances": torch.zeros(len(uv[i])),
                },
                split_dir / traj,
            )
            entries.append(
                {
                    "sequence_name": name,
                    "frame_number": i,
                    "frame_timestamp": float(gt.timestamps[i]),
                    "image": {"path": str(image), "size": [H, W]},
                    "depth": {"path": str(depth), "scale_adjustment": 1.0, "mask_path": None},
                    "mask": {"path": str(d / "masks" / f"{name}_source_{cam}_{i:04d}.png"), "mass": None},
                    "viewpoint": to_pytorch3d(gt.c2w[i] @ shift, gt.K[i], H, W, fmt),
                    "meta": {},
                    "camera_name": cam,
                    "trajectories": {"path": str(traj)},
                    "flow_forward": {"path": str(d / "flow_forward" / f"{name}_source_{cam}_{i:04d}.png")},
                }
            )
    return entries


def write_split(root: Path, split: str, sequences: dict[str, tuple[GroundTruth, IntrinsicsFormat]]) -> Path:
    """Write ``sequences`` ({name: (scene, intrinsics format)}) as ``root/split``; return the split folder."""
    split_dir = Path(root) / split
    split_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, (gt, fmt) in sequences.items():
        entries += write_sequence(split_dir, name, gt, fmt)
    with gzip.open(split_dir / f"frame_annotations_{split}.jgz", "wt", encoding="utf8") as f:
        json.dump(entries, f)
    return split_dir
