"""Writing and reading what the CLIs write: an output folder that appears only when complete (`atomic_output_dir`),
and a scene output folder of ``python -m diff4splat.generate`` or
``python -m diff4splat.reconstruct``, for the viewer, the demo and the evaluation.

A folder holds ``scene.safetensors`` (the native 4D format, `diff4splat.gaussians.io.save_4d`), and, when the
generation CLI wrote it, ``meta.json`` whose ``"trajectory"`` object gives the requested cameras::

    {"trajectory": {"c2w": F×4×4 (OpenCV c2w), "fxfycxcy": F×4 (normalised), "times": F values in [0, 1],
                    "height": H, "width": W}, ...}

and ``video.mp4`` (the generated frames). Reconstruction folders have no trajectory: ``cameras`` is then None.
Every error names the file and the field and says what was expected (`diff4splat.pipelines.inputs.InputError`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diff4splat.cli import InputError
from diff4splat.gaussians.io import load_4d
from diff4splat.gaussians.types import DeformableGaussians

SCENE_FILE = "scene.safetensors"
META_FILE = "meta.json"
VIDEO_FILE = "video.mp4"


@dataclass
class CameraPath:
    """The cameras a scene was generated for: camera k sees the scene at time ``times[k]``."""

    c2w: Tensor  # [F, 4, 4] float32 OpenCV camera-to-world
    fxfycxcy: Tensor  # [F, 4] float32 normalised intrinsics
    times: Tensor  # [F] float32 in [0, 1]
    height: int
    width: int

    def __len__(self) -> int:
        return self.c2w.shape[0]


@dataclass
class SceneOutput:
    """One output folder, loaded."""

    folder: Path
    gaussians: DeformableGaussians  # unbatched
    cameras: CameraPath | None  # None without meta.json / its "trajectory"
    meta: dict[str, Any]  # the whole meta.json ({} when absent)
    video: Path | None  # video.mp4 when present


@contextlib.contextmanager
def atomic_output_dir(
    target: str | Path, overwrite: bool = False, where: str = "--out", overwrite_flag: str = "--overwrite"
) -> Iterator[Path]:
    """A fresh temporary folder beside ``target`` to write into; renamed onto ``target`` when the block succeeds,
    removed (with any parent folders this made) when it fails, so a failed run leaves nothing behind. An existing
    non-empty ``target`` is an `InputError` (naming ``where`` and ``overwrite_flag``) unless ``overwrite``; it is
    then replaced as a whole only after the new folder is complete."""
    target = Path(target).absolute()
    if target.exists() and not target.is_dir():
        raise InputError(f"{where} {target}: exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise InputError(f"{where} {target}: folder exists and is not empty; pass {overwrite_flag} to replace it")
    made = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        for p in tmp.rglob("*"):  # files made through mkstemp (0600) get the usual permissions
            if p.is_file():
                p.chmod(0o666 & ~umask)
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in made:  # deepest first
            with contextlib.suppress(OSError):
                p.rmdir()
        raise


def _field(traj: dict[str, Any], name: str, path: Path, shape: tuple[int | None, ...]) -> np.ndarray:
    """``traj[name]`` as a finite float64 array of ``shape`` (None = any size); errors name the file and field."""
    if name not in traj:
        raise InputError(f"{path}: field trajectory.{name} is missing (fields present: {sorted(traj)})")
    try:
        a = np.asarray(traj[name], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"{path}: field trajectory.{name} must be a (nested) list of numbers ({e})") from e
    if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
        want = "×".join("F" if s is None else str(s) for s in shape)
        raise InputError(f"{path}: field trajectory.{name} must be {want} numbers, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise InputError(f"{path}: field trajectory.{name} has non-finite values")
    return a


def _positive_int(traj: dict[str, Any], name: str, path: Path) -> int:
    value = traj.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(f"{path}: field trajectory.{name} must be a positive integer (pixels), got {value!r}")
    return value


def parse_camera_path(traj: Any, path: Path) -> CameraPath:
    """The ``"trajectory"`` object of a meta.json (see the module docstring), checked field by field."""
    if not isinstance(traj, dict):
        raise InputError(f"{path}: field trajectory must be an object with c2w, fxfycxcy, times, height, width")
    c2w = _field(traj, "c2w", path, (None, 4, 4))
    f = c2w.shape[0]
    if f == 0:
        raise InputError(f"{path}: field trajectory.c2w holds no camera")
    fx = _field(traj, "fxfycxcy", path, (f, 4))
    times = _field(traj, "times", path, (f,))
    if (times < 0).any() or (times > 1).any():
        raise InputError(f"{path}: field trajectory.times must lie in [0, 1], got [{times.min()}, {times.max()}]")
    if (fx[:, :2] <= 0).any():
        raise InputError(f"{path}: field trajectory.fxfycxcy must have positive focal lengths (fx/W, fy/H)")
    return CameraPath(
        c2w=torch.from_numpy(c2w).float(),
        fxfycxcy=torch.from_numpy(fx).float(),
        times=torch.from_numpy(times).float(),
        height=_positive_int(traj, "height", path),
        width=_positive_int(traj, "width", path),
    )


def read_scene_output(folder: str | Path, device: str | torch.device = "cpu") -> SceneOutput:
    """Load an output folder (or a ``.safetensors`` file inside one). ``meta.json`` is optional; when present it
    must be valid JSON, and its ``"trajectory"`` (optional too) must be complete."""
    folder = Path(folder)
    scene_path = folder if folder.suffix == ".safetensors" else folder / SCENE_FILE
    folder = scene_path.parent
    if not scene_path.is_file():
        raise InputError(f"{scene_path}: no scene file (expected {SCENE_FILE}, written by generate or reconstruct)")
    gaussians = load_4d(scene_path, device)
    if gaussians.batch_shape:
        raise InputError(f"{scene_path}: expected one scene, got batch shape {tuple(gaussians.batch_shape)}")
    meta: dict[str, Any] = {}
    cameras = None
    meta_path = folder / META_FILE
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{meta_path}: not valid JSON ({e})") from e
        if not isinstance(meta, dict):
            raise InputError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
        if "trajectory" in meta:
            cameras = parse_camera_path(meta["trajectory"], meta_path)
    video = folder / VIDEO_FILE
    return SceneOutput(folder, gaussians, cameras, meta, video if video.is_file() else None)
