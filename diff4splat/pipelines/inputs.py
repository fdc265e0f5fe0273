"""Reading what users bring to `reconstruct` / `preprocess`: frames (a folder, a video, an ``.npz``) and cameras (an
``.npz``, our trajectory JSON, a RealEstate10K ``.txt``), checked against each other, and fitted to a model's size.

Every error names the file and the field and says what was expected. All cameras come out OpenCV c2w [F, 4, 4] with
normalised intrinsics [F, 4]; frames float [F, 3, H, W] in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diff4splat.cli import InputError
from diff4splat.geometry.cameras import K_to_fxfycxcy, crop_intrinsics

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")


@dataclass
class Views:
    images: Tensor  # [F, 3, H, W] float in [0, 1]
    c2w: Tensor | None  # [F, 4, 4] OpenCV
    fxfycxcy: Tensor | None  # [F, 4]
    times: Tensor | None  # [F] in [0, 1]


def read_frames(path: str | Path) -> Tensor:
    """Frames of a folder of images (sorted by name) or a video file: [F, 3, H, W] float in [0, 1]."""
    from PIL import Image

    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        arrays = []
        for f in files:
            try:
                with Image.open(f) as im:
                    arrays.append(np.asarray(im.convert("RGB")))
            except OSError as e:
                raise InputError(f"{f}: unreadable image ({e})") from e
        if len({a.shape for a in arrays}) != 1:
            raise InputError(f"{path}: images differ in size ({sorted({a.shape for a in arrays})})")
        frames = np.stack(arrays)
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        if not path.is_file():
            raise InputError(f"{path}: no such video file")
        from datamodules.spec import decode_video

        try:
            frames = decode_video(path.read_bytes())
        except Exception as e:  # noqa: BLE001 - any decoder failure is bad input
            raise InputError(f"{path}: cannot decode video ({e})") from e
    else:
        raise InputError(f"{path}: expected a folder of images or a video ({', '.join(VIDEO_SUFFIXES)})")
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0


def _npz_field(data: np.lib.npyio.NpzFile, path: Path, names: tuple[str, ...], required: bool = True):
    for n in names:
        if n in data.files:
            try:
                a = np.asarray(data[n])
            except (ValueError, OSError, EOFError) as e:  # object arrays (pickles) are refused; truncated members
                raise InputError(
                    f"{path}: field {n} is not a plain numeric array ({e}); expected a numeric "
                    f"array saved without pickling (np.savez)"
                ) from e
            if a.dtype.kind not in "biuf":
                raise InputError(f"{path}: field {n} has dtype {a.dtype}; expected numbers")
            return a
    if required:
        raise InputError(f"{path}: missing field {' or '.join(names)} (fields present: {sorted(data.files)})")
    return None


def read_npz(path: str | Path) -> Views:
    """The original system's ``.npz`` (``images`` (F,3,H,W) or (F,H,W,3), ``C2W`` (F,4,4), ``fxfycxcy`` (F,4) or
    ``intrinsics`` (F,3,3) in pixels, optional ``timestep`` (F,)); poses-only files give ``images`` = empty."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: not a readable .npz ({e}); expected np.savez output with C2W, fxfycxcy, ...") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise InputError(f"{path}: a single array, not an .npz archive; expected fields C2W, fxfycxcy (+ images)")
    with npz as data:
        images = _npz_field(data, path, ("images",), required=False)
        c2w = _npz_field(data, path, ("C2W", "c2w", "pose", "extrinsics"))
        fx = _npz_field(data, path, ("fxfycxcy",), required=False)
        K = _npz_field(data, path, ("intrinsics", "K"), required=False) if fx is None else None
        t = _npz_field(data, path, ("timestep", "timestamps", "times"), required=False)
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
        raise InputError(f"{path}: field C2W must be (F,4,4), got {c2w.shape}")
    imgs = torch.zeros(0)
    if images is not None:
        if images.ndim != 4 or 3 not in (images.shape[1], images.shape[-1]):
            raise InputError(f"{path}: field images must be (F,3,H,W) or (F,H,W,3), got {images.shape}")
        imgs = torch.from_numpy(images.astype(np.float32))
        if imgs.shape[1] != 3:
            imgs = imgs.permute(0, 3, 1, 2)
        if images.dtype == np.uint8:
            imgs = imgs / 255.0
        if imgs.shape[0] != c2w.shape[0]:
            raise InputError(f"{path}: field images has {imgs.shape[0]} frames but C2W has {c2w.shape[0]} cameras")
        if not torch.isfinite(imgs).all():
            raise InputError(f"{path}: field images has non-finite values; expected colours in [0, 1] (or uint8)")
    if fx is None:
        if K is None:
            raise InputError(f"{path}: missing field fxfycxcy (normalised) or intrinsics (F,3,3 in pixels)")
        if imgs.numel() == 0:
            raise InputError(f"{path}: intrinsics in pixels need the images' size; give fxfycxcy instead")
        h, w = imgs.shape[-2:]
        fx = K_to_fxfycxcy(torch.as_tensor(K, dtype=torch.float64), h, w).numpy()
    if fx.shape != (c2w.shape[0], 4):
        raise InputError(f"{path}: field fxfycxcy must be ({c2w.shape[0]},4), got {fx.shape}")
    check_poses(torch.as_tensor(c2w, dtype=torch.float64), torch.as_tensor(fx, dtype=torch.float64), path, "C2W")
    times = None
    if t is not None:
        times = torch.as_tensor(t, dtype=torch.float32)
        if times.shape != (c2w.shape[0],) or not torch.isfinite(times).all():
            raise InputError(f"{path}: field timestep must be ({c2w.shape[0]},) finite times, got {tuple(t.shape)}")
    return Views(imgs, torch.as_tensor(c2w, dtype=torch.float32), torch.as_tensor(fx, dtype=torch.float32), times)


def check_poses(c2w: Tensor, fxfycxcy: Tensor, path: str | Path, name: str = "c2w") -> None:
    """At least one camera; every c2w [F, 4, 4] finite and rigid (orthonormal rotation, det +1, last row 0 0 0 1)
    and every focal length in fxfycxcy [F, 4] finite and > 0. Errors name the file, the field and the frame."""
    if c2w.shape[0] == 0:
        raise InputError(f"{path}: field {name} holds zero cameras; expected at least one (F,4,4) pose")
    bad = ~torch.isfinite(c2w).flatten(1).all(1)
    if bad.any():
        raise InputError(
            f"{path}: field {name}, frame {int(bad.nonzero()[0])}: non-finite values (NaN or inf); "
            f"expected a finite OpenCV camera-to-world matrix"
        )
    rot = c2w[:, :3, :3].double()
    err = (rot.transpose(1, 2) @ rot - torch.eye(3, dtype=rot.dtype)).abs().flatten(1).amax(1)
    last = (c2w[:, 3].double() - c2w.new_tensor([0.0, 0.0, 0.0, 1.0]).double()).abs().amax(1)
    bad = (err > 1e-3) | (torch.linalg.det(rot) <= 0) | (last > 1e-6)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise InputError(
            f"{path}: field {name}, frame {i}: not a rigid pose (|RᵀR - I| = {float(err[i]):.2g}, "
            f"det R = {float(torch.linalg.det(rot[i])):.3g}); expected [R t; 0 0 0 1] with R orthonormal, "
            f"det +1"
        )
    bad = ~torch.isfinite(fxfycxcy).all(1) | (fxfycxcy[:, :2] <= 0).any(1)
    if bad.any():
        raise InputError(
            f"{path}: field fxfycxcy, frame {int(bad.nonzero()[0])}: expected finite normalised "
            f"intrinsics with fx/W, fy/H > 0"
        )


def read_cameras(path: str | Path) -> tuple[Tensor, Tensor]:
    """Cameras from an ``.npz`` (C2W + fxfycxcy), our trajectory ``.json`` or a RealEstate10K ``.txt``."""
    from diff4splat.geometry.trajectories import read_re10k_txt, read_trajectory_json

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: camera file not found")
    if path.suffix == ".npz":
        v = read_npz(path)
        return v.c2w, v.fxfycxcy
    if path.suffix not in (".json", ".txt"):
        raise InputError(f"{path}: cameras must be .npz (C2W, fxfycxcy), .json (trajectory) or .txt (RealEstate10K)")
    try:
        traj = read_trajectory_json(path) if path.suffix == ".json" else read_re10k_txt(path)
    except RuntimeError as e:  # a singular world-to-camera matrix (torch.linalg.LinAlgError) in a .txt
        raise InputError(f"{path}: a camera matrix cannot be inverted ({e}); expected rigid poses") from e
    check_poses(traj.c2w.double(), traj.fxfycxcy.double(), path)
    return traj.c2w.float(), traj.fxfycxcy.float()


def fit_to_multiple(
    images: Tensor, fxfycxcy: Tensor, multiple: int, size: tuple[int, int] | None = None
) -> tuple[Tensor, Tensor]:
    """Resize to ``size`` (H, W) when given (normalised intrinsics unchanged), then centre-crop to multiples of
    ``multiple`` with the intrinsics updated for the crop."""
    import torch.nn.functional as F

    if size is not None and tuple(images.shape[-2:]) != tuple(size):
        images = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    h, w = images.shape[-2:]
    ch, cw = h // multiple * multiple, w // multiple * multiple
    if ch == 0 or cw == 0:
        raise InputError(f"frames of {h}x{w} are smaller than the model's {multiple}-pixel unit; pass a larger --size")
    if (ch, cw) != (h, w):
        top, left = (h - ch) // 2, (w - cw) // 2
        fxfycxcy = crop_intrinsics(fxfycxcy, h, w, top, left, ch, cw)
        images = images[..., top : top + ch, left : left + cw]
    return images, fxfycxcy
