"""Generation: one image + a camera trajectory + an optional prompt -> a video -> a 4D Gaussian scene (Diff4Splat).

``Diff4SplatPipeline`` chains the three models: the prompt (and Wan's negative prompt) through the UMT5 text encoder;
the image through the Wan VAE to the first-frame latent; CameraWan samples the video latents along the trajectory
(flow matching, classifier-free guidance whose unconditional branch is the negative prompt with zeroed cameras:
``diff4splat.sampling.sample_latents``); the latents become frames through the Wan VAE decoder or the aligned
TinyVAE decoder (``decoder``); the LRDM reads the latents directly (``latent`` encoder, the paper) or the decoded frames
(``rgb`` encoder, the released code) — the LRDM checkpoint says which — and returns ``DeformableGaussians``.

Inputs are fitted to the model's frame size (``fit_image``): the image is resized to cover (H, W) keeping its aspect
ratio, then centre-cropped; the trajectory's normalised intrinsics describe the *input image* and are carried through
the crop (``crop_intrinsics``), so a camera sees what it saw before. Preset trajectories get their intrinsics from
``trajectory.fov`` (vertical field of view of the input image, square pixels). Camera translations are metric for the
video model; the LRDM gets them times ``lrdm.translation_scale`` (its training units: mean scene depth ≈ 1).

``generate(cfg)`` is what ``python -m diff4splat.generate`` runs: it checks every input first (image, trajectory,
output folders: a bad one fails before any model is loaded), builds the pipeline once, and writes each scene into a
temporary folder beside its target that is renamed into place only when every file is written (``atomic_output_dir``).
``tiny=true`` builds tiny random-weight instances of the same classes: a smoke test on any machine, labelled untrained
in ``meta.json`` and in the log.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import logging
import math
import os
import platform
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diff4splat.cli import InputError
from diff4splat.gaussians import DeformableGaussians
from diff4splat.geometry.cameras import canonicalize, crop_intrinsics, fov_to_focal
from diff4splat.geometry.trajectories import PRESETS, Trajectory, make_trajectory
from diff4splat.media import depth_to_color, to_uint8, write_video
from diff4splat.models.camera_wan import CameraWan, CameraWanConfig, plucker_for_latents
from diff4splat.pipelines.inputs import IMAGE_SUFFIXES
from diff4splat.pipelines.reconstruction import Reconstruction, ReconstructionPipeline
from diff4splat.sampling import SamplingConfig, sample_latents

log = logging.getLogger("diff4splat.generate")

META_FORMAT = "diff4splat-generation"
UNTRAINED_LABEL = "UNTRAINED: random-weight models (a smoke test or a benchmark); these outputs are not a result"
OUTPUTS = ("scene", "ply", "video", "render", "novel", "depth", "trajectory")
STAGES = ("text", "encode", "sampling", "decode", "lrdm", "render", "write")
FRAME_STRIDE = 4  # the Wan VAE's temporal stride: videos have 1 + 4k frames
# compile=null compiles for batches of at least this many scenes: on the H100 compiling costs ~12 s once per frame
# size and saves ~1.9 s per scene at 352x640x49 (experiments/benchmarks/results/generate_h100.md)
AUTO_COMPILE_JOBS = 3

DEFAULT_SIZE, DEFAULT_FRAMES = (352, 640), 49  # the reference's generation size
TINY_SIZE, TINY_FRAMES = (96, 160), 13
# tiny instances of the real classes (Wan2.2 interface: 48 latent channels, 16x spatial, 4x temporal)
TINY_CAMERA_WAN = {"arch": "tiny", "arch_overrides": {"in_channels": 48, "out_channels": 48}, "vae_stride": (4, 16, 16)}
TINY_LRDM = {"dim": 48, "depth": 2, "num_heads": 4, "decoder_channels": 8, "patch_size": 16, "gaussian_stride": 8}
TINY_ALIGNER = {
    "version": "wan22",
    "tiny_vae": {"encoder_width": 8, "decoder_widths": [32, 16, 8, 8]},
    "mapper_width": 8,
}


# ----------------------------------------------------------------------------------------------------------------------
# Configuration (conf/generate.yaml)
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class TrajectoryOptions:
    num_frames: int | None = None  # None: 49 (13 tiny); 1 + 4k; a file's cameras are resampled evenly to this count
    strength: float = 1.0  # presets: how far the camera moves (see geometry.trajectories)
    look_at: float | list[float] = 2.0  # presets: the point aimed at / orbited (metric distance or xyz)
    fov: float = 60.0  # presets: vertical field of view of the input image, degrees
    translation_scale: float = 1.0  # multiplies every camera translation (e.g. to make a file's units metric)


@dataclass
class LRDMOptions:
    input_frames: int | None = 13  # rgb encoder: frames fed to the LRDM, evenly spaced (None: all)
    num_times: int | None = None  # query times stored in the scene (ply frames); None: one per latent frame
    translation_scale: float = 1.0  # video-model (metric) translations -> LRDM units
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
    camera_wan: CameraWanConfig = field(default_factory=CameraWanConfig)  # base weights + camera_weights
    lrdm: str | None = None  # a training export (.safetensors with the config in its metadata) or a .ckpt
    aligner: str | None = None  # LatentAligner .safetensors (decoder=tiny_vae)


@dataclass
class GenerateConfig:
    """Everything ``python -m diff4splat.generate`` reads (``conf/generate.yaml``); unknown keys and wrong types fail."""

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
    compile: bool | None = None  # torch.compile each CameraWan block; None: on CUDA for batches of >= 3 scenes
    video_preset: str = "veryfast"  # libx264 preset of the mp4s (ultrafast ... veryslow)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device={name}: CUDA is not available on this machine (use device=cpu or device=auto)")
    return device


# ----------------------------------------------------------------------------------------------------------------------
# Stage timings and progress bars
# ----------------------------------------------------------------------------------------------------------------------


class Stages:
    """Wall-clock time per stage (CUDA-synchronised at both ends) and one progress bar per stage on stderr."""

    def __init__(self, device: torch.device | str = "cpu", progress: bool = True) -> None:
        self.device = torch.device(device)
        self.progress = progress
        self.timings: dict[str, float] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, name: str, total: int = 1, unit: str = "it") -> Iterator[Any]:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"{name:<8}", unit=unit, disable=not self.progress, dynamic_ncols=True)
        self._sync()
        start = time.perf_counter()
        try:
            yield bar
            self._sync()
            bar.update(max(0, total - bar.n))
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
            bar.close()


# ----------------------------------------------------------------------------------------------------------------------
# Inputs: image, trajectory, fitting
# ----------------------------------------------------------------------------------------------------------------------


def read_image(path: str | Path, field_name: str = "image") -> Tensor:  # -> [3, H, W] in [0, 1]
    """One image file (EXIF orientation applied); errors name the field, the file and the accepted forms."""
    from PIL import Image, ImageOps

    path = Path(path)
    expected = f"expected an image file ({', '.join(IMAGE_SUFFIXES)})"
    if not path.is_file():
        raise InputError(f"{field_name}={path}: no such file; {expected}")
    try:
        with Image.open(path) as im:
            arr = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except OSError as e:
        raise InputError(f"{field_name}={path}: unreadable image ({e}); {expected}") from e
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


@dataclass
class Cameras:
    """A checked trajectory for one video: canonical (camera 0 = identity) metric OpenCV c2w."""

    c2w: Tensor  # [F, 4, 4] float64
    fxfycxcy: Tensor  # [F, 4] float64, normalised for the input image
    times: Tensor  # [F] float64 in [0, 1]
    source: dict  # how the cameras were made (meta.json)


def _expected_camera_forms() -> str:
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


def check_cameras(c2w: Tensor, fxfycxcy: Tensor, times: Tensor, where: str) -> None:
    """Finite values, rigid poses, positive focal lengths, non-decreasing times; errors name frame and field."""
    f = c2w.shape[0]
    if f == 0:
        raise InputError(f"{where}: zero frames; expected at least {1 + FRAME_STRIDE} cameras")
    checks = [
        (
            ~torch.isfinite(c2w).flatten(1).all(1),
            "c2w",
            "non-finite values (NaN or inf)",
            "a finite 4x4 OpenCV camera-to-world matrix",
        ),
        (
            ~torch.isfinite(fxfycxcy).all(1),
            "fxfycxcy",
            "non-finite values (NaN or inf)",
            "4 finite normalised intrinsics fx/W, fy/H, cx/W, cy/H",
        ),
        (~torch.isfinite(times), "timestamp", "a non-finite value", "finite timestamps"),
    ]
    for bad, name, what, expected in checks:
        if bad.any():
            raise InputError(f"{where}: frame {int(bad.nonzero()[0])}: field {name} has {what}; expected {expected}")
    bottom = (c2w[:, 3] - c2w.new_tensor([0.0, 0.0, 0.0, 1.0])).abs().amax(1) > 1e-6
    rot = c2w[:, :3, :3]
    eye = torch.eye(3, dtype=c2w.dtype)
    not_rigid = ((rot.transpose(1, 2) @ rot - eye).abs().flatten(1).amax(1) > 1e-3) | (torch.linalg.det(rot) < 0)
    for bad, what in ((bottom, "its last row is not (0, 0, 0, 1)"), (not_rigid, "its rotation is not orthonormal")):
        if bad.any():
            raise InputError(
                f"{where}: frame {int(bad.nonzero()[0])}: field c2w: {what}; expected a rigid OpenCV "
                f"camera-to-world matrix [R t; 0 0 0 1]"
            )
    bad_f = fxfycxcy[:, :2].amin(1) <= 0
    if bad_f.any():
        raise InputError(
            f"{where}: frame {int(bad_f.nonzero()[0])}: field fxfycxcy has a focal length <= 0; expected "
            f"positive normalised fx/W, fy/H"
        )
    if f > 1 and (times[1:] < times[:-1]).any():
        raise InputError(
            f"{where}: timestamps decrease at frame {int((times[1:] < times[:-1]).nonzero()[0]) + 1}; "
            f"expected increasing timestamps"
        )


def _read_camera_file(path: Path) -> tuple[Tensor, Tensor, Tensor]:  # c2w, fxfycxcy, times (float64)
    from diff4splat.geometry.trajectories import read_re10k_txt, read_trajectory_json
    from diff4splat.pipelines.inputs import read_npz

    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            views = read_npz(path)
            times = views.times if views.times is not None else torch.linspace(0, 1, views.c2w.shape[0])
            return views.c2w.double(), views.fxfycxcy.double(), times.double()
        traj: Trajectory = read_trajectory_json(path) if suffix == ".json" else read_re10k_txt(path)
    except InputError as e:
        raise InputError(f"camera={path}: {e}") from e
    except (ValueError, OSError, KeyError, TypeError) as e:  # UnicodeDecodeError and JSON errors are ValueErrors
        raise InputError(f"camera={path}: unreadable trajectory file ({e}); {_expected_camera_forms()}") from e
    return traj.c2w.double(), traj.fxfycxcy.double(), traj.times()


def resolve_cameras(camera: str, opts: TrajectoryOptions, num_frames: int, image_size: tuple[int, int]) -> Cameras:
    """A preset (with ``opts``) or a camera file, resampled to ``num_frames``, checked, canonicalised and scaled.

    Preset intrinsics come from ``opts.fov`` for an input image of ``image_size`` (H, W), square pixels."""
    check_num_frames(num_frames)
    path = Path(camera)
    key = camera.replace("-", "_").lower()
    if key in PRESETS and not path.is_file():
        if not 0 < opts.fov < 180:
            raise InputError(f"trajectory.fov: expected a vertical field of view in (0, 180) degrees, got {opts.fov}")
        h, w = image_size
        fy = fov_to_focal(math.radians(opts.fov))
        try:
            traj = make_trajectory(
                key, num_frames, strength=opts.strength, look_at=opts.look_at, fxfycxcy=[fy * h / w, fy, 0.5, 0.5]
            )
        except ValueError as e:
            raise InputError(f"trajectory: {e}") from e
        c2w, fx, times = traj.c2w, traj.fxfycxcy, traj.times()
        source = {"preset": key, **asdict(opts), "num_frames": num_frames}
    else:
        if path.suffix.lower() not in (".json", ".txt", ".npz"):
            raise InputError(
                f"camera={camera}: not a trajectory preset and not a camera file; {_expected_camera_forms()}"
            )
        if not path.is_file():
            raise InputError(f"camera={path}: no such file; {_expected_camera_forms()}")
        c2w, fx, times = _read_camera_file(path)
        check_cameras(c2w, fx, times, f"camera={path}")
        n = c2w.shape[0]
        if n < num_frames:
            raise InputError(
                f"camera={path}: {n} cameras, fewer than trajectory.num_frames={num_frames}; pass a "
                f"smaller trajectory.num_frames (1 + 4k <= {n}) or a longer trajectory"
            )
        idx = torch.linspace(0, n - 1, num_frames, dtype=torch.float64).round().long()
        c2w, fx, times = c2w[idx], fx[idx], times[idx]
        span = times[-1] - times[0]
        times = (times - times[0]) / span if span > 0 else torch.linspace(0, 1, num_frames, dtype=torch.float64)
        source = {
            "file": str(path.resolve()),
            "file_frames": n,
            "frame_indices": idx.tolist(),
            "num_frames": num_frames,
            "translation_scale": opts.translation_scale,
        }
    check_cameras(c2w, fx, times, f"camera={camera}")
    c2w = canonicalize(c2w.double())
    c2w[:, :3, 3] *= opts.translation_scale
    return Cameras(c2w, fx.double(), times.double(), source)


def fit_image(image: Tensor, fxfycxcy: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, dict]:
    """Resize ``image`` [3, h, w] to cover (height, width) keeping its aspect ratio, then centre-crop to exactly
    (height, width); the normalised intrinsics [..., 4] of the input image become those of the crop (a resize does
    not change normalised intrinsics, a crop does). Returns the image, the intrinsics and what was done."""
    h, w = image.shape[-2:]
    s = max(height / h, width / w)
    rh, rw = max(height, round(h * s)), max(width, round(w * s))
    if (rh, rw) != (h, w):
        image = F.interpolate(image[None], size=(rh, rw), mode="bicubic", align_corners=False, antialias=True)[0]
    top, left = (rh - height) // 2, (rw - width) // 2
    image = image[:, top : top + height, left : left + width].clamp(0, 1)
    fxfycxcy = crop_intrinsics(fxfycxcy, rh, rw, top, left, height, width)
    return (
        image,
        fxfycxcy,
        {"input_size": [h, w], "resized_to": [rh, rw], "crop_top_left": [top, left], "model_size": [height, width]},
    )


# ----------------------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Generation:
    """What one generation produced (tensors on the pipeline's device)."""

    latents: Tensor  # [C, T, h, w] normalised Wan latents
    video: Tensor  # [F, 3, H, W] in [0, 1], the decoded video
    scene: Reconstruction  # gaussians (unbatched, pruned), c2w [F, 4, 4] in LRDM units, fxfycxcy [F, 4], times [F]
    lrdm_frames: Tensor  # [F_in] long: the video frames the LRDM read (latent encoder: all)
    timings: dict[str, float]


def _randomise_zero_inits(module: nn.Module, generator: torch.Generator, std: float = 0.02) -> None:
    """Give all-zero parameters small random values (the zero-initialised camera and deformation branches), so a tiny
    random model exercises those paths instead of skipping them."""
    with torch.no_grad():
        for p in module.parameters():
            if p.numel() and not p.any():
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p) * std)


class Diff4SplatPipeline:
    """Image + cameras + prompt -> CameraWan video latents -> (decoded frames) -> LRDM -> ``DeformableGaussians``.

    Args:
        text_encoder: ``models.text.TextEncoder`` (UMT5); its ``dim`` must equal CameraWan's ``text_dim``.
        camera_wan: ``CameraWan`` whose latent channels and VAE stride match ``vae``.
        vae: ``WanVAE``: encodes the first frame; decodes the video when ``decoder="wan"``.
        lrdm: ``LRDM`` (``latent`` encoder: reads the latents; ``rgb``: reads decoded frames).
        aligner: ``LatentAligner`` whose TinyVAE decodes the video when ``decoder="tiny_vae"``.
        device: where the models run. ``offload``: models live on the CPU and visit ``device`` one at a time.
        text_encoder_on_cpu: the text encoder always runs on the CPU. ``untrained``: tiny random weights (labelled).
    """

    def __init__(
        self,
        text_encoder: nn.Module,
        camera_wan: CameraWan,
        vae: nn.Module,
        lrdm: nn.Module,
        aligner: nn.Module | None = None,
        decoder: Literal["wan", "tiny_vae"] = "wan",
        device: torch.device | str = "cpu",
        offload: bool = False,
        text_encoder_on_cpu: bool = False,
        render_backend: str = "auto",
        untrained: bool = False,
        sources: dict | None = None,
    ) -> None:
        self.text_encoder, self.camera_wan, self.vae, self.lrdm, self.aligner = (
            text_encoder,
            camera_wan.eval(),
            vae.eval(),
            lrdm.eval(),
            aligner.eval() if aligner is not None else None,
        )
        self.decoder, self.device, self.offload = decoder, torch.device(device), offload
        self.text_device = torch.device("cpu") if text_encoder_on_cpu else self.device
        self.untrained, self.sources = untrained, dict(sources or {})
        lc = self.lrdm.config
        if decoder not in ("wan", "tiny_vae"):
            raise ValueError(f"decoder must be 'wan' or 'tiny_vae', got {decoder!r}")
        if decoder == "tiny_vae" and aligner is None:
            raise ValueError("decoder=tiny_vae needs a LatentAligner (models.aligner)")
        mismatches = [
            ("text encoder dim", text_encoder.dim, "CameraWan text_dim", camera_wan.text_dim),
            ("CameraWan latent channels", camera_wan.latent_channels, "Wan VAE latent channels", vae.latent_channels),
            ("CameraWan VAE stride", camera_wan.vae_stride[1], "Wan VAE spatial stride", vae.stride_s),
        ]
        if lc.encoder == "latent":
            mismatches += [
                ("LRDM latent channels", lc.latent_channels, "Wan VAE", vae.latent_channels),
                ("LRDM latent_stride_s", lc.latent_stride_s, "Wan VAE", vae.stride_s),
            ]
        if aligner is not None:
            mismatches.append(("aligner latent channels", aligner.latent_channels, "Wan VAE", vae.latent_channels))
        for a, va, b, vb in mismatches:
            if va != vb:
                raise ValueError(f"models do not fit together: {a} = {va} but {b} = {vb}")
        self._views = ReconstructionPipeline(self.lrdm, self.vae, render_backend)
        if not offload:
            for m in (camera_wan, vae, lrdm, aligner):
                if m is not None:
                    m.to(self.device)
            text_encoder.to(self.text_device)
        if untrained:
            log.warning(UNTRAINED_LABEL)

    # --- building -----------------------------------------------------------------------------------------------
    @classmethod
    def tiny(cls, seed: int = 0, lrdm_encoder: Literal["latent", "rgb"] = "latent", **kw: Any) -> Diff4SplatPipeline:
        """Tiny random-weight instances of the real classes (Wan2.2 interface); ``kw`` go to the constructor."""
        from diff4splat.models.alignment import AlignerConfig, LatentAligner
        from diff4splat.models.lrdm import LRDM, lrdm_preset
        from diff4splat.models.text import TextEncoder
        from diff4splat.models.wan_vae import WanVAE

        with tempfile.TemporaryDirectory(prefix="diff4splat-tiny-text-") as folder:
            text = TextEncoder.tiny(folder, seed=seed)
        torch.manual_seed(seed)
        camera_wan = CameraWan.from_config(CameraWanConfig(**TINY_CAMERA_WAN))
        vae = WanVAE.tiny(seed=seed)
        lrdm = LRDM(lrdm_preset("tiny", encoder=lrdm_encoder, **TINY_LRDM))
        aligner = LatentAligner(AlignerConfig(**TINY_ALIGNER))
        aligner.set_normalisation(vae.mean, vae.std)
        gen = torch.Generator().manual_seed(seed)
        _randomise_zero_inits(camera_wan.camera, gen)
        _randomise_zero_inits(lrdm, gen)
        sources = {"kind": "tiny random weights (untrained)", "seed": seed, "lrdm_encoder": lrdm_encoder}
        return cls(text, camera_wan, vae, lrdm, aligner, untrained=True, sources=sources, **kw)

    @classmethod
    def from_config(cls, cfg: GenerateConfig) -> Diff4SplatPipeline:
        """The pipeline ``cfg`` describes: tiny random weights, or every model from its local path in ``cfg.models``."""
        device = resolve_device(cfg.device)
        lm = cfg.low_memory
        kw = {
            "decoder": cfg.decoder,
            "device": device,
            "offload": lm.offload,
            "text_encoder_on_cpu": lm.text_encoder_on_cpu,
            "render_backend": cfg.render.backend,
        }
        if cfg.tiny:
            pipe = cls.tiny(seed=cfg.seed, lrdm_encoder=cfg.lrdm.tiny_encoder, **kw)
        else:
            pipe = cls._load(cfg, device, kw)
        if lm.vae_tiling:
            pipe.enable_vae_tiling(*lm.vae_tile)
        if cfg.compile:
            pipe.compile()
        return pipe

    def compile(self) -> None:
        """``torch.compile`` every CameraWan transformer block in place (regional: one graph, reused by all blocks;
        the sampling loop's shapes are fixed, so it compiles once per frame size). Weights and keys are unchanged."""
        from diff4splat.models.parallel import compile_in_place

        for block in self.camera_wan.transformer.blocks:
            compile_in_place(block)

    @classmethod
    def _load(cls, cfg: GenerateConfig, device: torch.device, kw: dict) -> Diff4SplatPipeline:
        from diff4splat.models.alignment import LatentAligner
        from diff4splat.models.text import TextEncoder
        from diff4splat.models.wan_vae import WanVAE
        from diff4splat.pipelines.reconstruction import load_lrdm

        m = cfg.models
        check_model_paths(cfg)
        bf16 = device.type == "cuda" and cfg.dtype != "float32"
        dtype = torch.bfloat16 if bf16 else torch.float32
        home = torch.device("cpu") if cfg.low_memory.offload else device
        text_home = torch.device("cpu") if cfg.low_memory.text_encoder_on_cpu else home
        text = TextEncoder.from_pretrained(
            m.text_encoder, device=text_home, dtype=dtype if text_home.type == "cuda" else None
        )
        camera_wan = CameraWan.from_config(replace(m.camera_wan, dtype="bfloat16" if bf16 else "float32"), device=home)
        vae = WanVAE.from_pretrained(m.vae, torch_dtype=dtype)
        lrdm = load_lrdm(m.lrdm, home)
        aligner = LatentAligner.load(m.aligner) if cfg.decoder == "tiny_vae" else None
        if aligner is not None and bf16:
            aligner.to(torch.bfloat16)
        cw = m.camera_wan
        sources = {
            "text_encoder": m.text_encoder,
            "vae": m.vae,
            "lrdm": m.lrdm,
            "aligner": m.aligner if aligner is not None else None,
            "camera_wan": {
                "arch": cw.arch,
                "init": cw.init,
                "pretrained_path": cw.pretrained_path,
                "original_paths": cw.original_paths,
                "camera_weights": cw.camera_weights,
            },
        }
        if not cw.camera_weights:
            log.warning(
                "models.camera_wan.camera_weights is null: the camera branch is untrained (zero), so the video "
                "ignores the trajectory"
            )
        return cls(text, camera_wan, vae, lrdm, aligner, sources=sources, **kw)

    def enable_vae_tiling(self, tile: int = 256, stride: int = 192) -> None:
        """Tiled Wan VAE encode/decode (``tile`` x ``tile`` pixel tiles every ``stride`` pixels): less memory."""
        self.vae.vae.enable_tiling(
            tile_sample_min_height=tile,
            tile_sample_min_width=tile,
            tile_sample_stride_height=stride,
            tile_sample_stride_width=stride,
        )

    # --- properties ---------------------------------------------------------------------------------------------
    @property
    def size_multiple(self) -> int:
        """Frame sizes must be multiples of this (the DiT's token size and the LRDM's patch / latent cell)."""
        c = self.lrdm.config
        lrdm_unit = c.patch_size if c.encoder == "rgb" else c.latent_stride_s
        return math.lcm(self.vae.stride_s * self.camera_wan.patch_size[1], lrdm_unit)

    @property
    def autocast(self) -> bool:
        return self.device.type == "cuda" and next(self.camera_wan.parameters()).dtype == torch.bfloat16

    @contextlib.contextmanager
    def _placed(self, module: nn.Module | None, device: torch.device | None = None) -> Iterator[None]:
        """With ``offload``: ``module`` on the device for the block, back on the CPU after it."""
        if module is None or not self.offload:
            yield
            return
        module.to(device or self.device)
        try:
            yield
        finally:
            module.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    # --- running ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        image: Tensor,  # [3, H, W] in [0, 1] at the model size (``fit_image``)
        c2w: Tensor,  # [F, 4, 4] metric OpenCV c2w, camera 0 = identity; F = 1 + 4k
        fxfycxcy: Tensor,  # [F, 4] normalised intrinsics of the model frame
        times: Tensor | None = None,  # [F] in [0, 1]; default linspace
        prompt: str = "",
        negative_prompt: str | None = None,  # None: Wan's standard negative prompt
        sampling: SamplingConfig | None = None,  # steps, CFG scale, shift, seed
        query_times: Tensor | None = None,  # [T] in [0, 1]; default: one per latent frame
        lrdm_input_frames: int | None = None,  # rgb LRDM: frames it reads, evenly spaced (None: all)
        translation_scale: float = 1.0,  # metric translations -> LRDM units
        prune_threshold: float | None = None,  # None: the LRDM's
        stages: Stages | None = None,
    ) -> Generation:
        from diff4splat.models.text import NEGATIVE_PROMPT

        sampling = sampling or SamplingConfig()
        stages = stages or Stages(self.device, progress=False)
        f, (h, w) = c2w.shape[0], image.shape[-2:]
        unit = self.size_multiple
        if h % unit or w % unit:
            raise InputError(f"height x width = {h}x{w}: both must be multiples of {unit} for these models")
        if fxfycxcy.shape != (f, 4):
            raise ValueError(f"{f} cameras but intrinsics {tuple(fxfycxcy.shape)}")
        num_latent = self.vae.check_frames(f)
        times = torch.linspace(0, 1, f) if times is None else times.float().cpu()
        if query_times is None:
            query_times = times[torch.linspace(0, f - 1, num_latent).round().long()]
        dev = self.device
        guided = sampling.guidance_scale != 1.0

        # 1. Prompt (and negative prompt) embeddings
        with stages("text"), self._placed(self.text_encoder, self.text_device):
            prompts = [prompt] + ([NEGATIVE_PROMPT if negative_prompt is None else negative_prompt] if guided else [])
            embeds = self.text_encoder.encode(prompts).to(dev)
        # 2. The first frame's clean latent
        with stages("encode"), self._placed(self.vae):
            cond = self.vae.encode(image[None, None].to(dev))  # [1, C, 1, h, w]
        # 3. Camera-controlled flow-matching sampling (one bar tick per denoising forward)
        with stages("sampling", total=sampling.steps, unit="step") as bar, self._placed(self.camera_wan):

            def tick(*_: Any) -> None:  # a forward hook must return None (a value would replace the output)
                bar.update(1)

            hook = self.camera_wan.register_forward_hook(tick)
            try:
                plucker = plucker_for_latents(c2w[None].to(dev), fxfycxcy[None].to(dev), h, w)
                latents = sample_latents(
                    self.camera_wan, cond, num_latent, embeds[:1], embeds[1:] if guided else None, plucker, sampling
                )
            finally:
                hook.remove()
        if not torch.isfinite(latents).all():
            raise RuntimeError("sampling produced non-finite latents (check the weights and the dtype)")
        # 4. Latents -> frames
        with stages("decode"):
            video = self.decode(latents)[0]  # [F, 3, H, W]
        # 5. LRDM -> deformable Gaussians
        cams = c2w.double().clone()
        cams[:, :3, 3] *= translation_scale
        with stages("lrdm"):
            scene, frames = self.reconstruct(
                latents, video, cams.float(), fxfycxcy.float(), times, query_times, lrdm_input_frames, prune_threshold
            )
        return Generation(latents[0], video, scene, frames, dict(stages.timings))

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:  # [B, C, T, h, w] -> [B, F, 3, H, W] in [0, 1]
        """Latents to frames with the Wan VAE decoder or the aligned TinyVAE (``decoder``)."""
        if self.decoder == "wan":
            with self._placed(self.vae):
                return self.vae.decode(latents.to(self.device)).float()
        with self._placed(self.aligner), torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
            return self.aligner.decode(latents.to(self.device)).float().clamp(0, 1)

    @torch.no_grad()
    def reconstruct(
        self,
        latents: Tensor,  # [1, C, T, h, w]
        video: Tensor,  # [F, 3, H, W]
        c2w: Tensor,  # [F, 4, 4] in LRDM units
        fxfycxcy: Tensor,  # [F, 4]
        times: Tensor,  # [F]
        query_times: Tensor,  # [T_q]
        input_frames: int | None = None,
        prune_threshold: float | None = None,
    ) -> tuple[Reconstruction, Tensor]:
        """The LRDM on the latents (``latent`` encoder) or on ``input_frames`` evenly spaced frames (``rgb``)."""
        cfg = self.lrdm.config
        dev, f = self.device, c2w.shape[0]
        cams, fx, t, q = c2w.to(dev), fxfycxcy.to(dev), times.float().to(dev), query_times.float().to(dev)
        if cfg.encoder == "latent" or input_frames is None or input_frames >= f:
            idx = torch.arange(f)
        else:
            idx = torch.linspace(0, f - 1, max(1, input_frames)).round().long().unique()
        with self._placed(self.lrdm), torch.autocast(dev.type, torch.bfloat16, enabled=self.autocast):
            if cfg.encoder == "latent":
                out = self.lrdm(
                    cams[None], fx[None], t[None], q[None], latents=latents.to(dev), image_size=tuple(video.shape[-2:])
                )
            else:
                i = idx.to(dev)
                out = self.lrdm(cams[i][None], fx[i][None], t[i][None], q[None], images=video[i][None].to(dev))
        dg = out.gaussians
        gaussians = DeformableGaussians(
            dg.canonical.unbind()[0], dg.times[0], dg.delta_means[0], dg.delta_quats[0], dg.delta_log_scales[0]
        )
        threshold = cfg.prune_threshold if prune_threshold is None else prune_threshold
        gaussians = gaussians.prune(threshold) if threshold > 0 else gaussians
        return Reconstruction(gaussians, cams, fx, t, tuple(video.shape[-2:])), idx

    @torch.no_grad()
    def render(
        self, scene: Reconstruction, c2w: Tensor, fxfycxcy: Tensor, times: Tensor, bar: Any = None
    ) -> tuple[Tensor, Tensor]:
        """View k = camera k at time k: RGB [V, 3, H, W] and depth [V, 1, H, W] (one progress tick per view)."""
        rgbs, depths = [], []
        dev = scene.c2w.device
        c2w, fxfycxcy, times = c2w.to(dev).float(), fxfycxcy.to(dev).float(), times.to(dev).float()
        for k in range(c2w.shape[0]):
            rgb, depth = self._views.render_views(scene, c2w[k : k + 1], fxfycxcy[k : k + 1], times[k : k + 1])
            rgbs.append(rgb)
            depths.append(depth)
            if bar is not None:
                bar.update(1)
        return torch.cat(rgbs), torch.cat(depths)

    def describe(self) -> dict:
        """Model sources and architecture facts for ``meta.json``."""
        c = self.lrdm.config
        return {
            **self.sources,
            "untrained": self.untrained,
            "decoder": self.decoder,
            "lrdm_encoder": c.encoder,
            "lrdm_gaussian_stride": c.gaussian_stride,
            "lrdm_gaussian_frame_step": c.gaussian_frame_step,
            "dtype": str(next(self.camera_wan.parameters()).dtype).removeprefix("torch."),
            "device": str(self.device),
            "offload": self.offload,
            "text_device": str(self.text_device),
        }


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
    fit: dict
    camera_spec: str


def model_size(cfg: GenerateConfig) -> tuple[int, int]:
    h, w = TINY_SIZE if cfg.tiny else DEFAULT_SIZE
    h, w = cfg.height or h, cfg.width or w
    unit = 32  # the Wan2.2 DiT token: VAE stride 16 x patch 2 (the models may need more, checked when loaded)
    if h % unit or w % unit or h <= 0 or w <= 0:
        raise InputError(f"height={h} width={w}: expected positive multiples of {unit} (e.g. 352 x 640, 480 x 832)")
    return h, w


def make_job(
    cfg: GenerateConfig, image: str | Path, camera: str, prompt: str, seed: int, target: Path, where: str = ""
) -> Job:
    """Read, check and fit one (image, trajectory); ``where`` prefixes errors (e.g. a CSV row)."""
    try:
        pixels = read_image(image)
        n = cfg.trajectory.num_frames
        num_frames = check_num_frames((TINY_FRAMES if cfg.tiny else DEFAULT_FRAMES) if n is None else n)
        cams = resolve_cameras(camera, cfg.trajectory, num_frames, tuple(pixels.shape[-2:]))
    except InputError as e:
        raise InputError(f"{where}{e}") from e
    h, w = model_size(cfg)
    fitted, fx, fit = fit_image(pixels, cams.fxfycxcy, h, w)
    cams = replace(cams, fxfycxcy=fx)
    return Job(Path(image), fitted, cams, prompt, seed, target, fit, camera)


def check_target(target: Path, overwrite: bool, where: str = "output_dir") -> None:
    if target.exists() and not target.is_dir():
        raise InputError(f"{where}={target}: exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise InputError(f"{where}={target}: folder exists and is not empty; pass overwrite=true to replace it")


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
                if traj.lower().endswith((".json", ".txt", ".npz")) and not Path(traj).is_absolute():
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
        check_target(target, cfg.overwrite, f"{where}output folder")
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
# Outputs
# ----------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_output_dir(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """``pipelines.outputs.atomic_output_dir`` with this CLI's checks and messages (``output_dir=``, ``overwrite=true``)."""
    from diff4splat.pipelines import outputs

    check_target(Path(target).absolute(), overwrite)
    with outputs.atomic_output_dir(target, overwrite=True) as tmp:  # (checked above: replacing is allowed now)
        yield tmp


@dataclass
class Views:
    """The renders that go into render.mp4 / depth.mp4 / novel.mp4."""

    rgb: Tensor  # [F, 3, H, W] along the trajectory, camera k at time k
    depth: Tensor  # [F, 1, H, W]
    novel: Tensor  # [V, 3, H, W] a new orbit at mid time
    novel_c2w: Tensor  # [V, 4, 4]
    novel_info: dict


def render_outputs(pipe: Diff4SplatPipeline, gen: Generation, opts: RenderOptions, stages: Stages) -> Views:
    """The trajectory renders and a new orbit about the scene centre (median Gaussian depth in camera 0) at t = 0.5."""
    scene = gen.scene
    f = scene.c2w.shape[0]
    n = opts.novel_frames or f
    z = scene.gaussians.canonical.means[:, 2]
    centre = float(z[z > 0].median()) if (z > 0).any() else 1.0
    try:
        orbit = make_trajectory(opts.novel_preset, n, strength=opts.novel_strength, look_at=centre)
    except ValueError as e:
        raise InputError(f"render.novel_preset: {e}") from e
    novel_c2w = orbit.c2w.float()
    with stages("render", total=f + n, unit="view") as bar:
        rgb, depth = pipe.render(scene, scene.c2w, scene.fxfycxcy, scene.input_times, bar)
        novel, _ = pipe.render(scene, novel_c2w, scene.fxfycxcy[:1].expand(n, 4), torch.full((n,), 0.5), bar)
    info = {
        "preset": opts.novel_preset,
        "strength": opts.novel_strength,
        "frames": n,
        "time": 0.5,
        "look_at": centre,
        "c2w": novel_c2w.tolist(),
    }
    return Views(rgb, depth, novel, novel_c2w, info)


def write_outputs(
    gen: Generation,
    views: Views | Callable[[], Views],
    folder: Path,
    fps: int,
    stages: Stages,
    outputs: tuple[str, ...] = OUTPUTS,
    scene_metadata: dict | None = None,
    video_preset: str = "veryfast",
    file_timings: dict[str, float] | None = None,
) -> tuple[list[str], Views]:
    """``outputs`` of ``OUTPUTS`` into ``folder``: scene.safetensors, ply/, video.mp4, render.mp4, novel.mp4,
    depth.mp4, trajectory.png. Returns the written names and the views. (meta.json is written by the caller, last.)

    ``views`` may be a function that renders them: the files that do not need renders (scene, ply frames, the
    generated video) are then written while it runs. The ``write`` stage counts from the end of rendering to the last
    file, so the stages still add up to the wall-clock time. ``file_timings``: filled with each file's own write time
    in seconds (they overlap)."""
    from concurrent.futures import Future, ThreadPoolExecutor, as_completed

    from diff4splat.gaussians.io import save_4d, save_ply_sequence

    g = gen.scene.gaussians
    rendered: dict[str, Views] = {}
    early: list[tuple[str, Any]] = []  # independent of the renders
    late: list[tuple[str, Any]] = []
    if "scene" in outputs:
        early.append(("scene.safetensors", lambda: save_4d(g, folder / "scene.safetensors", scene_metadata)))
    if "ply" in outputs:
        early.append(("ply/", lambda: save_ply_sequence(g, folder / "ply")))
    videos = {
        "video": ("video.mp4", lambda: to_uint8(gen.video)),
        "render": ("render.mp4", lambda: to_uint8(rendered["views"].rgb)),
        "novel": ("novel.mp4", lambda: to_uint8(rendered["views"].novel)),
        "depth": ("depth.mp4", lambda: depth_to_color(rendered["views"].depth)),
    }
    for key, (name, frames) in videos.items():
        if key in outputs:
            step = (name, lambda name=name, frames=frames: _write_video(frames(), folder / name, fps, video_preset))
            (early if key == "video" else late).append(step)
    if "trajectory" in outputs:
        late.append(("trajectory.png", lambda: _plot(gen, rendered["views"], folder / "trajectory.png")))

    def timed(name: str, write: Any) -> None:
        start = time.perf_counter()
        write()
        if file_timings is not None:
            file_timings[name] = time.perf_counter() - start

    # the files are independent: written concurrently (encoding, tensor work and file I/O release the GIL); the first
    # error is raised after every writer has stopped (leaving the pool waits), and the caller removes the folder
    with ThreadPoolExecutor(max(1, len(early) + len(late))) as pool:
        futures: dict[Future, str] = {pool.submit(timed, name, write): name for name, write in early}
        rendered["views"] = views() if callable(views) else views
        with stages("write", total=len(early) + len(late), unit="file") as bar:
            for name, write in late:
                if name != "trajectory.png":  # the plot stays on this thread: pyplot is not thread-safe
                    futures[pool.submit(timed, name, write)] = name
            for name, write in late:
                if name == "trajectory.png":
                    timed(name, write)
                    bar.update(1)
            for future in as_completed(futures):
                future.result()
                bar.update(1)
    return [name for name, _ in early + late], rendered["views"]


def _write_video(frames: np.ndarray, path: Path, fps: int, preset: str = "veryfast") -> None:
    write_video(frames, path, fps, preset=preset)


def _plot(gen: Generation, views: Views, path: Path) -> None:
    from diff4splat.geometry.trajectories import plot_trajectory

    plot_trajectory(gen.scene.c2w.cpu(), path, gen.scene.fxfycxcy.cpu(), title="trajectory (LRDM units, OpenCV)")


def build_meta(
    job: Job,
    pipe: Diff4SplatPipeline,
    gen: Generation,
    views: Views,
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
        "sampling": asdict(sampling),
        "models": pipe.describe(),
        "lrdm": {
            "input_frames": gen.lrdm_frames.tolist(),
            "translation_scale": cfg.lrdm.translation_scale,
            "prune_threshold": cfg.lrdm.prune_threshold,
            "num_gaussians": scene.gaussians.num_gaussians,
            "query_times": scene.gaussians.times.tolist(),
        },
        "timings": timings,
        "trajectory": {
            "c2w": scene.c2w.cpu().tolist(),
            "fxfycxcy": scene.fxfycxcy.cpu().tolist(),
            "times": scene.input_times.cpu().tolist(),
            "height": scene.image_size[0],
            "width": scene.image_size[1],
            "fps": cfg.fps,
            "convention": "OpenCV c2w in LRDM units (camera 0 = identity), normalised fxfycxcy",
        },
        "novel": views.novel_info,
        "files": [*files, "meta.json"],
        "versions": {
            "diff4splat": __version__,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
        },
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return meta


def run_job(
    pipe: Diff4SplatPipeline, job: Job, cfg: GenerateConfig, load_s: float = 0.0, outputs: tuple[str, ...] = OUTPUTS
) -> Path:
    """Generate one scene and write every output into ``job.target`` atomically; returns the folder."""
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
    with atomic_output_dir(job.target, cfg.overwrite) as tmp:
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
            prune_threshold=cfg.lrdm.prune_threshold,
            stages=stages,
        )
        scene_meta = {"image": str(job.image_path), "prompt": job.prompt, "seed": job.seed, "untrained": pipe.untrained}
        file_timings: dict[str, float] = {}
        files, views = write_outputs(
            gen,
            lambda: render_outputs(pipe, gen, cfg.render, stages),
            tmp,
            cfg.fps,
            stages,
            outputs,
            scene_meta,
            cfg.video_preset,
            file_timings,
        )
        gen.timings = dict(stages.timings)
        meta = build_meta(job, pipe, gen, views, cfg, sampling, files, load_s)
        meta["timings"]["write_files"] = {k: round(v, 6) for k, v in sorted(file_timings.items())}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    t = meta["timings"]
    log.info(
        "%s%d Gaussians, %d query times; %.2f s (%s) -> %s",
        label,
        gen.scene.gaussians.num_gaussians,
        gen.scene.gaussians.num_times,
        t["total"],
        ", ".join(f"{k} {t[k]:.2f}" for k in STAGES if k in t),
        job.target,
    )
    return job.target


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
    out = Path(cfg.output_dir)
    if cfg.batch:
        if cfg.image:
            raise InputError("image and batch are exclusive: pass one image or a batch folder/CSV")
        jobs = read_batch(cfg, out)
    else:
        if not cfg.image:
            raise InputError("image: required (a path to the first frame), or batch=FOLDER_OR_CSV")
        check_target(out, cfg.overwrite)
        jobs = [make_job(cfg, cfg.image, cfg.camera, cfg.prompt, cfg.seed, out)]
    start = time.perf_counter()
    pipe = Diff4SplatPipeline.from_config(cfg)
    if cfg.compile is None and pipe.device.type == "cuda" and len(jobs) >= AUTO_COMPILE_JOBS:
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
    done = [run_job(pipe, job, cfg, load_s) for job in jobs]
    if cfg.batch:
        index = {
            "batch": str(Path(cfg.batch).resolve()),
            "jobs": [str(p.name) for p in done],
            "untrained": pipe.untrained,
        }
        tmp = out / f".batch.json.tmp-{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps(index, indent=1))
        os.replace(tmp, out / "batch.json")
        return out
    return done[0]
