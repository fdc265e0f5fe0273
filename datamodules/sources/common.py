"""Helpers shared by the converters: reading images and tables, resizing frames and per-pixel maps, building clips.

Resizing a whole image leaves normalised intrinsics (fx/W, fy/H, cx/W, cy/H) unchanged, because both the focal
length in pixels and the image size scale by the same factor (pixel centres at +0.5 on both grids), so converters
resize freely and keep ``fxfycxcy``.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from datamodules.frame_codec import encode_frames
from datamodules.sources.base import ConvertOptions, SourceError

PNG16_MODES = ("I;16", "I;16B", "I;16L", "I")  # what PIL opens a single-channel 16-bit PNG as


def target_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(H', W') with the longer side at most ``max_side`` (0 = unchanged), aspect kept, at least 1 pixel."""
    if max_side <= 0 or max(height, width) <= max_side:
        return height, width
    s = max_side / max(height, width)
    return max(1, round(height * s)), max(1, round(width * s))


def split_dir(root: Path, split: str) -> Path:
    """The folder holding the sequences of ``split``: ``root/split`` when it exists, else ``root`` itself."""
    root = Path(root)
    return root / split if (root / split).is_dir() else root


def parse_row(line: str, n: int, num_values: int, sequence: str, path: Path, names: str = "") -> list[float]:
    """Line ``n`` of a whitespace table: exactly ``num_values`` numbers (``names`` spelled out in the error)."""
    parts = line.split()
    if len(parts) != num_values:
        what = f"{num_values} numbers ({names})" if names else f"{num_values} numbers"
        raise SourceError(sequence, path, f"line {n}: expected {what}, got {len(parts)}")
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise SourceError(sequence, path, f"line {n}: not numeric") from None


def read_rgb(path: Path, sequence: str) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB; a missing or unreadable file is a `SourceError` naming it."""
    if not path.is_file():
        raise SourceError(sequence, path, "missing image file")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:
        raise SourceError(sequence, path, f"unreadable image ({e})") from e


def read_png16(path: Path, sequence: str, dtype: type = np.uint16, kind: str = "depth") -> np.ndarray:
    """A single-channel 16-bit PNG as (H,W) ``dtype``; missing, unreadable or other PNGs are a `SourceError`.

    ``kind`` names the file in the "missing ... file" message."""
    if not path.is_file():
        raise SourceError(sequence, path, f"missing {kind} file")
    try:
        with Image.open(path) as im:
            mode = im.mode
            a = np.asarray(im)
    except (OSError, SyntaxError, ValueError) as e:
        raise SourceError(sequence, path, f"unreadable PNG ({e})") from e
    if mode not in PNG16_MODES or a.ndim != 2:
        raise SourceError(sequence, path, f"expected a single-channel 16-bit PNG, got mode {mode} shape {a.shape}")
    return a.astype(dtype)


def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (H', W', 3) uint8 with area/bicubic filtering (no-op at the same size)."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC))


def resize_nearest(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Per-pixel map (H, W, ...) -> (H', W', ...) by nearest-pixel-centre sampling (depth, masks: no blending)."""
    h, w = size
    H, W = a.shape[:2]
    if (H, W) == (h, w):
        return a
    rows = np.minimum(((np.arange(h) + 0.5) * H / h).astype(np.int64), H - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * W / w).astype(np.int64), W - 1)
    return a[rows][:, cols]


def resize_flow(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Flow (H,W,2) in pixels -> (H',W',2): nearest native pixel, vectors scaled by W'/W and H'/H (same dtype)."""
    h, w = size
    H, W = flow.shape[:2]
    if (H, W) == (h, w):
        return flow
    return resize_nearest(flow, size) * np.array([w / W, h / H], dtype=flow.dtype)


def nan_flow(size: tuple[int, int]) -> np.ndarray:
    """(H,W,2) float32 NaN: the forward flow of a clip's last frame, which has no next frame in the clip."""
    return np.full((*size, 2), np.nan, np.float32)


def float16_depth(depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Depth stored as float16: ``depth`` where ``valid``, 0 elsewhere and where float16 overflows."""
    d16 = np.where(valid, depth, 0).astype(np.float16)
    return np.where(np.isfinite(d16), d16, 0)


def output_format(opts: ConvertOptions) -> Literal["jpg", "png"]:
    """The encoding of written frames, ``opts.frame_format``: jpg or png (anything else is a ValueError)."""
    if opts.frame_format not in ("jpg", "png"):
        raise ValueError(f"frame_format={opts.frame_format!r}: expected jpg or png")
    return opts.frame_format  # type: ignore[return-value]


def encode_rgb(rgbs: Sequence[np.ndarray] | np.ndarray, opts: ConvertOptions) -> list[bytes]:
    """(F,H,W,3) uint8 frames (or F (H,W,3) ones) encoded as ``opts`` asks (format, JPEG quality)."""
    return encode_frames(np.stack(rgbs), fmt=output_format(opts), quality=opts.jpeg_quality)


def frame_bytes(path: Path, rgb: np.ndarray, size: tuple[int, int], opts: ConvertOptions) -> bytes:
    """Encoded frame of ``size`` (H,W): the native file's bytes when format and size already match, else encoded."""
    fmt = output_format(opts)
    native = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png"}.get(path.suffix.lower())
    if native == fmt and rgb.shape[:2] == size:
        return path.read_bytes()
    return encode_frames(resize_rgb(rgb, size)[None], fmt, opts.jpeg_quality)[0]


def seeded_subset(ids: np.ndarray, n: int, key: str) -> np.ndarray:
    """``n`` of ``ids`` drawn without replacement by a generator seeded with ``key`` (deterministic per clip), sorted."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    return np.sort(rng.choice(ids, n, replace=False))


def select_tracks(visible: np.ndarray, max_tracks: int, key: str) -> np.ndarray:
    """Indices (sorted) of the tracks kept for a clip: visible in >= 2 of its frames, at most ``max_tracks``.

    visible: (F,N) bool. The subsample is drawn with a generator seeded by ``key`` (deterministic per clip);
    ``max_tracks <= 0`` keeps them all.
    """
    keep = np.flatnonzero(visible.sum(0) >= 2)
    if max_tracks > 0 and len(keep) > max_tracks:
        keep = seeded_subset(keep, max_tracks, key)
    return keep


def check_pose(c2w: np.ndarray, sequence: str, file: str | Path, tol: float = 1e-3) -> np.ndarray:
    """Check (F,4,4) c2w: finite, rotation orthonormal to ``tol``, last row (0,0,0,1); return float64."""
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
        raise SourceError(sequence, file, f"poses must be (F,4,4), got {c2w.shape}")
    if not np.isfinite(c2w).all():
        bad = np.where(~np.isfinite(c2w).all(axis=(1, 2)))[0]
        raise SourceError(sequence, file, f"non-finite pose at frame(s) {bad[:5].tolist()}")
    R = c2w[:, :3, :3]
    err = np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2))
    if (err > tol).any():
        i = int(err.argmax())
        raise SourceError(sequence, file, f"rotation of frame {i} is not orthonormal (error {err[i]:.2e})")
    return c2w
