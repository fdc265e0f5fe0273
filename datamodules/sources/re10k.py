"""RealEstate10K: the official camera txt files plus frames the user extracted from the YouTube videos.

Layout (``root`` = the folder given as ``in=``):

- official distribution: poses ``<root>/<split>/<clip>.txt``; frames either
  (a) ``<root>/<split>/frames/<clip>/<timestamp_us>.png`` (or ``.jpg``), one image per txt row named by its timestamp
  (the CUT3R layout), or (b) ``<root>/<split>/videos/<clip>.mp4``, one video per clip;
- CameraCtrl layout (the shared fixture): ``<root>/pose_files/<clip>.txt`` + ``<root>/videos/<clip>.mp4`` (or
  ``<root>/frames/<clip>/``), used when ``<root>/<split>/`` does not exist; ``split`` is then ignored.

A folder of frames wins over a video when both exist. Sequence id = the 16-hex clip id (file stem).

txt format (one clip): line 1 the YouTube URL; then one row per frame with 19 numbers: timestamp (µs since the
start of the video), fx fy cx cy normalised by the image size (top-left corner (0,0), so they are our ``fxfycxcy``
as they are), 2 zeros, and the 3x4 world-to-camera ``[R|t]`` row-major in OpenCV axes. We store
``c2w = inv([R|t; 0 0 0 1])``. Rows must have strictly increasing timestamps; rotations must be orthonormal.

Aligning video frames to rows (option ``video_align``):

- ``pts``: the video is the full YouTube download. For each row the decoded frame whose presentation time (minus the
  stream's start time) is nearest to the row timestamp is taken; a row with no frame within one frame interval is a
  `SourceError`. Decoding seeks to one second before the first timestamp.
- ``index``: the video holds exactly one frame per row, in order (clips cut by CameraCtrl's tools, the fixture).
- ``auto`` (default): ``pts`` when the last timestamp lies inside the video's duration (plus one frame), else
  ``index`` when the frame count equals the row count, else a `SourceError` naming the video.

Scale: ORB-SLAM/bundle adjustment per clip, arbitrary, so ``metric_scale=1``, ``depth_unit="arbitrary"`` and
``scale_source="arbitrary"``. No depth, flow, tracks or points: the scene unit comes from the camera heuristic
(`diff4splat.geometry.scale.camera_mean_estimate`). Timestamps are stored in seconds of the source video; ``meta.extra`` keeps the URL and the alignment.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules.sources.base import ConvertOptions, SourceError, clip_key, clip_windows
from datamodules.sources.common import check_pose, encode_rgb, parse_row, read_rgb, resize_rgb, target_size
from datamodules.spec import Clip, ClipMeta

NAME = "re10k"
OPTIONS = {"video_align": ("auto", "pts", "index")}
_IMAGE_EXTS = (".png", ".jpg", ".jpeg")


@dataclass
class PoseFile:
    """One parsed clip txt. F rows."""

    url: str
    timestamps_us: np.ndarray  # (F,) int64, µs since the start of the video
    fxfycxcy: np.ndarray  # (F,4) float64, normalised
    c2w: np.ndarray  # (F,4,4) float64, OpenCV


def read_pose_file(path: Path, sequence: str) -> PoseFile:
    """Parse a RealEstate10K clip txt; any malformed row, NaN or non-rotation is a `SourceError` naming the file."""
    if not path.is_file():
        raise SourceError(sequence, path, "missing pose file")
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
    lines = [ln for ln in lines if ln]
    if len(lines) < 2:
        raise SourceError(sequence, path, f"needs a URL line and at least one frame row, has {len(lines)} lines")
    rows = [parse_row(ln, n, 19, sequence, path) for n, ln in enumerate(lines[1:], start=2)]
    a = np.asarray(rows, dtype=np.float64)
    ts = a[:, 0]
    if not np.isfinite(ts).all() or (ts != np.round(ts)).any() or (np.diff(ts) <= 0).any():
        raise SourceError(sequence, path, "timestamps must be integers (µs), strictly increasing")
    K = a[:, 1:5]
    if not np.isfinite(K).all() or (K[:, :2] <= 0).any():
        raise SourceError(sequence, path, "intrinsics must be finite with fx, fy > 0")
    w2c = np.tile(np.eye(4), (len(a), 1, 1))
    w2c[:, :3, :4] = a[:, 7:19].reshape(-1, 3, 4)
    w2c = check_pose(w2c, sequence, path)
    c2w = np.tile(np.eye(4), (len(a), 1, 1))
    R = w2c[:, :3, :3].transpose(0, 2, 1)
    c2w[:, :3, :3] = R
    c2w[:, :3, 3] = -(R @ w2c[:, :3, 3:])[..., 0]
    return PoseFile(url=lines[0], timestamps_us=ts.astype(np.int64), fxfycxcy=K, c2w=c2w)


def _pose_dir(root: Path, split: str) -> Path:
    if (root / split).is_dir():
        return root / split
    if (root / "pose_files").is_dir():
        return root / "pose_files"
    raise SourceError("*", root, f"no RealEstate10K poses: expected {root / split}/<clip>.txt or {root}/pose_files/")


def _base_dir(root: Path, split: str) -> Path:
    """The folder that holds ``frames/`` and ``videos/`` next to the poses."""
    d = _pose_dir(root, split)
    return d if d.name == split else root


def list_sequences(root: Path, split: str) -> list[str]:
    """Clip ids (txt stems) of ``split``."""
    return sorted(p.stem for p in _pose_dir(Path(root), split).glob("*.txt"))


def _read_frame_folder(folder: Path, timestamps_us: np.ndarray, sequence: str) -> list[np.ndarray]:
    frames = []
    for ts in timestamps_us:
        path = next((folder / f"{ts}{e}" for e in _IMAGE_EXTS if (folder / f"{ts}{e}").is_file()), None)
        if path is None:
            raise SourceError(sequence, folder / f"{ts}.png", "missing frame for this timestamp (.png or .jpg)")
        frames.append(read_rgb(path, sequence))
    return frames


def read_video_frames(path: Path, timestamps_us: np.ndarray, sequence: str, align: str = "auto") -> list[np.ndarray]:
    """One (H,W,3) uint8 frame per timestamp from an mp4, aligned as the module docstring says."""
    import av

    if not path.is_file():
        raise SourceError(sequence, path, "missing video")
    targets = timestamps_us.astype(np.float64) / 1e6
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 30)
            start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
            if stream.duration is not None:
                duration = float(stream.duration * stream.time_base)
            else:
                duration = (container.duration or 0) / 1e6
            mode = align
            if mode == "auto":
                if targets[-1] <= duration + 1.0 / rate:
                    mode = "pts"
                elif stream.frames in (0, len(targets)):
                    mode = "index"
                else:
                    raise SourceError(
                        sequence,
                        path,
                        f"video ({stream.frames} frames, {duration:.2f} s) neither covers the timestamps "
                        f"(last {targets[-1]:.2f} s) nor has one frame per row ({len(targets)})",
                    )
            if mode == "index":
                frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
                if len(frames) != len(targets):
                    raise SourceError(sequence, path, f"has {len(frames)} frames, the pose file {len(targets)} rows")
                return frames
            return _nearest_frames(container, stream, targets, start, rate, sequence, path)
    except SourceError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as e:
        raise SourceError(sequence, path, f"video does not decode ({e})") from e


def _nearest_frames(container, stream, targets, start, rate, sequence, path) -> list[np.ndarray]:
    seek = max(0.0, targets[0] - 1.0) + start
    if seek > start:
        container.seek(int(seek / stream.time_base), stream=stream, backward=True)
    chosen: list[tuple[float, np.ndarray] | None] = [None] * len(targets)
    prev: tuple[float, object] | None = None
    j = 0
    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        t = float(frame.pts * stream.time_base) - start
        while j < len(targets) and t >= targets[j]:
            pick = prev if prev is not None and targets[j] - prev[0] <= t - targets[j] else (t, frame)
            chosen[j] = (pick[0], pick[1].to_ndarray(format="rgb24"))
            j += 1
        if j == len(targets):
            break
        prev = (t, frame)
    while j < len(targets) and prev is not None:
        chosen[j] = (prev[0], prev[1].to_ndarray(format="rgb24"))
        j += 1
    frames = []
    for target, c in zip(targets, chosen, strict=True):
        if c is None or abs(c[0] - target) > 1.0 / rate:
            raise SourceError(sequence, path, f"no frame within one frame interval of timestamp {target:.6f} s")
        frames.append(c[1])
    return frames


def convert_sequence(root: Path, sequence: str, opts: ConvertOptions) -> Iterator[Clip]:
    """Clips of one RealEstate10K clip txt (frames, c2w, fxfycxcy, timestamps; no depth)."""
    root = Path(root)
    base = _base_dir(root, opts.split)
    pose_path = _pose_dir(root, opts.split) / f"{sequence}.txt"
    poses = read_pose_file(pose_path, sequence)
    align = opts.source_options.get("video_align", "auto")
    done = opts.done_keys
    windows = [w for w in clip_windows(len(poses.timestamps_us), opts) if clip_key(sequence, w[0]) not in done]
    if not windows:
        return
    folder, video = base / "frames" / sequence, base / "videos" / f"{sequence}.mp4"
    if folder.is_dir():
        frames = _read_frame_folder(folder, poses.timestamps_us, sequence)
        source = str(folder)
    elif video.is_file():
        frames = read_video_frames(video, poses.timestamps_us, sequence, align)
        source = str(video)
    else:
        raise SourceError(sequence, folder, f"no frames: expected this folder or {video}")
    h, w = frames[0].shape[:2]
    for i, f in enumerate(frames):
        if f.shape != (h, w, 3):
            raise SourceError(sequence, source, f"frame {i} is {f.shape}, frame 0 is {(h, w, 3)}")
    size = target_size(h, w, opts.max_side)
    for idx in windows:
        meta = ClipMeta.for_dataset(
            NAME,
            sequence,
            metric_scale=1.0,
            depth_unit="arbitrary",
            scale_source="arbitrary",
            extra={"url": poses.url, "frames_from": Path(source).name, "native_frames": [int(i) for i in idx]},
        )
        yield Clip(
            key=clip_key(sequence, idx[0]),
            frames=encode_rgb([resize_rgb(frames[i], size) for i in idx], opts),
            c2w=poses.c2w[idx],
            fxfycxcy=poses.fxfycxcy[idx],
            timestamps=poses.timestamps_us[idx].astype(np.float64) / 1e6,
            meta=meta,
        )
