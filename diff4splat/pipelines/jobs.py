"""Generation jobs and the ``python -m diff4splat.generate`` driver: the typed configuration (``conf/generate.yaml``),
one job per (image, trajectory, prompt, seed, output folder) — a single image or a batch folder / CSV — every input
checked before any model is built, and each scene generated and written into a temporary folder beside its target
that is renamed into place only when every file is written.

``generate(cfg)`` is what the CLI runs: it checks every input first (image, trajectory, output folders: a bad one
fails before any model is loaded), builds `Diff4SplatPipeline` once and runs the jobs (`run_jobs`: one scene's files
are written while the next scene is generated). Inputs are fitted to
the model's frame size (`diff4splat.pipelines.inputs.fit_frames` with ``cover``): the image is resized to cover
(H, W) keeping its aspect ratio, then centre-cropped; the trajectory's normalised intrinsics describe the *input image*
and are carried through the crop, so a camera sees what it saw before. Preset trajectories get their intrinsics from
``trajectory.fov`` (vertical field of view of the input image, square pixels). ``tiny=true`` builds tiny random-weight
instances of the same classes, labelled untrained in ``meta.json`` and in the log.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from diff4splat.cli import InputError
from diff4splat.files import atomic_write_text
from diff4splat.models.camera_wan import CameraWanConfig
from diff4splat.pipelines.cameras import (
    CAMERA_SUFFIXES,
    Cameras,
    check_num_frames,
    check_trajectory_scale,
    resolve_cameras,
)
from diff4splat.pipelines.generation import (
    UNTRAINED_LABEL,
    Diff4SplatPipeline,
    check_model_paths,
    render_outputs,
    resolve_device,
)
from diff4splat.pipelines.inputs import IMAGE_SUFFIXES, fit_frames, read_image
from diff4splat.pipelines.memory import check_memory
from diff4splat.pipelines.outputs import (
    META_FILE,
    OUTPUTS,
    OutputWriter,
    atomic_output_dir,
    build_meta,
    check_output_dir,
    check_writable,
)
from diff4splat.pipelines.public import check_fun_sampling, resolve_config
from diff4splat.pipelines.scale import scale_cameras
from diff4splat.pipelines.stages import STAGES, Stages
from diff4splat.sampling import SamplingConfig, distilled_timesteps

log = logging.getLogger("diff4splat.generate")

# compile=null compiles when the scenes to generate run at least this many CameraWan forwards (scenes x steps, x 2 with
# CFG): compiling costs ~12 s once per frame size and saves ~38 ms per forward at 352x640x49 on the H100 (1.9 s per
# scene of 25 guided steps: experiments/benchmarks/results/generate_h100.md), so 3 such scenes compile, as do 38 of a
# 4-step student, whose one-off scene compilation would slow by ~12 s to save ~0.15 s
AUTO_COMPILE_FORWARDS = 150
DEFAULT_SIZE, DEFAULT_FRAMES = (352, 640), 49  # the reference's generation size
TINY_SIZE, TINY_FRAMES = (96, 160), 13
OUTPUT_OPTION, OVERWRITE_FLAG = "output_dir=", "overwrite=true"  # how error messages name them
SIZE_UNIT = 32  # the Wan2.2 DiT token: VAE stride 16 x patch 2 (the models may need more, checked when loaded)
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes 64-bit seeds
MAX_CROP = 0.25  # a fit that cuts away more of the image than this is reported
MAX_UPSCALE = 2.0  # so is one that upscales the image more than this


# ----------------------------------------------------------------------------------------------------------------------
# Configuration (conf/generate.yaml)
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class TrajectoryOptions:
    num_frames: int | None = None  # None: 49 (13 tiny); 1 + 4k; a file's cameras are resampled evenly to this count
    strength: float = 1.0  # presets: how far the camera moves (see geometry.trajectories)
    look_at: float | list[float] = 1.0  # presets: the point aimed at / orbited, scene units (1: mean scene depth)
    fov: float = 60.0  # presets: vertical field of view of the input image, degrees
    # the trajectory's units x scale = the camera model's scene units (diff4splat.geometry.scale); "auto": the factor
    # that makes its largest camera distance from camera 0 0.5 units, as far as the presets move; the scene is
    # exported back in the trajectory's units
    scale: float | str = 1.0


@dataclass
class LRDMOptions:
    input_frames: int | None = 13  # rgb encoder: frames fed to the LRDM, evenly spaced (None: all)
    num_times: int | None = None  # query times stored in the scene (ply frames); None: one per latent frame
    translation_scale: float | None = None  # trajectory units x this = LRDM units; None: automatic (pipelines.scale)
    prune_threshold: float | None = None  # None: the checkpoint's (0.005 by default)
    tiny_encoder: Literal["latent", "rgb"] = "latent"  # tiny=true only: the random LRDM's input encoder


@dataclass
class RenderOptions:
    backend: Literal["auto", "gsplat", "torch"] = "auto"
    novel_preset: str = "orbit"  # novel.mp4: a preset path about the scene centre at mid time
    novel_strength: float = 0.1  # orbit: 36 degrees
    novel_frames: int | None = None  # None: as many as the trajectory


@dataclass
class LowMemoryOptions:
    offload: bool = False  # keep every model on the CPU and move each to the device only while it runs
    vae_tiling: bool = False  # tiled Wan VAE encode/decode (diffusers' tiling)
    vae_tile: tuple[int, int] = (256, 192)  # tile size and stride in pixels
    text_encoder_on_cpu: bool = False  # the UMT5 encoder runs on the CPU (float32)


@dataclass
class ModelPaths:
    text_encoder: str | None = None  # diffusers root with text_encoder/ + tokenizer/, or one folder with both
    vae: str | None = None  # diffusers root with vae/, or the VAE folder
    # base weights + camera_weights, or a path: the Wan2.2-Fun camera release folder or our camera weights (.safetensors)
    camera_wan: CameraWanConfig | str = field(default_factory=CameraWanConfig)
    lrdm: str | None = None  # a training export (.safetensors with the config in its metadata) or a .ckpt
    aligner: str | None = None  # LatentAligner .safetensors (decoder=tiny_vae)


@dataclass
class GenerateConfig:
    """Everything ``python -m diff4splat.generate`` reads (``conf/generate.yaml``); unknown keys and wrong types fail."""

    layout: Literal["ours", "public"] = "ours"  # which weights models.* name (conf/layout/; public: released only)
    image: str | None = None
    prompt: str = ""
    negative_prompt: str | None = None  # None: Wan's standard negative prompt
    camera: str = "orbit"  # a preset name, a trajectory .json, a RealEstate10K .txt or an .npz (C2W, fxfycxcy)
    trajectory: TrajectoryOptions = field(default_factory=TrajectoryOptions)
    output_dir: str | None = None
    overwrite: bool = False
    seed: int = 0
    tiny: bool = False
    height: int | None = None  # model frame size; None: 352 x 640 (96 x 160 tiny)
    width: int | None = None
    fps: int = 16
    device: str = "auto"
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"  # auto: bfloat16 on CUDA, float32 on the CPU
    decoder: Literal["wan", "tiny_vae"] = "wan"  # latents -> frames (video.mp4, and the rgb LRDM's input)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    models: ModelPaths = field(default_factory=ModelPaths)
    lrdm: LRDMOptions = field(default_factory=LRDMOptions)
    render: RenderOptions = field(default_factory=RenderOptions)
    low_memory: LowMemoryOptions = field(default_factory=LowMemoryOptions)
    batch: str | None = None  # a folder of images or a CSV with columns image, trajectory, prompt (+ name, seed)
    progress: bool = True
    compile: bool | None = None  # torch.compile each CameraWan block; None: on CUDA for >= 150 forwards in all
    video_preset: str = "superfast"  # libx264 preset of the mp4s (ultrafast ... veryslow)
    write_workers: int | None = None  # writer threads (None: one per file); 0: every file written in turn
    check_memory: bool = True  # refuse sizes whose estimated peak memory exceeds what is free (pipelines.memory)


# ----------------------------------------------------------------------------------------------------------------------
# Jobs: single image or batch, checked before any model is built
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Job:
    """One checked generation: the fitted image, its cameras and where it goes."""

    image_path: Path
    image: Tensor  # [3, H, W] at the model size
    cameras: Cameras  # fxfycxcy already for the model frame
    prompt: str
    seed: int
    target: Path
    fit: dict  # the resize and crop (meta.json's "preprocess")
    camera_spec: str


def model_size(cfg: GenerateConfig) -> tuple[int, int]:
    h, w = TINY_SIZE if cfg.tiny else DEFAULT_SIZE
    h, w = cfg.height or h, cfg.width or w
    unit = SIZE_UNIT
    if h % unit or w % unit or h <= 0 or w <= 0:
        raise InputError(f"height={h} width={w}: expected positive multiples of {unit} (e.g. 352 x 640, 480 x 832)")
    return h, w


def check_seed(seed: int, where: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InputError(f"{where}: expected an integer in [0, 2^63 - 1], got {seed!r}")
    return seed


def check_options(cfg: GenerateConfig) -> None:
    """The numeric options that no model or file checks: each must mean something (``fps=0``, ``sampling.steps=0``,
    a NaN scale are refused here, naming the option, before anything is read or built)."""

    def need(ok: bool, name: str, expected: str) -> None:
        if not ok:
            value = _option_value(cfg, name)
            raise InputError(f"{name}: expected {expected}, got {value!r}")

    def finite(x: float | None) -> bool:
        return x is not None and math.isfinite(x)

    s = cfg.sampling
    need(cfg.fps >= 1, "fps", "a frame rate >= 1")
    need(s.steps >= 1, "sampling.steps", "at least 1 denoising step")
    need(finite(s.guidance_scale), "sampling.guidance_scale", "a finite number (1.0: no guidance)")
    need(finite(s.flow_shift) and s.flow_shift > 0, "sampling.flow_shift", "a finite number > 0")
    need(s.num_train_timesteps >= s.steps, "sampling.num_train_timesteps", f"at least sampling.steps={s.steps}")
    if s.mode == "distilled":
        try:
            distilled_timesteps(s)
        except ValueError as e:
            raise InputError(f"sampling.timesteps: {e}") from None
    ts = cfg.lrdm.translation_scale
    need(ts is None or (finite(ts) and ts > 0), "lrdm.translation_scale", "a number > 0, or null (automatic)")
    check_trajectory_scale(cfg.trajectory.scale)
    p = cfg.lrdm.prune_threshold
    need(p is None or (finite(p) and 0 <= p < 1), "lrdm.prune_threshold", "an opacity in [0, 1) or null")
    need(cfg.lrdm.input_frames is None or cfg.lrdm.input_frames >= 1, "lrdm.input_frames", "a count >= 1 or null")
    need(cfg.lrdm.num_times is None or cfg.lrdm.num_times >= 1, "lrdm.num_times", "a count >= 1 or null")
    need(cfg.render.novel_frames is None or cfg.render.novel_frames >= 1, "render.novel_frames", ">= 1 or null")
    need(finite(cfg.render.novel_strength), "render.novel_strength", "a finite number")
    need(cfg.write_workers is None or cfg.write_workers >= 0, "write_workers", "a thread count >= 0 or null")
    check_seed(cfg.seed)


def _option_value(obj: object, dotted: str) -> object:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def check_fit(fit: dict, where: str, unit: int) -> None:
    """Refuse an image smaller than the model's ``unit`` (``fit`` from `fit_frames`: there is nothing to see in it);
    warn (one line each) when the fit cuts away more than `MAX_CROP` of the image or upscales it more than
    `MAX_UPSCALE` times."""
    (h, w), (rh, rw), (ch, cw) = fit["input_size"], fit["resized_to"], fit["model_size"]
    if min(h, w) < unit:
        raise InputError(
            f"{where}: the image is {h}x{w} pixels; expected at least {unit} pixels per side (the model's "
            f"{ch}x{cw} frame would be upscaled from almost nothing)"
        )
    cut = 1 - (ch * cw) / (rh * rw)
    if cut > MAX_CROP:
        log.warning(
            "%s: the %dx%d image is centre-cropped to the model's %dx%d aspect ratio, cutting away %.0f %% of it; "
            "choose height/width closer to its aspect ratio to keep more",
            where,
            h,
            w,
            ch,
            cw,
            100 * cut,
        )
    if rh / h > MAX_UPSCALE:
        log.warning(
            "%s: the %dx%d image is upscaled %.1fx to %dx%d: expect a blurred video", where, h, w, rh / h, rh, rw
        )


def make_job(
    cfg: GenerateConfig, image: str | Path, camera: str, prompt: str, seed: int, target: Path, where: str = ""
) -> Job:
    """Read, check and fit one (image, trajectory); ``where`` prefixes errors (e.g. a CSV row)."""
    check_options(cfg)
    h, w = model_size(cfg)
    try:
        check_seed(seed, "seed")
        n = cfg.trajectory.num_frames
        num_frames = check_num_frames((TINY_FRAMES if cfg.tiny else DEFAULT_FRAMES) if n is None else n)
        check_memory(cfg, num_frames, h, w, str(resolve_device(cfg.device)))
        pixels = read_image(image)
        cams = resolve_cameras(camera, cfg.trajectory, num_frames, tuple(pixels.shape[-2:]))
        fitted, fx, fit = fit_frames(pixels, cams.fxfycxcy, size=(h, w), cover=True)
        check_fit(fit, f"image={image}", SIZE_UNIT)
    except InputError as e:
        raise InputError(f"{where}{e}") from e
    cams = replace(cams, fxfycxcy=fx)
    return Job(Path(image), fitted, cams, prompt, seed, target, fit, camera)


def read_batch(cfg: GenerateConfig, out: Path) -> list[Job]:
    """Jobs of a folder of images (each with ``camera`` and ``prompt``) or a CSV: header ``image`` (required),
    ``trajectory``, ``prompt``, ``name``, ``seed`` (optional; empty cells take the command line's values). Relative
    paths in a CSV are relative to the CSV's folder; each job writes ``output_dir/<name or image stem>/``."""
    src = Path(cfg.batch)
    rows: list[tuple[str, dict]] = []
    if src.is_dir():
        images = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise InputError(f"batch={src}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        rows = [(f"batch={src}: {p.name}: ", {"image": str(p)}) for p in images]
    elif src.is_file() and src.suffix.lower() == ".csv":
        with open(src, newline="", encoding="utf-8-sig") as fh:  # -sig: a spreadsheet's byte-order mark
            reader = csv.DictReader(fh)
            columns = set(reader.fieldnames or [])
            unknown = columns - {"image", "trajectory", "prompt", "name", "seed"}
            if "image" not in columns or unknown:
                raise InputError(
                    f"batch={src}: header {sorted(columns)}; expected a column 'image' and optionally "
                    f"'trajectory', 'prompt', 'name', 'seed'"
                )
            for row in reader:
                i = reader.line_num
                if not (row.get("image") or "").strip():
                    raise InputError(f"batch={src}: line {i}: field image is empty; expected an image path")
                image = Path(row["image"].strip())
                row["image"] = str(image if image.is_absolute() else src.parent / image)
                traj = (row.get("trajectory") or "").strip()
                if traj.lower().endswith(CAMERA_SUFFIXES) and not Path(traj).is_absolute():
                    row["trajectory"] = str(src.parent / traj)
                rows.append((f"batch={src}: line {i}: ", row))
        if not rows:
            raise InputError(f"batch={src}: no rows after the header")
    else:
        raise InputError(f"batch={src}: expected a folder of images or a .csv file (image, trajectory, prompt)")
    jobs, seen = [], {}
    for where, row in rows:
        name = (row.get("name") or "").strip() or Path(row["image"]).stem
        if Path(name).name != name or name in (".", ".."):
            raise InputError(f"{where}field name is {name!r}; expected a plain folder name (no path separators)")
        if name in seen:
            raise InputError(f"{where}writes to {out / name}, as does {seen[name]}; give the rows distinct 'name's")
        seen[name] = where.rstrip(": ")
        seed_text = (row.get("seed") or "").strip()
        try:
            seed = int(seed_text) if seed_text else cfg.seed
        except ValueError as e:
            raise InputError(f"{where}field seed is {seed_text!r}; expected an integer") from e
        target = out / name
        check_output_dir(target, cfg.overwrite, f"{where}output folder=", OVERWRITE_FLAG)
        jobs.append(
            make_job(
                cfg,
                row["image"],
                (row.get("trajectory") or "").strip() or cfg.camera,
                (row.get("prompt") or "").strip() or cfg.prompt,
                seed,
                target,
                where,
            )
        )
    return jobs


# ----------------------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------------------


def run_job(
    pipe: Diff4SplatPipeline,
    job: Job,
    cfg: GenerateConfig,
    load_s: float = 0.0,
    outputs: tuple[str, ...] = OUTPUTS,
    on_scene: Callable[[Path | None], None] | None = None,
) -> Path:
    """Generate one scene and write every output into ``job.target`` atomically; returns the folder.

    The scene is ready first (`OutputWriter`): ``on_scene`` is called with the complete ``scene.safetensors`` in the
    job's temporary folder (the Gaussians are ``gen.scene``) while the slow files are still being written; meta.json's
    ``timings`` record ``time_to_scene`` and ``time_to_all_files`` (seconds from the job's start), the stages and each
    file's own seconds (``write_files``)."""
    with contextlib.ExitStack() as stack:
        finish = start_job(pipe, job, cfg, stack, load_s, outputs, on_scene)
        finish()
    return job.target


def start_job(
    pipe: Diff4SplatPipeline,
    job: Job,
    cfg: GenerateConfig,
    stack: contextlib.ExitStack,
    load_s: float = 0.0,
    outputs: tuple[str, ...] = OUTPUTS,
    on_scene: Callable[[Path | None], None] | None = None,
) -> Callable[[], Path]:
    """`run_job` in two halves: generate the scene and its renders into a temporary folder (entered on ``stack``) and
    start writing its files; returns the function that waits for them and writes meta.json. Closing ``stack`` renames
    the folder into place (or, with an exception, removes it), so other work can run while the files are written."""
    label = f"[{UNTRAINED_LABEL}] " if pipe.untrained else ""
    log.info(
        "%sgenerating %s (camera=%s, %d frames, seed %d) -> %s",
        label,
        job.image_path.name,
        job.camera_spec,
        job.cameras.c2w.shape[0],
        job.seed,
        job.target,
    )
    sampling = replace(cfg.sampling, seed=job.seed)
    stages = Stages(pipe.device, progress=cfg.progress)
    tmp = stack.enter_context(atomic_output_dir(job.target, cfg.overwrite, OUTPUT_OPTION, OVERWRITE_FLAG))
    gen = pipe(
        job.image,
        job.cameras.c2w.float(),
        job.cameras.fxfycxcy.float(),
        job.cameras.times.float(),
        job.prompt,
        cfg.negative_prompt,
        sampling,
        query_times=_query_times(job, cfg),
        lrdm_input_frames=cfg.lrdm.input_frames,
        translation_scale=cfg.lrdm.translation_scale,
        scene_c2w=scale_cameras(job.cameras.c2w, 1.0 / job.cameras.trajectory_scale).float(),
        prune_threshold=cfg.lrdm.prune_threshold,
        stages=stages,
    )
    scene_meta = {"image": str(job.image_path), "prompt": job.prompt, "seed": job.seed, "untrained": pipe.untrained}
    file_timings: dict[str, float] = {}
    writer = OutputWriter(
        gen, tmp, cfg.fps, stages, outputs, scene_meta, cfg.video_preset, file_timings, cfg.write_workers, on_scene
    )
    stack.callback(writer.cancel)  # first, as the stack unwinds: no writer outlives the folder
    renders = writer.start(lambda: render_outputs(pipe, gen, cfg.render, stages))

    def finish() -> Path:
        files = writer.finish()
        gen.timings = dict(stages.timings)
        meta = build_meta(job, pipe, gen, renders, cfg, sampling, files, load_s)
        meta["timings"].update({k: round(v, 6) for k, v in stages.marks.items()})
        meta["timings"]["write_files"] = {k: round(v, 6) for k, v in sorted(file_timings.items())}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        t = meta["timings"]
        log.info(
            "%s%d Gaussians, %d query times; scene in %.2f s, all files in %.2f s (%s) -> %s",
            label,
            gen.scene.gaussians.num_gaussians,
            gen.scene.gaussians.num_times,
            t["time_to_scene"],
            t["time_to_all_files"],
            ", ".join(f"{k} {t[k]:.2f}" for k in STAGES if k in t),
            job.target,
        )
        return job.target

    return finish


def run_jobs(pipe: Diff4SplatPipeline, jobs: list[Job], cfg: GenerateConfig, load_s: float = 0.0) -> list[Path]:
    """Every job, each scene's files written while the next scene is generated (one job's at a time), each folder
    renamed into place when its files are complete. A job that fails removes its own folder; the one before it still
    completes unless the failure is an interrupt (Ctrl-C, SIGTERM), which removes both."""
    done: list[Path] = []
    previous: tuple[contextlib.ExitStack, Callable[[], Path]] | None = None
    for job in jobs:
        stack = contextlib.ExitStack()
        try:
            finish = start_job(pipe, job, cfg, stack, load_s)
        except BaseException as e:
            _close(stack, e)
            if previous is not None:
                if isinstance(e, Exception):
                    done.append(_complete(*previous))
                else:
                    _close(previous[0], e)
            raise
        if previous is not None:
            try:
                done.append(_complete(*previous))
            except BaseException as e:
                _close(stack, e)
                raise
        previous = (stack, finish)
    if previous is not None:
        done.append(_complete(*previous))
    return done


def _complete(stack: contextlib.ExitStack, finish: Callable[[], Path]) -> Path:
    """Wait for a started job's files and rename its folder into place (removed if they failed)."""
    try:
        path = finish()
    except BaseException as e:
        _close(stack, e)
        raise
    stack.close()
    return path


def _close(stack: contextlib.ExitStack, error: BaseException) -> None:
    """Unwind ``stack`` with ``error``: its temporary folder is removed, never renamed into place."""
    stack.__exit__(type(error), error, error.__traceback__)


def check_release_sampling(cfg: GenerateConfig) -> None:
    """A released distilled base model (FastWan: ``model_index.json`` names a DMD pipeline) samples with the schedule
    its student was trained for, ``sampling.mode=distilled`` with its steps; any other sampling is refused."""
    from diff4splat.models.fastwan import release_timesteps

    cw, s = cfg.models.camera_wan, cfg.sampling
    timesteps = release_timesteps(cw.pretrained_path) if cw.init == "pretrained" and cw.pretrained_path else None
    if timesteps is not None and (s.mode != "distilled" or distilled_timesteps(s) != timesteps):
        raise InputError(
            f"models.camera_wan.pretrained_path={cw.pretrained_path}: a {len(timesteps)}-step distilled release "
            f"(timesteps {[int(t) for t in timesteps]}); pass sampling.mode=distilled sampling.steps={len(timesteps)} "
            f"(got sampling.mode={s.mode} sampling.steps={s.steps})"
        )


def _query_times(job: Job, cfg: GenerateConfig) -> Tensor | None:
    n = cfg.lrdm.num_times
    if n is None:
        return None
    if n < 1:
        raise InputError(f"lrdm.num_times: expected a positive count (or null: one per latent frame), got {n}")
    times = job.cameras.times.float()
    return times[torch.linspace(0, len(times) - 1, n).round().long()].unique()


def generate(cfg: GenerateConfig) -> Path:
    """``python -m diff4splat.generate``: check every input, build the pipeline once, write each scene atomically.

    Returns the output folder (in batch mode, the folder holding one sub-folder per job)."""
    if not cfg.output_dir:
        raise InputError("output_dir: required (the folder to write scene.safetensors, ply/, videos, meta.json to)")
    out = Path(cfg.output_dir).absolute()
    check_options(cfg)
    cfg = resolve_config(cfg)  # models.camera_wan=<path>: the config it stands for (file headers only)
    check_fun_sampling(cfg)
    if not cfg.tiny:
        check_model_paths(cfg)
        check_release_sampling(cfg)
    if cfg.batch:
        if cfg.image:
            raise InputError("image and batch are exclusive: pass one image or a batch folder/CSV")
        check_writable(out, OUTPUT_OPTION, inside=True)
        jobs = read_batch(cfg, out)
    else:
        if not cfg.image:
            raise InputError("image: required (a path to the first frame), or batch=FOLDER_OR_CSV")
        check_output_dir(out, cfg.overwrite, OUTPUT_OPTION, OVERWRITE_FLAG)
        check_writable(out, OUTPUT_OPTION)
        jobs = [make_job(cfg, cfg.image, cfg.camera, cfg.prompt, cfg.seed, out)]
    start = time.perf_counter()
    pipe = Diff4SplatPipeline.from_config(cfg)
    forwards = len(jobs) * cfg.sampling.steps * (2 if cfg.sampling.guided else 1)
    if cfg.compile is None and pipe.device.type == "cuda" and forwards >= AUTO_COMPILE_FORWARDS:
        log.info(
            "compiling the CameraWan blocks for %d scenes (the first one pays ~12 s; compile=false to skip)", len(jobs)
        )
        pipe.compile()
    load_s = time.perf_counter() - start
    unit = pipe.size_multiple
    if any(j.image.shape[-1] % unit or j.image.shape[-2] % unit for j in jobs):
        raise InputError(
            f"height x width = {jobs[0].image.shape[-2]}x{jobs[0].image.shape[-1]}: these models need "
            f"multiples of {unit}"
        )
    done = run_jobs(pipe, jobs, cfg, load_s)
    if cfg.batch:
        index = {
            "batch": str(Path(cfg.batch).resolve()),
            "jobs": [str(p.name) for p in done],
            "untrained": pipe.untrained,
        }
        atomic_write_text(out / "batch.json", json.dumps(index, indent=1))
        return out
    return done[0]
