"""The typed configuration of ``python -m diff4splat.generate`` (``conf/generate.yaml``: `GenerateConfig` and its
option groups), one generation job (`Job`), and the checks of options that need no file or model
(`check_options`, `check_seed`, `check_fit`, `model_size`). `diff4splat.pipelines.jobs` builds and runs the jobs."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from torch import Tensor

from diff4splat.cli import InputError
from diff4splat.models.camera_wan import CameraWanConfig
from diff4splat.pipelines.cameras import Cameras, check_trajectory_scale
from diff4splat.sampling import SamplingConfig, distilled_timesteps

log = logging.getLogger("diff4splat.generate")

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


def check_model_paths(cfg: GenerateConfig) -> None:
    """Every weight path the config needs exists (checked before anything is loaded or written)."""
    m, cw = cfg.models, cfg.models.camera_wan
    need = [
        ("models.text_encoder", m.text_encoder, "a diffusers root with text_encoder/ and tokenizer/"),
        ("models.vae", m.vae, "a diffusers root with vae/ or the VAE folder"),
        ("models.lrdm", m.lrdm, "an LRDM training export (.safetensors) or a .ckpt"),
    ]
    if cw.init == "pretrained":
        need.append(("models.camera_wan.pretrained_path", cw.pretrained_path, "a diffusers Wan2.2-TI2V-5B folder"))
    if cw.init == "original":
        need += [
            (f"models.camera_wan.original_paths[{i}]", p, "the release's DiT safetensors")
            for i, p in enumerate(cw.original_paths or [None])
        ]
    if cw.camera_weights:
        need.append(("models.camera_wan.camera_weights", cw.camera_weights, "CameraWan camera weights .safetensors"))
    if cfg.decoder == "tiny_vae":
        need.append(("models.aligner", m.aligner, "a LatentAligner .safetensors (decoder=tiny_vae)"))
    for name, path, what in need:
        if not path or not Path(path).exists():
            raise InputError(f"{name}={path}: not found; expected {what} (or tiny=true for random tiny models)")
