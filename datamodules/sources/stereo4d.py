"""Stereo4D (dynamic, real, YouTube VR180) from the released npz files and user-rectified videos to clips.

Native layout (``reference/datasets.md`` §9; Stereo4d/stereo4d-code ``rectify.py``)::

    <root>/<split>/npz/<uid>.npz                                      uid = <video id>_<first timestamp>
    <root>/<split>/processed/<uid>/<uid>-left_rectified.mp4           written by ``rectify.py --vid=<uid>``

npz keys used: ``timestamps`` (T,) µs in the source video, ``camera2world`` (T,3,4) OpenCV c2w in metres, the ragged
tracks ``track_lengths`` (N,), ``track_indices`` (M,), ``track_coordinates`` (M,3) (dense form:
``tracks = full((N,T,3), NaN); tracks[repeat(arange(N), lengths), track_indices] = track_coordinates``, world
points). ``name``/``video_id`` go to ``meta.extra`` when present; ``rectified2rig`` and ``fov_bounds`` only matter for
rectification, which the video already went through.

Sequence ids are ``<split>/<uid>``; ``list_sequences`` lists the uids that have a ``processed/<uid>`` folder (the
videos come from YouTube, so users rectify a subset; npz files without a video are not sequences). Inside such a
folder, a missing video or npz is a `SourceError`.

What is written per clip: frames, c2w, intrinsics, sparse depth, world tracks. Loss weights 0.2 / 0.2 (depth from
SEA-RAFT stereo, tracks from BootsTAP), dynamic, metric. Decisions:

- **Frame alignment.** ``rectify.py`` extracts one equirect frame per npz timestamp (``clip.get_frame(t / 1e6)``)
  and writes the rectified frames in that order, so video frame i is timestamp i. The converter checks the video's
  frame count against ``len(timestamps)`` and raises `SourceError` on the video when they differ.
- **Intrinsics.** ``rectify.py`` renders a pinhole with ``fx = (W/2) / tan(hfov/2)``, ``hfov`` = 60° by default, and
  principal point (W/2, H/2) with pixel centres at +0.5 (its ray grid is ``arange(W) + 0.5``), i.e. exactly the
  schema's convention: ``fx = 0.5 / tan(30°)``, ``fy = fx W / H``, ``cx = cy = 0.5`` (source option ``hfov_deg`` for
  videos rectified with another ``--output_hfov``).
- **Visibility.** A track entry is visible in a frame when it is present in the npz (not NaN), in front of the camera
  and projects inside the written frame. Entries outside that are NaN in ``tracks_world``, as the schema requires.
- **Track subsampling.** Tracks visible in at least one clip frame are candidates; when there are more than
  the source option ``max_tracks`` (default ``MAX_TRACKS``), a subset is drawn without
  replacement by a generator seeded with the CRC32 of the clip key, kept in native order: the same input always gives
  the same tracks.
- **Depth** is sparse, from projecting *all* visible track entries (not only the kept subset) into their frame:
  pixel (row, col) = (floor(v), floor(u)) in the written frame, the smallest z wins when several land on one pixel
  (MoVieS' ``scatter_reduce(amin)``, with floor instead of MoVieS' round because our pixel centres are at +0.5).
  ``depth_valid`` marks exactly the pixels a track landed on; depth is 0 elsewhere.
- **Timestamps** are the npz timestamps in seconds (µs / 1e6).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from datamodules.frame_codec import decode_video
from datamodules.sources.base import ConvertOptions, SourceError, clip_key, clip_windows
from datamodules.sources.common import check_pose, encode_rgb, resize_rgb, seeded_subset, target_size
from datamodules.spec import Clip, ClipMeta

NAME = "stereo4d"
HFOV_DEG = 60.0  # rectify.py --output_hfov default
MAX_TRACKS = 4096  # per clip
SPLITS = ("train", "test")
OPTIONS = {"max_tracks": MAX_TRACKS, "hfov_deg": HFOV_DEG}  # source options of `python -m datamodules.convert`
_REQUIRED = ("timestamps", "camera2world", "track_lengths", "track_indices", "track_coordinates")


def read_npz(path: Path, sequence: str) -> dict[str, np.ndarray]:
    """The npz arrays the converter uses, checked for shape and consistency (ragged tracks kept ragged).

    Returns timestamps (T,) float64 µs, c2w (T,4,4) float64, track_id (M,) int64, track_frame (M,) int64,
    track_xyz (M,3) float64, and num_tracks (N), plus ``name``/``video_id`` strings when loadable.
    """
    if not path.is_file():
        raise SourceError(sequence, path, "missing npz file")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _REQUIRED if k not in z.files]
            if missing:
                raise SourceError(sequence, path, f"missing keys {missing}")
            d = {k: z[k] for k in _REQUIRED}
            for k in ("name", "video_id"):
                try:
                    d[k] = str(z[k]) if k in z.files else None
                except ValueError:  # stored as a pickled object: informative only
                    d[k] = None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise SourceError(sequence, path, f"unreadable npz ({e})") from e
    ts, c2w = np.asarray(d["timestamps"], np.float64), np.asarray(d["camera2world"], np.float64)
    T = len(ts)
    if ts.ndim != 1 or T < 1:
        raise SourceError(sequence, path, f"timestamps must be (T,), got {ts.shape}")
    if c2w.shape not in ((T, 3, 4), (T, 4, 4)):
        raise SourceError(sequence, path, f"camera2world must be ({T},3,4), got {c2w.shape}")
    if c2w.shape[1] == 3:
        c2w = np.concatenate([c2w, np.broadcast_to([[[0.0, 0.0, 0.0, 1.0]]], (T, 1, 4))], axis=1)
    check_pose(c2w, sequence, path)
    if not (np.isfinite(ts).all() and (np.diff(ts) >= 0).all()):
        raise SourceError(sequence, path, "timestamps must be finite and non-decreasing")
    lengths, frames, xyz = d["track_lengths"], d["track_indices"], d["track_coordinates"]
    if lengths.ndim != 1 or frames.ndim != 1 or xyz.ndim != 2 or xyz.shape[1] != 3 or len(frames) != len(xyz):
        raise SourceError(sequence, path, f"ragged tracks have shapes {lengths.shape}, {frames.shape}, {xyz.shape}")
    if lengths.dtype.kind not in "iu" or frames.dtype.kind not in "iu" or (lengths < 0).any():
        raise SourceError(sequence, path, "track_lengths/track_indices must be non-negative integers")
    if int(lengths.sum()) != len(frames):
        raise SourceError(sequence, path, f"sum(track_lengths) = {int(lengths.sum())} != {len(frames)} entries")
    if len(frames) and (frames.min() < 0 or frames.max() >= T):
        raise SourceError(sequence, path, f"track_indices outside 0..{T - 1}")
    return dict(
        timestamps=ts,
        c2w=c2w,
        track_id=np.repeat(np.arange(len(lengths)), lengths),
        track_frame=frames.astype(np.int64),
        track_xyz=xyz.astype(np.float64),
        num_tracks=len(lengths),
        name=d["name"],
        video_id=d["video_id"],
    )


def read_video(path: Path, sequence: str) -> np.ndarray:
    """All frames of an mp4 -> (T,H,W,3) uint8."""
    if not path.is_file():
        raise SourceError(sequence, path, "missing rectified video")
    try:
        frames = decode_video(path.read_bytes())
    except Exception as e:  # decord and PyAV raise their own error types for corrupt input
        raise SourceError(sequence, path, f"video does not decode ({type(e).__name__}: {e})") from e
    if frames.ndim != 4 or frames.shape[0] == 0 or frames.shape[-1] != 3:
        raise SourceError(sequence, path, f"decoded to shape {frames.shape}")
    return frames


def intrinsics(height: int, width: int, hfov_deg: float = HFOV_DEG) -> np.ndarray:
    """Normalised (fx, fy, cx, cy) of the rectified pinhole: fx = 0.5 / tan(hfov / 2), square pixels, centred."""
    fx = 0.5 / np.tan(np.deg2rad(hfov_deg) / 2)
    return np.array([fx, fx * width / height, 0.5, 0.5])


def project_entries(xyz: np.ndarray, w2c: np.ndarray, fxfycxcy: np.ndarray, height: int, width: int):
    """Project world points, each with its own camera: xyz (M,3), w2c (M,4,4) -> u, v (M,) pixels, z (M,), visible (M,).

    visible = finite, z > 0 and 0 <= u < width, 0 <= v < height (pixel centres at +0.5)."""
    p = np.einsum("mij,mj->mi", w2c[:, :3, :3], xyz) + w2c[:, :3, 3]
    z = p[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = (p[:, 0] / z * fxfycxcy[0] + fxfycxcy[2]) * width
        v = (p[:, 1] / z * fxfycxcy[1] + fxfycxcy[3]) * height
        visible = np.isfinite(p).all(-1) & (z > 1e-6) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    return u, v, z, visible


# --------------------------------------------------------------------------------------------------- the converter


def list_sequences(root: Path, split: str) -> list[str]:
    """``<split>/<uid>`` ids: the folders of ``root/split/processed`` (uids with a rectified video)."""
    if split not in SPLITS:
        raise ValueError(f"stereo4d has splits {SPLITS}, got {split!r}")
    base = Path(root) / split / "processed"
    if not base.is_dir():
        return []
    return [f"{split}/{d.name}" for d in sorted(base.iterdir()) if d.is_dir()]


def convert_sequence(root: Path, sequence: str, opts: ConvertOptions) -> Iterator[Clip]:
    """The clips of one ``<split>/<uid>`` sequence; `SourceError` names the first bad file."""
    parts = sequence.split("/")
    if len(parts) != 2:
        raise SourceError(sequence, sequence, "sequence id must be <split>/<uid>")
    split, uid = parts
    npz_path = Path(root) / split / "npz" / f"{uid}.npz"
    video_path = Path(root) / split / "processed" / uid / f"{uid}-left_rectified.mp4"
    src = opts.source_options
    done = opts.done_keys
    max_tracks = int(src.get("max_tracks", MAX_TRACKS))
    hfov = float(src.get("hfov_deg", HFOV_DEG))
    data = read_npz(npz_path, sequence)
    T = len(data["timestamps"])
    windows = [w for w in clip_windows(T, opts) if clip_key(sequence, w[0]) not in done]
    if not windows:
        return
    video = read_video(video_path, sequence)
    if len(video) != T:
        raise SourceError(sequence, video_path, f"{len(video)} frames but the npz has {T} timestamps")
    H0, W0 = video.shape[1:3]
    H, W = target_size(H0, W0, opts.max_side)
    K = intrinsics(H0, W0, hfov)
    c2w = data["c2w"]
    w2c = np.linalg.inv(c2w)

    for window in windows:
        F = len(window)
        key = clip_key(sequence, window[0])
        slot = np.full(T, -1)
        slot[window] = np.arange(F)
        sel = slot[data["track_frame"]] >= 0
        tid, fpos, xyz = data["track_id"][sel], slot[data["track_frame"][sel]], data["track_xyz"][sel]
        u, v, z, vis = project_entries(xyz, w2c[window][fpos], K, H, W)

        # sparse depth: the nearest visible entry per pixel
        depth = np.full(F * H * W, np.inf)
        flat = (fpos[vis] * H + np.floor(v[vis]).astype(np.int64)) * W + np.floor(u[vis]).astype(np.int64)
        np.minimum.at(depth, flat, z[vis])
        depth = depth.reshape(F, H, W)
        depth_valid = np.isfinite(depth)
        depth = np.where(depth_valid, depth, 0.0).astype(np.float32)

        candidates = np.unique(tid[vis])
        kept = seeded_subset(candidates, max_tracks, key) if len(candidates) > max_tracks else candidates
        take = vis & np.isin(tid, kept)
        col = np.searchsorted(kept, tid[take])
        tracks = np.full((F, len(kept), 3), np.nan, np.float32)
        tracks[fpos[take], col] = xyz[take]
        visible = np.zeros((F, len(kept)), bool)
        visible[fpos[take], col] = True

        extra = {
            "native_frames": [window[0], window[-1]],
            "stride": opts.stride,
            "hfov_deg": hfov,
            "num_tracks_visible": int(len(candidates)),
            "video_id": data["video_id"],
            "name": data["name"],
        }
        yield Clip(
            key=key,
            frames=encode_rgb([resize_rgb(video[i], (H, W)) for i in window], opts),
            c2w=c2w[window],
            fxfycxcy=np.tile(K, (F, 1)),
            timestamps=data["timestamps"][window] / 1e6,
            meta=ClipMeta.for_dataset(NAME, sequence, extra=extra),
            depth=depth,
            depth_valid=depth_valid,
            tracks_world=tracks,
            tracks_visible=visible,
        )
