"""MatrixCity (UE5 city renders, static): pose JSONs, PNG frames and EXR depth -> clips in metres.

Layout (``root`` may be ``MatrixCity/``, ``MatrixCity/small_city/`` or ``.../aerial/``; image tars extracted in place):

- pose JSONs ``<city>/<view>/pose/<block>/transforms_<split>.json`` (``view`` = aerial | street): ``camera_angle_x,
  fl_x, fl_y, cx, cy, w, h`` and ``frames[{file_path, transform_matrix}]`` with ``file_path`` relative to the JSON
  (``../../train/block_1/0000.png``, an extension may be missing: ``.png`` is tried). One JSON = one sequence, id = its
  path relative to ``root`` without ``.json``.
- only when no pose JSON of the split exists: the raw per-block ``<city>/<view>/<split>/<block>/transforms.json`` with
  ``camera_angle_x`` and ``frames[{frame_index, rot_mat}]``, images ``<block>/<frame_index:04d>.png`` beside it.
- depth ``<city>_depth/<view>/<split>/<block>_depth/<stem>.exr`` (or ``<split>/<block>_depth/`` beside the block):
  EXR float16 in centimetres, 65504 (float16 max) = sky/invalid. Depth is optional per sequence (found or not for the
  first frame); once found, a missing file is a `SourceError`.

Decisions (datasets.md open point 5 and the MatrixCity scripts ``load_aerial.py``, ``load_street.py``, ``load_data.py``):

- Units: metres. The README gives raw ``rot_mat`` positions in metres with the rotation scaled by 0.01; the scripts
  build the pose JSONs by normalising the rotation and dividing the position by a ``SCALE``, and ``load_data.py``
  turns depth into the pose units by ``cm / 10000`` ("cm -> 100m"), so the distributed pose JSONs are in 100 m units:
  their translation is multiplied by option ``pose_unit_m`` (default 100; set 1 for the "unit-1m" variants). Raw
  ``rot_mat`` translations are used as they are. Depth is ``cm / 100``. Hence ``metric_scale = 1``.
- Rotation blocks: each column is divided by its norm (this undoes the 0.01 of ``rot_mat`` and any other uniform
  scale), ``c2w[3]`` is forced to ``(0, 0, 0, 1)`` (some matrices have ``c2w[3,3] != 1``), and what is then not a
  rotation to 1e-3 is a `SourceError`. OpenGL camera axes -> OpenCV by negating the y and z columns.
- Intrinsics: ``fl_x/w, fl_y/h, cx/w, cy/h`` when the JSON has them (the image may be a uniform downscale of
  ``w x h``; another aspect is an error); otherwise ``fx = 0.5 / tan(camera_angle_x / 2)`` normalised by the width,
  square pixels and a centred principal point.
- Frames keep the JSON order; a clip never spans two image folders (block_A joins block_1 and block_2). Aerial blocks
  are grid sweeps, street blocks driving sequences: consecutive JSON frames are the nearest views either way.
  Timestamps are JSON frame positions (``meta.extra.timestamp_unit = "frame"``).
- EXR: read by the pure numpy + zlib reader below (single-part scanline files, NONE/RLE/ZIPS/ZIP compression, half,
  float or uint channels), which covers the OpenEXR defaults; a file in another compression (PIZ, PXR24, B44, DWA) is
  read with OpenCV when it is installed and is otherwise a `SourceError` saying so. The channel taken is the one
  OpenCV's ``imread(...)[..., 0]`` (what ``load_data.py`` uses) returns: ``B`` of an RGB(A) file, else ``Y``, ``R`` or
  the only channel. The compression of the released depth files was not verified here.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from datamodules.sources.base import ConvertOptions, SourceError, clip_key, clip_windows
from datamodules.sources.common import (
    check_pose,
    encode_rgb,
    float16_depth,
    read_rgb,
    resize_nearest,
    resize_rgb,
    target_size,
)
from datamodules.spec import Clip, ClipMeta
from diff4splat.geometry.cameras import opengl_to_opencv

NAME = "matrixcity"
OPTIONS = {"pose_unit_m": 100.0}
INVALID_DEPTH = 65504.0  # float16 max: sky / no hit

# ------------------------------------------------------------------------------------------------------------ EXR

_EXR_MAGIC = 20000630
_COMPRESSIONS = {
    0: "NONE",
    1: "RLE",
    2: "ZIPS",
    3: "ZIP",
    4: "PIZ",
    5: "PXR24",
    6: "B44",
    7: "B44A",
    8: "DWAA",
    9: "DWAB",
}
_LINES_PER_CHUNK = {0: 1, 1: 1, 2: 1, 3: 16}
_PIXEL_TYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}


class ExrError(ValueError):
    """An EXR file this reader cannot read (corrupt, or a feature it does not support)."""


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(b"\0", pos)
    return buf[pos:end].decode("latin-1"), end + 1


def exr_unpredict(data: bytes) -> bytes:
    """Undo the ZIP/RLE preprocessing of OpenEXR: the byte-delta predictor, then the two-half byte interleave."""
    t = np.frombuffer(data, np.uint8).astype(np.int64)
    t = ((np.cumsum(t - 128) + 128) & 255).astype(np.uint8)
    out = np.empty_like(t)
    half = (len(t) + 1) // 2
    out[0::2], out[1::2] = t[:half], t[half:]
    return out.tobytes()


def _rle_decode(data: bytes, expected: int) -> bytes:
    out = bytearray()
    src = np.frombuffer(data, np.int8)
    i = 0
    while i < len(src):
        n = int(src[i])
        if n < 0:
            out += data[i + 1 : i + 1 - n]
            i += 1 - n
        else:
            out += data[i + 1 : i + 2] * (n + 1)
            i += 2
    if len(out) != expected:
        raise ExrError(f"RLE chunk decodes to {len(out)} bytes, expected {expected}")
    return bytes(out)


def read_exr_header(buf: bytes) -> tuple[dict, int]:
    """Parse the header of a single-part scanline EXR: (attributes, offset of the chunk table)."""
    if len(buf) < 8 or struct.unpack_from("<i", buf, 0)[0] != _EXR_MAGIC:
        raise ExrError("not an OpenEXR file (bad magic number)")
    flags = struct.unpack_from("<i", buf, 4)[0]
    if flags & 0x1A00:  # tiled (0x200), deep (0x800), multi-part (0x1000)
        raise ExrError(f"only single-part scanline EXR is supported (version flags {flags:#x})")
    pos, attrs = 8, {}
    while True:
        name, pos = _cstring(buf, pos)
        if not name:
            return attrs, pos
        typ, pos = _cstring(buf, pos)
        (size,) = struct.unpack_from("<i", buf, pos)
        value = buf[pos + 4 : pos + 4 + size]
        pos += 4 + size
        if typ == "chlist":
            chans, p = [], 0
            while value[p] != 0:
                cname, p = _cstring(value, p)
                ptype, _, xs, ys = struct.unpack_from("<iB3xii", value, p)
                p += 16
                chans.append((cname, ptype, xs, ys))
            attrs[name] = chans
        elif typ == "compression":
            attrs[name] = value[0]
        elif typ == "box2i":
            attrs[name] = struct.unpack("<4i", value)
        else:
            attrs[name] = value


def read_exr(path: Path) -> dict[str, np.ndarray]:
    """All channels of an EXR file as {name: (H, W) array} (float16, float32 or uint32). Raises `ExrError`."""
    buf = Path(path).read_bytes()
    try:
        attrs, pos = read_exr_header(buf)
    except (ValueError, struct.error, IndexError) as e:
        raise ExrError(f"corrupt EXR header ({e})") from e
    for key in ("channels", "compression", "dataWindow"):
        if key not in attrs:
            raise ExrError(f"EXR header has no {key!r}")
    comp = attrs["compression"]
    if comp not in _LINES_PER_CHUNK:
        raise ExrError(f"EXR compression {_COMPRESSIONS.get(comp, comp)} is not supported by the built-in reader")
    x0, y0, x1, y1 = attrs["dataWindow"]
    width, height = x1 - x0 + 1, y1 - y0 + 1
    chans = attrs["channels"]
    if any(c[2] != 1 or c[3] != 1 or c[1] not in _PIXEL_TYPES for c in chans):
        raise ExrError("subsampled channels or unknown pixel types are not supported")
    dtypes = [_PIXEL_TYPES[c[1]] for c in chans]
    line_bytes = sum(d.itemsize for d in dtypes) * width
    lines = _LINES_PER_CHUNK[comp]
    n_chunks = math.ceil(height / lines)
    try:
        offsets = struct.unpack_from(f"<{n_chunks}Q", buf, pos)
    except struct.error as e:
        raise ExrError("truncated EXR (chunk table)") from e
    out = {c[0]: np.empty((height, width), d) for c, d in zip(chans, dtypes, strict=True)}
    for off in offsets:
        if off + 8 > len(buf):
            raise ExrError(f"truncated EXR (chunk at byte {off} of {len(buf)})")
        y, size = struct.unpack_from("<ii", buf, off)
        data = buf[off + 8 : off + 8 + size]
        if len(data) != size:
            raise ExrError(f"truncated EXR (chunk at line {y})")
        n_lines = min(lines, y1 - y + 1)
        expected = n_lines * line_bytes
        if size != expected:  # a chunk that does not shrink is stored raw
            try:
                data = zlib.decompress(data) if comp in (2, 3) else _rle_decode(data, expected) if comp == 1 else data
            except zlib.error as e:
                raise ExrError(f"corrupt compressed chunk at line {y} ({e})") from e
            if len(data) != expected:
                raise ExrError(f"chunk at line {y} has {len(data)} bytes, expected {expected}")
            data = exr_unpredict(data)
        p = 0
        for k in range(n_lines):
            for (name, *_), d in zip(chans, dtypes, strict=True):
                out[name][y - y0 + k] = np.frombuffer(data, d, width, p)
                p += width * d.itemsize
    return out


def read_depth_exr(path: Path, sequence: str) -> np.ndarray:
    """A MatrixCity depth EXR as (H, W) float32 in the file's units (cm), with OpenCV's channel choice."""
    if not path.is_file():
        raise SourceError(sequence, path, "missing depth file")
    try:
        chans = read_exr(path)
    except ExrError as e:
        cv = _read_exr_cv2(path)
        if cv is None:
            raise SourceError(sequence, path, f"{e} (install opencv-python to read other EXR variants)") from e
        return cv
    for name in ("B", "Y", "R"):
        if name in chans:
            return chans[name].astype(np.float32)
    if len(chans) == 1:
        return next(iter(chans.values())).astype(np.float32)
    raise SourceError(sequence, path, f"no depth channel among {sorted(chans)}")


def _read_exr_cv2(path: Path) -> np.ndarray | None:
    os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
    try:
        import cv2
    except ImportError:
        return None
    im = cv2.imread(str(path), cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
    if im is None:
        return None
    return (im[..., 0] if im.ndim == 3 else im).astype(np.float32)


# ------------------------------------------------------------------------------------------------------ poses


def _find(root: Path, patterns: list[str]) -> list[Path]:
    return sorted({p for pat in patterns for p in root.glob(pat)})


def list_sequences(root: Path, split: str) -> list[str]:
    """Pose JSONs of ``split`` (ids = JSON paths relative to ``root`` without ``.json``); raw ones if there are none."""
    root = Path(root)
    name = f"transforms_{split}.json"
    found = _find(root, [f"pose/*/{name}", f"*/pose/*/{name}", f"*/*/pose/*/{name}"])
    if not found:
        found = _find(
            root, [f"{split}/*/transforms.json", f"*/{split}/*/transforms.json", f"*/*/{split}/*/transforms.json"]
        )
    return [str(p.relative_to(root).with_suffix("")) for p in found]


def normalise_pose(m: np.ndarray, translation_scale: float) -> np.ndarray:
    """(F,4,4) OpenGL c2w with possibly scaled rotation columns -> (F,4,4) OpenCV c2w, translation × scale."""
    c2w = np.array(m, dtype=np.float64)
    c2w[:, 3] = (0.0, 0.0, 0.0, 1.0)
    norms = np.linalg.norm(c2w[:, :3, :3], axis=1, keepdims=True)
    c2w[:, :3, :3] /= np.where(norms > 0, norms, 1.0)
    c2w[:, :3, 3] *= translation_scale
    return opengl_to_opencv(torch.from_numpy(c2w)).numpy()


def read_transforms(path: Path, sequence: str, pose_unit_m: float = 100.0) -> tuple[list[Path], np.ndarray, dict]:
    """A pose JSON (``transform_matrix``) or raw block JSON (``rot_mat``) -> (image paths, (F,4,4) OpenCV c2w in
    metres, camera dict with ``camera_angle_x`` and, when present, ``fl_x, fl_y, cx, cy, w, h``)."""
    if not path.is_file():
        raise SourceError(sequence, path, "missing pose JSON")
    try:
        d = json.loads(path.read_text())
        frames = d["frames"]
        raw = bool(frames) and "rot_mat" in frames[0]
        mats = []
        for i, f in enumerate(frames):
            m = np.asarray(f["rot_mat" if raw else "transform_matrix"], dtype=np.float64)
            if m.shape != (4, 4):
                raise SourceError(sequence, path, f"frame {i}: matrices must be 4x4, got shape {m.shape}")
            mats.append(m)
        if raw:
            paths = [path.parent / f"{int(f['frame_index']):04d}.png" for f in frames]
        else:
            paths = [Path(os.path.normpath(path.parent / f["file_path"])) for f in frames]
            paths = [p if p.suffix else p.with_name(p.name + ".png") for p in paths]
        camera = {k: float(d[k]) for k in ("camera_angle_x", "fl_x", "fl_y", "cx", "cy", "w", "h") if k in d}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceError(sequence, path, f"not valid JSON ({e})") from e
    except (KeyError, TypeError, ValueError) as e:
        raise SourceError(sequence, path, f"unexpected structure ({type(e).__name__}: {e})") from e
    if not frames:
        raise SourceError(sequence, path, "no frames")
    mats = np.stack(mats)
    if not np.isfinite(mats).all():
        bad = np.where(~np.isfinite(mats).all(axis=(1, 2)))[0]
        raise SourceError(sequence, path, f"non-finite pose at frame(s) {bad[:5].tolist()}")
    if "camera_angle_x" not in camera and "fl_x" not in camera:
        raise SourceError(sequence, path, "needs camera_angle_x or fl_x")
    c2w = check_pose(normalise_pose(mats, 1.0 if raw else pose_unit_m), sequence, path)
    return paths, c2w, camera


def normalised_intrinsics(camera: dict, height: int, width: int, sequence: str, path: Path) -> np.ndarray:
    """(4,) fxfycxcy for images of ``height x width`` from a transforms camera dict."""
    if "fl_x" in camera and "w" in camera and "h" in camera:
        w, h = camera["w"], camera["h"]
        if abs(width / w - height / h) > 1e-3 * width / w:
            raise SourceError(sequence, path, f"images are {width}x{height}, the JSON says {w:g}x{h:g}")
        return np.array(
            [
                camera["fl_x"] / w,
                camera.get("fl_y", camera["fl_x"]) / h,
                camera.get("cx", w / 2) / w,
                camera.get("cy", h / 2) / h,
            ]
        )
    fx = 0.5 / math.tan(camera["camera_angle_x"] / 2)
    return np.array([fx, fx * width / height, 0.5, 0.5])


def depth_path(image: Path) -> list[Path]:
    """Where the depth EXR of a MatrixCity image can be, most usual first."""
    block, split, view, city = image.parent.name, *(p.name for p in image.parents[1:4])
    cands = [image.parent.parent / f"{block}_depth" / f"{image.stem}.exr"]
    if len(image.parents) > 4:
        cands.insert(0, image.parents[4] / f"{city}_depth" / view / split / f"{block}_depth" / f"{image.stem}.exr")
    return cands


# ------------------------------------------------------------------------------------------------------ clips


def convert_sequence(root: Path, sequence: str, opts: ConvertOptions) -> Iterator[Clip]:
    """Clips of one transforms JSON: frames, OpenCV c2w in metres, intrinsics, depth in metres (0 = invalid)."""
    path = Path(root) / f"{sequence}.json"
    unit = float(opts.source_options.get("pose_unit_m", OPTIONS["pose_unit_m"]))
    done = opts.done_keys
    images, c2w, camera = read_transforms(path, sequence, unit)
    first = read_rgb(images[0], sequence)
    H, W = first.shape[:2]
    fxfycxcy = normalised_intrinsics(camera, H, W, sequence, path)
    depth_at = next((i for i, p in enumerate(depth_path(images[0])) if p.is_file()), None)
    size = target_size(H, W, opts.max_side)
    runs: list[list[int]] = []
    for i, p in enumerate(images):
        if runs and images[runs[-1][-1]].parent == p.parent:
            runs[-1].append(i)
        else:
            runs.append([i])
    for run in runs:
        for window in clip_windows(len(run), opts):
            idx = [run[k] for k in window]
            key = clip_key(sequence, idx[0])
            if key in done:
                continue
            rgb = []
            for i in idx:
                im = read_rgb(images[i], sequence)
                if im.shape != (H, W, 3):
                    raise SourceError(sequence, images[i], f"image is {im.shape}, the first one {(H, W, 3)}")
                rgb.append(resize_rgb(im, size))
            depth = None
            if depth_at is not None:
                depth = np.zeros((len(idx), *size), np.float16)
                for k, i in enumerate(idx):
                    dpath = depth_path(images[i])[depth_at]
                    cm = read_depth_exr(dpath, sequence)
                    if cm.shape != (H, W):
                        raise SourceError(sequence, dpath, f"depth is {cm.shape}, the images {(H, W)}")
                    cm = resize_nearest(cm, size)
                    depth[k] = float16_depth(cm / 100.0, np.isfinite(cm) & (cm > 0) & (cm < INVALID_DEPTH))
            meta = ClipMeta.for_dataset(
                NAME,
                sequence,
                metric_scale=1.0,
                depth_unit="m",
                extra={"timestamp_unit": "frame", "pose_unit_m": unit, "images": images[idx[0]].parent.name},
            )
            yield Clip(
                key=key,
                frames=encode_rgb(rgb, opts),
                c2w=c2w[idx],
                fxfycxcy=np.tile(fxfycxcy, (len(idx), 1)),
                timestamps=np.asarray(idx, np.float64),
                meta=meta,
                depth=depth,
            )
