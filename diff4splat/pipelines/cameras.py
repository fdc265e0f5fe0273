"""Cameras users bring or choose: the pose check every reader applies, camera files (our trajectory JSON, a
nerfstudio / instant-ngp ``transforms.json``, a RealEstate10K ``.txt``, an ``.npz`` of frames and cameras) and, for
generation, a preset trajectory or a camera file resampled to the video's frames.

Every error names the file (or the option) and the field and says what was expected. All cameras come out OpenCV
c2w [F, 4, 4] with normalised intrinsics [F, 4].
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from diff4splat.cli import InputError
from diff4splat.geometry.cameras import K_to_fxfycxcy, canonicalize, fov_to_focal
from diff4splat.geometry.scale import auto_trajectory_scale
from diff4splat.geometry.trajectories import PRESETS, make_trajectory
from diff4splat.pipelines.inputs import IMAGE_RANGE_SLACK, Views

if TYPE_CHECKING:
    from diff4splat.pipelines.jobs import TrajectoryOptions

CAMERA_SUFFIXES = (".json", ".txt", ".npz")
CAMERA_FILES = (
    "expected a trajectory .json, a nerfstudio transforms.json, a RealEstate10K .txt or an .npz with C2W (F,4,4) "
    "and fxfycxcy (F,4)"
)
FRAME_STRIDE = 4  # the Wan VAE's temporal stride: videos have 1 + 4k frames

log = logging.getLogger("diff4splat.inputs")


def check_poses(
    c2w: Tensor, fxfycxcy: Tensor, where: str | Path, name: str = "c2w", times: Tensor | None = None
) -> None:
    """At least one camera; every c2w [F, 4, 4] finite and rigid (orthonormal rotation, det +1, last row 0 0 0 1),
    every focal length in fxfycxcy [F, 4] finite and > 0, and ``times`` [F] (when given) finite and non-decreasing.
    Errors name ``where`` (the file or option), the field (``name`` for the poses) and the frame."""
    if c2w.shape[0] == 0:
        raise InputError(f"{where}: field {name} holds zero cameras; expected at least one (F,4,4) pose")
    c2w, fxfycxcy = c2w.double(), fxfycxcy.double()
    bad = ~torch.isfinite(c2w).flatten(1).all(1)
    if bad.any():
        raise InputError(
            f"{where}: field {name}, frame {int(bad.nonzero()[0])}: non-finite values (NaN or inf); "
            f"expected a finite 4x4 OpenCV camera-to-world matrix"
        )
    rot = c2w[:, :3, :3]
    err = (rot.transpose(1, 2) @ rot - torch.eye(3, dtype=rot.dtype)).abs().flatten(1).amax(1)
    last = (c2w[:, 3] - c2w.new_tensor([0.0, 0.0, 0.0, 1.0])).abs().amax(1)
    bad = (err > 1e-3) | (torch.linalg.det(rot) <= 0) | (last > 1e-6)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise InputError(
            f"{where}: field {name}, frame {i}: not a rigid pose (|RᵀR - I| = {float(err[i]):.2g}, "
            f"det R = {float(torch.linalg.det(rot[i])):.3g}, last row {[round(float(x), 6) for x in c2w[i, 3]]}); "
            f"expected [R t; 0 0 0 1] with R orthonormal, det +1"
        )
    bad = ~torch.isfinite(fxfycxcy).all(1) | (fxfycxcy[:, :2] <= 0).any(1)
    if bad.any():
        raise InputError(
            f"{where}: field fxfycxcy, frame {int(bad.nonzero()[0])}: expected finite normalised "
            f"intrinsics with fx/W, fy/H > 0"
        )
    if times is None:
        return
    bad = ~torch.isfinite(times)
    if not bad.any():
        bad[1:] = times[1:] < times[:-1]
    if bad.any():
        raise InputError(
            f"{where}: field timestamps, frame {int(bad.nonzero()[0])}: not finite or smaller than the one before; "
            f"expected finite, non-decreasing timestamps"
        )


def _npz_field(data: np.lib.npyio.NpzFile, where: str, names: tuple[str, ...], required: bool = True):
    for n in names:
        if n in data.files:
            try:
                a = np.asarray(data[n])
            except (ValueError, OSError, EOFError) as e:  # object arrays (pickles) are refused; truncated members
                raise InputError(
                    f"{where}: field {n} is not a plain numeric array ({e}); expected a numeric "
                    f"array saved without pickling (np.savez)"
                ) from e
            if a.dtype.kind not in "biuf":
                raise InputError(f"{where}: field {n} has dtype {a.dtype}; expected numbers")
            return a
    if required:
        raise InputError(f"{where}: missing field {' or '.join(names)} (fields present: {sorted(data.files)})")
    return None


def read_npz(path: str | Path, where: str | None = None) -> Views:
    """The original system's ``.npz`` (``images`` (F,3,H,W) or (F,H,W,3), ``C2W`` (F,4,4), ``fxfycxcy`` (F,4) or
    ``intrinsics`` (F,3,3) in pixels, optional ``timestep`` (F,)), checked; poses-only files give ``images`` = empty.
    Errors start with ``where`` (default: the path)."""
    import zipfile

    path = Path(path)
    where = where or str(path)
    if not path.is_file():
        raise InputError(f"{where}: no such file")
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"{where}: not a readable .npz ({e}); expected np.savez output with C2W, fxfycxcy, ...") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise InputError(f"{where}: a single array, not an .npz archive; expected fields C2W, fxfycxcy (+ images)")
    with npz as data:
        images = _npz_field(data, where, ("images",), required=False)
        c2w = _npz_field(data, where, ("C2W", "c2w", "pose", "extrinsics"))
        fx = _npz_field(data, where, ("fxfycxcy",), required=False)
        K = _npz_field(data, where, ("intrinsics", "K"), required=False) if fx is None else None
        t = _npz_field(data, where, ("timestep", "timestamps", "times"), required=False)
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
        raise InputError(f"{where}: field C2W must be (F,4,4), got {c2w.shape}")
    imgs = torch.zeros(0)
    if images is not None:
        if images.ndim != 4 or 3 not in (images.shape[1], images.shape[-1]):
            raise InputError(f"{where}: field images must be (F,3,H,W) or (F,H,W,3), got {images.shape}")
        imgs = torch.from_numpy(images.astype(np.float32))
        if imgs.shape[1] != 3:
            imgs = imgs.permute(0, 3, 1, 2)
        if images.dtype == np.uint8:
            imgs = imgs / 255.0
        if imgs.shape[0] != c2w.shape[0]:
            raise InputError(f"{where}: field images has {imgs.shape[0]} frames but C2W has {c2w.shape[0]} cameras")
        if not torch.isfinite(imgs).all():
            raise InputError(f"{where}: field images has non-finite values; expected colours in [0, 1] (or uint8)")
        lo, hi = (float(imgs.min()), float(imgs.max())) if imgs.numel() else (0.0, 1.0)
        if lo < -IMAGE_RANGE_SLACK or hi > 1 + IMAGE_RANGE_SLACK:
            hint = " (they look like 0-255 values: divide by 255 or save uint8)" if lo >= 0 and hi <= 255 else ""
            raise InputError(
                f"{where}: field images has values in [{lo:g}, {hi:g}]; expected floats in [0, 1] or uint8{hint}"
            )
        imgs = imgs.clamp(0, 1)
    if fx is None:
        if K is None:
            raise InputError(f"{where}: missing field fxfycxcy (normalised) or intrinsics (F,3,3 in pixels)")
        if imgs.numel() == 0:
            raise InputError(f"{where}: intrinsics in pixels need the images' size; give fxfycxcy instead")
        h, w = imgs.shape[-2:]
        fx = K_to_fxfycxcy(torch.as_tensor(K, dtype=torch.float64), h, w).numpy()
    if fx.shape != (c2w.shape[0], 4):
        raise InputError(f"{where}: field fxfycxcy must be ({c2w.shape[0]},4), got {fx.shape}")
    times = None
    if t is not None:
        times = torch.as_tensor(t, dtype=torch.float32)
        if times.shape != (c2w.shape[0],) or not torch.isfinite(times).all():
            raise InputError(f"{where}: field timestep must be ({c2w.shape[0]},) finite times, got {tuple(t.shape)}")
    check_poses(torch.as_tensor(c2w), torch.as_tensor(fx), where, "C2W", times)
    return Views(imgs, torch.as_tensor(c2w, dtype=torch.float32), torch.as_tensor(fx, dtype=torch.float32), times)


def is_transforms_json(path: Path) -> bool:
    """Whether a ``.json`` is a nerfstudio / instant-ngp / Blender ``transforms.json`` (frames with a
    ``transform_matrix``) rather than our trajectory format."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    frames = doc.get("frames") if isinstance(doc, dict) else None
    return bool(frames) and isinstance(frames, list) and isinstance(frames[0], dict) and "transform_matrix" in frames[0]


def read_transforms_json(
    path: Path, where: str, image_size: tuple[int, int] | None = None, frame_names: list[str] | None = None
) -> tuple[Tensor, Tensor, Tensor]:  # c2w [F, 4, 4] OpenCV, fxfycxcy [F, 4], times [F] (float64)
    """Cameras of a nerfstudio / instant-ngp / Blender ``transforms.json``: OpenGL ``transform_matrix`` -> OpenCV
    c2w (`datamodules.sources.dl3dv.nerfstudio_poses`), intrinsics from ``fl_x, fl_y, cx, cy, w, h`` or
    ``camera_angle_x`` with per-frame values overriding the top-level ones
    (`datamodules.sources.matrixcity.normalised_intrinsics`; ``camera_angle_x`` needs the frames' ``image_size``
    (H, W)). Frames are ordered by the number in their ``file_path`` (then the path); with ``frame_names`` (the
    stems of the image files the cameras are for, in their order) each image gets the frame whose ``file_path``
    has its stem, and frames without an image are left out with one warning line. Times: evenly spaced."""
    from datamodules.sources.base import SourceError
    from datamodules.sources.dl3dv import frame_number, nerfstudio_poses
    from datamodules.sources.matrixcity import normalised_intrinsics

    doc = json.loads(path.read_text())
    frames = doc["frames"]
    if not all(isinstance(f, dict) for f in frames):
        raise InputError(f"{where}: field frames must be a list of objects with transform_matrix and file_path")
    stems = [Path(str(f.get("file_path", ""))).stem for f in frames]
    if frame_names is not None:
        index = {stem: i for i, stem in enumerate(stems)}
        missing = [n for n in frame_names if n not in index]
        if missing:
            raise InputError(
                f"{where}: no frame has a file_path for image {missing[0]!r} ({len(missing)} of {len(frame_names)} "
                f"images have none); expected one frame per image, matched by file name"
            )
        if len(frame_names) < len(frames):
            log.warning(
                "%s: %d frames listed, %d of them have an image: those are used", where, len(frames), len(frame_names)
            )
        frames = [frames[index[n]] for n in frame_names]
    else:
        frames = sorted(frames, key=lambda f: (frame_number(str(f.get("file_path", ""))), str(f.get("file_path"))))
    keys = ("camera_angle_x", "fl_x", "fl_y", "cx", "cy", "w", "h")
    try:
        c2w = nerfstudio_poses(frames, where, path)
        fx = []
        for f in frames:
            camera = {k: float(f.get(k, doc.get(k))) for k in keys if f.get(k, doc.get(k)) is not None}
            if "camera_angle_x" not in camera and "fl_x" not in camera:
                raise InputError(f"{where}: no focal length; expected fl_x (with w, h) or camera_angle_x")
            if image_size is not None:
                h, w = image_size
            elif "w" in camera and "h" in camera:
                h, w = camera["h"], camera["w"]
            else:
                raise InputError(f"{where}: camera_angle_x without w, h; the frames' size is needed (pass the frames)")
            fx.append(normalised_intrinsics(camera, int(h), int(w), where, path))
    except SourceError as e:
        raise InputError(f"{where}: {e.message}; expected a nerfstudio / instant-ngp transforms.json") from e
    except (TypeError, ValueError) as e:
        raise InputError(f"{where}: non-numeric camera values ({e}); expected a transforms.json") from e
    n = len(frames)
    return (
        torch.from_numpy(c2w).double(),
        torch.as_tensor(np.stack(fx), dtype=torch.float64),
        torch.linspace(0, 1, n, dtype=torch.float64),
    )


def read_cameras(
    path: str | Path,
    where: str | None = None,
    expected: str = CAMERA_FILES,
    image_size: tuple[int, int] | None = None,
    frame_names: list[str] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:  # c2w [F, 4, 4], fxfycxcy [F, 4], times [F] in [0, 1] (float64)
    """Checked cameras of an ``.npz`` (C2W + fxfycxcy, optional timestep), our trajectory ``.json``, a
    nerfstudio / instant-ngp ``transforms.json`` (`read_transforms_json`, which uses ``image_size`` (H, W) and
    ``frame_names``) or a RealEstate10K ``.txt``. Errors start with ``where`` (default: the path) and end with
    ``expected``."""
    from diff4splat.geometry.trajectories import read_re10k_txt, read_trajectory_json

    path = Path(path)
    where = where or str(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise InputError(f"{where}: camera file not found; {expected}")
    if suffix not in CAMERA_SUFFIXES:
        raise InputError(f"{where}: not a camera file; {expected}")
    if suffix == ".npz":
        views = read_npz(path, where)
        times = views.times if views.times is not None else torch.linspace(0, 1, views.c2w.shape[0])
        return views.c2w.double(), views.fxfycxcy.double(), times.double()
    if suffix == ".json" and is_transforms_json(path):
        c2w, fxfycxcy, times = read_transforms_json(path, where, image_size, frame_names)
        check_poses(c2w, fxfycxcy, where, "transform_matrix", times)
        return c2w, fxfycxcy, times
    try:
        traj = read_trajectory_json(path) if suffix == ".json" else read_re10k_txt(path)
    except RuntimeError as e:  # a singular world-to-camera matrix (torch.linalg.LinAlgError) in a .txt
        raise InputError(f"{where}: a camera matrix cannot be inverted ({e}); expected rigid poses") from e
    except (ValueError, OSError, KeyError, TypeError) as e:  # UnicodeDecodeError and JSON errors are ValueErrors
        raise InputError(f"{where}: unreadable trajectory file ({e}); {expected}") from e
    c2w, fxfycxcy, times = traj.c2w.double(), traj.fxfycxcy.double(), traj.times().double()
    check_poses(c2w, fxfycxcy, where, "c2w", times)
    return c2w, fxfycxcy, times


def fov_intrinsics(fov: float, height: int, width: int) -> list[float]:
    """Normalised fxfycxcy of a centred camera with vertical field of view ``fov`` (degrees) and square pixels."""
    fy = fov_to_focal(math.radians(fov))
    return [fy * height / width, fy, 0.5, 0.5]


# ----------------------------------------------------------------------------------------------------------------------
# Generation: a preset or a camera file, resampled to the video's frames
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Cameras:
    """A checked trajectory for one video: canonical (camera 0 = identity) OpenCV c2w in the camera model's scene
    units (`diff4splat.geometry.scale`): the trajectory's own units × ``trajectory_scale``."""

    c2w: Tensor  # [F, 4, 4] float64
    fxfycxcy: Tensor  # [F, 4] float64, normalised for the input image
    times: Tensor  # [F] float64 in [0, 1]
    source: dict  # how the cameras were made (meta.json)
    trajectory_scale: float = 1.0  # trajectory units x this = scene units (``trajectory.scale``, resolved)


def check_trajectory_scale(scale: float | str) -> None:
    """``trajectory.scale`` must be ``auto`` or a finite number > 0."""
    if scale == "auto":
        return
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not (math.isfinite(scale) and scale > 0):
        raise InputError(f"trajectory.scale: expected auto or a number > 0, got {scale!r}")


def trajectory_scale_factor(scale: float | str, c2w: Tensor) -> float:
    """The factor of ``trajectory.scale`` for canonical cameras ``c2w`` [F, 4, 4]: the number, or for ``auto``
    `diff4splat.geometry.scale.auto_trajectory_scale` (largest camera distance from camera 0 -> 0.5 scene units)."""
    check_trajectory_scale(scale)
    return auto_trajectory_scale(c2w) if scale == "auto" else float(scale)


def camera_forms() -> str:
    """What ``camera=`` accepts, for error messages."""
    return (
        f"expected a preset name ({', '.join(sorted(PRESETS))}), a trajectory .json, a RealEstate10K .txt "
        f"or an .npz with C2W (F,4,4) and fxfycxcy (F,4)"
    )


def check_num_frames(n: int | None, where: str = "trajectory.num_frames") -> int:
    if n is None or n < 1 + FRAME_STRIDE or (n - 1) % FRAME_STRIDE:
        raise InputError(
            f"{where}: the video model makes 1 + {FRAME_STRIDE}k frames with k >= 1 (e.g. 13, 49, 81), got {n}"
        )
    return n


def resolve_cameras(camera: str, opts: TrajectoryOptions, num_frames: int, image_size: tuple[int, int]) -> Cameras:
    """A preset (with ``opts``) or a camera file, resampled to ``num_frames``, checked, canonicalised and scaled.

    Preset intrinsics come from ``opts.fov`` for an input image of ``image_size`` (H, W), square pixels."""
    check_num_frames(num_frames)
    check_trajectory_scale(opts.scale)
    for name in ("strength", "look_at"):
        value = getattr(opts, name)
        if not np.isfinite(np.asarray(value, dtype=np.float64)).all():
            raise InputError(f"trajectory.{name}: expected finite numbers, got {value}")
    path = Path(camera)
    key = camera.replace("-", "_").lower()
    if key in PRESETS and not path.is_file():
        if not 0 < opts.fov < 180:
            raise InputError(f"trajectory.fov: expected a vertical field of view in (0, 180) degrees, got {opts.fov}")
        try:
            traj = make_trajectory(
                key,
                num_frames,
                strength=opts.strength,
                look_at=opts.look_at,
                fxfycxcy=fov_intrinsics(opts.fov, *image_size),
            )
        except ValueError as e:
            raise InputError(f"trajectory: {e}") from e
        c2w, fx, times = traj.c2w, traj.fxfycxcy, traj.times()
        source = {"preset": key, **asdict(opts), "num_frames": num_frames}
    else:
        if path.suffix.lower() not in CAMERA_SUFFIXES:
            raise InputError(f"camera={camera}: not a trajectory preset and not a camera file; {camera_forms()}")
        if not path.is_file():
            raise InputError(f"camera={path}: no such file; {camera_forms()}")
        c2w, fx, times = read_cameras(path, f"camera={path}", camera_forms(), image_size)
        n = c2w.shape[0]
        if n < num_frames:
            raise InputError(
                f"camera={path}: {n} cameras, fewer than trajectory.num_frames={num_frames}; pass a "
                f"smaller trajectory.num_frames (1 + 4k <= {n}) or a longer trajectory"
            )
        idx = torch.linspace(0, n - 1, num_frames, dtype=torch.float64).round().long()
        if n != num_frames:
            log.warning(
                "camera=%s: %d cameras resampled evenly to trajectory.num_frames=%d (every %.3g-th camera is used)",
                path,
                n,
                num_frames,
                (n - 1) / max(1, num_frames - 1),
            )
        c2w, fx, times = c2w[idx], fx[idx], times[idx]
        span = times[-1] - times[0]
        times = (times - times[0]) / span if span > 0 else torch.linspace(0, 1, num_frames, dtype=torch.float64)
        source = {
            "file": str(path.resolve()),
            "file_frames": n,
            "frame_indices": idx.tolist(),
            "num_frames": num_frames,
        }
    check_poses(c2w, fx, f"camera={camera}", "c2w", times)
    c2w = canonicalize(c2w.double())
    factor = trajectory_scale_factor(opts.scale, c2w)
    c2w[:, :3, 3] *= factor
    source["scale"] = {"option": opts.scale, "factor": factor}
    return Cameras(c2w, fx.double(), times.double(), source, factor)
