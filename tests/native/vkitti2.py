"""Write a tiny Virtual KITTI 2 sequence in its native layout from `tests.native.scene` ground truth.

Same file names, encodings, headers and units as the distributed tars: JPEG frames, PNG16 depth in cm with 65535 for
sky, ``extrinsic.txt``/``intrinsic.txt`` with header and interleaved rows for cameras 0 and 1 (w2c row-major,
pixel intrinsics with integer pixel centres, as VKITTI2's ``cx = 620.5`` for 1242 px), and forward flow as
3-channel PNG16 (R = u, G = v, B = valid; ``(2 x / 65535 - 1) (W-1)``). The 16-bit RGB PNG is written by a minimal
encoder here (zlib, filter type 0), independent of the ffmpeg decoder the converter uses.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tests.native.scene import GroundTruth

SKY_ROWS = 2  # top rows of every depth map written as sky (65535)


def write_png16_rgb(path: Path, img: np.ndarray) -> None:
    """(H,W,3) uint16 -> 16-bit RGB PNG (colour type 2, big-endian samples, no interlace)."""
    H, W, _ = img.shape

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    rows = img.astype(">u2").reshape(H, W * 3).view(np.uint8).reshape(H, W * 6)
    raw = np.concatenate([np.zeros((H, 1), np.uint8), rows], axis=1).tobytes()
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 16, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    path.write_bytes(png)


def rigid_flow(gt: GroundTruth) -> tuple[np.ndarray, np.ndarray]:
    """Forward flow f -> f+1 of the static scene geometry: (F-1,H,W,2) pixels and (F-1,H,W) target-in-image mask."""
    F, H, W = gt.shape
    uu, vv = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    flows, inside = [], []
    for f in range(F - 1):
        fx, fy, cx, cy = gt.fxfycxcy[f] * [W, H, W, H]
        p_cam = np.stack([(uu - cx) / fx, (vv - cy) / fy, np.ones_like(uu)], -1) * gt.depth[f][..., None]
        p_w = p_cam @ gt.c2w[f, :3, :3].T + gt.c2w[f, :3, 3]
        w2c = np.linalg.inv(gt.c2w[f + 1])
        q = p_w @ w2c[:3, :3].T + w2c[:3, 3]
        fx1, fy1, cx1, cy1 = gt.fxfycxcy[f + 1] * [W, H, W, H]
        u1, v1 = q[..., 0] / q[..., 2] * fx1 + cx1, q[..., 1] / q[..., 2] * fy1 + cy1
        flows.append(np.stack([u1 - uu, v1 - vv], -1))
        inside.append((q[..., 2] > 0) & (u1 >= 0) & (u1 < W) & (v1 >= 0) & (v1 < H))
    return np.stack(flows), np.stack(inside)


def encode_flow_png(flow: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(H,W,2) pixels + (H,W) valid -> (H,W,3) uint16 RGB in the VKITTI2 flow encoding."""
    H, W = flow.shape[:2]
    u = np.clip(np.round((flow[..., 0] / (W - 1) + 1) * 65535 / 2), 0, 65535)
    v = np.clip(np.round((flow[..., 1] / (H - 1) + 1) * 65535 / 2), 0, 65535)
    return np.stack([u, v, np.where(valid, 65535, 0)], -1).astype(np.uint16)


def _fmt(values: np.ndarray) -> str:
    return " ".join(f"{x:.17g}" for x in values)


def write_vkitti2(
    root: Path,
    gts: tuple[GroundTruth, GroundTruth],
    scene: str = "Scene01",
    variation: str = "clone",
    with_flow: bool = True,
    segmentation_folder: str = "classSegmentation",
) -> Path:
    """Write cameras 0 and 1 (``gts[0]``, ``gts[1]``, same F,H,W) of ``root/scene/variation``; return that folder."""
    seq = Path(root) / scene / variation
    F, H, W = gts[0].shape
    ext = ["frame cameraID r1,1 r1,2 r1,3 t1 r2,1 r2,2 r2,3 t2 r3,1 r3,2 r3,3 t3 0 0 0 1"]
    intr = ["frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]"]
    for f in range(F):
        for cam, gt in enumerate(gts):
            ext.append(f"{f} {cam} " + _fmt(np.linalg.inv(gt.c2w[f]).reshape(-1)))
            fx, fy, cx, cy = gt.fxfycxcy[f] * [W, H, W, H]
            intr.append(f"{f} {cam} " + _fmt(np.array([fx, fy, cx - 0.5, cy - 0.5])))
    seq.mkdir(parents=True, exist_ok=True)
    (seq / "extrinsic.txt").write_text("\n".join(ext) + "\n")
    (seq / "intrinsic.txt").write_text("\n".join(intr) + "\n")
    for cam, gt in enumerate(gts):
        kinds = ("rgb", "depth", segmentation_folder) + (("forwardFlow",) if with_flow else ())
        dirs = {k: seq / "frames" / k / f"Camera_{cam}" for k in kinds}
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        cm = np.clip(np.round(gt.depth * 100), 1, 65534).astype(np.uint16)
        cm[:, :SKY_ROWS] = 65535
        flow, inside = rigid_flow(gt)
        for f in range(F):
            Image.fromarray(gt.rgb[f]).save(dirs["rgb"] / f"rgb_{f:05d}.jpg", quality=95)
            Image.fromarray(cm[f]).save(dirs["depth"] / f"depth_{f:05d}.png")
            Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(dirs[segmentation_folder] / f"classgt_{f:05d}.png")
            if with_flow and f < F - 1:
                write_png16_rgb(dirs["forwardFlow"] / f"flow_{f:05d}.png", encode_flow_png(flow[f], inside[f]))
    return seq
