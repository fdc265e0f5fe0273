"""Helpers shared by the converters: reading images, resizing frames and per-pixel maps, building clips.

Resizing a whole image leaves normalised intrinsics (fx/W, fy/H, cx/W, cy/H) unchanged, because both the focal
length in pixels and the image size scale by the same factor (pixel centres at +0.5 on both grids), so converters
resize freely and keep ``fxfycxcy``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.sources.base import SourceError


def target_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(H', W') with the longer side at most ``max_side`` (0 = unchanged), aspect kept, at least 1 pixel."""
    if max_side <= 0 or max(height, width) <= max_side:
        return height, width
    s = max_side / max(height, width)
    return max(1, round(height * s)), max(1, round(width * s))


def read_rgb(path: Path, sequence: str) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB; a missing or unreadable file is a `SourceError` naming it."""
    if not path.is_file():
        raise SourceError(sequence, path, "missing image file")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:
        raise SourceError(sequence, path, f"unreadable image ({e})") from e


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
