"""PointOdyssey (dynamic, synthetic; Blender) from its released layout to clips.

Native layout (``../shared/reference/datasets.md`` §6; aharley/pips2 ``datasets/pointodysseydataset_3d.py``)::

    <root>/<split>/<seq>/rgbs/rgb_00000.jpg ...        960x540 JPEG
    <root>/<split>/<seq>/depths/depth_00000.png ...    PNG16, metres = v / 65535 * 1000
    <root>/<split>/<seq>/anno.npz                      intrinsics (T,3,3) px, extrinsics (T,4,4) w2c (OpenCV),
                                                       trajs_2d (T,N,2) px, trajs_3d (T,N,3) world, visibs, valids (T,N)

``<root>`` may also be the split folder itself. Sequence ids are the folder names under the split folder.

Decisions:

- **v1.0 release** (``annotations.npz`` with ``visibilities`` in {0, 1, 2}): supported, read as pips2 does
  (visible = ``visibilities == 1``; 2 = invalid). ``anno.npz`` wins when both exist.
- **Tracks**: a point is visible in a frame where ``visibs & valids`` (v1.0: ``visibilities == 1``), its world
  position and its ``trajs_2d`` are finite, and it projects in front of the camera inside the image. World tracks
  are ``trajs_3d`` directly (exact), NaN elsewhere. Per clip, points visible in fewer than 2 of its frames are
  dropped and the rest are subsampled to at most the source option ``max_tracks`` (``OPTIONS``, default
  ``MAX_TRACKS``) with a generator seeded by the clip key, so reruns give the same tracks.
- **Track filtering** as MoVieS (reference diff4splat.md §8.5): a sequence with at most ``MIN_TRACKS`` tracks is
  skipped (no clips, a warning), because its motion supervision is useless.
- **Convention guard**: the released ``trajs_2d`` must agree with ``trajs_3d`` projected through our cameras
  (median over visible points within ``REPROJECTION_TOL_PX``); otherwise the sequence is a ``SourceError``. This
  catches a wrong extrinsics convention on real data instead of writing wrong tracks.
- **Depth**: ``v / 65535 * 1000`` metres; ``v == 0`` (no hit) and ``v == 65535`` (clipped at 1000 m, sky) are
  invalid (``depth_valid``).
- **Timestamps**: frame indices (the render frame rate is not in the release); ``meta.extra["timestamp_unit"]``.
- **Resuming**: clips whose key is in ``opts.done_keys`` (CLI) are not loaded.
- **Frames**: the native JPEG bytes are copied unchanged when no resize is asked and the output format is JPEG
  (no second compression); otherwise re-encoded.
- Masks and normals are not converted (the schema's ``dynamic_mask`` needs moving-object masks, which PointOdyssey's
  ``masks/`` does not state it holds).
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from datamodules.sources.base import ConvertOptions, SourceError, clip_key, clip_windows
from datamodules.sources.common import (
    check_pose,
    frame_bytes,
    read_png16,
    read_rgb,
    resize_nearest,
    select_tracks,
    split_dir,
    target_size,
)
from datamodules.spec import Clip, ClipMeta
from diff4splat.geometry.cameras import K_to_fxfycxcy, invert_c2w, project_points

NAME = "pointodyssey"
ANNOTATION_FILES = ("anno.npz", "annotations.npz")  # current release, v1.0 release
DEPTH_MAX_M = 1000.0
MAX_TRACKS = 4096
OPTIONS = {"max_tracks": MAX_TRACKS}  # CLI source options (``max_tracks=0``: keep every track)
MIN_TRACKS = 32
REPROJECTION_TOL_PX = 2.0

log = logging.getLogger(__name__)


def list_sequences(root: Path, split: str) -> list[str]:
    """Sorted names of the sequence folders (those with ``anno.npz`` or ``annotations.npz``) of ``split``."""
    base = split_dir(root, split)
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if p.is_dir() and any((p / f).is_file() for f in ANNOTATION_FILES))


class Annotations:
    """The arrays of one ``anno.npz``: intrinsics (T,3,3) px, w2c (T,4,4), tracks (T,N,·), visible (T,N) bool."""

    def __init__(self, path: Path, sequence: str):
        self.path = path
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise SourceError(sequence, path, f"unreadable annotation archive ({e})") from e
        v1 = "visibilities" in data and "visibs" not in data
        need = ["intrinsics", "extrinsics", "trajs_2d", "trajs_3d"] + (["visibilities"] if v1 else ["visibs", "valids"])
        missing = [k for k in need if k not in data]
        if missing:
            raise SourceError(sequence, path, f"missing arrays {missing}")
        K, w2c = data["intrinsics"], data["extrinsics"]
        t2, t3 = data["trajs_2d"], data["trajs_3d"]
        T = K.shape[0] if K.ndim == 3 else -1
        N = t3.shape[1] if t3.ndim == 3 else -1
        expected = {"intrinsics": (T, 3, 3), "extrinsics": (T, 4, 4), "trajs_2d": (T, N, 2), "trajs_3d": (T, N, 3)}
        expected.update({k: (T, N) for k in need[4:]})
        for k, shape in expected.items():
            if data[k].shape != shape or T < 1:
                raise SourceError(sequence, path, f"{k} has shape {data[k].shape}, expected {shape}")
        if v1:
            visible = data["visibilities"] == 1
        else:
            visible = data["visibs"].astype(bool) & data["valids"].astype(bool)
        self.intrinsics = K.astype(np.float64)
        if not (np.isfinite(self.intrinsics).all() and (self.intrinsics[:, [0, 1], [0, 1]] > 0).all()):
            raise SourceError(sequence, path, "intrinsics must be finite with fx, fy > 0")
        w2c = check_pose(w2c, sequence, path)
        self.c2w = invert_c2w(torch.from_numpy(w2c)).numpy()
        self.trajs_2d = t2
        self.trajs_3d = t3
        fin = np.isfinite(t3).all(-1) & np.isfinite(t2).all(-1)
        self.visible = visible & fin
        self.num_frames, self.num_tracks = T, N


def read_depth(path: Path, sequence: str) -> tuple[np.ndarray, np.ndarray]:
    """A PointOdyssey depth PNG16 as ((H,W) float32 metres ``v / 65535 * 1000``, (H,W) bool valid: 0 < v < 65535)."""
    v = read_png16(path, sequence)
    return v.astype(np.float32) * np.float32(DEPTH_MAX_M / 65535.0), (v > 0) & (v < 65535)


def convert_sequence(root: Path, sequence: str, opts: ConvertOptions) -> Iterator[Clip]:
    """The clips of one PointOdyssey sequence (frames, OpenCV c2w, intrinsics, metric depth, world tracks)."""
    seq_dir = split_dir(root, opts.split) / sequence
    anno_path = next((seq_dir / f for f in ANNOTATION_FILES if (seq_dir / f).is_file()), seq_dir / ANNOTATION_FILES[0])
    if not anno_path.is_file():
        raise SourceError(sequence, anno_path, "missing annotation file (anno.npz or annotations.npz)")
    anno = Annotations(anno_path, sequence)
    T = anno.num_frames
    rgb_paths = [seq_dir / "rgbs" / f"rgb_{i:05d}.jpg" for i in range(T)]
    depth_paths = [seq_dir / "depths" / f"depth_{i:05d}.png" for i in range(T)]
    for p in rgb_paths + depth_paths:
        if not p.is_file():
            raise SourceError(sequence, p, f"missing file ({T} frames in {anno_path.name})")
    if anno.visible.any(0).sum() <= MIN_TRACKS:
        log.warning("pointodyssey %s: at most %d valid tracks, skipped (as MoVieS)", sequence, MIN_TRACKS)
        return
    max_tracks = int(opts.source_options.get("max_tracks", MAX_TRACKS))
    done = opts.done_keys

    for idx in clip_windows(T, opts):
        key = clip_key(sequence, idx[0])
        if key in done:
            continue
        rgbs = [read_rgb(rgb_paths[i], sequence) for i in idx]
        H, W = rgbs[0].shape[:2]
        depths, valids = [], []
        for i, rgb in zip(idx, rgbs, strict=True):
            if rgb.shape[:2] != (H, W):
                raise SourceError(sequence, rgb_paths[i], f"frame size {rgb.shape[:2]} != {(H, W)} of the first frame")
            d, v = read_depth(depth_paths[i], sequence)
            if d.shape != (H, W):
                raise SourceError(sequence, depth_paths[i], f"depth shape {d.shape} != frame size {(H, W)}")
            depths.append(d)
            valids.append(v)
        size = target_size(H, W, opts.max_side)
        c2w = anno.c2w[idx]
        fxfycxcy = K_to_fxfycxcy(torch.from_numpy(anno.intrinsics[idx]), H, W).numpy()

        proj = project_points(
            torch.from_numpy(anno.trajs_3d[idx].astype(np.float64)),
            torch.from_numpy(c2w),
            torch.from_numpy(fxfycxcy),
            H,
            W,
        )
        visible = anno.visible[idx] & proj.valid.numpy()
        if visible.any():
            err = np.linalg.norm(proj.uv.numpy() - anno.trajs_2d[idx], axis=-1)[visible]
            if np.median(err) > REPROJECTION_TOL_PX:
                raise SourceError(
                    sequence,
                    anno_path,
                    f"trajs_3d projected through intrinsics/extrinsics misses "
                    f"trajs_2d by {np.median(err):.2f} px (median): camera convention mismatch",
                )
        keep = select_tracks(visible, max_tracks, key)
        tracks = anno.trajs_3d[idx][:, keep].astype(np.float32)
        vis = visible[:, keep]
        tracks[~vis] = np.nan

        depth = np.stack([resize_nearest(d, size) for d in depths])
        valid = np.stack([resize_nearest(v, size) for v in valids])
        meta = ClipMeta.for_dataset(
            NAME,
            sequence,
            metric_scale=1.0,
            depth_unit="m",
            extra={
                "native_frames": [int(i) for i in idx],
                "timestamp_unit": "frame",
                "native_size": [W, H],
                "annotation_file": anno_path.name,
            },
        )
        yield Clip(
            key=key,
            frames=[frame_bytes(rgb_paths[i], rgb, size, opts) for i, rgb in zip(idx, rgbs, strict=True)],
            c2w=c2w,
            fxfycxcy=fxfycxcy,
            timestamps=np.asarray(idx, dtype=np.float64),
            meta=meta,
            depth=depth,
            depth_valid=valid,
            tracks_world=tracks,
            tracks_visible=vis,
        )
