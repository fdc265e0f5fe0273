"""TartanAir (v1): AirSim renders of static scenes with exact poses, depth and camera-motion optical flow.

Layout: ``<root>/<env>/<Easy|Hard>/P0xx/`` holding ``image_left/NNNNNN_left.png`` (640x480 RGB),
``depth_left/NNNNNN_left_depth.npy`` (float32 metres, z-depth: disparity = 80 / depth), ``flow/{a}_{a+1}_flow.npy``
(float32 (480,640,2) pixels, maps pixel p of frame a to p + flow in frame a+1) with ``flow/{a}_{a+1}_mask.npy`` (uint8,
non-zero on dynamic objects and occlusions), ``pose_left.txt`` (one ``tx ty tz qx qy qz qw`` row per frame:
camera-to-world in NED, x forward, y right, z down), and the same ``_right`` files for the right camera (no flow).
Sequences are found as every folder below ``<root>`` (or ``<root>/<split>`` when such a folder exists, e.g. a MoVieS
style ``TartanAir/{train,test}``) that holds ``pose_left.txt``; the id is its path relative to ``root``
(``abandonedfactory/Easy/P000``). TartanAir has no official train/test split: with no ``<root>/<split>`` folder, every
sequence belongs to ``train`` and any other split is an error.

Decisions:

- Poses: c2w built from (t, q xyzw), then `ned_to_opencv` with ``convert_world=True``: camera axes become OpenCV and
  the world is re-labelled the same way, so world +y is down (gravity) and a camera with the NED identity pose has
  the OpenCV identity pose. Quaternions off unit norm by more than 1e-3 are a `SourceError`.
- Intrinsics are fixed (fx = fy = 320, cx = 320, cy = 240 at 640x480), i.e. ``fxfycxcy = (0.5, 2/3, 0.5, 0.5)``.
- Depth: the sky sphere sits at a large distance (about 10000 m). Depth >= ``sky_depth`` (option, default 1000 m,
  beyond anything a model with zfar 100 reconstructs), non-finite or <= 0 is invalid and stored as 0 (no
  ``depth_valid`` member: the schema's "absent = finite and > 0" then holds). Stored float16, metres.
- Flow: the native forward flow a -> a+1 goes into ``flow`` (float16, pixels at the written resolution) with masked
  pixels set to NaN and the last frame NaN. It exists only for consecutive frames, so it is written only when
  ``stride == 1``, and only when the sequence has a ``flow/`` folder (it is a separate download) and ``flow=true``.
  Right-camera clips have no flow.
- Timestamps: TartanAir gives no frame rate, so timestamps are native frame indices (``meta.extra.timestamp_unit``).
- Option ``camera``: ``left`` (default), ``right``, or ``both`` (right-camera clip keys get ``-right``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from datamodules.sources.base import ConvertOptions, SourceError, clip_key, clip_windows
from datamodules.sources.common import (
    check_pose,
    encode_rgb,
    float16_depth,
    parse_row,
    read_rgb,
    resize_flow,
    resize_nearest,
    resize_rgb,
    target_size,
)
from datamodules.spec import Clip, ClipMeta
from diff4splat.geometry.cameras import ned_to_opencv

NAME = "tartanair"
log = logging.getLogger(__name__)

OPTIONS = {"camera": ("left", "right", "both"), "flow": True, "sky_depth": 1000.0}
WIDTH, HEIGHT = 640, 480
FXFYCXCY = np.array([320.0 / WIDTH, 320.0 / HEIGHT, 320.0 / WIDTH, 240.0 / HEIGHT])


def _split_dir(root: Path, split: str) -> Path:
    if (root / split).is_dir():
        return root / split
    if split == "train":
        return root
    raise SourceError("*", root / split, "TartanAir has no official splits: make this folder or use split=train")


def list_sequences(root: Path, split: str) -> list[str]:
    """Relative paths of the trajectory folders (those holding ``pose_left.txt``)."""
    root = Path(root)
    base = _split_dir(root, split)
    return sorted(str(p.parent.relative_to(root)) for p in base.rglob("pose_left.txt"))


def quat_xyzw_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) unit quaternions (x, y, z, w) -> (..., 3, 3) rotation matrices."""
    x, y, z, w = np.moveaxis(q, -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def read_poses(path: Path, sequence: str) -> np.ndarray:
    """A TartanAir pose txt (NED c2w rows ``tx ty tz qx qy qz qw``) -> (F,4,4) float64 OpenCV c2w."""
    if not path.is_file():
        raise SourceError(sequence, path, "missing pose file")
    rows = []
    for n, ln in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not ln.strip():
            continue
        rows.append(parse_row(ln, n, 7, sequence, path, names="tx ty tz qx qy qz qw"))
    if not rows:
        raise SourceError(sequence, path, "empty pose file")
    a = np.asarray(rows)
    if not np.isfinite(a).all():
        bad = np.where(~np.isfinite(a).all(1))[0]
        raise SourceError(sequence, path, f"non-finite pose at line(s) {(bad + 1)[:5].tolist()}")
    norm = np.linalg.norm(a[:, 3:], axis=1)
    if (np.abs(norm - 1) > 1e-3).any():
        i = int(np.abs(norm - 1).argmax())
        raise SourceError(sequence, path, f"line {i + 1}: quaternion norm {norm[i]:.4f} is not 1")
    ned = np.tile(np.eye(4), (len(a), 1, 1))
    ned[:, :3, :3] = quat_xyzw_to_matrix(a[:, 3:] / norm[:, None])
    ned[:, :3, 3] = a[:, :3]
    c2w = ned_to_opencv(torch.from_numpy(ned), convert_world=True).numpy()
    return check_pose(c2w, sequence, path)


def read_npy(path: Path, sequence: str, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """Load an ``.npy`` of the given shape and dtype kind; missing, truncated or wrong ones are a `SourceError`."""
    if not path.is_file():
        raise SourceError(sequence, path, "missing file")
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise SourceError(sequence, path, f"unreadable .npy ({e})") from e
    if a.shape != shape or a.dtype.kind not in kind:
        raise SourceError(sequence, path, f"expected shape {shape} ({kind}), got {a.shape} {a.dtype}")
    return a


def flow_paths(seq_dir: Path, a: int, b: int) -> tuple[Path, Path]:
    """(flow, mask) files of the native flow a -> b."""
    return seq_dir / "flow" / f"{a:06d}_{b:06d}_flow.npy", seq_dir / "flow" / f"{a:06d}_{b:06d}_mask.npy"


def _frames_in_folder(folder: Path, suffix: str) -> int:
    return len(list(folder.glob(f"*_{suffix}"))) if folder.is_dir() else 0


def convert_sequence(root: Path, sequence: str, opts: ConvertOptions) -> Iterator[Clip]:
    """Clips of one trajectory: frames, OpenCV c2w, fixed intrinsics, depth (metres), forward flow (left camera)."""
    seq_dir = Path(root) / sequence
    src = opts.source_options
    done = opts.done_keys
    camera, sky = src.get("camera", "left"), float(src.get("sky_depth", 1000.0))
    for cam in ("left", "right") if camera == "both" else (camera,):
        yield from _convert_camera(seq_dir, sequence, cam, opts, sky, bool(src.get("flow", True)), done)


def _convert_camera(seq_dir, sequence, cam, opts, sky, use_flow, done) -> Iterator[Clip]:
    c2w = read_poses(seq_dir / f"pose_{cam}.txt", sequence)
    n = len(c2w)
    if _frames_in_folder(seq_dir / f"image_{cam}", f"{cam}.png") != n:
        for i in range(n):
            if not (path := seq_dir / f"image_{cam}" / f"{i:06d}_{cam}.png").is_file():
                raise SourceError(sequence, path, f"missing frame ({n} poses in pose_{cam}.txt)")
        raise SourceError(sequence, seq_dir / f"image_{cam}", f"more images than the {n} poses in pose_{cam}.txt")
    has_depth = (seq_dir / f"depth_{cam}").is_dir()
    if not has_depth:
        log.warning(
            "tartanair %s: no depth_%s/ folder: its clips are written without depth (depth_unit='none', "
            "depth_weight=0)",
            sequence,
            cam,
        )
    has_flow = use_flow and cam == "left" and opts.stride == 1 and (seq_dir / "flow").is_dir()
    key_seq = sequence if cam == "left" else f"{sequence}/right"
    size = target_size(HEIGHT, WIDTH, opts.max_side)
    for idx in clip_windows(n, opts):
        key = clip_key(key_seq, idx[0])
        if key in done:
            continue
        rgb = []
        for i in idx:
            path = seq_dir / f"image_{cam}" / f"{i:06d}_{cam}.png"
            im = read_rgb(path, sequence)
            if im.shape != (HEIGHT, WIDTH, 3):
                raise SourceError(sequence, path, f"expected {HEIGHT}x{WIDTH} RGB, got {im.shape}")
            rgb.append(resize_rgb(im, size))
        depth = None
        if has_depth:
            depth = np.zeros((len(idx), *size), np.float16)
            for k, i in enumerate(idx):
                path = seq_dir / f"depth_{cam}" / f"{i:06d}_{cam}_depth.npy"
                d = resize_nearest(read_npy(path, sequence, (HEIGHT, WIDTH), "f"), size).astype(np.float64)
                depth[k] = float16_depth(d, np.isfinite(d) & (d > 0) & (d < sky))
        flow = None
        if has_flow:
            flow = np.full((len(idx), *size, 2), np.nan, np.float16)
            for k, i in enumerate(idx[:-1]):
                fpath, mpath = flow_paths(seq_dir, i, i + 1)
                f = read_npy(fpath, sequence, (HEIGHT, WIDTH, 2), "f").astype(np.float32)
                m = read_npy(mpath, sequence, (HEIGHT, WIDTH), "uib")
                f[m != 0] = np.nan
                flow[k] = resize_flow(f, size)
        meta = ClipMeta.for_dataset(
            NAME,
            sequence,
            metric_scale=1.0,
            extra={"camera": cam, "timestamp_unit": "frame", "sky_depth": sky},
            **({"depth_unit": "m"} if has_depth else {"depth_unit": "none", "depth_weight": 0.0}),
        )
        yield Clip(
            key=key,
            frames=encode_rgb(rgb, opts),
            c2w=c2w[idx],
            fxfycxcy=np.tile(FXFYCXCY, (len(idx), 1)),
            timestamps=np.asarray(idx, np.float64),
            meta=meta,
            depth=depth,
            flow=flow,
        )
