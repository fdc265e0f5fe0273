"""Virtual KITTI 2 (dynamic, synthetic driving) from its distributed tars to clips.

Native layout (``reference/datasets.md`` §7), one sequence per scene, variation and camera::

    <root>/SceneX/<variation>/intrinsic.txt        header + 2 rows per frame: frame cameraID fx fy cx cy (pixels)
    <root>/SceneX/<variation>/extrinsic.txt        header + 2 rows per frame: frame cameraID + 16 floats (w2c)
    <root>/SceneX/<variation>/frames/rgb/Camera_Z/rgb_%05d.jpg
    <root>/SceneX/<variation>/frames/depth/Camera_Z/depth_%05d.png            PNG16, cm, 65535 = sky
    <root>/SceneX/<variation>/frames/forwardFlow/Camera_Z/flow_%05d.png       3-channel PNG16 (optional tar)

Sequence ids are ``SceneX/<variation>/Camera_Z`` (both cameras are separate sequences). Frame-folder names are
matched case-insensitively because the readme (``classsegmentation``) and the tars (``classSegmentation``) disagree.

What is written per clip: frames, OpenCV c2w = inverse of the extrinsic rows (metres), normalised intrinsics, metric
z-depth (float32) with ``depth_valid`` = not sky (65535) and > 0, forward optical flow when the forwardFlow folder
exists and ``opts.stride == 1`` (consecutive clip frames are then consecutive native frames; with a larger stride
the native flow does not describe f -> f+1 and is left out). Loss weights 1.0 / 0.0 (no tracks), dynamic.

Decisions on points the sources leave open:

- **Principal point convention.** The intrinsic file lists ``cx = 620.5, cy = 187`` for 1242x375 images, which is
  (W-1)/2, (H-1)/2: the image centre when pixel centres sit at integer coordinates (OpenCV). The schema puts pixel
  centres at +0.5, so ``cx_norm = (cx + 0.5) / W`` and ``cy_norm = (cy + 0.5) / H`` (a centred principal point
  stays exactly 0.5).
- **Flow decoding** follows the encoding in datasets.md §7 (Dtananaev/virtual_kitti_geometry): with the PNG read as
  RGB, ``invalid = B == 0``, ``u = (2 R / 65535 - 1) (W - 1)``, ``v = (2 G / 65535 - 1) (H - 1)`` in native pixels.
  Invalid pixels and the last frame of each clip are NaN. Resizing samples the nearest native pixel and scales u by
  W'/W and v by H'/H. 16-bit RGB PNG is decoded with ffmpeg (PyAV) because PIL reduces it to 8 bits.
- **Splits.** VKITTI2 has no official split. Variations of one scene share geometry, so a whole scene is held out:
  ``test`` = Scene02 (all variations, both cameras), ``train`` = every other scene, ``all`` = everything.
- **Timestamps** are native frame index / 10 s: VKITTI2 clones KITTI tracking sequences, recorded at 10 Hz.
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
    read_png16,
    read_rgb,
    resize_flow,
    resize_nearest,
    resize_rgb,
    target_size,
)
from datamodules.spec import Clip, ClipMeta

NAME = "vkitti2"
FPS = 10.0
DEPTH_SKY = 65535  # PNG16 value of the far plane (655.35 m): sky, no geometry
TEST_SCENES = ("Scene02",)
SPLITS = ("train", "test", "all")
OPTIONS = {"flow": True}  # source options of `python -m datamodules.convert` (flow=false leaves flow out)
_PNG_IEND = b"IEND\xae\x42\x60\x82"


# --------------------------------------------------------------------------------------------------- native readers


def find_subdir(parent: Path, name: str) -> Path | None:
    """The child folder of ``parent`` whose name equals ``name`` ignoring case (None if absent)."""
    exact = parent / name
    if exact.is_dir():
        return exact
    if not parent.is_dir():
        return None
    for child in sorted(parent.iterdir()):
        if child.is_dir() and child.name.lower() == name.lower():
            return child
    return None


def read_camera_table(path: Path, sequence: str, camera: int, num_values: int) -> np.ndarray:
    """Rows of one camera from ``intrinsic.txt``/``extrinsic.txt`` -> (T, num_values) float64, frames 0..T-1.

    The file has a header line, then ``frame cameraID v1 .. v{num_values}`` per frame and camera."""
    if not path.is_file():
        raise SourceError(sequence, path, "missing camera file")
    lines = path.read_text().splitlines()
    if not lines or not lines[0].strip().startswith("frame"):
        raise SourceError(sequence, path, "missing header line 'frame cameraID ...'")
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) < 2 or parts[1] != str(camera):
            continue  # the other camera's rows are its own sequence's concern
        if len(parts) != 2 + num_values:
            raise SourceError(sequence, path, f"line {n} has {len(parts)} columns, expected {2 + num_values}")
        try:
            rows.append([float(p) for p in parts])
        except ValueError as e:
            raise SourceError(sequence, path, f"line {n} is not numeric ({e})") from e
    mine = np.asarray(rows, dtype=np.float64).reshape(-1, 2 + num_values)
    if len(mine) == 0:
        raise SourceError(sequence, path, f"no rows for camera {camera}")
    frames = mine[:, 0]
    if not np.array_equal(frames, np.arange(len(mine))):
        raise SourceError(sequence, path, f"camera {camera} frames are not 0..{len(mine) - 1} in order")
    return mine[:, 2:]


def read_depth_png(path: Path, sequence: str) -> tuple[np.ndarray, np.ndarray]:
    """VKITTI2 depth PNG16 (cm) -> (z-depth in metres (H,W) float32 with 0 where invalid, valid (H,W) bool)."""
    raw = read_png16(path, sequence, np.int64)
    valid = (raw > 0) & (raw != DEPTH_SKY)
    depth = np.where(valid, raw / 100.0, 0.0).astype(np.float32)
    return depth, valid


def read_png16_rgb(path: Path, sequence: str) -> np.ndarray:
    """A 3-channel 16-bit PNG -> (H,W,3) uint16 in R, G, B order (ffmpeg's PNG decoder through PyAV)."""
    import av

    if not path.is_file():
        raise SourceError(sequence, path, "missing file")
    data = path.read_bytes()
    # ffmpeg decodes a PNG that lost its tail without complaint; a complete file ends with the IEND chunk
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or not data.endswith(_PNG_IEND):
        raise SourceError(sequence, path, "not a complete PNG (truncated or wrong format)")
    try:
        frames = av.CodecContext.create("png", "r").decode(av.Packet(data))
    except (av.FFmpegError, ValueError) as e:
        raise SourceError(sequence, path, f"PNG does not decode ({e})") from e
    if len(frames) != 1:
        raise SourceError(sequence, path, f"PNG decoded to {len(frames)} frames")
    fmt = frames[0].format.name
    if fmt not in ("rgb48be", "rgb48le"):
        raise SourceError(sequence, path, f"expected a 16-bit RGB PNG, got pixel format {fmt}")
    return frames[0].to_ndarray(format="rgb48le")


def decode_flow_png(img: np.ndarray) -> np.ndarray:
    """VKITTI2 flow PNG pixels (H,W,3) uint16 RGB -> forward flow (H,W,2) float32 in pixels, NaN where invalid."""
    H, W = img.shape[:2]
    x = img.astype(np.float64) * (2.0 / 65535.0) - 1.0
    flow = np.stack([x[..., 0] * (W - 1), x[..., 1] * (H - 1)], axis=-1)
    flow[img[..., 2] == 0] = np.nan
    return flow.astype(np.float32)


def read_flow(path: Path, sequence: str, native_hw: tuple[int, int]) -> np.ndarray:
    """A forward-flow PNG of a ``native_hw`` frame -> (H,W,2) float32 pixels, NaN where invalid."""
    png = read_png16_rgb(path, sequence)
    if png.shape[:2] != native_hw:
        raise SourceError(sequence, path, f"flow is {png.shape[:2]}, frames are {native_hw}")
    return decode_flow_png(png)


# --------------------------------------------------------------------------------------------------- the converter


def list_sequences(root: Path, split: str) -> list[str]:
    """``SceneX/<variation>/Camera_Z`` ids of ``split`` (train = all scenes but Scene02, test = Scene02, all)."""
    if split not in SPLITS:
        raise ValueError(f"vkitti2 has splits {SPLITS} (no official split; test = {TEST_SCENES}), got {split!r}")
    root = Path(root)
    out = []
    for scene in sorted(p for p in root.glob("Scene*") if p.is_dir()):
        if (split == "train" and scene.name in TEST_SCENES) or (split == "test" and scene.name not in TEST_SCENES):
            continue
        for variation in sorted(p for p in scene.iterdir() if p.is_dir()):
            rgb = find_subdir(variation / "frames", "rgb")
            if rgb is None:
                continue
            out += [f"{scene.name}/{variation.name}/{cam.name}" for cam in sorted(rgb.glob("Camera_*")) if cam.is_dir()]
    return out


def convert_sequence(root: Path, sequence: str, opts: ConvertOptions) -> Iterator[Clip]:
    """The clips of one ``SceneX/<variation>/Camera_Z`` sequence; `SourceError` names the first bad file."""
    parts = sequence.split("/")
    if len(parts) != 3 or not parts[2].startswith("Camera_") or not parts[2][7:].isdigit():
        raise SourceError(sequence, sequence, "sequence id must be SceneX/<variation>/Camera_Z")
    seq_dir = Path(root) / parts[0] / parts[1]
    cam_name, camera = parts[2], int(parts[2][7:])
    frames_dir = seq_dir / "frames"
    rgb_dir, depth_dir = find_subdir(frames_dir, "rgb"), find_subdir(frames_dir, "depth")
    if rgb_dir is None or depth_dir is None:
        raise SourceError(sequence, frames_dir, "missing frames/rgb or frames/depth folder")
    src = opts.source_options
    done = opts.done_keys
    flow_dir = find_subdir(frames_dir, "forwardFlow") if src.get("flow", True) else None

    w2c = read_camera_table(seq_dir / "extrinsic.txt", sequence, camera, 16).reshape(-1, 4, 4)
    K = read_camera_table(seq_dir / "intrinsic.txt", sequence, camera, 4)
    if len(K) != len(w2c):
        raise SourceError(sequence, seq_dir / "intrinsic.txt", f"{len(K)} frames but extrinsic.txt has {len(w2c)}")
    n_images = len(list((rgb_dir / cam_name).glob("rgb_*.jpg")))
    if n_images > len(w2c):
        raise SourceError(sequence, seq_dir / "extrinsic.txt", f"{len(w2c)} frames for {n_images} images")
    check_pose(w2c, sequence, seq_dir / "extrinsic.txt")
    c2w = np.linalg.inv(w2c)
    c2w[:, 3] = (0.0, 0.0, 0.0, 1.0)

    native_hw: tuple[int, int] | None = None
    for window in clip_windows(len(w2c), opts):
        key = clip_key(sequence, window[0])
        if key in done:
            continue
        rgbs, depths, valids, flows = [], [], [], []
        with_flow = flow_dir is not None and opts.stride == 1
        for j, i in enumerate(window):
            rgb_path = rgb_dir / cam_name / f"rgb_{i:05d}.jpg"
            rgb = read_rgb(rgb_path, sequence)
            if native_hw is None:
                native_hw = rgb.shape[:2]
            if rgb.shape[:2] != native_hw:
                raise SourceError(sequence, rgb_path, f"frame is {rgb.shape[:2]}, earlier frames are {native_hw}")
            depth_path = depth_dir / cam_name / f"depth_{i:05d}.png"
            depth, valid = read_depth_png(depth_path, sequence)
            if depth.shape != native_hw:
                raise SourceError(sequence, depth_path, f"depth is {depth.shape}, frames are {native_hw}")
            size = target_size(*native_hw, opts.max_side)
            rgbs.append(resize_rgb(rgb, size))
            depths.append(resize_nearest(depth, size))
            valids.append(resize_nearest(valid, size))
            if with_flow:
                flow_path = flow_dir / cam_name / f"flow_{i:05d}.png"
                last = j == len(window) - 1
                flows.append(nan_flow(size) if last else resize_flow(read_flow(flow_path, sequence, native_hw), size))

        H0, W0 = native_hw
        k = K[window]
        fxfycxcy = np.stack([k[:, 0] / W0, k[:, 1] / H0, (k[:, 2] + 0.5) / W0, (k[:, 3] + 0.5) / H0], axis=-1)
        meta = ClipMeta.for_dataset(
            NAME, sequence, extra={"camera": camera, "native_frames": [window[0], window[-1]], "stride": opts.stride}
        )
        yield Clip(
            key=key,
            frames=encode_rgb(rgbs, opts),
            c2w=c2w[window],
            fxfycxcy=fxfycxcy,
            timestamps=np.asarray(window, dtype=np.float64) / FPS,
            meta=meta,
            depth=np.stack(depths),
            depth_valid=np.stack(valids),
            flow=np.stack(flows) if with_flow else None,
        )
