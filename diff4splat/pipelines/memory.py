"""Peak memory of a generation, estimated from its size before anything is allocated and checked against what the
machine has free (`check_memory`): a size it cannot hold is refused at once, naming the largest that fits, instead of
allocating until the kernel's OOM killer ends the run.

The estimate, in bytes, of what the run adds on the device the models run on (CPU RAM, or CUDA memory)::

    peak     = weights + OVERHEAD + max(sampling, lrdm)
    sampling = RAY_BYTES · B · F·H·W  +  DIT_BYTES · d · B · tokens · dim  +  VAE_BYTES · d · H·W · decoder_dim
    lrdm     = VIDEO_BYTES · F·H·W  +  NOVEL_BYTES · V·H·W  +  GAUSSIAN_BYTES · N  +  DEFORM_BYTES · N·T

F frames of H x W pixels; B = 2 with classifier-free guidance (both branches in one batch), else 1; d the bytes of
the compute dtype; tokens = (1 + (F - 1)/4)·(H/32)·(W/32) CameraWan tokens of width ``dim``; N = F·(H/s)·(W/s)
Gaussians (s: the LRDM's ``gaussian_stride``; every frame emits Gaussians; a ``vggt`` LRDM such as MoVieS: one per
pixel of the ``lrdm.input_frames`` frames it reads at its native size, long side 518) and T query times
(``lrdm.num_times``, or one per latent frame); V views of ``novel.mp4`` (``render.novel_frames``, or F). ``lrdm`` covers everything from
the LRDM to the written files (the video, renders and Gaussians stay alive until the files are written). What each
term holds:

- ``RAY_BYTES`` per pixel, frame and guidance branch: the Plücker rays (6 float32 channels), their causal padding and
  the camera encoder's patchified copy, alive while CameraWan samples. Calibrated (below).
- ``VIDEO_BYTES`` per pixel and frame: the decoded video (float32), its renders (colour and depth) and their uint8
  copies being encoded. Calibrated.
- ``DEFORM_BYTES`` per Gaussian and query time: the deformation (Δμ, Δq, Δs: 10 float32) with the copies made while
  stacking, normalising, pruning and writing one ``.ply`` per query time. This N·T term grows with F² and decides
  the largest frame count. Calibrated.
- ``OVERHEAD``: what does not grow with the size (text encoding, the trajectory plot, the video encoders).
  Calibrated.
- ``NOVEL_BYTES`` per pixel of a novel view: its float32 render and uint8 copy. Analytic (the calibration runs
  rendered 2 novel views).
- ``GAUSSIAN_BYTES`` per Gaussian: the canonical Gaussians (14 float32), their pruned copy and a ``.ply`` row.
  Analytic: the tiny LRDM (one Gaussian per 8 x 8 pixels) cannot separate it from ``VIDEO_BYTES``.
- ``DIT_BYTES`` per token and channel: one transformer block's live activations (hidden state, q, k, v, attention
  output, the 4.7x-wide feed-forward); with flash / memory-efficient attention nothing grows with tokens².
  Analytic: the tiny CameraWan's width (a few dozen channels) cannot calibrate it.
- ``VAE_BYTES`` per output pixel and decoder channel: the Wan VAE decoder's full-resolution stage, which decodes one
  latent frame (4 video frames) at a time with its causal cache. Analytic, for the same reason.
- ``weights``: the tiny models' measured resident size; for real models the sizes of their weight files (the 5B
  transformer and the UMT5 encoder dominate), doubled when bfloat16 files run as float32 on a CPU. With
  ``low_memory.offload`` only the largest model is on the GPU at a time.

Calibration (``experiments/benchmarks/generate_memory.py``; results and the fit in
``experiments/benchmarks/results/generate_memory_cpu.md``): the whole ``generate`` run with the tiny random-weight
models on a CPU in float32, RSS sampled every 2 ms, at 13 to 385 frames of 96 x 160 and at 49 x 192 x 320 and
13 x 384 x 640. A least-squares fit of the stage peaks gives 84 B (rays, per branch), 128 B (video), 105 B
(deformation) and 109 MiB (overhead); the coefficients below are those plus a margin, which puts the estimate at
1.17 to 1.49 times every measured peak. For real models the estimate rests on the same calibrated terms plus the
analytic ones and was not measured here (no weights on this machine); ``check_memory=false`` skips the check when it
is wrong.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from diff4splat.cli import InputError

if TYPE_CHECKING:
    from diff4splat.pipelines.jobs import GenerateConfig

GIB = 2**30
RAY_BYTES = 110.0  # calibrated: 84 B fitted (see the module docstring)
VIDEO_BYTES = 145.0  # calibrated: 128 B fitted
DEFORM_BYTES = 160.0  # calibrated: 105 B fitted
OVERHEAD = 128 * 2**20  # calibrated: 109 MiB fitted
NOVEL_BYTES = 20.0  # analytic: 12 B float32 RGB + 3 B uint8, with slack
GAUSSIAN_BYTES = 180.0  # analytic: 14 float32 (56 B) twice (pruning) and a 68-byte .ply row
DIT_BYTES = 16.0  # analytic, x dtype bytes: hidden, q, k, v, output, 2 x 4.7 feed-forward, ... per channel
VAE_BYTES = 12.0  # analytic, x dtype bytes: three feature maps over 4 frames at full resolution
TINY_WEIGHTS = 260 * 2**20  # calibrated: building the tiny pipeline adds 236 MiB
VGGT_LONG_SIDE = 518  # a vggt LRDM reads frames with this long side (VGGT-1B's 37 patches of 14 pixels)
FREE_FRACTION = 0.9  # what a run may take of the free memory (the rest for the allocator's slack and the system)


@dataclass
class Size:
    """What a generation's memory depends on."""

    frames: int  # F (1 + 4k)
    height: int  # H
    width: int  # W
    query_times: int  # T
    novel_views: int = 0  # V


@dataclass
class Models:
    """What the estimate needs to know of the chosen models."""

    weights: float  # bytes resident on the compute device
    dim: int  # CameraWan width
    dtype_bytes: int  # 2 (bfloat16) or 4
    guided: bool  # classifier-free guidance: two branches per step
    gaussian_stride: int  # LRDM: one Gaussian per s x s pixels
    decoder_dim: int  # Wan VAE decoder width
    lrdm_frames: int | None = None  # a vggt LRDM: the frames it reads (at its native size); None: every frame
    lrdm_long_side: int = VGGT_LONG_SIDE  # a vggt LRDM's native long side (pixels)


def estimate_bytes(size: Size, m: Models) -> float:
    """The peak bytes a generation of ``size`` adds on its device (the module docstring's formula)."""
    f, h, w = size.frames, size.height, size.width
    pixels = f * h * w
    b = 2 if m.guided else 1
    tokens = (1 + (f - 1) // 4) * (h // 32) * (w // 32)
    sampling = RAY_BYTES * b * pixels + DIT_BYTES * m.dtype_bytes * b * tokens * m.dim
    sampling += VAE_BYTES * m.dtype_bytes * h * w * m.decoder_dim
    if m.lrdm_frames is None:
        n = f * math.ceil(h / m.gaussian_stride) * math.ceil(w / m.gaussian_stride)
    else:  # a vggt LRDM: one Gaussian per pixel of the frames it reads, at its native size
        k = m.lrdm_long_side / max(h, w)
        n = min(m.lrdm_frames, f) * round(h * k) * round(w * k)
    lrdm = VIDEO_BYTES * pixels + NOVEL_BYTES * size.novel_views * h * w
    lrdm += GAUSSIAN_BYTES * n + DEFORM_BYTES * n * size.query_times
    return m.weights + OVERHEAD + max(sampling, lrdm)


def free_bytes(device: str) -> tuple[float, str]:
    """Bytes a run can still allocate on ``device`` and how that memory is named: CUDA's free memory; for the CPU the
    kernel's ``MemAvailable``, or less when this process's cgroup (a container, a SLURM job) has a memory limit:
    the limit minus the usage, not counting reclaimable page cache."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return float(free), f"free GPU memory ({device})"
    try:
        with open("/proc/meminfo") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh}
        free, what = float(info["MemAvailable"]), "available RAM"
    except (OSError, KeyError, ValueError, IndexError):
        free, what = float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")), "free RAM"
    limited = _cgroup_free()
    if limited is not None and limited < free:
        return limited, "free memory under this cgroup's limit"
    return free, what


def _cgroup_free() -> float | None:
    """Limit - usage + inactive page cache of this process's memory cgroup (v2 or v1); None without a limit."""
    for limit_file, usage_file, cache_key in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "inactive_file"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
            "total_inactive_file",
        ),
    ):
        try:
            limit_text = Path(limit_file).read_text().strip()
            if limit_text == "max" or int(limit_text) >= 2**60:
                return None
            usage = int(Path(usage_file).read_text())
            stat = dict(line.split() for line in (Path(limit_file).parent / "memory.stat").read_text().splitlines())
            return float(int(limit_text) - usage + int(stat.get(cache_key, 0)))
        except (OSError, ValueError):
            continue
    return None


def _files_bytes(path: str | None, pattern: str = "*.safetensors") -> float:
    if not path:
        return 0.0
    p = Path(path)
    if p.is_file():
        return float(p.stat().st_size)
    return float(sum(f.stat().st_size for f in p.rglob(pattern) if f.is_file()))


def _lrdm_stride(path: str | None) -> int:
    """The ``gaussian_stride`` in an LRDM export's metadata (read from the file's header only); 1 when unknown."""
    return _lrdm_facts(path)[0]


def _lrdm_facts(path: str | None) -> tuple[int, bool]:
    """(``gaussian_stride``, whether the encoder is ``vggt``) of an LRDM file, from its header only
    (`public.lrdm_file`: our export's metadata, or a released VGGT / MoVieS checkpoint); (1, False) when unknown."""
    from diff4splat.pipelines.public import lrdm_file

    if not path or not Path(path).is_file():
        return 1, False
    kind, model = lrdm_file(path)
    try:
        stride = max(1, int(model.get("gaussian_stride", 1)))
    except (TypeError, ValueError):  # a malformed config is reported when the model loads; assume the densest
        stride = 1
    return stride, kind in ("movies", "vggt") or model.get("encoder") == "vggt"


def describe_models(cfg: GenerateConfig, device: str) -> Models:
    """`Models` of ``cfg``'s choice, from configs and file sizes only (nothing is loaded)."""
    from diff4splat.models.camera_wan import transformer_arch
    from diff4splat.pipelines.generation import TINY_CAMERA_WAN, TINY_LRDM

    guided = cfg.sampling.guidance_scale != 1.0
    if cfg.tiny:
        arch = transformer_arch("tiny", TINY_CAMERA_WAN["arch_overrides"])
        return Models(
            weights=TINY_WEIGHTS,
            dim=arch["num_attention_heads"] * arch["attention_head_dim"],
            dtype_bytes=4,
            guided=guided,
            gaussian_stride=TINY_LRDM["gaussian_stride"],
            decoder_dim=3,
        )
    cw = cfg.models.camera_wan
    arch = transformer_arch(cw.arch, cw.arch_overrides)
    dim = arch["num_attention_heads"] * arch["attention_head_dim"]
    cuda = device.startswith("cuda")
    dtype_bytes = 2 if cuda and cfg.dtype != "float32" else 4
    if cw.init == "pretrained":
        dit = _files_bytes(str(Path(cw.pretrained_path or "") / "transformer"))
    elif cw.init == "original":
        dit = sum(_files_bytes(p) for p in cw.original_paths)
    else:  # random weights of the architecture: attention (self + cross) and feed-forward per block
        dit = arch["num_layers"] * (8 * dim * dim + 2 * dim * arch["ffn_dim"]) * 2
    parts = {
        "camera_wan": dit + _files_bytes(cw.camera_weights),
        "text_encoder": _files_bytes(str(Path(cfg.models.text_encoder or "") / "text_encoder")),
        "vae": _files_bytes(str(Path(cfg.models.vae or "") / "vae")),
        "lrdm": _files_bytes(cfg.models.lrdm),
        "aligner": _files_bytes(cfg.models.aligner) if cfg.decoder == "tiny_vae" else 0.0,
    }
    scale = 1.0 if dtype_bytes == 2 else 2.0  # bfloat16 files held as float32
    on_device = {k: v * scale for k, v in parts.items()}
    if cuda and cfg.low_memory.text_encoder_on_cpu:
        on_device.pop("text_encoder")
    weights = max(on_device.values()) if cuda and cfg.low_memory.offload else sum(on_device.values())
    stride, vggt = _lrdm_facts(cfg.models.lrdm)
    frames = (cfg.lrdm.input_frames or 2**31) if vggt else None  # input_frames null: every frame
    return Models(weights, dim, dtype_bytes, guided, stride, _decoder_dim(cfg.models.vae), frames)


def _decoder_dim(vae: str | None) -> int:
    """The Wan VAE decoder's width from its ``config.json`` (Wan2.2's 256 when it cannot be read)."""
    import json

    for folder in (Path(vae or "") / "vae", Path(vae or "")):
        try:
            config = json.loads((folder / "config.json").read_text())
            return int(config.get("decoder_base_dim") or config.get("base_dim") or 256)
        except (OSError, ValueError, TypeError):
            continue
    return 256


def _largest(fits, start: int, limit: int) -> int | None:
    """The largest integer k in [start, limit] with ``fits(k)`` (monotone), or None."""
    if not fits(start):
        return None
    lo, hi = start, start
    while hi < limit and fits(min(limit, hi * 2)):
        lo = hi = min(limit, hi * 2)
    hi = min(limit, hi * 2)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def check_memory(cfg: GenerateConfig, num_frames: int, height: int, width: int, device: str) -> float:
    """Refuse a generation whose estimated peak (`estimate_bytes`) exceeds `FREE_FRACTION` of the free memory of
    ``device``, naming the largest frame count that fits at this frame size (or, when none does, the largest frame
    size at the fewest frames); nothing is allocated. Returns the estimate in bytes."""
    models = describe_models(cfg, device)
    latent_frames = 1 + (num_frames - 1) // 4

    def size(f: int, h: int = height, w: int = width) -> Size:
        t = min(cfg.lrdm.num_times, f) if cfg.lrdm.num_times else 1 + (f - 1) // 4
        return Size(f, h, w, t, cfg.render.novel_frames or f)

    need = estimate_bytes(size(num_frames), models)
    free, what = free_bytes(device)
    budget = FREE_FRACTION * free
    if not cfg.check_memory or need <= budget:
        return need
    k = _largest(lambda k: estimate_bytes(size(1 + 4 * k), models) <= budget, 1, max(1, latent_frames - 1))
    if k is not None:
        hint = f"the largest that fits is trajectory.num_frames={1 + 4 * k} at {height}x{width}"
    else:
        aspect = width / height
        s = _largest(
            lambda s: estimate_bytes(size(5, 32 * s, 32 * max(1, round(s * aspect))), models) <= budget,
            1,
            max(1, height // 32),
        )
        hint = (
            f"even 5 frames do not fit at {height}x{width}; the largest frame size that fits is "
            f"height={32 * s} width={32 * max(1, round(s * aspect))}"
            if s is not None
            else "not even 5 frames of 32x32 fit: free memory first"
        )
    raise InputError(
        f"trajectory.num_frames={num_frames} height={height} width={width}: needs about {need / GIB:.1f} GiB "
        f"(estimated peak of these models) but {what} is {free / GIB:.1f} GiB; {hint} "
        f"(check_memory=false to try anyway)"
    )


def check_reconstruction_memory(
    frames: int, height: int, width: int, query_times: int, weights: str, device: str
) -> float:
    """`check_memory` for ``reconstruct``: the LRDM part of the estimate (its Gaussians, their deformation at
    ``query_times`` times, the renders) for ``frames`` frames of ``height`` x ``width``, with the weights' file size;
    refused with the largest query-time count that fits. Returns the estimate in bytes."""
    stride = _lrdm_stride(weights)
    weight_bytes = _files_bytes(weights) * (1.0 if device.startswith("cuda") else 2.0)
    n = frames * math.ceil(height / stride) * math.ceil(width / stride)

    def need(t: int) -> float:
        return weight_bytes + OVERHEAD + VIDEO_BYTES * frames * height * width + n * (GAUSSIAN_BYTES + DEFORM_BYTES * t)

    free, what = free_bytes(device)
    budget = FREE_FRACTION * free
    if need(query_times) <= budget:
        return need(query_times)
    t = _largest(lambda t: need(t) <= budget, 1, query_times)
    hint = (
        f"--num-times {t} fits"
        if t is not None
        else "even one query time does not fit: pass fewer --num-frames or a smaller --size"
    )
    raise InputError(
        f"{frames} frames of {height}x{width} at {query_times} query times: needs about {need(query_times) / GIB:.1f} "
        f"GiB (estimated peak) but {what} is {free / GIB:.1f} GiB; {hint}"
    )
