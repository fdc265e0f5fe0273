"""Reading and checking the images and frames users bring to `generate`, `reconstruct` and `preprocess` (an image, a
frame folder, a video), and fitting frames with their intrinsics to a model's frame size. Cameras (and ``.npz``
files, which carry frames and cameras) are read by `diff4splat.pipelines.cameras`.

Every error names the file (or the option) and the field and says what was expected. Images come out float
[..., 3, H, W] in [0, 1].
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from diff4splat.cli import InputError
from diff4splat.geometry.cameras import crop_intrinsics

if TYPE_CHECKING:
    pass

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")
IMAGE_RANGE_SLACK = 1e-3  # float images may pass [0, 1] by rounding (clamped); beyond it they are refused

log = logging.getLogger("diff4splat.inputs")


# ----------------------------------------------------------------------------------------------------------------------
# Images and frames
# ----------------------------------------------------------------------------------------------------------------------


def _read_rgb(path: Path, where: str) -> np.ndarray:  # (H, W, 3) float32 in [0, 1]
    """One image file as RGB in [0, 1], EXIF orientation applied. 8-bit images scale by 1/255, 16-bit greyscale by
    1/65535, 32-bit float greyscale is taken as is and must lie in [0, 1] (refused otherwise, as are 32-bit integer
    images beyond 16 bits); greyscale becomes three equal channels. Transparency (RGBA, LA, palette or colour-key
    transparency) is composited over `ALPHA_BACKGROUND` (white), with one warning line. Images of more than
    ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (PIL's decompression-bomb limit, ~89 MP) are refused before decoding."""
    import warnings

    from PIL import Image, ImageOps

    if not path.is_file():
        raise InputError(f"{where}: no such file; expected an image file ({', '.join(IMAGE_SUFFIXES)})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return _image_to_rgb(ImageOps.exif_transpose(im), where)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise InputError(
            f"{where}: image too large ({e}); expected at most {Image.MAX_IMAGE_PIXELS} pixels: downscale it first"
        ) from e
    except OSError as e:  # PIL's UnidentifiedImageError and truncated files
        raise InputError(
            f"{where}: unreadable image ({e}); expected a PNG/JPEG/WebP file or another image format PIL reads"
        ) from e


ALPHA_BACKGROUND = 1.0  # transparent pixels are composited over white (the NeRF-synthetic convention)


def _image_to_rgb(im, where: str) -> np.ndarray:  # PIL image -> (H, W, 3) float32 in [0, 1]
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.float64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise InputError(
                f"{where}: 32-bit integer image with values in [{a.min():g}, {a.max():g}]; expected an 8- or "
                f"16-bit image"
            )
        return np.repeat((a / 65535.0).astype(np.float32)[..., None], 3, axis=-1)
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        if a.size and not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
            raise InputError(
                f"{where}: floating-point image with values in [{np.nanmin(a):g}, {np.nanmax(a):g}]; expected "
                f"values in [0, 1] (or an 8- or 16-bit image)"
            )
        return np.repeat(a[..., None], 3, axis=-1)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:]
        if (alpha < 1).any():
            log.warning(
                "%s: %.0f %% of the pixels are (partly) transparent: composited over white",
                where,
                100 * float((alpha < 1).mean()),
            )
        return rgba[..., :3] * alpha + ALPHA_BACKGROUND * (1 - alpha)
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def read_image(path: str | Path, field: str | None = "image") -> Tensor:  # -> [3, H, W] in [0, 1]
    """One image file (see `_read_rgb` for bit depths, transparency and size limits). Errors name ``field=path``
    (or the path alone when ``field`` is None), the problem and the accepted forms."""
    path = Path(path)
    arr = _read_rgb(path, f"{field}={path}" if field else str(path))
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float()


@dataclass
class Views:
    """What an ``.npz`` holds: frames (empty for a poses-only file) with their cameras and times."""

    images: Tensor  # [F, 3, H, W] float in [0, 1]
    c2w: Tensor | None  # [F, 4, 4] OpenCV
    fxfycxcy: Tensor | None  # [F, 4]
    times: Tensor | None  # [F] in [0, 1]


def frame_names(path: str | Path) -> list[str] | None:
    """The stems of the image files `read_frames` reads from a folder, in its order (None for a video)."""
    path = Path(path)
    if not path.is_dir():
        return None
    return [p.stem for p in sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)]


def read_frames(path: str | Path) -> Tensor:
    """Frames of a folder of images (sorted by name) or a video file: [F, 3, H, W] float in [0, 1]."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        arrays = [_read_rgb(f, str(f)) for f in files]
        if len({a.shape for a in arrays}) != 1:
            raise InputError(f"{path}: images differ in size ({sorted({a.shape for a in arrays})})")
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        if not path.is_file():
            raise InputError(f"{path}: no such video file")
        from datamodules.frame_codec import decode_video

        try:
            frames = decode_video(path.read_bytes())
        except Exception as e:  # noqa: BLE001 - any decoder failure is bad input
            raise InputError(f"{path}: cannot decode video ({e})") from e
    else:
        raise InputError(f"{path}: expected a folder of images or a video ({', '.join(VIDEO_SUFFIXES)})")
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0


def fit_frames(
    images: Tensor,  # [..., 3, h, w] in [0, 1]
    fxfycxcy: Tensor,  # [..., 4] normalised for the frames
    multiple: int = 1,
    size: tuple[int, int] | None = None,
    cover: bool = False,
) -> tuple[Tensor, Tensor, dict]:
    """Fit frames and their normalised intrinsics to a model's frame size: resize to ``size`` (H, W) when given
    (stretched; with ``cover``, scaled keeping the aspect ratio until it covers ``size``), then centre-crop (to
    ``size`` with ``cover``, else to multiples of ``multiple``). A resize keeps normalised intrinsics, the crop
    updates them, so each pixel keeps its ray. Returns the frames, the intrinsics and what was done."""
    import torch.nn.functional as F

    h, w = images.shape[-2:]
    rh, rw = (h, w) if size is None else size
    if size is not None and cover:
        s = max(size[0] / h, size[1] / w)
        rh, rw = max(size[0], round(h * s)), max(size[1], round(w * s))
    ch, cw = size if size is not None and cover else (rh, rw)
    ch, cw = ch // multiple * multiple, cw // multiple * multiple
    if ch == 0 or cw == 0:
        raise InputError(
            f"frames of {rh}x{rw} are smaller than the model's {multiple}-pixel unit; pass a larger --size"
        )
    if (rh, rw) != (h, w):
        flat = images.reshape(-1, *images.shape[-3:])
        flat = F.interpolate(flat, size=(rh, rw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        images = flat.reshape(*images.shape[:-2], rh, rw)
    top, left = (rh - ch) // 2, (rw - cw) // 2
    if (ch, cw) != (rh, rw):
        fxfycxcy = crop_intrinsics(fxfycxcy, rh, rw, top, left, ch, cw)
        images = images[..., top : top + ch, left : left + cw]
    fit = {"input_size": [h, w], "resized_to": [rh, rw], "crop_top_left": [top, left], "model_size": [ch, cw]}
    return images, fxfycxcy, fit
