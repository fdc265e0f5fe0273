"""Spring (dynamic, synthetic Blender movie, stereo) from its distributed layout to clips.

Native layout (``reference/datasets.md`` §8), one sequence per scene, left camera only::

    <root>/<split>/<scene>/frame_left/frame_left_0001.png           1-based, 1920x1080
    <root>/<split>/<scene>/disp1_left/disp1_left_0001.dsp5          HDF5 'disparity' (2H, 2W), NaN = unknown
    <root>/<split>/<scene>/flow_FW_left/flow_FW_left_0001.flo5      HDF5 'flow' (2H, 2W, 2), frames 1..T-1
    <root>/<split>/<scene>/cam_data/intrinsics.txt                  one row per frame: fx fy cx cy (pixels)
    <root>/<split>/<scene>/cam_data/extrinsics.txt                  one row per frame: 16 floats, w2c row-major

Sequence ids are ``<split>/<scene>`` (e.g. ``train/0001``). The test split ships images and cameras only; its clips
have no depth and no flow (a split without the ``disp1_left`` / ``flow_FW_left`` folder, not a missing file).

What is written per clip: frames, OpenCV c2w = inverse of the extrinsics rows, normalised intrinsics
``(fx/W, fy/H, cx/W, cy/H)``, metric z-depth ``fx * 0.065 / disparity`` (float32, 0 where invalid) with
``depth_valid`` = finite disparity > 0, and forward flow f -> f+1 (float32, NaN unknown, last frame NaN) when
``opts.stride == 1``. Loss weights 1.0 / 0.0, dynamic.

Decisions on points the sources leave open:

- **Extrinsics convention (open point 3).** cv-stuttgart/spring_utils never reads ``extrinsics.txt``; its camera
  model (flow_library ``inv_project``: X = d (x - cx) / fx, Y = d (y - cy) / fy, Z = d with x the column and y the row)
  is the OpenCV camera frame, and both public converters that use the extrinsics (CUT3R ``preprocess_spring.py``,
  MonST3R ``spring_dataset.py``) invert the 4x4 row and use it as an OpenCV c2w with depth from that same model, then
  fuse views across frames. We do the same. Because a fixture cannot settle a convention, every clip with depth and
  flow records in ``meta.extra["flow_residual_px"]`` the median distance between the shipped flow and the flow the
  depth and poses induce, under this reading (``opencv``) and under the OpenGL reading (``opengl``: camera y, z
  negated). On real data the ``opencv`` value must be the small one (dynamic objects only add a bias to both); check
  the first converted shard before trusting the rest.
- **GT at 2x resolution.** Disparity and flow are subsampled ``[::2, ::2]`` as spring_utils does. Their values are in
  pixels of the 1920x1080 frames (spring_utils' dataloader subsamples without rescaling, and ``depth = fx B / disp``
  uses the frame's fx), so flow is only scaled when we resize the written frames (by W'/W, H'/H).
- **Principal point.** Spring is rendered by Blender, whose centred principal point is W/2 in continuous pixel
  coordinates, i.e. the schema's +0.5 pixel-centre convention; cx, cy are normalised as given.
- **Timestamps** are frame index / 24 s: the Spring open movie runs at 24 fps.
- **Flow with stride.** Flow files describe native f -> f+1; with ``opts.stride > 1`` they do not describe consecutive
  clip frames, and flow is left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from datamodules.sources.base import ConvertOptions, SourceError, clip_key, clip_windows
from datamodules.sources.common import (
    check_pose,
    encode_rgb,
    nan_flow,
    read_rgb,
    resize_flow,
    resize_nearest,
    resize_rgb,
    target_size,
)
from datamodules.spec import Clip, ClipMeta

NAME = "spring"
BASELINE = 0.065  # metres, spring_utils SPRING_BASELINE
FPS = 24.0
SPLITS = ("train", "test")
OPTIONS = {"flow": True}  # source options of `python -m datamodules.convert` (flow=false leaves flow out)


# --------------------------------------------------------------------------------------------------- native readers


def read_rows(path: Path, sequence: str, num_values: int) -> np.ndarray:
    """A whitespace table of one row per frame -> (T, num_values) float64."""
    if not path.is_file():
        raise SourceError(sequence, path, "missing camera file")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != num_values:
            raise SourceError(sequence, path, f"line {n} has {len(parts)} values, expected {num_values}")
        try:
            rows.append([float(p) for p in parts])
        except ValueError as e:
            raise SourceError(sequence, path, f"line {n} is not numeric ({e})") from e
    if not rows:
        raise SourceError(sequence, path, "empty camera file")
    return np.asarray(rows, dtype=np.float64)


def read_hdf5(path: Path, key: str, sequence: str, shape: tuple[int, ...]) -> np.ndarray:
    """Dataset ``key`` of an HDF5 file (``.dsp5``/``.flo5``), checked against ``shape``."""
    import h5py

    if not path.is_file():
        raise SourceError(sequence, path, "missing file")
    try:
        with h5py.File(path, "r") as f:
            if key not in f:
                raise SourceError(sequence, path, f"no {key!r} dataset (keys {sorted(f.keys())})")
            data = f[key][()]
    except (OSError, KeyError, ValueError) as e:
        raise SourceError(sequence, path, f"unreadable HDF5 ({e})") from e
    if data.shape != shape:
        raise SourceError(sequence, path, f"{key} has shape {data.shape}, expected {shape} (2x the frame size)")
    return data


def read_flow(path: Path, sequence: str, native_hw: tuple[int, int]) -> np.ndarray:
    """A ``.flo5`` file subsampled ``[::2, ::2]`` to the frame size -> (H,W,2) float32 pixels, NaN unknown."""
    H, W = native_hw
    return read_hdf5(path, "flow", sequence, (2 * H, 2 * W, 2))[::2, ::2].astype(np.float32)


def flow_residual(
    depth: np.ndarray,
    valid: np.ndarray,
    c2w0: np.ndarray,
    c2w1: np.ndarray,
    fxfycxcy0: np.ndarray,
    fxfycxcy1: np.ndarray,
    flow: np.ndarray,
) -> float:
    """Median |flow - flow induced by depth and cameras| in pixels over valid pixels (NaN if none).

    depth, valid: (H,W) of frame 0; c2w0, c2w1: (4,4); fxfycxcy0/1: (4,); flow: (H,W,2) frame 0 -> frame 1.
    """
    H, W = depth.shape
    uu, vv = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    fx, fy, cx, cy = fxfycxcy0 * [W, H, W, H]
    p = np.stack([(uu - cx) / fx * depth, (vv - cy) / fy * depth, depth], -1)
    rel = np.linalg.inv(c2w1) @ c2w0
    q = p @ rel[:3, :3].T + rel[:3, 3]
    fx1, fy1, cx1, cy1 = fxfycxcy1 * [W, H, W, H]
    with np.errstate(divide="ignore", invalid="ignore"):
        u1, v1 = q[..., 0] / q[..., 2] * fx1 + cx1, q[..., 1] / q[..., 2] * fy1 + cy1
        err = np.hypot(u1 - uu - flow[..., 0], v1 - vv - flow[..., 1])
    ok = valid & (q[..., 2] > 0) & np.isfinite(err)
    return float(np.median(err[ok])) if ok.any() else float("nan")


def _median_residual(depths: list, valids: list, c2w: np.ndarray, fxfycxcy: np.ndarray, flows: list) -> float | None:
    """Median over the clip's frame pairs of `flow_residual` (None when no pair has a valid pixel)."""
    errs = [
        flow_residual(depths[f], valids[f], c2w[f], c2w[f + 1], fxfycxcy[f], fxfycxcy[f + 1], flows[f])
        for f in range(len(flows) - 1)
    ]
    errs = [e for e in errs if np.isfinite(e)]
    return float(np.median(errs)) if errs else None


# --------------------------------------------------------------------------------------------------- the converter


def list_sequences(root: Path, split: str) -> list[str]:
    """``<split>/<scene>`` ids: the scene folders of ``root/split`` that have a ``frame_left`` folder."""
    if split not in SPLITS:
        raise ValueError(f"spring has splits {SPLITS}, got {split!r}")
    base = Path(root) / split
    if not base.is_dir():
        return []
    return [f"{split}/{d.name}" for d in sorted(base.iterdir()) if (d / "frame_left").is_dir()]


def convert_sequence(root: Path, sequence: str, opts: ConvertOptions) -> Iterator[Clip]:
    """The clips of one ``<split>/<scene>`` sequence; `SourceError` names the first bad file."""
    seq_dir = Path(root) / sequence
    if not (seq_dir / "frame_left").is_dir():
        raise SourceError(sequence, seq_dir / "frame_left", "missing frame folder")
    intr_path, extr_path = seq_dir / "cam_data" / "intrinsics.txt", seq_dir / "cam_data" / "extrinsics.txt"
    w2c = read_rows(extr_path, sequence, 16).reshape(-1, 4, 4)
    K = read_rows(intr_path, sequence, 4)
    T = len(w2c)
    if len(K) != T:
        raise SourceError(sequence, intr_path, f"{len(K)} rows but extrinsics.txt has {T}")
    n_images = len(list((seq_dir / "frame_left").glob("frame_left_*.png")))
    if n_images > T:
        raise SourceError(sequence, extr_path, f"{T} rows for {n_images} frames")
    check_pose(w2c, sequence, extr_path)
    c2w = np.linalg.inv(w2c)
    c2w[:, 3] = (0.0, 0.0, 0.0, 1.0)
    disp_dir, flow_dir = seq_dir / "disp1_left", seq_dir / "flow_FW_left"
    with_depth = disp_dir.is_dir()
    done = opts.done_keys
    with_flow = flow_dir.is_dir() and opts.stride == 1 and bool(opts.source_options.get("flow", True))

    native_hw: tuple[int, int] | None = None
    for window in clip_windows(T, opts):
        if clip_key(sequence, window[0]) in done:
            continue
        rgbs, depths, valids, flows = [], [], [], []
        for j, i in enumerate(window):
            n = i + 1  # file names are 1-based
            rgb_path = seq_dir / "frame_left" / f"frame_left_{n:04d}.png"
            rgb = read_rgb(rgb_path, sequence)
            if native_hw is None:
                native_hw = rgb.shape[:2]
            if rgb.shape[:2] != native_hw:
                raise SourceError(sequence, rgb_path, f"frame is {rgb.shape[:2]}, earlier frames are {native_hw}")
            H0, W0 = native_hw
            size = target_size(H0, W0, opts.max_side)
            rgbs.append(resize_rgb(rgb, size))
            if with_depth:
                disp_path = disp_dir / f"disp1_left_{n:04d}.dsp5"
                disp = read_hdf5(disp_path, "disparity", sequence, (2 * H0, 2 * W0))[::2, ::2].astype(np.float64)
                with np.errstate(invalid="ignore"):
                    valid = np.isfinite(disp) & (disp > 0)
                depth = np.zeros(disp.shape, np.float32)
                depth[valid] = K[i, 0] * BASELINE / disp[valid]
                depths.append(resize_nearest(depth, size))
                valids.append(resize_nearest(valid, size))
            if with_flow:
                flow_path = flow_dir / f"flow_FW_left_{n:04d}.flo5"
                last = j == len(window) - 1
                flows.append(nan_flow(size) if last else resize_flow(read_flow(flow_path, sequence, native_hw), size))

        H0, W0 = native_hw
        fxfycxcy = K[window] / [W0, H0, W0, H0]
        extra: dict = {"native_frames": [window[0] + 1, window[-1] + 1], "stride": opts.stride}
        if with_depth and with_flow:
            extra["flow_residual_px"] = {
                name: _median_residual(depths, valids, cams, fxfycxcy, flows)
                for name, cams in (("opencv", c2w[window]), ("opengl", c2w[window] @ np.diag([1.0, -1, -1, 1])))
            }
        yield Clip(
            key=clip_key(sequence, window[0]),
            frames=encode_rgb(rgbs, opts),
            c2w=c2w[window],
            fxfycxcy=fxfycxcy,
            timestamps=np.asarray(window, dtype=np.float64) / FPS,
            meta=ClipMeta.for_dataset(NAME, sequence, extra=extra),
            depth=np.stack(depths) if with_depth else None,
            depth_valid=np.stack(valids) if with_depth else None,
            flow=np.stack(flows) if with_flow else None,
        )
