"""DL3DV-10K (mostly static, real) from its released nerfstudio layout to clips.

Native layout (``../shared/reference/datasets.md`` §4; DL3DV-10K/Dataset README; map-anything's DL3DV conversion)::

    <root>/[<split>/]<subset 1K..11K>/<64-hex hash>/transforms.json
    <root>/[<split>/]<subset>/<hash>/images*/frame_00001.png ...       distorted frames (images, images_2, _4, _8)

``transforms.json`` (nerfstudio): ``w, h, fl_x, fl_y, cx, cy, k1, k2, p1, p2, camera_model`` and
``frames[{file_path, transform_matrix}]`` with **OpenGL c2w** matrices; a frame may override the intrinsics keys.
Sequence ids are the scene folders relative to the split folder (``1K/<hash>``; ``<hash>`` when there is no subset
level); ``<split>`` is used when ``<root>/<split>`` exists, else ``<root>`` holds the scenes.

Decisions:

- **Poses**: ``transform_matrix`` (3x4 or 4x4) -> OpenCV with ``opengl_to_opencv`` (negate the camera y, z axes),
  kept in DL3DV's world (``applied_transform`` is recorded in ``meta.extra``, not undone: canonicalisation happens at
  load time). COLMAP scale: ``depth_unit="arbitrary"``, ``metric_scale=1``.
- **Which images**: the frame's ``file_path`` when that file exists; else the same file name in the first of
  ``images_2, images_4, images_8`` present (a 960P download holds ``images_4`` while ``file_path`` says ``images/``).
  The folder is chosen once per scene from frame 0, so a later missing frame is an error, not a silent mix; with
  the source option ``skip_missing=true`` the frames whose images exist are converted and the skipped count is logged.
- **Intrinsics**: normalised as ``fl_x / w, fl_y / h, cx / w, cy / h`` with the JSON's ``w, h``. That is right for any
  whole-image downsample of the images ``w, h`` describe (datasets.md open point 4: whether a 960P JSON is rescaled
  does not matter as long as its ``fl``/``c`` and ``w``/``h`` agree). Two guards make a disagreement an error: the
  loaded frames must have the JSON's aspect ratio (within one pixel of rounding), and ``cx / w``, ``cy / h`` must lie
  in (0.25, 0.75).
- **Distortion**: frames are kept as distributed (distorted); the pinhole part is written as intrinsics and
  ``camera_model, k1, k2, p1, p2`` go to ``meta.extra["distortion"]``. Undistorting would need OpenCV (not a
  dependency) and a crop that changes the field of view; DL3DV's coefficients are small, and the Diff4Splat/MoVieS
  loaders also use the pinhole part only. A consumer that wants undistorted frames has the coefficients.
- **Order and time**: frames sorted by the number in their file name; timestamps are those numbers (the extraction
  frame rate is not in the release), ``meta.extra["timestamp_unit"] = "frame"``.
- **Depth**: none native. CUT3R-style MVS depth ``<split folder>_mvs/<hash>.h5`` (dataset ``depth`` (F,H,W), as
  Diff4Splat's loader reads it) is added when that file exists **and** h5py is installed **and** its frame count
  matches; otherwise the clip has no depth and a warning says why (h5py is not a dependency of this project).
- **Scale**: COLMAP units, ``scale_source="arbitrary"`` (`diff4splat.geometry.scale`). The scene's sparse SfM points
  (nerfstudio's ``ply_file_path``, ``sparse_pc.ply``, written in the same world as ``transform_matrix``) go to every
  clip as ``points_world`` (at most `MAX_POINTS`, evenly subsampled), so a clip without MVS depth is normalised from
  the points its input frames see rather than from its cameras.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamodules.sources.base import ConvertOptions, SourceError, clip_key, clip_windows
from datamodules.sources.common import check_pose, frame_bytes, read_rgb, resize_nearest, split_dir, target_size
from datamodules.spec import Clip, ClipMeta
from diff4splat.geometry.cameras import opengl_to_opencv

NAME = "dl3dv"
DOWNSAMPLED_IMAGE_DIRS = ("images_2", "images_4", "images_8")
INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
DISTORTION_KEYS = ("k1", "k2", "p1", "p2")

log = logging.getLogger(__name__)

OPTIONS = {"skip_missing": False}
MAX_POINTS = 20000
_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def list_sequences(root: Path, split: str) -> list[str]:
    """Sorted scene ids (``<subset>/<hash>`` or ``<hash>``) of the folders with a ``transforms.json``."""
    base = split_dir(root, split)
    if not base.is_dir():
        return []
    found = list(base.glob("*/transforms.json")) + list(base.glob("*/*/transforms.json"))
    return sorted(p.parent.relative_to(base).as_posix() for p in found)


def read_transforms(path: Path, sequence: str) -> dict[str, Any]:
    """A nerfstudio ``transforms.json`` as a dict with a non-empty ``frames`` list."""
    if not path.is_file():
        raise SourceError(sequence, path, "missing transforms.json")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(sequence, path, f"unreadable JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list) or not data["frames"]:
        raise SourceError(sequence, path, "expected an object with a non-empty 'frames' list")
    return data


def nerfstudio_poses(frames: list[dict[str, Any]], sequence: str, file: str | Path) -> np.ndarray:
    """(F,4,4) OpenCV c2w from nerfstudio/Blender frames' OpenGL ``transform_matrix`` (3x4 or 4x4)."""
    mats = []
    for i, f in enumerate(frames):
        try:
            m = np.asarray(f["transform_matrix"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise SourceError(sequence, file, f"frame {i}: no numeric transform_matrix ({e})") from e
        if m.shape == (3, 4):
            m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
        if m.shape != (4, 4):
            raise SourceError(sequence, file, f"frame {i}: transform_matrix has shape {m.shape}, expected 4x4 or 3x4")
        mats.append(m)
    c2w = np.stack(mats)
    if np.isfinite(c2w).all():
        c2w[:, 3] = [0.0, 0.0, 0.0, 1.0]  # some exporters write a bottom row that is off by rounding
    c2w = check_pose(c2w, sequence, file)
    return opengl_to_opencv(torch.from_numpy(c2w)).numpy()


def frame_number(file_path: str) -> int:
    """The frame number in a file name (``images/frame_00042.png`` -> 42); -1 when there is none."""
    m = _NUMBER.search(Path(file_path).name)
    return int(m.group(1)) if m else -1


def _image_dir(scene: Path, file_path: str) -> Path | None:
    """The folder the frames are read from: that of ``file_path`` if it exists, else the first downsampled one."""
    direct = scene / file_path
    if direct.is_file():
        return direct.parent
    name = Path(file_path).name
    return next((scene / d for d in DOWNSAMPLED_IMAGE_DIRS if (scene / d / name).is_file()), None)


def _intrinsics(data: dict[str, Any], frame: dict[str, Any], sequence: str, file: Path) -> tuple[np.ndarray, tuple]:
    """(fxfycxcy (4,), (w, h)) of one frame: per-frame keys override the top-level ones."""
    try:
        v = {k: float(frame.get(k, data.get(k))) for k in INTRINSIC_KEYS}
    except (TypeError, ValueError) as e:
        raise SourceError(sequence, file, f"missing or non-numeric intrinsics {INTRINSIC_KEYS} ({e})") from e
    w, h = v["w"], v["h"]
    k = np.array([v["fl_x"] / w, v["fl_y"] / h, v["cx"] / w, v["cy"] / h])
    if not (np.isfinite(k).all() and w > 0 and h > 0 and (k[:2] > 0).all()):
        raise SourceError(sequence, file, f"bad intrinsics {v}")
    if not (0.25 < k[2] < 0.75 and 0.25 < k[3] < 0.75):
        raise SourceError(sequence, file, f"principal point ({v['cx']}, {v['cy']}) does not fit w, h = {w:g}, {h:g}")
    return k, (w, h)


def read_mvs_depth(base: Path, uid: str, num_frames: int, sequence: str) -> np.ndarray | None:
    """(F,H,W) float32 MVS depth from ``<base>_mvs/<uid>.h5`` (dataset ``depth``), or None (with the reason logged)."""
    path = base.parent / f"{base.name}_mvs" / f"{uid}.h5"
    if not path.is_file():
        return None
    try:
        import h5py
    except ImportError:
        log.warning("dl3dv %s: %s exists but h5py is not installed; writing clips without depth", sequence, path)
        return None
    try:
        with h5py.File(path, "r") as f:
            depth = np.asarray(f["depth"], dtype=np.float32)
    except (OSError, KeyError) as e:
        raise SourceError(sequence, path, f"unreadable MVS depth ({e})") from e
    if depth.ndim != 3 or depth.shape[0] != num_frames:
        log.warning(
            "dl3dv %s: %s has shape %s for %d frames; writing clips without depth",
            sequence,
            path,
            depth.shape,
            num_frames,
        )
        return None
    return depth


def read_sparse_points(scene: Path, data: dict[str, Any], sequence: str) -> np.ndarray | None:
    """(P,3) float32 SfM points of ``data["ply_file_path"]`` (relative to the scene folder), at most `MAX_POINTS`
    evenly subsampled; None when transforms.json names no point cloud or the file is absent."""
    name = data.get("ply_file_path")
    if not isinstance(name, str) or not (scene / name).is_file():
        return None
    from plyfile import PlyData

    path = scene / name
    try:
        v = PlyData.read(str(path))["vertex"]
        pts = np.stack([np.asarray(v[c], np.float64) for c in "xyz"], -1)
    except (OSError, KeyError, ValueError) as e:
        raise SourceError(sequence, path, f"unreadable sparse point cloud ({e})") from e
    pts = pts[np.isfinite(pts).all(-1)]
    if len(pts) > MAX_POINTS:
        pts = pts[np.linspace(0, len(pts) - 1, MAX_POINTS).round().astype(np.int64)]
    return pts.astype(np.float32)


def convert_sequence(root: Path, sequence: str, opts: ConvertOptions) -> Iterator[Clip]:
    """The clips of one DL3DV scene (frames, OpenCV c2w, pinhole intrinsics; MVS depth when available)."""
    base = split_dir(root, opts.split)
    scene = base / sequence
    tf_path = scene / "transforms.json"
    data = read_transforms(tf_path, sequence)
    frames = sorted(data["frames"], key=lambda f: (frame_number(str(f.get("file_path", ""))), str(f.get("file_path"))))
    if any(not isinstance(f.get("file_path"), str) for f in frames):
        raise SourceError(sequence, tf_path, "every frame needs a file_path")
    c2w_all = nerfstudio_poses(frames, sequence, tf_path)
    K, sizes = zip(*(_intrinsics(data, f, sequence, tf_path) for f in frames), strict=True)
    K_all = np.stack(K)
    image_dir = _image_dir(scene, frames[0]["file_path"])
    if image_dir is None:
        raise SourceError(
            sequence, scene / frames[0]["file_path"], f"missing image (also not in {DOWNSAMPLED_IMAGE_DIRS})"
        )
    paths = [image_dir / Path(f["file_path"]).name for f in frames]
    present = [i for i, p in enumerate(paths) if p.is_file()]
    if len(present) < len(paths):
        first_missing = next(p for p in paths if not p.is_file())
        if not opts.source_options.get("skip_missing", False):
            raise SourceError(
                sequence,
                first_missing,
                f"missing image listed in transforms.json ({len(paths) - len(present)} of {len(paths)} missing; "
                "pass skip_missing=true to convert the frames that exist)",
            )
        log.warning(
            "dl3dv %s: skipped %d of %d frames whose images are missing (first: %s)",
            sequence,
            len(paths) - len(present),
            len(paths),
            first_missing,
        )
    numbers = np.array([frame_number(f["file_path"]) for f in frames], dtype=np.float64)
    depth_all = read_mvs_depth(base, Path(sequence).name, len(frames), sequence)
    points = read_sparse_points(scene, data, sequence)
    if len(present) < len(paths):
        frames, paths, sizes = [frames[i] for i in present], [paths[i] for i in present], [sizes[i] for i in present]
        c2w_all, K_all, numbers = c2w_all[present], K_all[present], numbers[present]
        depth_all = depth_all[present] if depth_all is not None else None
    distortion = {"camera_model": data.get("camera_model", "OPENCV")}
    distortion.update({k: float(data.get(k, 0.0)) for k in DISTORTION_KEYS})
    extra_common = {"distortion": distortion, "timestamp_unit": "frame", "image_dir": image_dir.name}
    if "applied_transform" in data:
        extra_common["applied_transform"] = data["applied_transform"]

    done = opts.done_keys
    for idx in clip_windows(len(frames), opts):
        key = clip_key(sequence, idx[0])
        if key in done:  # CLI resume: already in a finished shard
            continue
        rgbs = [read_rgb(paths[i], sequence) for i in idx]
        H, W = rgbs[0].shape[:2]
        for i, rgb in zip(idx, rgbs, strict=True):
            w, h = sizes[i]
            if rgb.shape[:2] != (H, W) or abs(H - h * W / w) > 1.0:
                raise SourceError(
                    sequence,
                    paths[i],
                    f"image is {rgb.shape[1]}x{rgb.shape[0]}, which is not {w:g}x{h:g} (transforms.json) downsampled",
                )
        size = target_size(H, W, opts.max_side)
        frames_out = [frame_bytes(paths[i], rgb, size, opts) for i, rgb in zip(idx, rgbs, strict=True)]
        depth = None
        if depth_all is not None:
            dh, dw = depth_all.shape[1:]
            if abs(dh - dw * H / W) > 1.0:
                raise SourceError(
                    sequence, f"{base.name}_mvs/{Path(sequence).name}.h5", f"MVS depth is {dw}x{dh}, frames are {W}x{H}"
                )
            depth = np.stack([resize_nearest(depth_all[i], size) for i in idx])
            depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0).astype(np.float32)
        meta = ClipMeta.for_dataset(
            NAME,
            sequence,
            metric_scale=1.0,
            depth_unit="arbitrary",
            scale_source="arbitrary",
            extra={**extra_common, "native_size": [W, H], "native_frames": [int(numbers[i]) for i in idx]},
        )
        yield Clip(
            key=key,
            frames=frames_out,
            c2w=c2w_all[idx],
            fxfycxcy=K_all[idx],
            timestamps=numbers[idx],
            meta=meta,
            depth=depth,
            points_world=points,
        )
