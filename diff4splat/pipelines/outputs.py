"""The output folders of ``python -m diff4splat.generate`` and ``python -m diff4splat.reconstruct``: a folder that
appears only when complete (`atomic_output_dir`), the generation's files and its ``meta.json`` (`OutputWriter`,
`build_meta`), and reading a folder back for the viewer, the demo and the evaluation (`read_scene_output`).

A folder holds ``scene.safetensors`` (the native 4D format, `diff4splat.gaussians.io.save_4d`), and, when the
generation CLI wrote it, ``meta.json`` whose ``"trajectory"`` object gives the requested cameras::

    {"trajectory": {"c2w": F×4×4 (OpenCV c2w), "fxfycxcy": F×4 (normalised), "times": F values in [0, 1],
                    "height": H, "width": W}, ...}

and ``video.mp4`` (the generated frames). Reconstruction folders have no trajectory: ``cameras`` is then None.
Every error names the file and the field and says what was expected (`diff4splat.cli.InputError`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from diff4splat.cli import InputError
from diff4splat.files import atomic_dir, remove_stale_temp_dirs
from diff4splat.gaussians.io import load_4d
from diff4splat.gaussians.types import DeformableGaussians
from diff4splat.media import depth_to_color, to_uint8, write_video
from diff4splat.pipelines.generation import UNTRAINED_LABEL, Generation
from diff4splat.pipelines.renders import Renders
from diff4splat.pipelines.stages import STAGES, Stages

if TYPE_CHECKING:
    from diff4splat.pipelines.generation import Diff4SplatPipeline
    from diff4splat.pipelines.jobs import GenerateConfig, Job
    from diff4splat.sampling import SamplingConfig

SCENE_FILE = "scene.safetensors"
META_FILE = "meta.json"
VIDEO_FILE = "video.mp4"
META_FORMAT = "diff4splat-generation"
RECONSTRUCTION_FORMAT = "diff4splat-reconstruction"
OUTPUT_FORMATS = (META_FORMAT, RECONSTRUCTION_FORMAT)  # the meta.json formats of folders overwrite may replace
OUTPUTS = ("scene", "ply", "video", "render", "novel", "depth", "trajectory")
PLY_WORKERS = 8  # threads writing the per-frame .ply files of one scene


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


def previous_output(folder: Path) -> str | None:
    """Why ``folder`` may not be replaced (None when it may): it must hold a ``meta.json`` that generate or reconstruct
    wrote (a JSON object whose ``format`` is one of `OUTPUT_FORMATS`) and nothing but the entries that file lists in
    ``files``, so files a user added (or a folder that only looks like an output) are never deleted."""
    meta_path = folder / META_FILE
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") not in OUTPUT_FORMATS:
        shown = ", ".join(entries[:5]) + (f", ... ({len(entries)} entries)" if len(entries) > 5 else "")
        return f"it holds {shown} and no {META_FILE} of a generate or reconstruct output"
    listed = {str(f).rstrip("/") for f in meta.get("files") or []} | {META_FILE}
    extra = [e for e in entries if e.rstrip("/") not in listed]
    if extra:
        shown = ", ".join(extra[:5]) + (f", ... ({len(extra)} entries)" if len(extra) > 5 else "")
        return f"it is an earlier output but also holds {shown}, which its {META_FILE} does not list"
    return None


def check_output_dir(
    target: Path, overwrite: bool, option: str = "--out ", overwrite_flag: str = "--overwrite"
) -> None:
    """An output folder may be written when absent or empty, or, with ``overwrite``, when it is an earlier output of
    generate or reconstruct (`previous_output`); anything else is refused, so ``overwrite`` never deletes a user's
    files. Errors name the folder after ``option`` (how the command line names it: ``--out ``, ``output_dir=``) and
    ``overwrite_flag``. Temporary folders that killed runs left beside ``target`` are removed first
    (`diff4splat.files.remove_stale_temp_dirs`)."""
    remove_stale_temp_dirs(target)
    if target.exists() and not target.is_dir():
        raise InputError(f"{option}{target}: exists and is not a folder")
    if not target.is_dir() or not any(target.iterdir()):
        return
    if not overwrite:
        raise InputError(f"{option}{target}: folder exists and is not empty; pass {overwrite_flag} to replace it")
    why = previous_output(target)
    if why is not None:
        raise InputError(
            f"{option}{target}: not replaced: {why}; {overwrite_flag} replaces only an empty folder or an earlier "
            f"output (move those files or choose another folder)"
        )


def check_writable(target: Path, option: str = "--out ", inside: bool = False) -> None:
    """``target`` can be made (``inside``: entries can be made in it): its nearest existing ancestor (or ``target``
    itself) is a folder this process can create a folder in, tried for real with an empty folder removed at once
    (permissions, read-only file systems and root all answer). Checked before any model is loaded; the error names
    ``target``, never a temporary name."""
    target = Path(target).absolute()
    existing = target if inside and target.is_dir() else next(p for p in target.parents if p.exists())
    if not existing.is_dir():
        raise InputError(f"{option}{target}: {existing} is not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".diff4splat-write-check-", dir=existing)
    except OSError as e:
        raise OSError(e.errno, f"cannot be written ({existing}: {e.strerror})", f"{option}{target}") from None
    os.rmdir(probe)


@contextlib.contextmanager
def atomic_output_dir(
    target: str | Path, overwrite: bool = False, option: str = "--out ", overwrite_flag: str = "--overwrite"
) -> Iterator[Path]:
    """A fresh temporary folder beside ``target`` to write into, renamed onto ``target`` when the block succeeds and
    removed (with any parent folders this made) when it fails (`diff4splat.files.atomic_dir`), so a failed run leaves
    nothing behind. An existing non-empty ``target`` is an `InputError` (see `check_output_dir`) unless
    ``overwrite`` and it is an earlier output; it is then replaced as a whole only after the new folder is
    complete."""
    target = Path(target).absolute()
    check_output_dir(target, overwrite, option, overwrite_flag)
    check_writable(target, option)
    with atomic_dir(target) as tmp:
        yield tmp


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


class OutputWriter:
    """The files of one generation (``outputs`` of `OUTPUTS`: scene.safetensors, ply/, video.mp4, render.mp4,
    novel.mp4, depth.mp4, trajectory.png; meta.json is the caller's, last), written off its critical path: ``start``
    queues them and makes the renders, ``finish`` waits for them, ``cancel`` stops them; the caller may do other work
    (the next scene) in between.

    The scene comes first: ``scene.safetensors`` starts on a writer thread at once, and when it is complete (the
    Gaussians are already in memory) ``stages`` marks ``time_to_scene`` and ``on_scene(path)`` is called (path None
    without a scene file). The slow files run off that path: the ply frames start once the scene file is written (the
    two are the bulk of the bytes and would share the disk), video.mp4 and trajectory.png at once; the renders run on
    the calling thread meanwhile (GPU work), after which their mp4s are queued. ``stages`` marks
    ``time_to_all_files`` when the last file completes, and the ``write`` stage is the time from the end of rendering
    to it, so the stages add up to the wall-clock time whenever ``finish`` is called.

    ``workers``: writer threads (None: one per file); 0 writes every file in ``start``, on the calling thread, in the
    order above (the synchronous reference). The first error of any writer is raised (by ``start`` if it came before
    the renders were done, else by ``finish``) once every writer has stopped, queued files cancelled; the caller removes
    the folder. ``file_timings``: each file's own seconds (they overlap)."""

    def __init__(
        self,
        gen: Generation,
        folder: Path,
        fps: int,
        stages: Stages,
        outputs: tuple[str, ...] = OUTPUTS,
        scene_metadata: dict | None = None,
        video_preset: str = "superfast",
        file_timings: dict[str, float] | None = None,
        workers: int | None = None,
        on_scene: Callable[[Path | None], None] | None = None,
    ) -> None:
        from diff4splat.gaussians.io import save_4d, save_ply_sequence

        self.stages, self.workers, self.file_timings = stages, workers, file_timings
        self.rendered: dict[str, Renders] = {}
        g = gen.scene.gaussians
        # the scene leaves the GPU on a copy stream of its own, after what this thread queued so far (the LRDM), so
        # the render kernels queued next on the default stream (shared by all threads) do not delay it
        cuda = g.device.type == "cuda"
        copy_stream = torch.cuda.Stream(g.device) if cuda else None
        if cuda:
            copy_stream.wait_stream(torch.cuda.current_stream(g.device))

        def write_scene() -> None:
            if "scene" in outputs:
                with torch.cuda.stream(copy_stream) if cuda else contextlib.nullcontext():
                    host = g.detach().to("cpu", torch.float32)
                save_4d(host, folder / SCENE_FILE, scene_metadata)
            stages.mark("time_to_scene")
            if on_scene is not None:
                on_scene(folder / SCENE_FILE if "scene" in outputs else None)

        videos = {
            "video": ("video.mp4", lambda: to_uint8(gen.video)),
            "render": ("render.mp4", lambda: to_uint8(self.rendered["renders"].rgb)),
            "novel": ("novel.mp4", lambda: to_uint8(self.rendered["renders"].novel)),
            "depth": ("depth.mp4", lambda: depth_to_color(self.rendered["renders"].depth)),
        }

        def video(key: str) -> tuple[str, Callable[[], Any]]:
            name, frames = videos[key]
            return name, lambda: write_video(frames(), folder / name, fps, video_preset)

        # (name, writer, whether it waits for the scene file), in the synchronous order; "" = no scene file
        early = [(SCENE_FILE if "scene" in outputs else "", write_scene, False)]
        if "video" in outputs:
            early.append((*video("video"), False))
        if "ply" in outputs:
            early.append(("ply/", lambda: save_ply_sequence(g, folder / "ply", workers=PLY_WORKERS), True))
        if "trajectory" in outputs:  # the cameras alone: drawn at once
            early.append(("trajectory.png", lambda: _plot(gen, folder / "trajectory.png"), False))
        self.early: list[tuple[str, Callable[[], Any], bool]] = early
        self.late = [video(k) for k in ("render", "novel", "depth") if k in outputs]
        self.names = [name for name, *_ in early + self.late if name]
        self.futures: list[Any] = []
        self.pool: Any = None
        self._lock = threading.Lock()
        self._last_done = self._render_end = 0.0

    def _timed(self, name: str, write: Callable[[], Any], after: Any = None) -> None:
        if after is not None:
            after.result()  # the scene file first (its error, if any, is raised by its own future too)
        start = time.perf_counter()
        write()
        done = time.perf_counter()
        with self._lock:
            if self.file_timings is not None and name:
                self.file_timings[name] = done - start
            if done > self._last_done:
                self._last_done = done
                self.stages.mark("time_to_all_files")

    def start(self, renders: Renders | Callable[[], Renders]) -> Renders:
        """Queue the files that need no renders, make the renders (``renders`` may be a function: run here, on the
        GPU, while those files are written), queue theirs. ``workers=0``: write every file here, in turn."""
        from concurrent.futures import ThreadPoolExecutor

        if self.workers == 0:  # the synchronous reference: every file on this thread, in order (the write stage)
            with self.stages("write", total=len(self.early), unit="file") as bar:
                for name, write, _ in self.early:
                    self._timed(name, write)
                    bar.update(1)
            self.rendered["renders"] = renders() if callable(renders) else renders
            with self.stages("write", total=len(self.late), unit="file") as bar:
                for name, write in self.late:
                    self._timed(name, write)
                    bar.update(1)
            return self.rendered["renders"]
        workers = self.workers or len(self.early) + len(self.late)
        self.pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="diff4splat-writer")
        scene = self.pool.submit(self._timed, *self.early[0][:2])
        self.futures.append(scene)
        for name, write, after in self.early[1:]:
            self.futures.append(self.pool.submit(self._timed, name, write, scene if after else None))
        self.rendered["renders"] = renders() if callable(renders) else renders
        self._render_end = time.perf_counter()
        self._raise_first_error()  # a writer that already failed stops the job here
        self.futures += [self.pool.submit(self._timed, name, write) for name, write in self.late]
        return self.rendered["renders"]

    def _raise_first_error(self) -> None:
        for f in self.futures:
            if f.done() and f.exception() is not None:
                raise f.exception()

    def finish(self) -> list[str]:
        """Wait for every file (the first error is raised once the writers have stopped, queued ones cancelled);
        returns the names written."""
        from concurrent.futures import as_completed

        from tqdm.auto import tqdm

        if self.pool is None:
            return self.names
        bar = tqdm(total=len(self.futures), desc=f"{'write':<8}", unit="file", disable=not self.stages.progress)
        try:
            for future in as_completed(self.futures):
                future.result()
                bar.update(1)
        except BaseException:
            self.cancel()
            raise
        finally:
            bar.close()
        self.pool.shutdown(wait=True)
        self.stages.add("write", max(0.0, self._last_done - self._render_end))
        return self.names

    def cancel(self) -> None:
        """Stop: queued files are dropped, running ones finish (the caller removes the folder)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _plot(gen: Generation, path: Path) -> None:
    from diff4splat.geometry.trajectories import plot_trajectory

    plot_trajectory(gen.scene.c2w.cpu(), path, gen.scene.fxfycxcy.cpu(), title="trajectory (trajectory units, OpenCV)")


def build_meta(
    job: Job,
    pipe: Diff4SplatPipeline,
    gen: Generation,
    renders: Renders,
    cfg: GenerateConfig,
    sampling: SamplingConfig,
    files: list[str],
    load_s: float,
) -> dict:
    """meta.json: inputs, seeds, models, per-stage timings and the trajectory a viewer needs (``trajectory``)."""
    import diffusers

    from diff4splat import __version__

    scene = gen.scene
    timings = {k: round(v, 6) for k, v in gen.timings.items()}
    timings["total"] = round(sum(gen.timings.get(k, 0.0) for k in STAGES), 6)
    timings["load_models"] = round(load_s, 6)
    meta = {
        "format": META_FORMAT,
        "version": 1,
        "untrained": pipe.untrained,
        "label": UNTRAINED_LABEL if pipe.untrained else "trained weights (see models)",
        "inputs": {
            "image": str(job.image_path.resolve()),
            "camera": job.camera_spec,
            "prompt": job.prompt,
            "negative_prompt": cfg.negative_prompt,
            "trajectory_options": asdict(cfg.trajectory),
            "cameras": job.cameras.source,
        },
        "preprocess": {
            **job.fit,
            "method": "resize to cover (bicubic, antialiased), centre crop; normalised "
            "intrinsics of the input image carried through the crop",
        },
        "seed": job.seed,
        "seeds": {"sampling_noise": sampling.seed, "tiny_weights": cfg.seed if pipe.untrained else None},
        "sampling": sampling.used(),
        "models": pipe.describe(),
        "lrdm": {
            "input_frames": gen.lrdm_frames.tolist(),
            "translation_scale": cfg.lrdm.translation_scale,
            "scale": scene.scale.to_json() if scene.scale is not None else None,
            "prune_threshold": cfg.lrdm.prune_threshold,
            "num_gaussians": scene.gaussians.num_gaussians,
            "query_times": scene.gaussians.times.tolist(),
        },
        "units": {
            "scene": "the trajectory's units: scene.safetensors, ply/, the trajectory below and the renders' cameras",
            "camera_model": f"scene units = trajectory units x {job.cameras.trajectory_scale!r} (trajectory.scale)",
            "lrdm": "mean scene distance 1 = trajectory units x lrdm.scale.lrdm_scale (the Gaussians scaled back)",
        },
        "timings": timings,
        "trajectory": {
            "c2w": scene.c2w.cpu().tolist(),
            "fxfycxcy": scene.fxfycxcy.cpu().tolist(),
            "times": scene.input_times.cpu().tolist(),
            "height": scene.image_size[0],
            "width": scene.image_size[1],
            "fps": cfg.fps,
            "convention": "OpenCV c2w in the trajectory's units (camera 0 = identity), normalised fxfycxcy",
        },
        "novel": renders.novel_info,
        "files": [*files, META_FILE],
        "versions": {
            "diff4splat": __version__,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
        },
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return meta
