"""A tiny PointOdyssey sequence in the released layout, written from a `GroundTruth` scene.

Layout and encodings as released (see ``datamodules/sources/pointodyssey.py``): ``rgbs/rgb_%05d.jpg`` (JPEG),
``depths/depth_%05d.png`` (PNG16, ``v = round(depth / 1000 * 65535)``), ``anno.npz`` with ``intrinsics``
(T,3,3) px, **w2c** ``extrinsics`` (T,4,4), ``trajs_2d`` (T,N,2) px (inf where the point is off-screen, as released),
``trajs_3d`` (T,N,3) world, ``visibs`` and ``valids`` (T,N). ``variant="v1"`` writes the v1.0 ``annotations.npz``
with ``visibilities`` in {0, 1, 2} instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from tests.native.scene import GroundTruth


def project(gt: GroundTruth) -> np.ndarray:
    """(F,N,2) pixel coordinates of the GT world tracks (pixel centres at +0.5), NaN behind the camera."""
    w2c = np.linalg.inv(gt.c2w)
    pc = np.einsum("fij,fnj->fni", w2c[:, :3, :3], gt.tracks_world) + w2c[:, None, :3, 3]
    uv = np.einsum("fij,fnj->fni", gt.K, pc)
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = uv[..., :2] / uv[..., 2:]
    uv[pc[..., 2] <= 0] = np.nan
    return uv


def write_pointodyssey(
    seq_dir: Path, gt: GroundTruth, variant: Literal["anno", "v1"] = "anno", invalid_every: int = 7
) -> Path:
    """Write ``gt`` as one PointOdyssey sequence folder; every ``invalid_every``-th track is marked invalid."""
    seq_dir = Path(seq_dir)
    (seq_dir / "rgbs").mkdir(parents=True, exist_ok=True)
    (seq_dir / "depths").mkdir(exist_ok=True)
    F, N = gt.tracks_visible.shape
    for i in range(F):
        Image.fromarray(gt.rgb[i]).save(seq_dir / "rgbs" / f"rgb_{i:05d}.jpg", quality=95)
        v = np.clip(np.round(gt.depth[i] / 1000.0 * 65535.0), 0, 65535).astype(np.uint16)
        Image.fromarray(v).save(seq_dir / "depths" / f"depth_{i:05d}.png")
    uv = project(gt)
    uv[~np.isfinite(uv)] = np.inf
    valids = np.ones((F, N), bool)
    valids[:, ::invalid_every] = False
    arrays = {
        "intrinsics": gt.K.astype(np.float64),
        "extrinsics": np.linalg.inv(gt.c2w).astype(np.float32),
        "trajs_2d": uv.astype(np.float32),
        "trajs_3d": gt.tracks_world.astype(np.float32),
    }
    if variant == "anno":
        np.savez(seq_dir / "anno.npz", visibs=gt.tracks_visible, valids=valids, **arrays)
    else:
        vis = np.where(valids, gt.tracks_visible.astype(np.uint8), 2)
        np.savez(seq_dir / "annotations.npz", visibilities=vis, **arrays)
    return seq_dir
