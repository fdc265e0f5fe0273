"""VGGSplaT (the released reconstructor: MoVieS on VGGT-1B, the LRDM's ``vggt`` encoder) speed and memory on one GPU,
written to results/vggsplat_<device>.{json,md}.

1. Inference: the 1B model with random weights in bf16 on 13 input frames at 294x518 (VGGT's 518 long side, 21x37
   patches): the forward (DINO encoder, aggregator, depth and Gaussian heads, the motion heads at each of the 8 query
   times) + rendering 8 output views with gsplat in one call (view k at query time k). Latency (median of
   ``--repeats``) and peak memory. Goal on an H100: <= 0.15 s. The same at 49 frames: goal <= 0.6 s.
   Every setting is timed as a *variant* (`Variant`): bf16 weights under bf16 autocast or plain bf16 (no autocast),
   transformer blocks compiled or eager, the SDPA backend (cudnn / flash / efficient), the time-conditioned heads once
   per query time (MoVieS's loop) or on all query times in one batch (``queries_per_pass``), DPT heads channels-last.
   Each variant also gets a per-stage breakdown (CUDA events around each module: encoder, aggregator, each DPT head
   summed over its passes, the rest of the forward, Gaussians at the query times, render) and each stage's FLOPs
   (``FlopCounterMode``, eager) and achieved TFLOP/s.
2. Training: one optimizer step of the reconstruction system at the lrdm_rgb recipe's batch (8 scenes x 5 input + 8
   output frames at 224x224, MoVieS's losses: MSE, LPIPS with a random VGG (same cost), depth, motion; bf16 autocast
   with fp32 master weights, AdamW), with and without activation checkpointing (per transformer block and per DPT head
   pass). A batch that does not fit is halved until one does (the per-GPU micro-batch). MFU = model FLOPs (3 x the
   network's forward FLOPs, `ReconstructionSystem.model_flops`) / step time / 798 TFLOP/s (the measured dense bf16
   peak of these H100s).

    python experiments/benchmarks/vggsplat.py [--out experiments/benchmarks/results] [--repeats 10]
    python experiments/benchmarks/vggsplat.py --variants all --phases profile      # only the variant grid
    python experiments/benchmarks/vggsplat.py --tiny      # the tiny configuration on the CPU: checks the script runs

``--tiny`` runs every measurement with conf/model/lrdm_vggt_tiny.yaml at small sizes with the torch renderer (no
compile, no bf16), so the GPU run is only a launch; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # timing.py

from timing import device_name, device_tag, provenance, provenance_line  # noqa: E402

from diff4splat.configs import to_dataclass, to_plain  # noqa: E402
from diff4splat.models.lrdm import LRDM, LRDMConfig, gaussians_at_all_times  # noqa: E402
from diff4splat.rendering import render  # noqa: E402

PEAK_TFLOPS = 798.0

FULL = {
    "model": "lrdm_vggt_1b",
    "inference": [(13, 294, 518, 0.15), (49, 294, 518, 0.6)],  # frames, H, W, goal (s)
    "views": 8,
    "train": (8, 5, 8, 224, 224),  # batch, inputs, outputs, H, W
}
TINY = {
    "model": "lrdm_vggt_tiny",
    "inference": [(3, 28, 56, None), (5, 28, 56, None)],
    "views": 2,
    "train": (1, 2, 2, 28, 28),
}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One inference setting (the weights are bf16 on CUDA in all of them)."""

    name: str
    autocast: bool = False  # bf16 autocast around the forward; False: plain bf16 (no autocast casts)
    compiled: bool = True  # transformer blocks compiled (in place, per block); False: eager (`set_stance`)
    sdpa: str = "cudnn_attention"
    queries_per_pass: int | None = None  # time-conditioned head passes: 1 = MoVieS's loop, None = all times at once
    channels_last: bool = True  # DPT head conv weights channels-last (NHWC convolutions)
    frames_chunk_size: int | None = 8  # DPT heads on this many frames at a time


# The chosen default first (it compiles the blocks once); the first H100 run's setting (autocast, one head pass per
# query time, NCHW heads) eager, then one change at a time. Autocast variants run eager: compiling a second set of
# block graphs (autocast is part of the guards) costs about a minute of device time.
VARIANTS = {
    "default": Variant("default"),
    "first_run_eager": Variant(
        "first_run_eager", autocast=True, compiled=False, queries_per_pass=1, channels_last=False
    ),
    "batched_queries_eager": Variant("batched_queries_eager", autocast=True, compiled=False, channels_last=False),
    "eager": Variant("eager", compiled=False),
    "nchw_heads": Variant("nchw_heads", channels_last=False),
    "flash": Variant("flash", sdpa="flash_attention"),
    "efficient": Variant("efficient", sdpa="efficient_attention"),
    "chunk_all": Variant("chunk_all", frames_chunk_size=None),
    "first_run": Variant("first_run", autocast=True, queries_per_pass=1, channels_last=False),
}
TINY_VARIANTS = ("default", "first_run")


def model_config(name: str, **fields: Any) -> LRDMConfig:
    raw = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml"))
    return to_dataclass(LRDMConfig, {**raw, **fields}, name)


def cameras(b: int, f: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A sideways dolly: OpenCV c2w [b, f, 4, 4] and normalised intrinsics [b, f, 4]."""
    c2w = torch.eye(4, device=device).repeat(b, f, 1, 1)
    c2w[..., 0, 3] = torch.linspace(-0.2, 0.2, f, device=device)
    c2w[..., 2, 3] = torch.linspace(0.0, 0.3, f, device=device)
    fx = torch.tensor([0.9, 0.9 * 518 / 294, 0.5, 0.5], device=device).repeat(b, f, 1)
    return c2w, fx


def timed(fn: Callable[[], object], repeats: int, device: str, warmup: int = 3) -> list[float]:
    """Sorted seconds of ``repeats`` calls after ``warmup`` calls (CUDA: each call synchronised)."""
    if device == "cuda":
        from timing import cuda_times

        return cuda_times(fn, repeats, warmup=warmup)
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return sorted(out)


def peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def reset_peak(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def sdpa_context(name: str, device: str) -> contextlib.AbstractContextManager:
    """Only SDPA backend ``name`` (on the CPU: the default)."""
    if device != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, name.upper())])


# ----------------------------------------------------------------------------------------------------------------------
# Per-stage timing and FLOPs
# ----------------------------------------------------------------------------------------------------------------------


class Stages:
    """Per-stage CUDA-event times (ms) and FLOPs of one forward + render. Modules' stages come from forward hooks
    (a module run several times, e.g. a time-conditioned head once per query time, sums over its calls); ``span``
    times a block of code. Inactive unless ``recording``."""

    def __init__(self, modules: dict[str, torch.nn.Module], device: str) -> None:
        self.device = device
        self.recording = False
        self.flop_counter: Any = None
        self.events: dict[str, list[tuple[Any, Any]]] = defaultdict(list)
        self.flops: dict[str, float] = defaultdict(float)
        self._open: dict[str, Any] = {}
        for name, module in modules.items():
            module.register_forward_pre_hook(lambda m, a, n=name: self._start(n))
            module.register_forward_hook(lambda m, a, o, n=name: self._end(n))

    def _mark(self) -> Any:
        if self.flop_counter is not None:
            return self.flop_counter.get_total_flops()
        if self.device == "cuda":
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def _start(self, name: str) -> None:
        if self.recording:
            self._open[name] = self._mark()

    def _end(self, name: str) -> None:
        if self.recording and name in self._open:
            start, end = self._open.pop(name), self._mark()
            if self.flop_counter is not None:
                self.flops[name] += end - start
            else:
                self.events[name].append((start, end))

    @contextlib.contextmanager
    def span(self, name: str) -> Iterator[None]:
        self._start(name)
        yield
        self._end(name)

    def collect(self) -> dict[str, float]:
        """ms per stage of the recorded call (summed over calls); clears the record."""
        if self.device == "cuda":
            torch.cuda.synchronize()
        out = {}
        for name, pairs in self.events.items():
            if self.device == "cuda":
                out[name] = sum(s.elapsed_time(e) for s, e in pairs)
            else:
                out[name] = 1e3 * sum(e - s for s, e in pairs)
        self.events.clear()
        return out


MODULE_STAGES = ("encoder", "aggregator", "depth_head", "splat_head", "motion_head", "motion_splat_head")


def stage_modules(model: LRDM) -> dict[str, torch.nn.Module]:
    v = model.backbone
    mods = {"encoder": v.encoder, "aggregator": v.backbone, "depth_head": v.depth_head, "splat_head": v.splat_head}
    if v.is_dynamic:
        mods.update(motion_head=v.motion_head, motion_splat_head=v.motion_splat_head)
    return mods


def breakdown(total: dict[str, float]) -> dict[str, float]:
    """Stage values with ``forward_rest`` = forward minus its module stages (conditioning, Plücker rays, motion
    masks, activation to Gaussians)."""
    out = {k: total[k] for k in (*MODULE_STAGES, "at_query_times", "render") if k in total}
    out["forward_rest"] = total.get("forward", 0.0) - sum(total.get(k, 0.0) for k in MODULE_STAGES)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------------------------------------


def apply_variant(model: LRDM, variant: Variant, device: str) -> None:
    model.queries_per_pass = variant.queries_per_pass
    model.frames_chunk_size = variant.frames_chunk_size
    fmt = torch.channels_last if variant.channels_last and device == "cuda" else torch.contiguous_format
    for head in model.backbone.dpt_heads():
        head.to(memory_format=fmt)


def inference_step(
    model: LRDM,
    stages: Stages,
    frames: int,
    height: int,
    width: int,
    views: int,
    device: str,
    variant: Variant,
    rendered: bool = True,
) -> Callable[[], torch.Tensor | None]:
    """Forward on ``frames`` frames + render ``views`` views in one call, view k at query time k (``rendered``)."""
    c2w, fx = cameras(1, frames + views, device)
    images = torch.rand(1, frames, 3, height, width, device=device)
    t_in = torch.linspace(0, 1, frames, device=device)[None]
    t_out = torch.linspace(0, 1, views, device=device)[None]
    renderer = "gsplat" if device == "cuda" else "torch"
    autocast = variant.autocast and device == "cuda"

    @torch.no_grad()
    def step() -> torch.Tensor | None:
        with stages.span("forward"), torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            out = model(c2w[:, :frames], fx[:, :frames], t_in, t_out, images=images)
        with stages.span("at_query_times"):
            g = gaussians_at_all_times(out.gaussians)  # [1, views, N]
        if not rendered:
            return None
        with stages.span("render"):
            rgb = render(g, c2w[:, frames:, None], fx[:, frames:, None], height, width, backend=renderer).rgb
        return rgb

    return step


@contextlib.contextmanager
def variant_context(variant: Variant, device: str) -> Iterator[None]:
    stance = contextlib.nullcontext() if variant.compiled else torch.compiler.set_stance("force_eager")
    with sdpa_context(variant.sdpa, device), stance:
        yield


def bench_inference(
    model: LRDM,
    stages: Stages,
    size: tuple,
    views: int,
    repeats: int,
    device: str,
    variant: Variant,
    flops: dict[str, float] | None,
    rendered: bool = True,
) -> dict:
    """Latency (median, hooks off), per-stage ms (median of 3 recorded calls), peak memory; TFLOP/s per stage when
    the stage FLOPs are given."""
    frames, height, width = size[:3]
    apply_variant(model, variant, device)
    step = inference_step(model, stages, frames, height, width, views, device, variant, rendered)
    with variant_context(variant, device):
        reset_peak(device)
        times = timed(step, repeats, device)
        peak = peak_gib(device)
        records = []
        stages.recording = True
        try:
            for _ in range(3):
                step()
                records.append(stages.collect())
        finally:
            stages.recording = False
    ms = {k: statistics.median(r.get(k, 0.0) for r in records) for k in records[0]}
    result = {
        "variant": dataclasses.asdict(variant),
        "frames": frames,
        "size": [height, width],
        "views": views if rendered else 0,
        "gaussians": frames * height * width,
        "median_s": times[len(times) // 2],
        "best_s": times[0],
        "peak_memory_GiB": peak,
        "stages_ms": breakdown(ms),
    }
    if flops:
        result["stages_tflops"] = {k: flops.get(k, 0.0) / 1e12 for k in result["stages_ms"]}
        result["stages_tflop_per_s"] = {
            k: flops[k] / (v * 1e-3) / 1e12 for k, v in result["stages_ms"].items() if flops.get(k) and v > 0
        }
    return result


def stage_flops(model_name: str, size: tuple, views: int, batch: int = 1, canonical_only: bool = False) -> dict:
    """FLOPs per stage of one forward (FlopCounterMode on the meta device: shapes only, no compute; SDPA counted as
    4 N^2 d per head; the renderer's are not counted). ``canonical_only``: the automatic rescale's measuring pass
    (no time-conditioned heads)."""
    from torch.utils.flop_counter import FlopCounterMode

    frames, height, width = size[:3]
    with torch.device("meta"):
        model = LRDM(model_config(model_name)).eval()
        c2w, fx = cameras(batch, frames, "meta")
        images = torch.empty(batch, frames, 3, height, width)
        t_in, t_out = torch.empty(batch, frames), torch.empty(batch, views)
    stages = Stages(stage_modules(model), "cpu")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        stages.flop_counter, stages.recording = counter, True
        with stages.span("forward"):
            model(c2w, fx, t_in, t_out, images=images, canonical_only=canonical_only)
    out = breakdown(dict(stages.flops))
    out["total"] = float(counter.get_total_flops())
    return out


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def run_inference(
    setting: dict,
    variants: list[Variant],
    phases: set[str],
    repeats: int,
    device: str,
    compile: bool,
    deadline: Deadline,
    save: Callable[[], None],
    result: dict,
    reserve_s: float = 30,
    rendered: bool = True,
) -> None:
    """The variant grid at the first size (while more than ``reserve_s`` is left), then the fastest variant at every
    size."""
    torch.manual_seed(0)
    with torch.device(device):
        model = LRDM(model_config(setting["model"])).eval()
    result["params_M"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)
    if device == "cuda":
        model.to(torch.bfloat16)  # bf16 weights for inference
    if compile:
        from diff4splat.models.parallel import compile_in_place

        for block in model.transformer_blocks():
            compile_in_place(block)
    stages = Stages(stage_modules(model), device)
    views = setting["views"]
    flops = {size[0]: stage_flops(setting["model"], size, views) for size in setting["inference"]}
    result["stage_tflops"] = {str(f): {k: v / 1e12 for k, v in fl.items()} for f, fl in flops.items()}
    save()
    if "profile" in phases:
        size = setting["inference"][0]
        for variant in variants:
            if deadline.left() < reserve_s:
                result.setdefault("skipped", []).append(f"profile {variant.name}: out of time")
                continue
            try:
                r = bench_inference(
                    model, stages, size, views, max(3, repeats // 2), device, variant, flops[size[0]], rendered
                )
            except (RuntimeError, torch.OutOfMemoryError) as e:  # a backend that does not take these shapes
                r = {"variant": dataclasses.asdict(variant), "error": str(e).splitlines()[0][:300]}
            result["profile"].append(r)
            print(f"profile {variant.name}: {json.dumps(r.get('median_s', r.get('error')))} {r.get('stages_ms')}")
            save()
            reset_peak(device)
    if "inference" in phases:
        timed_ok = [r for r in result["profile"] if "median_s" in r]
        best = min(timed_ok, key=lambda r: r["median_s"])["variant"]["name"] if timed_ok else variants[0].name
        chosen = next(v for v in variants if v.name == best)
        result["chosen_variant"] = dataclasses.asdict(chosen)
        for size in setting["inference"]:
            if deadline.left() < 45:
                result.setdefault("skipped", []).append(f"inference {size[0]} frames: out of time")
                continue
            r = bench_inference(model, stages, size, views, repeats, device, chosen, flops[size[0]], rendered)
            r["goal_s"] = size[3]
            result["inference"].append(r)
            print(f"inference {size[0]} frames ({chosen.name}): {r['median_s'] * 1e3:.1f} ms {r['stages_ms']}")
            save()
            reset_peak(device)
    del model, stages
    reset_peak(device)


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------


def train_batch(b: int, f_in: int, f_out: int, h: int, w: int, device: str) -> dict:
    """A batch as the datamodule gives it (datamodules/batch.py keys), random but well-formed: depth for every input
    frame, 64 tracks visible in every frame."""
    f = f_in + f_out
    c2w, fx = cameras(b, f, device)
    tracks = torch.randn(b, f, 64, 3, device=device) * 0.3 + torch.tensor([0.0, 0.0, 2.0], device=device)
    return {
        "images": torch.rand(b, f, 3, h, w, device=device),
        "c2w": c2w,
        "fxfycxcy": fx,
        "timestamps": torch.linspace(0, 1, f, device=device).repeat(b, 1),
        "num_input": f_in,
        "depth": torch.rand(b, f, h, w, device=device) + 1.0,
        "depth_valid": torch.ones(b, f, h, w, dtype=torch.bool, device=device),
        "depth_weight": torch.ones(b, device=device),
        "motion_weight": torch.ones(b, device=device),
        "tracks_world": tracks,
        "tracks_visible": torch.ones(b, f, 64, dtype=torch.bool, device=device),
        "key": [f"bench/{i}" for i in range(b)],
    }


def bench_training(cfg_name: str, shape: tuple, checkpointing: bool, compile: bool, repeats: int, device: str) -> dict:
    """One optimizer step of the reconstruction system (system=movies losses and groups)."""
    from diff4splat.systems.reconstruction import ReconstructionSystem

    reset_peak(device)
    cfg = model_config(cfg_name, gradient_checkpointing=checkpointing)
    with torch.device(device):
        system = ReconstructionSystem(
            model=to_plain(cfg),
            loss=dict(lpips_pretrained=False),
            optim=dict(
                lr=4e-4,
                betas=[0.9, 0.95],
                weight_decay=0.05,
                warmup_steps=1,
                lr_mult={"trunk": 0.1, "heads": 1.0},
                fused=device == "cuda",
            ),
            compile=compile,
        )
    system = system.to(device)
    if compile:
        system.configure_model()
    system.train()
    opt = system.configure_optimizers()["optimizer"]
    batch = train_batch(*shape, device)
    flops = system.model_flops(batch)

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            out, rgb = system(batch)
            loss = system.compute_losses(batch, out, rgb)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = timed(step, repeats, device, warmup=2)
    median = times[len(times) // 2]
    return {
        "batch": list(shape),
        "checkpointing": checkpointing,
        "compiled": compile,
        "median_s": median,
        "best_s": times[0],
        "peak_memory_GiB": peak_gib(device),
        "model_tflops_per_step": flops / 1e12,
        "mfu": flops / median / (PEAK_TFLOPS * 1e12),
    }


def saved_activations_gib(model_name: str, shape: tuple, blocks: bool, heads: bool) -> float:
    """GiB of the tensors autograd saves in one training forward of the LRDM (not the renderer or the losses), with
    checkpointing of the transformer blocks (``blocks``) and of the DPT head passes (``heads``): the model in bf16 on
    the meta device (shapes only), each saved storage counted once, parameters not counted. An estimate of the
    activation memory under bf16 autocast (where a few saved tensors are float32 instead)."""
    b, f_in, f_out, h, w = shape
    with torch.device("meta"):
        model = LRDM(model_config(model_name, gradient_checkpointing=blocks)).train().to(torch.bfloat16)
        model.backbone.set_head_checkpointing(heads)
        c2w, fx = cameras(b, f_in, "meta")
        images = torch.empty(b, f_in, 3, h, w)
        t_in, t_out = torch.empty(b, f_in), torch.empty(b, f_out)
    sizes: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.nn.Parameter):
            storage = t.untyped_storage()
            sizes[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(c2w, fx, t_in, t_out, images=images)
    return sum(sizes.values()) / 2**30


def activation_estimates(setting: dict) -> list[dict]:
    """`saved_activations_gib` per scene of the recipe's shape: no checkpointing, blocks only, blocks and heads."""
    shape = (1, *setting["train"][1:])
    return [
        {
            "blocks": blocks,
            "heads": heads,
            "GiB_per_scene": saved_activations_gib(setting["model"], shape, blocks, heads),
        }
        for blocks, heads in ((False, False), (True, False), (True, True))
    ]


def run_training(
    setting: dict, repeats: int, device: str, compile: bool, deadline: Deadline, save: Callable[[], None], result: dict
) -> None:
    """With and without checkpointing: the recipe's batch, halved until a step fits (each OOM recorded)."""
    shape = setting["train"]
    for checkpointing in (True, False):
        b = shape[0]
        while b >= 1:
            if deadline.left() < 60:
                result.setdefault("skipped", []).append(f"training b={b} ckpt={checkpointing}: out of time")
                break
            trial = (b, *shape[1:])
            try:
                r = bench_training(setting["model"], trial, checkpointing, compile, repeats, device)
            except torch.OutOfMemoryError as e:
                r = {"batch": list(trial), "checkpointing": checkpointing, "compiled": compile, "error": str(e)[:200]}
            result["training"].append(r)
            print(f"training {trial} ckpt={checkpointing}: {r.get('median_s', 'OOM')} peak {r.get('peak_memory_GiB')}")
            save()
            reset_peak(device)
            if "error" not in r:
                break
            b //= 2


# ----------------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------------


def _ms(x: float) -> str:
    return f"{x * 1e3:.1f} ms"


def table(result: dict) -> str:
    rows = []
    for r in result["inference"]:
        goal = f"<= {r['goal_s']} s" if r["goal_s"] else "-"
        met = "" if not r["goal_s"] else ("yes" if r["median_s"] <= r["goal_s"] else "no")
        mem = f"{r['peak_memory_GiB']:.1f} GiB" if r["peak_memory_GiB"] is not None else "-"
        name = f"inference {r['frames']}x{r['size'][0]}x{r['size'][1]} + {r['views']} renders"
        rows.append((name, _ms(r["median_s"]), mem, goal, met, "-"))
    for r in result["training"]:
        b, fi, fo, h, w = r["batch"]
        name = f"train step {b} x ({fi}+{fo}) @{h}x{w}, ckpt {'on' if r['checkpointing'] else 'off'}"
        if "error" in r:
            rows.append((name, "OOM", "-", "-", "", "-"))
            continue
        mem = f"{r['peak_memory_GiB']:.1f} GiB" if r["peak_memory_GiB"] is not None else "-"
        rows.append((name, _ms(r["median_s"]), mem, "-", "", f"{100 * r['mfu']:.1f} %"))
    head = "| measurement | median | peak memory | goal | met | MFU |\n|---|---|---|---|---|---|\n"
    return head + "\n".join("| " + " | ".join(row) + " |" for row in rows)


def stage_table(result: dict) -> str:
    """Per-stage ms of every profiled variant and of the final runs (with TFLOP/s where FLOPs are known)."""
    runs = [(f"{r['variant']['name']} ({r['frames']} fr)", r) for r in result["profile"] if "stages_ms" in r]
    runs += [(f"final ({r['frames']} fr)", r) for r in result["inference"]]
    if not runs:
        return ""
    names = [*MODULE_STAGES, "forward_rest", "at_query_times", "render"]
    names = [n for n in names if any(n in r["stages_ms"] for _, r in runs)]
    head = "| run | total | " + " | ".join(names) + " |\n|---|---|" + "---|" * len(names) + "\n"
    lines = []
    for label, r in runs:
        cells = []
        for n in names:
            ms = r["stages_ms"].get(n)
            rate = r.get("stages_tflop_per_s", {}).get(n)
            cells.append("-" if ms is None else f"{ms:.1f}" + (f" ({rate:.0f})" if rate else ""))
        lines.append(f"| {label} | {r['median_s'] * 1e3:.1f} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines)


def meta_text(result: dict) -> str:
    """The meta-device analysis: FLOPs per stage (and the time they take at the dense bf16 peak), the training
    activation estimate."""
    if "activation_estimates" not in result:
        return ""
    lines = ["## FLOPs per forward (meta device, FlopCounterMode; the renderer not counted)", ""]
    names = [*MODULE_STAGES, "forward_rest", "total"]
    lines.append("| input | " + " | ".join(names) + " | ms at 798 TFLOP/s |")
    lines.append("|---|" + "---|" * (len(names) + 1))
    shapes = {str(f): (h, w) for f, h, w, _ in result["inference_shapes"]}
    rows = [
        (f"inference {f} x {shapes[f][0]}x{shapes[f][1]}, {result['views']} query times", fl)
        for f, fl in result["stage_tflops"].items()
    ]
    rows += [
        (f"rescale's measuring pass {f} x {shapes[f][0]}x{shapes[f][1]} (canonical_only)", fl)
        for f, fl in result.get("measuring_pass_tflops", {}).items()
    ]
    b, fi, fo, h, w = result["train_shape"]
    rows.append(
        (f"training forward {b} x {fi} frames @{h}x{w}, {fo} query times", result["train_stage_tflops_forward"])
    )
    for label, fl in rows:
        cells = [f"{fl.get(n, 0.0):.2f}" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {fl['total'] / PEAK_TFLOPS * 1e3:.0f} |")
    lines += [
        "",
        f"Training model FLOPs per step (3 x forward): {result['train_model_tflops_per_step']:.1f} TFLOP.",
        "",
    ]
    lines += ["## Saved activations of one training forward per scene (meta device, bf16)", ""]
    lines += ["| blocks checkpointed | head passes checkpointed | GiB per scene |", "|---|---|---|"]
    for r in result["activation_estimates"]:
        lines.append(f"| {r['blocks']} | {r['heads']} | {r['GiB_per_scene']:.2f} |")
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path, tag: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"vggsplat_{tag}.json").write_text(json.dumps(result, indent=2))
    chosen = result.get("chosen_variant")
    stages = stage_table(result)
    (out / f"vggsplat_{tag}.md").write_text(
        f"# VGGSplaT benchmark\n\n{provenance_line(result)}"
        + (f"; final runs: variant {chosen['name']} ({json.dumps(chosen)})" if chosen else "")
        + "\n\n"
        + (f"{table(result)}\n\n" if result["inference"] or result["training"] else "")
        + (f"Per stage (ms; in brackets achieved TFLOP/s from the stage's FLOPs):\n\n{stages}\n\n" if stages else "")
        + meta_text(result)
    )
    return out / f"vggsplat_{tag}.json"


MEASURED_FILES = (
    "diff4splat/models/vggt.py",
    "diff4splat/models/vggt_blocks.py",
    "diff4splat/models/vggt_config.py",
    "diff4splat/models/dpt.py",
    "diff4splat/models/movies.py",
    "diff4splat/models/movies_gaussians.py",
    "diff4splat/models/lrdm.py",
    "experiments/benchmarks/vggsplat.py",
)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--train-repeats", type=int, default=5)
    p.add_argument("--tiny", action="store_true", help="tiny model, small sizes, CPU (checks the script)")
    p.add_argument("--no-compile", action="store_true", help="eager blocks (default: compiled on CUDA)")
    p.add_argument("--train-compile", action="store_true", help="compile the blocks in the training steps too")
    p.add_argument(
        "--phases",
        default="profile,inference,meta,train",
        help="comma-separated: profile, inference, meta (FLOPs and training activation estimate on the meta "
        "device; runs on the CPU), train",
    )
    p.add_argument("--variants", default="all", help=f"comma-separated of {', '.join(VARIANTS)}, or all")
    p.add_argument("--deadline-s", type=float, default=1e9, help="skip measurements that would start later")
    p.add_argument("--no-render", action="store_true", help="time the forward only (no gsplat)")
    p.add_argument("--reserve-s", type=float, default=30, help="the variant grid stops when this much time is left")
    p.add_argument("--tag", default=None, help="results file name vggsplat_<tag> (default: from the device)")
    args = p.parse_args(argv)
    phases = set(args.phases.split(","))
    device = "cpu" if args.tiny or phases == {"meta"} else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("vggsplat.py needs a CUDA GPU (gsplat rendering); --tiny and --phases meta run on the CPU")
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        torch._dynamo.config.cache_size_limit = 64
    names = list(TINY_VARIANTS if args.tiny else VARIANTS) if args.variants == "all" else args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"error: --variants: unknown {unknown}; expected a comma-separated list of {list(VARIANTS)}")
    variants = [VARIANTS[n] for n in names]
    if args.tiny:
        variants = [dataclasses.replace(v, compiled=False) for v in variants]
    name = device_name(device)
    tag = args.tag or ("tiny_cpu" if args.tiny else device_tag(name))
    setting = TINY if args.tiny else FULL
    tag = args.tag or ("meta" if phases == {"meta"} else tag)
    result: dict[str, Any] = {
        **provenance("vggsplat.py", argv, name, MEASURED_FILES),
        "model": setting["model"],
        "compiled_blocks": device == "cuda" and not args.no_compile,
        "profile": [],
        "inference": [],
        "training": [],
    }
    out = Path(args.out)
    deadline = Deadline(args.deadline_s)

    def save() -> None:
        write(result, out, tag)

    compile = result["compiled_blocks"]
    if phases & {"profile", "inference"}:
        run_inference(
            setting,
            variants,
            phases,
            args.repeats,
            device,
            compile,
            deadline,
            save,
            result,
            args.reserve_s,
            not args.no_render,
        )
    if "meta" in phases:
        if "stage_tflops" not in result:
            result["stage_tflops"] = {
                str(size[0]): {k: v / 1e12 for k, v in stage_flops(setting["model"], size, setting["views"]).items()}
                for size in setting["inference"]
            }
        result["measuring_pass_tflops"] = {
            str(size[0]): {
                k: v / 1e12
                for k, v in stage_flops(setting["model"], size, setting["views"], canonical_only=True).items()
            }
            for size in setting["inference"]
        }
        result["activation_estimates"] = activation_estimates(setting)
        print(f"saved activations per scene (GiB): {result['activation_estimates']}")
        b, f_in, f_out, h, w = setting["train"]
        train = stage_flops(setting["model"], (f_in, h, w), f_out, batch=b)
        result["train_shape"] = list(setting["train"])
        result["inference_shapes"], result["views"] = setting["inference"], setting["views"]
        result["train_model_tflops_per_step"] = 3 * train["total"] / 1e12  # as ReconstructionSystem.model_flops
        result["train_stage_tflops_forward"] = {k: v / 1e12 for k, v in train.items()}
        print(f"training model TFLOP per step at {setting['train']}: {result['train_model_tflops_per_step']:.1f}")
    if "train" in phases:
        run_training(setting, args.train_repeats, device, compile and args.train_compile, deadline, save, result)
    path = write(result, out, tag)
    print(f"{name}\n{table(result)}\n\n{stage_table(result)}")
    return path


if __name__ == "__main__":
    main()
