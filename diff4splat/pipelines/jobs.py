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
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from diff4splat.cli import InputError
from diff4splat.files import atomic_write_text
from diff4splat.pipelines.cameras import (
    CAMERA_SUFFIXES,
    check_num_frames,
    resolve_cameras,
)
from diff4splat.pipelines.generation import (
    UNTRAINED_LABEL,
    Diff4SplatPipeline,
    resolve_device,
)
from diff4splat.pipelines.inputs import IMAGE_SUFFIXES, fit_frames, read_image
from diff4splat.pipelines.memory import check_memory
from diff4splat.pipelines.options import (  # noqa: F401 - the configuration, importable from here as before
    DEFAULT_FRAMES,
    DEFAULT_SIZE,
    MAX_CROP,
    MAX_SEED,
    MAX_UPSCALE,
    OUTPUT_OPTION,
    OVERWRITE_FLAG,
    SIZE_UNIT,
    TINY_FRAMES,
    TINY_SIZE,
    GenerateConfig,
    Job,
    LowMemoryOptions,
    LRDMOptions,
    ModelPaths,
    RenderOptions,
    TrajectoryOptions,
    check_fit,
    check_model_paths,
    check_options,
    check_seed,
    model_size,
)
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
from diff4splat.pipelines.renders import render_outputs
from diff4splat.pipelines.scale import scale_cameras
from diff4splat.pipelines.stages import STAGES, Stages
from diff4splat.sampling import distilled_timesteps

log = logging.getLogger("diff4splat.generate")

# compile=null compiles when the scenes to generate run at least this many CameraWan forwards (scenes x steps, x 2 with
# CFG): compiling costs ~12 s once per frame size and saves ~38 ms per forward at 352x640x49 on the H100 (1.9 s per
# scene of 25 guided steps: experiments/benchmarks/results/generate_h100.md), so 3 such scenes compile, as do 38 of a
# 4-step student, whose one-off scene compilation would slow by ~12 s to save ~0.15 s
AUTO_COMPILE_FORWARDS = 150


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
