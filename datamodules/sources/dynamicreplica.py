"""DynamicReplica (dynamic, synthetic stereo; Meta) from its released layout to clips.

Native layout (``../shared/reference/datasets.md`` §5; facebookresearch/dynamic_stereo
``notebooks/Dynamic_Replica_demo.ipynb`` and ``datasets/dynamic_stereo_datasets.py``)::

    <root>/<split>/frame_annotations_<split>.jgz     gzip'd JSON list of implicitron FrameAnnotations (+ camera_name,
                                                     flow_*, trajectories); every path is relative to <root>/<split>
    <root>/<split>/<seq>_source_left/images/<seq>_source_left-0000.png
    <root>/<split>/<seq>_source_left/depths/<seq>_source_left_0000.geometric.png   PNG16 whose bits are float16 metres
    <root>/<split>/<seq>_source_left/trajectories/000000.pth                     traj_2d (N,3), traj_3d_world (N,3),
                                                                                 verts_inds_vis (N,), img, instances

``<root>`` may also be the split folder itself. Sequence ids are the annotations' ``sequence_name``.

Decisions:

- **Cameras**: PyTorch3D ``viewpoint.R, T`` -> OpenCV c2w with ``pytorch3d_to_opencv`` (flip x, y; the Meta/CUT3R
  convention, which matches the official loader building ``PerspectiveCameras(R=R, T=T)``; MonST3R's version without
  the flips is wrong). NDC intrinsics -> normalised with ``pytorch3d_intrinsics_to_fxfycxcy`` for both
  ``ndc_isotropic`` and ``ndc_norm_image_bounds``, using ``image.size = [H, W]`` from the annotation.
- **Left camera only** (``CAMERA``), as MoVieS (its DynamicReplica loader reads ``_left`` sequences only).
- **Skipped sequences**: ``8369cb-7_obj`` and ``a7b915-7_obj``, which the official loader skips as bad.
- **Depth**: uint16 PNG bits reinterpreted as float16 metres (as the official ``_load_16big_png_depth``), times
  ``depth.scale_adjustment`` when the annotation sets it; 0 / non-finite = invalid. Stored as float16 (lossless).
- **Tracks**: world tracks are ``traj_3d_world`` (exact mesh vertices; MoVieS unprojected depth at ``track_xy``
  only because its preprocessed files kept 2D tracks). Visible = ``verts_inds_vis`` & finite & projects in front of
  the camera inside the image. Per clip, points visible in >= 2 frames are kept, capped at the source option
  ``max_tracks`` (``OPTIONS``, default ``MAX_TRACKS``) by a generator seeded with the clip key. Clips whose key is in
  ``opts.done_keys`` (CLI resume) are not loaded.
  ``traj_2d`` must agree with the projection of ``traj_3d_world`` (median within ``REPROJECTION_TOL_PX``), else the
  sequence is a ``SourceError``: a guard against a wrong camera convention on real data.
- **.pth loading**: ``torch.load(weights_only=True)``, never ``weights_only=False``. The official devkit and
  co-tracker read every field with ``.numpy()``, i.e. the files hold a dict of tensors, which the safe loader
  accepts; numpy arrays are allow-listed too (``_NUMPY_GLOBALS``) in case some files hold ndarrays. A file that
  needs anything else is a ``SourceError`` instead of being unpickled.
- **Flow is not converted**: the official devkit never decodes ``flow_forward/*.png`` (CUT3R copies the raw arrays;
  only third-party code guesses a float16-bits, u|v side-by-side layout). An unverified decoding would be silently
  wrong flow, so the clips carry none (datasets.md open point 1 stays open until checked on a real file).
- ``masks/`` (foreground) are not converted to ``dynamic_mask``: that they mark exactly the moving objects is not
  stated by the devkit.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy._core.multiarray import _reconstruct

from datamodules.sources.base import ConvertOptions, SourceError, clip_key, clip_windows
from datamodules.sources.common import (
    check_pose,
    frame_bytes,
    read_png16,
    read_rgb,
    resize_nearest,
    select_tracks,
    target_size,
)
from datamodules.spec import Clip, ClipMeta
from diff4splat.geometry.cameras import project_points, pytorch3d_intrinsics_to_fxfycxcy, pytorch3d_to_opencv

NAME = "dynamicreplica"
CAMERA = "left"
BAD_SEQUENCES = frozenset({"8369cb-7_obj", "a7b915-7_obj"})
MAX_TRACKS = 4096
OPTIONS = {"max_tracks": MAX_TRACKS}  # CLI source options (``max_tracks=0``: keep every track)
REPROJECTION_TOL_PX = 2.0


def annotation_file(root: Path, split: str) -> Path:
    """``root/split/frame_annotations_<split>.jgz``, or ``root/frame_annotations_<split>.jgz`` (root = split dir)."""
    root = Path(root)
    name = f"frame_annotations_{split}.jgz"
    return root / name if (root / name).is_file() and not (root / split / name).is_file() else root / split / name


@lru_cache(maxsize=2)
def _load(path: str, mtime_ns: int, size: int) -> dict[str, list[dict[str, Any]]]:
    try:
        with gzip.open(path, "rt", encoding="utf8") as f:
            entries = json.load(f)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError("*", path, f"unreadable annotation file ({e})") from e
    if not isinstance(entries, list):
        raise SourceError("*", path, "expected a JSON list of frame annotations")
    by_seq: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in entries:
        if isinstance(e, dict) and e.get("camera_name", CAMERA) in (CAMERA, None) and "sequence_name" in e:
            by_seq[str(e["sequence_name"])].append(e)
    return dict(by_seq)


def load_annotations(root: Path, split: str) -> tuple[Path, dict[str, list[dict[str, Any]]]]:
    """(path of the .jgz, {sequence_name: left-camera frame annotations}); parsed once per file version."""
    path = annotation_file(root, split)
    if not path.is_file():
        raise SourceError("*", path, "missing annotation file")
    st = path.stat()
    return path, _load(str(path), st.st_mtime_ns, st.st_size)


def list_sequences(root: Path, split: str) -> list[str]:
    """Sorted sequence names of ``split`` that have left-camera frames, without the known-bad ones."""
    if not annotation_file(root, split).is_file():
        return []
    _, by_seq = load_annotations(root, split)
    return sorted(s for s in by_seq if s not in BAD_SEQUENCES)


def read_depth(path: Path, sequence: str, scale: float = 1.0) -> np.ndarray:
    """A DynamicReplica depth PNG (uint16 bits = float16 metres) as (H,W) float16 (float32 when scaled); 0 invalid."""
    d = np.ascontiguousarray(read_png16(path, sequence)).view(np.float16)
    if scale != 1.0:
        d = d.astype(np.float32) * np.float32(scale)
    return np.where(np.isfinite(d) & (d > 0), d, 0).astype(d.dtype)


# numpy arrays unpickle through these; allowing them keeps the safe (weights_only) unpickler usable if a file holds
# ndarrays instead of tensors. The string alias matches pickles written by numpy 1.x.
_NUMPY_GLOBALS = [_reconstruct, (_reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype] + [
    type(np.dtype(t)) for t in (np.bool_, np.uint8, np.int32, np.int64, np.float16, np.float32, np.float64)
]


def read_trajectory(path: Path, sequence: str) -> dict[str, np.ndarray]:
    """One ``trajectories/*.pth``: traj_2d (N,3), traj_3d_world (N,3) float64, verts_inds_vis (N,) bool."""
    if not path.is_file():
        raise SourceError(sequence, path, "missing trajectory file")
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for bad files
        raise SourceError(sequence, path, f"not loadable with weights_only=True ({e})") from e
    if not isinstance(raw, dict) or not {"traj_2d", "traj_3d_world", "verts_inds_vis"} <= set(raw):
        raise SourceError(sequence, path, "expected a dict with traj_2d, traj_3d_world, verts_inds_vis")
    out = {k: np.asarray(raw[k].numpy() if torch.is_tensor(raw[k]) else raw[k]) for k in ("traj_2d", "traj_3d_world")}
    vis = raw["verts_inds_vis"]
    out["verts_inds_vis"] = np.asarray(vis.numpy() if torch.is_tensor(vis) else vis).astype(bool)
    n = out["traj_3d_world"].shape[0] if out["traj_3d_world"].ndim == 2 else -1
    want = {"traj_2d": (n, 3), "traj_3d_world": (n, 3), "verts_inds_vis": (n,)}
    for k, shape in want.items():
        if out[k].shape != shape:
            raise SourceError(sequence, path, f"{k} has shape {out[k].shape}, expected {shape}")
    out["traj_3d_world"] = out["traj_3d_world"].astype(np.float64)
    return out


def cameras(frames: list[dict[str, Any]], sequence: str, file: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(c2w (F,4,4) OpenCV, fxfycxcy (F,4), (H,W)) of a sequence's frame annotations (PyTorch3D NDC cameras)."""
    sizes = {tuple(f.get("image", {}).get("size") or ()) for f in frames}
    if len(sizes) != 1 or len(next(iter(sizes))) != 2:
        raise SourceError(sequence, file, f"image.size must be one [H, W] for all frames, got {sorted(sizes)}")
    H, W = (int(x) for x in next(iter(sizes)))
    R, T, fxfycxcy = [], [], []
    for f in frames:
        vp = f.get("viewpoint") or {}
        try:
            r, t = np.asarray(vp["R"], np.float64), np.asarray(vp["T"], np.float64)
            focal, princ = np.asarray(vp["focal_length"], np.float64), np.asarray(vp["principal_point"], np.float64)
            fmt = vp.get("intrinsics_format", "ndc_norm_image_bounds")
        except (KeyError, TypeError, ValueError) as e:
            raise SourceError(sequence, file, f"frame {f.get('frame_number')}: bad viewpoint ({e})") from e
        if r.shape != (3, 3) or t.shape != (3,) or focal.shape not in ((2,), ()) or princ.shape != (2,):
            raise SourceError(
                sequence,
                file,
                f"frame {f.get('frame_number')}: viewpoint has wrong shapes "
                f"R {r.shape}, T {t.shape}, focal_length {focal.shape}, principal_point {princ.shape}",
            )
        if fmt not in ("ndc_isotropic", "ndc_norm_image_bounds"):
            raise SourceError(sequence, file, f"frame {f.get('frame_number')}: unknown intrinsics_format {fmt!r}")
        focal = np.broadcast_to(focal, (2,)).copy()
        R.append(r)
        T.append(t)
        fxfycxcy.append(pytorch3d_intrinsics_to_fxfycxcy(torch.from_numpy(focal), torch.from_numpy(princ), H, W, fmt))
    R_, T_ = np.stack(R), np.stack(T)
    if not (np.isfinite(R_).all() and np.isfinite(T_).all()):
        bad = np.flatnonzero(~(np.isfinite(R_).all((1, 2)) & np.isfinite(T_).all(1)))
        raise SourceError(
            sequence, file, f"non-finite viewpoint at frame(s) {[frames[i].get('frame_number') for i in bad[:5]]}"
        )
    c2w = pytorch3d_to_opencv(torch.from_numpy(R_), torch.from_numpy(T_)).numpy()
    c2w = check_pose(c2w, sequence, file)
    K = torch.stack(fxfycxcy).numpy()
    if not (np.isfinite(K).all() and (K[:, :2] > 0).all()):
        raise SourceError(sequence, file, "focal lengths must be finite and > 0")
    return c2w, K, (H, W)


def _path(split_dir: Path, entry: dict[str, Any], field: str) -> Path | None:
    v = entry.get(field)
    p = v.get("path") if isinstance(v, dict) else v
    return split_dir / p if p else None


def convert_sequence(root: Path, sequence: str, opts: ConvertOptions) -> Iterator[Clip]:
    """The clips of one DynamicReplica sequence, left camera (frames, c2w, intrinsics, metric depth, world tracks)."""
    jgz, by_seq = load_annotations(root, opts.split)
    if sequence not in by_seq:
        raise SourceError(sequence, jgz, "no left-camera frames for this sequence in the annotation file")
    split_dir = jgz.parent
    frames = sorted(by_seq[sequence], key=lambda f: int(f.get("frame_number", 0)))
    c2w_all, K_all, (H, W) = cameras(frames, sequence, jgz)
    ts = [f.get("frame_timestamp") if f.get("frame_timestamp") is not None else f.get("frame_number") for f in frames]
    try:
        ts = np.asarray(ts, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise SourceError(sequence, jgz, f"frame_timestamp / frame_number not numeric ({e})") from e
    if not (np.isfinite(ts).all() and (np.diff(ts) >= 0).all()):
        raise SourceError(sequence, jgz, "frame timestamps must be finite and increase with frame_number")
    image_paths, depth_paths = [], []
    for f in frames:
        image_paths.append(_path(split_dir, f, "image"))
        depth_paths.append(_path(split_dir, f, "depth"))
        if image_paths[-1] is None or depth_paths[-1] is None:
            raise SourceError(sequence, jgz, f"frame {f.get('frame_number')}: no image or depth path")
    for p in image_paths + depth_paths:
        if not p.is_file():
            raise SourceError(sequence, p, "missing file listed in the annotations")
    traj_paths = [_path(split_dir, f, "trajectories") for f in frames]
    has_tracks = all(p is not None for p in traj_paths)
    max_tracks = int(opts.source_options.get("max_tracks", MAX_TRACKS))
    done = opts.done_keys
    size = target_size(H, W, opts.max_side)

    for idx in clip_windows(len(frames), opts):
        key = clip_key(sequence, int(frames[idx[0]].get("frame_number", idx[0])))
        if key in done:
            continue
        rgbs, depths = [], []
        for i in idx:
            rgb = read_rgb(image_paths[i], sequence)
            if rgb.shape[:2] != (H, W):
                raise SourceError(sequence, image_paths[i], f"image is {rgb.shape[:2]}, annotation says {(H, W)}")
            scale = float((frames[i].get("depth") or {}).get("scale_adjustment") or 1.0)
            d = read_depth(depth_paths[i], sequence, scale)
            if d.shape != (H, W):
                raise SourceError(sequence, depth_paths[i], f"depth is {d.shape}, image is {(H, W)}")
            rgbs.append(rgb)
            depths.append(resize_nearest(d, size))
        c2w, fxfycxcy = c2w_all[idx], K_all[idx]
        tracks = vis = None
        if has_tracks:
            trajs = [read_trajectory(traj_paths[i], sequence) for i in idx]
            n = {t["traj_3d_world"].shape[0] for t in trajs}
            if len(n) != 1:
                raise SourceError(sequence, traj_paths[idx[0]], f"track counts differ across frames: {sorted(n)}")
            world = np.stack([t["traj_3d_world"] for t in trajs])
            uv2d = np.stack([t["traj_2d"][:, :2] for t in trajs]).astype(np.float64)
            proj = project_points(torch.from_numpy(world), torch.from_numpy(c2w), torch.from_numpy(fxfycxcy), H, W)
            visible = np.stack([t["verts_inds_vis"] for t in trajs]) & proj.valid.numpy()
            visible &= np.isfinite(world).all(-1) & np.isfinite(uv2d).all(-1)
            if visible.any():
                err = np.median(np.linalg.norm(proj.uv.numpy() - uv2d, axis=-1)[visible])
                if err > REPROJECTION_TOL_PX:
                    raise SourceError(
                        sequence,
                        traj_paths[idx[0]],
                        f"traj_3d_world projected through the annotated "
                        f"cameras misses traj_2d by {err:.2f} px (median): camera convention mismatch",
                    )
            keep = select_tracks(visible, max_tracks, key)
            tracks = world[:, keep].astype(np.float32)
            vis = visible[:, keep]
            tracks[~vis] = np.nan
        fmt = frames[idx[0]].get("viewpoint", {}).get("intrinsics_format")
        meta = ClipMeta.for_dataset(
            NAME,
            sequence,
            metric_scale=1.0,
            depth_unit="m",
            extra={
                "camera": CAMERA,
                "native_frames": [int(frames[i].get("frame_number", i)) for i in idx],
                "native_size": [W, H],
                "intrinsics_format": fmt,
            },
        )
        yield Clip(
            key=key,
            frames=[frame_bytes(image_paths[i], rgb, size, opts) for i, rgb in zip(idx, rgbs, strict=True)],
            c2w=c2w,
            fxfycxcy=fxfycxcy,
            timestamps=ts[idx],
            meta=meta,
            depth=np.stack(depths),
            tracks_world=tracks,
            tracks_visible=vis,
        )
