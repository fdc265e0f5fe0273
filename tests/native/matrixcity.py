"""Write a `GroundTruth` scene as a MatrixCity block in its native format, and a minimal OpenEXR writer.

``variant="pose"``: ``<root>/small_city/aerial/pose/block_A/transforms_train.json`` (OpenGL c2w in 100 m units,
``c2w[3,3]`` slightly off 1, ``fl_x ... h``) pointing at ``small_city/aerial/train/block_1/NNNN.png``;
``variant="raw"``: ``small_city/aerial/train/block_1/transforms.json`` with ``rot_mat`` (rotation × 0.01, metres) and
only ``camera_angle_x``. Depth: ``small_city_depth/aerial/train/block_1_depth/NNNN.exr``, float16 centimetres in R, G,
B (A = 1), 65504 on the top rows (sky).
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tests.native.scene import GroundTruth

SKY_ROWS = 2
_COMPRESSION = {"NONE": 0, "RLE": 1, "ZIPS": 2, "ZIP": 3, "PIZ": 4}
_TYPES = {np.dtype("float16"): 1, np.dtype("float32"): 2, np.dtype("uint32"): 0}


def _attr(name: str, typ: str, value: bytes) -> bytes:
    return name.encode() + b"\0" + typ.encode() + b"\0" + struct.pack("<i", len(value)) + value


def _predict(raw: bytes) -> bytes:
    b = np.frombuffer(raw, np.uint8)
    t = np.concatenate([b[0::2], b[1::2]]).astype(np.int64)
    p = t.copy()
    p[1:] = (t[1:] - t[:-1] + 128) & 255
    return p.astype(np.uint8).tobytes()


def _rle(data: bytes) -> bytes:
    """OpenEXR run-length coding: (count - 1, byte) for runs of 3 to 128 equal bytes, (-n, n bytes) for literals."""
    out, i, lit = bytearray(), 0, bytearray()

    def flush() -> None:
        for k in range(0, len(lit), 127):
            part = lit[k : k + 127]
            out.extend(struct.pack("<b", -len(part)) + part)
        lit.clear()

    while i < len(data):
        j = i
        while j < len(data) and data[j] == data[i] and j - i < 128:
            j += 1
        if j - i >= 3:
            flush()
            out.extend(struct.pack("<bB", j - i - 1, data[i]))
            i = j
        else:
            lit.append(data[i])
            i += 1
    flush()
    return bytes(out)


def write_exr(path: Path, channels: dict[str, np.ndarray], compression: str = "ZIP") -> None:
    """Single-part scanline OpenEXR with (H, W) float16/float32/uint32 channels; NONE, RLE, ZIPS or ZIP compression."""
    names = sorted(channels)
    arrays = [np.ascontiguousarray(channels[n]) for n in names]
    H, W = arrays[0].shape
    comp = _COMPRESSION[compression]
    chlist = b"".join(
        n.encode() + b"\0" + struct.pack("<iB3xii", _TYPES[a.dtype], 0, 1, 1) for n, a in zip(names, arrays)
    )
    header = b"".join(
        [
            struct.pack("<ii", 20000630, 2),
            _attr("channels", "chlist", chlist + b"\0"),
            _attr("compression", "compression", bytes([comp])),
            _attr("dataWindow", "box2i", struct.pack("<4i", 0, 0, W - 1, H - 1)),
            _attr("displayWindow", "box2i", struct.pack("<4i", 0, 0, W - 1, H - 1)),
            _attr("lineOrder", "lineOrder", b"\0"),
            _attr("pixelAspectRatio", "float", struct.pack("<f", 1.0)),
            _attr("screenWindowCenter", "v2f", struct.pack("<2f", 0.0, 0.0)),
            _attr("screenWindowWidth", "float", struct.pack("<f", 1.0)),
            b"\0",
        ]
    )
    lines = 16 if compression == "ZIP" else 1
    chunks = []
    for y in range(0, H, lines):
        raw = b"".join(
            a[yy].astype(a.dtype.newbyteorder("<")).tobytes() for yy in range(y, min(H, y + lines)) for a in arrays
        )
        data = raw
        if compression != "NONE":
            packed = _rle(_predict(raw)) if compression == "RLE" else zlib.compress(_predict(raw))
            data = packed if len(packed) < len(raw) else raw
        chunks.append(struct.pack("<ii", y, len(data)) + data)
    offsets, pos = [], len(header) + 8 * len(chunks)
    for c in chunks:
        offsets.append(pos)
        pos += len(c)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + struct.pack(f"<{len(offsets)}Q", *offsets) + b"".join(chunks))


def opencv_to_opengl(c2w: np.ndarray) -> np.ndarray:
    out = c2w.copy()
    out[..., :3, 1:3] *= -1
    return out


def write_block(root: Path, gt: GroundTruth, variant: str = "pose", compression: str = "ZIP", depth: bool = True):
    """Write ``gt`` as block_1 of small_city/aerial (train); returns the pose JSON path."""
    city = root / "small_city" / "aerial"
    images = city / "train" / "block_1"
    images.mkdir(parents=True, exist_ok=True)
    F, H, W = gt.shape
    for i in range(F):
        Image.fromarray(gt.rgb[i]).save(images / f"{i:04d}.png")
        if depth:
            cm = (gt.depth[i] * 100).astype(np.float16)
            cm[:SKY_ROWS] = 65504.0
            chans = {"R": cm, "G": cm, "B": cm, "A": np.ones_like(cm)}
            write_exr(
                root / "small_city_depth" / "aerial" / "train" / "block_1_depth" / f"{i:04d}.exr", chans, compression
            )
    gl = opencv_to_opengl(gt.c2w)
    fx, fy, cx, cy = gt.fxfycxcy[0] * np.array([W, H, W, H])
    angle_x = 2 * np.arctan(0.5 * W / fx)
    if variant == "pose":
        m = gl.copy()
        m[:, :3, 3] /= 100.0  # 100 m units
        m[:, 3, 3] = 1.0000001
        frames = [
            {"file_path": f"../../train/block_1/{i:04d}.png", "transform_matrix": m[i].tolist()} for i in range(F)
        ]
        d = {
            "camera_angle_x": angle_x,
            "fl_x": fx,
            "fl_y": fy,
            "cx": cx,
            "cy": cy,
            "w": float(W),
            "h": float(H),
            "k1": 0,
            "k2": 0,
            "p1": 0,
            "p2": 0,
            "frames": frames,
        }
        path = city / "pose" / "block_A" / "transforms_train.json"
    else:
        m = gl.copy()
        m[:, :3, :3] *= 0.01
        d = {"camera_angle_x": angle_x, "frames": [{"frame_index": i, "rot_mat": m[i].tolist()} for i in range(F)]}
        path = images / "transforms.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(d, indent=1))
    return path
