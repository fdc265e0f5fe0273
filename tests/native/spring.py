"""Write a tiny Spring scene in its native layout from `tests.native.scene` ground truth.

Same names and encodings as the distributed dataset: 1-based ``frame_left_%04d.png``, HDF5 ``.dsp5`` (key
``disparity``) and ``.flo5`` (key ``flow``) at twice the frame resolution with gzip compression as flow_library
writes them, ``cam_data/intrinsics.txt`` (fx fy cx cy per row) and ``cam_data/extrinsics.txt`` (16 floats w2c per
row). The ground truth sits at the ``[::2, ::2]`` sub-pixels; the other three sub-pixels of each 2x2 block hold
different values, so a reader that averages or picks another phase is caught.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from tests.native.scene import GroundTruth
from tests.native.vkitti2 import rigid_flow

BASELINE = 0.065
NAN_BLOCK = (slice(0, 3), slice(0, 5))  # disparity NaN here (unknown)
ZERO_BLOCK = (slice(-2, None), slice(-4, None))  # disparity 0 here (invalid)


def _upsample2(a: np.ndarray, other: np.ndarray) -> np.ndarray:
    """(H,W,...) -> (2H,2W,...) with ``a`` at [::2, ::2] and ``other`` at the three other sub-pixels."""
    up = np.repeat(np.repeat(other, 2, axis=0), 2, axis=1)
    up[::2, ::2] = a
    return up


def _write_h5(path: Path, key: str, data: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset(key, data=data, compression="gzip", compression_opts=9)


def disparity(gt: GroundTruth) -> np.ndarray:
    """(F,H,W) float32 left disparity in frame pixels, with the NaN and zero blocks."""
    F, H, W = gt.shape
    disp = (gt.fxfycxcy[:, 0, None, None] * W * BASELINE / gt.depth).astype(np.float32)
    disp[(slice(None), *NAN_BLOCK)] = np.nan
    disp[(slice(None), *ZERO_BLOCK)] = 0.0
    return disp


def write_spring(root: Path, gt: GroundTruth, split: str = "train", scene: str = "0001", with_gt: bool = True) -> Path:
    """Write ``root/split/scene``; ``with_gt=False`` writes a test-split scene (frames and cameras only)."""
    seq = Path(root) / split / scene
    F, H, W = gt.shape
    for d in ("frame_left", "cam_data") + (("disp1_left", "flow_FW_left") if with_gt else ()):
        (seq / d).mkdir(parents=True, exist_ok=True)
    K = gt.fxfycxcy * [W, H, W, H]
    np.savetxt(seq / "cam_data" / "intrinsics.txt", K, fmt="%.17g")
    np.savetxt(seq / "cam_data" / "extrinsics.txt", np.linalg.inv(gt.c2w).reshape(F, 16), fmt="%.17g")
    disp = disparity(gt)
    flow, inside = rigid_flow(gt)
    flow = np.where(inside[..., None], flow, np.nan).astype(np.float32)
    for f in range(F):
        n = f + 1
        Image.fromarray(gt.rgb[f]).save(seq / "frame_left" / f"frame_left_{n:04d}.png")
        if not with_gt:
            continue
        _write_h5(seq / "disp1_left" / f"disp1_left_{n:04d}.dsp5", "disparity", _upsample2(disp[f], disp[f] * 1.07))
        if f < F - 1:
            _write_h5(seq / "flow_FW_left" / f"flow_FW_left_{n:04d}.flo5", "flow", _upsample2(flow[f], flow[f] + 0.3))
    return seq
