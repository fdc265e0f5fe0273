"""VGGSplaT (the released reconstructor: MoVieS on VGGT-1B, the LRDM's ``vggt`` encoder) speed and memory on one GPU,
written to results/vggsplat_<device>.{json,md}.

1. Inference: the 1B model with random weights in bf16, transformer blocks compiled (in place, per block), the
   fastest SDPA backend (each available one is timed, the best kept), on 13 input frames at 294x518 (VGGT's 518 long
   side, 21x37 patches): the forward (encoder, aggregator, depth and Gaussian heads, the motion heads at each of the
   8 query times) + rendering 8 output views with gsplat (view k at query time k). Latency (median of ``--repeats``)
   and peak memory. Goal on an H100: <= 0.15 s. The same at 49 frames: goal <= 0.6 s. The time-conditioned heads run
   once per query time (MoVieS's loop) or on all 8 at once (``queries_per_pass``); both are timed, the faster kept.
2. Training: one optimizer step of the reconstruction system at the lrdm_rgb recipe's batch (8 scenes x 5 input + 8
   output frames at 224x224, MoVieS's losses: MSE, LPIPS with a random VGG (same cost), depth, motion; bf16 autocast
   with fp32 master weights, AdamW), with and without activation checkpointing per block. MFU = model FLOPs (3 x the
   network's forward FLOPs, `ReconstructionSystem.model_flops`) / step time / 798 TFLOP/s (dense bf16 peak).

    python experiments/benchmarks/vggsplat.py [--out experiments/benchmarks/results] [--repeats 10]
    python experiments/benchmarks/vggsplat.py --tiny      # the tiny configuration on the CPU: checks the script runs

``--tiny`` runs every measurement with conf/model/lrdm_vggt_tiny.yaml at small sizes with the torch renderer (no
compile, no bf16), so the GPU run is only a launch; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # timing.py

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


def timed(fn: Callable[[], object], repeats: int, device: str) -> list[float]:
    """Sorted seconds of ``repeats`` calls after 2 warm-up calls (CUDA: each call synchronised)."""
    if device == "cuda":
        from timing import cuda_times

        return cuda_times(fn, repeats, warmup=3)
    for _ in range(2):
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


def sdpa_backends(device: str) -> list[tuple[str, Any]]:
    """(name, context factory) of the SDPA backends to try: each CUDA one alone; on the CPU the default."""
    if device != "cuda":
        return [("default", contextlib.nullcontext)]
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION")
    return [(n.lower(), lambda b=getattr(SDPBackend, n): sdpa_kernel([b])) for n in names if hasattr(SDPBackend, n)]


def bench_inference(
    model: LRDM, frames: int, height: int, width: int, views: int, repeats: int, device: str, backend: Any
) -> dict:
    """Forward on ``frames`` frames + render ``views`` views, view k at query time k (bf16 on CUDA)."""
    c2w, fx = cameras(1, frames + views, device)
    images = torch.rand(1, frames, 3, height, width, device=device)
    t_in = torch.linspace(0, 1, frames, device=device)[None]
    t_out = torch.linspace(0, 1, views, device=device)[None]
    renderer = "gsplat" if device == "cuda" else "torch"

    @torch.no_grad()
    def step() -> torch.Tensor:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            out = model(c2w[:, :frames], fx[:, :frames], t_in, t_out, images=images)
        g = gaussians_at_all_times(out.gaussians)  # [1, views, N]
        return render(g, c2w[:, frames:, None], fx[:, frames:, None], height, width, backend=renderer).rgb

    with backend():
        reset_peak(device)
        times = timed(step, repeats, device)
    return {
        "frames": frames,
        "size": [height, width],
        "views": views,
        "gaussians": frames * height * width,
        "median_s": times[len(times) // 2],
        "best_s": times[0],
        "peak_memory_GiB": peak_gib(device),
    }


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
    ).to(device)
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

    times = timed(step, repeats, device)
    median = times[len(times) // 2]
    result = {
        "batch": list(shape),
        "checkpointing": checkpointing,
        "compiled": compile,
        "median_s": median,
        "best_s": times[0],
        "peak_memory_GiB": peak_gib(device),
        "model_tflops_per_step": flops / 1e12,
        "mfu": flops / median / (PEAK_TFLOPS * 1e12),
    }
    return result


def fastest_backend(model: LRDM, setting: dict, device: str) -> tuple[str, Any, dict[str, float]]:
    """Time the first inference setting under each SDPA backend; the fastest (name, context) and all medians."""
    frames, h, w, _ = setting["inference"][0]
    medians, best = {}, None
    for name, ctx in sdpa_backends(device):
        try:
            r = bench_inference(model, frames, h, w, setting["views"], 3, device, ctx)
        except RuntimeError as e:  # a backend that does not support these shapes / dtypes
            medians[name] = float("nan")
            print(f"SDPA {name}: unavailable ({str(e).splitlines()[0]})")
            continue
        medians[name] = r["median_s"]
        if best is None or r["median_s"] < medians[best[0]]:
            best = (name, ctx)
    if best is None:
        raise RuntimeError("no SDPA backend ran")
    return best[0], best[1], medians


def run(tiny: bool, repeats: int, device: str, compile: bool) -> dict:
    setting = TINY if tiny else FULL
    torch.manual_seed(0)
    model = LRDM(model_config(setting["model"])).to(device).eval()
    params = sum(p.numel() for p in model.parameters())
    if device == "cuda":
        model.to(torch.bfloat16)  # bf16 weights for inference
    if compile:
        from diff4splat.models.parallel import compile_in_place

        for block in model.transformer_blocks():
            compile_in_place(block)
    backend_name, backend, backend_medians = fastest_backend(model, setting, device)
    frames, h, w, _ = setting["inference"][0]
    query_medians = {}
    for per_pass in (1, None):  # MoVieS's loop over query times, or all of them in one batched pass
        model.queries_per_pass = per_pass
        r = bench_inference(model, frames, h, w, setting["views"], 3, device, backend)
        query_medians["all" if per_pass is None else str(per_pass)] = r["median_s"]
    model.queries_per_pass = None if query_medians["all"] < query_medians["1"] else 1
    inference = []
    for frames, h, w, goal in setting["inference"]:
        r = bench_inference(model, frames, h, w, setting["views"], repeats, device, backend)
        r["goal_s"] = goal
        inference.append(r)
    model_queries = model.queries_per_pass
    del model
    training = []
    for checkpointing in (True, False):
        try:
            training.append(bench_training(setting["model"], setting["train"], checkpointing, compile, repeats, device))
        except torch.OutOfMemoryError as e:
            training.append({"batch": list(setting["train"]), "checkpointing": checkpointing, "error": str(e)[:200]})
    return {
        "model": setting["model"],
        "params_M": round(params / 1e6, 1),
        "sdpa_backend": backend_name,
        "sdpa_medians_s": backend_medians,
        "queries_per_pass": "all" if model_queries is None else model_queries,
        "queries_per_pass_medians_s": query_medians,
        "compiled_blocks": compile,
        "inference": inference,
        "training": training,
    }


def table(result: dict) -> str:
    rows = []
    for r in result["inference"]:
        goal = f"<= {r['goal_s']} s" if r["goal_s"] else "-"
        met = "" if not r["goal_s"] else ("yes" if r["median_s"] <= r["goal_s"] else "no")
        mem = f"{r['peak_memory_GiB']:.1f} GiB" if r["peak_memory_GiB"] is not None else "-"
        name = f"inference {r['frames']}x{r['size'][0]}x{r['size'][1]} + {r['views']} renders"
        rows.append((name, f"{r['median_s'] * 1e3:.1f} ms", mem, goal, met, "-"))
    for r in result["training"]:
        b, fi, fo, h, w = r["batch"]
        name = f"train step {b} x ({fi}+{fo}) @{h}x{w}, ckpt {'on' if r['checkpointing'] else 'off'}"
        if "error" in r:
            rows.append((name, "OOM", "-", "-", "", "-"))
            continue
        mem = f"{r['peak_memory_GiB']:.1f} GiB" if r["peak_memory_GiB"] is not None else "-"
        rows.append((name, f"{r['median_s'] * 1e3:.1f} ms", mem, "-", "", f"{100 * r['mfu']:.1f} %"))
    head = "| measurement | median | peak memory | goal | met | MFU |\n|---|---|---|---|---|---|\n"
    return head + "\n".join("| " + " | ".join(row) + " |" for row in rows)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--tiny", action="store_true", help="tiny model, small sizes, CPU (checks the script)")
    p.add_argument("--no-compile", action="store_true", help="eager blocks (default: compiled on CUDA)")
    args = p.parse_args(argv)
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("vggsplat.py needs a CUDA GPU (gsplat rendering); --tiny runs on the CPU")
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    result = {
        "command": " ".join(["python", *sys.argv]) if argv is None else " ".join(["python vggsplat.py", *argv]),
        "device": name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(),
        **run(args.tiny, args.repeats, device, compile=device == "cuda" and not args.no_compile),
    }
    text = table(result)
    print(f"{name}, SDPA {result['sdpa_backend']}, queries per pass {result['queries_per_pass']}\n{text}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "tiny_cpu" if args.tiny else "h100" if "H100" in name else "h200" if "H200" in name else "gpu"
    (out / f"vggsplat_{tag}.json").write_text(json.dumps(result, indent=2))
    (out / f"vggsplat_{tag}.md").write_text(
        f"# VGGSplaT benchmark\n\n`{result['command']}` on {name}, {result['date']}, SDPA backend "
        f"{result['sdpa_backend']}, query times per head pass: {result['queries_per_pass']}, compiled blocks: "
        f"{result['compiled_blocks']}\n\n{text}\n"
    )
    return out / f"vggsplat_{tag}.json"


if __name__ == "__main__":
    main()
