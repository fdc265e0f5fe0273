"""Render benchmark: ``diff4splat.rendering.render`` (gsplat backend) against a raw ``gsplat.rasterization`` call,
and the pure-torch backend on the CPU.

    python experiments/benchmarks/render.py                 # all GPU cases (needs CUDA + gsplat) and the CPU case
    python experiments/benchmarks/render.py --cpu-only      # only the torch backend on the CPU
    python experiments/benchmarks/render.py --out experiments/benchmarks/results/render_h100.json

Scenes are per-pixel-like: N Gaussians on the rays of the first camera at depths 1.5-3.5, pixel-sized scales,
random colours and opacities, seen by V cameras on a small arc. Times are medians of CUDA-event timings after
warm-up; forward+backward uses ``sum(rgb) + sum(depth) + sum(alpha)`` as the loss. Prints a table and writes JSON
and a markdown table (same stem) with the command, device and date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from diff4splat.gaussians import Gaussians
from diff4splat.geometry.cameras import fxfycxcy_to_K, invert_c2w
from diff4splat.geometry.trajectories import make_trajectory
from diff4splat.rendering import render

GPU_CASES = [(1_000_000, 8, 256, 256), (11_000_000, 8, 352, 640)]
CPU_CASE = (50_000, 2, 128, 128)


def make_scene(N: int, V: int, H: int, W: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    fxfycxcy = torch.tensor([0.9, 0.9 * W / H, 0.5, 0.5])
    uv = torch.rand(N, 2, generator=g)
    depth = 1.5 + 2.0 * torch.rand(N, generator=g)
    means = torch.stack([(uv[:, 0] - 0.5) / fxfycxcy[0] * depth, (uv[:, 1] - 0.5) / fxfycxcy[1] * depth, depth], dim=-1)
    pixel = depth / (fxfycxcy[0] * W)  # one pixel's footprint at that depth
    density = (H * W / N) ** 0.5  # Gaussians per pixel (side) -> spread so they tile the image
    scales = pixel[:, None] * density * torch.exp(torch.randn(N, 3, generator=g) * 0.3)
    gs = Gaussians(
        means=means,
        quats=torch.randn(N, 4, generator=g),
        scales=scales,
        opacities=torch.rand(N, generator=g) * 0.9 + 0.05,
        colors=torch.rand(N, 3, generator=g),
    ).to(device)
    traj = make_trajectory("arc_left", V, strength=0.5, look_at=2.5)
    c2w = traj.c2w.float().to(device)
    K = fxfycxcy.expand(V, 4).contiguous().to(device)
    return gs, c2w, K


def cuda_time(fn, warmup: int = 3, iters: int = 10) -> float:
    """Median milliseconds of ``fn()`` over ``iters`` runs (CUDA events)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def bench_gpu(N: int, V: int, H: int, W: int) -> dict:
    import gsplat

    gs, c2w, K = make_scene(N, V, H, W, "cuda")
    leaves = {
        k: getattr(gs, k).clone().requires_grad_(True) for k in ("means", "quats", "scales", "opacities", "colors")
    }
    viewmats = invert_c2w(c2w)
    Ks = fxfycxcy_to_K(K, H, W)

    def raw(backward: bool):
        def run():
            colors, alphas, _ = gsplat.rasterization(
                leaves["means"],
                leaves["quats"],
                leaves["scales"],
                leaves["opacities"],
                leaves["colors"],
                viewmats,
                Ks,
                W,
                H,
                near_plane=0.001,
                far_plane=100.0,
                packed=False,
                render_mode="RGB+ED",
                rasterize_mode="classic",
            )
            if backward:
                (colors.sum() + alphas.sum()).backward()

        return run

    def wrapped(backward: bool):
        def run():
            out = render(Gaussians(**leaves), c2w, K, H, W, backend="gsplat")
            if backward:
                (out.rgb.sum() + out.depth.sum() + out.alpha.sum()).backward()

        return run

    row = {"N": N, "V": V, "H": H, "W": W}
    torch.cuda.reset_peak_memory_stats()
    for mode, backward in (("fwd", False), ("fwd_bwd", True)):
        ctx = torch.enable_grad() if backward else torch.no_grad()
        with ctx:
            # interleave to share any clock/thermal drift
            row[f"raw_{mode}_ms"] = cuda_time(raw(backward))
            row[f"wrapper_{mode}_ms"] = cuda_time(wrapped(backward))
            row[f"raw_{mode}_ms_2"] = cuda_time(raw(backward))
        row[f"ratio_{mode}"] = row[f"wrapper_{mode}_ms"] / min(row[f"raw_{mode}_ms"], row[f"raw_{mode}_ms_2"])
    row["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return row


def bench_cpu(N: int, V: int, H: int, W: int, repeats: int = 3) -> dict:
    gs, c2w, K = make_scene(N, V, H, W, "cpu")
    row = {"N": N, "V": V, "H": H, "W": W, "threads": torch.get_num_threads()}
    with torch.no_grad():
        render(gs, c2w, K, H, W, backend="torch")
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = render(gs, c2w, K, H, W, backend="torch")
            times.append((time.perf_counter() - t0) * 1e3)
    row["torch_fwd_ms"] = statistics.median(times)
    leaves = {
        k: getattr(gs, k).clone().requires_grad_(True) for k in ("means", "quats", "scales", "opacities", "colors")
    }
    t0 = time.perf_counter()
    out = render(Gaussians(**leaves), c2w, K, H, W, backend="torch")
    (out.rgb.sum() + out.depth.sum() + out.alpha.sum()).backward()
    row["torch_fwd_bwd_ms"] = (time.perf_counter() - t0) * 1e3
    row["coverage"] = float((out.alpha > 0.5).float().mean())
    return row


def markdown(result: dict) -> str:
    lines = [
        "# Render benchmark",
        "",
        f"- command: `{result['command']}`",
        f"- date: {result['date']}",
        f"- device: {result['device']}",
        f"- torch {result['torch']}, gsplat {result.get('gsplat')}",
        "",
    ]
    if result["gpu"]:
        lines += [
            "| N | V | H×W | raw fwd ms | wrapper fwd ms | ratio | raw fwd+bwd ms | wrapper fwd+bwd ms | ratio | peak GB |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in result["gpu"]:
            raw_f = min(r["raw_fwd_ms"], r["raw_fwd_ms_2"])
            raw_b = min(r["raw_fwd_bwd_ms"], r["raw_fwd_bwd_ms_2"])
            lines.append(
                f"| {r['N']:,} | {r['V']} | {r['H']}×{r['W']} | {raw_f:.2f} | {r['wrapper_fwd_ms']:.2f} | "
                f"{r['ratio_fwd']:.3f} | {raw_b:.2f} | {r['wrapper_fwd_bwd_ms']:.2f} | {r['ratio_fwd_bwd']:.3f} | "
                f"{r['peak_mem_gb']:.1f} |"
            )
        lines.append("")
    if result["cpu"]:
        r = result["cpu"]
        lines += [
            "| CPU torch backend | N | V | H×W | threads | fwd ms | fwd+bwd ms |",
            "|---|---|---|---|---|---|---|",
            f"| {result['cpu_device']} | {r['N']:,} | {r['V']} | {r['H']}×{r['W']} | {r['threads']} | "
            f"{r['torch_fwd_ms']:.0f} | {r['torch_fwd_bwd_ms']:.0f} |",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("experiments/benchmarks/results/render.json"))
    parser.add_argument("--cpu-only", action="store_true")
    parser.add_argument("--gpu-only", action="store_true")
    args = parser.parse_args()

    result: dict = {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu only",
        "cpu_device": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "gpu": [],
        "cpu": None,
    }
    try:
        import gsplat

        result["gsplat"] = gsplat.__version__
    except ImportError:
        result["gsplat"] = None
    if not args.cpu_only and torch.cuda.is_available():
        for case in GPU_CASES:
            row = bench_gpu(*case)
            torch.cuda.empty_cache()
            print(json.dumps(row), flush=True)
            result["gpu"].append(row)
    if not args.gpu_only:
        result["cpu"] = bench_cpu(*CPU_CASE)
        print(json.dumps(result["cpu"]), flush=True)
    table = markdown(result)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
