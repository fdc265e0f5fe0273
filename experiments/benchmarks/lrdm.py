"""LRDM speed on one GPU: the issue's two measurements, written to results/lrdm_<device>.{json,md}.

1. Inference: the ``base`` LRDM (16 blocks, width 768) on 13 input frames at 512x512, forward + rendering 8 output
   views with gsplat (bf16 autocast for the network, fp32 rendering). Goal: <= 0.3 s (MoVieS reports 0.93 s).
2. Training: one optimizer step (forward, render 8 output views per scene, MSE + depth loss, backward, AdamW) at
   batch 8 x (5 input + 8 output) frames at 256x256, with its peak memory.

    python experiments/benchmarks/lrdm.py [--out experiments/benchmarks/results] [--repeats 10]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch
from timing import cuda_times

from diff4splat.models.lrdm import LRDM, gaussians_at_all_times, lrdm_preset
from diff4splat.rendering import render


def cameras(b: int, f: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    c2w = torch.eye(4, device=device).repeat(b, f, 1, 1)
    c2w[..., 0, 3] = torch.linspace(-0.2, 0.2, f, device=device)
    c2w[..., 2, 3] = torch.linspace(0.0, 0.3, f, device=device)
    fx = torch.tensor([0.9, 0.9, 0.5, 0.5], device=device).repeat(b, f, 1)
    return c2w, fx


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median, best) seconds of ``fn``."""
    times = cuda_times(fn, repeats)
    return times[len(times) // 2], times[0]


def bench_inference(repeats: int, device: str) -> dict:
    model = LRDM(lrdm_preset("base")).to(device).eval()
    b, f_in, f_out, h, w = 1, 13, 8, 512, 512
    images = torch.rand(b, f_in, 3, h, w, device=device)
    c2w, fx = cameras(b, f_in + f_out, device)
    t_in = torch.linspace(0, 1, f_in, device=device)[None]
    t_out = torch.linspace(0, 1, f_out, device=device)[None]

    @torch.no_grad()
    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(c2w[:, :f_in], fx[:, :f_in], t_in, t_out, images=images)
        g = gaussians_at_all_times(out.gaussians)
        return render(g, c2w[:, f_in:, None], fx[:, f_in:, None], h, w, backend="gsplat").rgb

    median, best = timed(step, repeats)
    return {
        "what": "base LRDM, 13 frames 512x512 -> 8 rendered views",
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "gaussians": f_in * h * w,
        "median_s": median,
        "best_s": best,
        "goal_s": 0.3,
    }


def bench_training(repeats: int, device: str) -> dict:
    torch.cuda.reset_peak_memory_stats()
    model = LRDM(lrdm_preset("base", gradient_checkpointing=True)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    b, f_in, f_out, h, w = 8, 5, 8, 256, 256
    images = torch.rand(b, f_in + f_out, 3, h, w, device=device)
    depth = torch.rand(b, f_in, h, w, device=device) + 0.5
    c2w, fx = cameras(b, f_in + f_out, device)
    t = torch.linspace(0, 1, f_in + f_out, device=device).repeat(b, 1)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(c2w[:, :f_in], fx[:, :f_in], t[:, :f_in], t[:, f_in:], images=images[:, :f_in])
        g = gaussians_at_all_times(out.gaussians)
        rgb = render(g, c2w[:, f_in:, None], fx[:, f_in:, None], h, w, backend="gsplat").rgb[:, :, 0]
        loss = torch.nn.functional.mse_loss(rgb, images[:, f_in:]) + (out.depth - depth).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    median, best = timed(step, repeats)
    return {
        "what": "base LRDM training step, batch 8 x (5 in + 8 out) at 256x256, grad checkpointing, bf16",
        "median_s": median,
        "best_s": best,
        "peak_memory_GiB": torch.cuda.max_memory_allocated() / 2**30,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("lrdm.py needs a CUDA GPU (gsplat rendering); run it on the device")
    device = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name()
    inference = bench_inference(args.repeats, device)
    training = bench_training(args.repeats, device)
    result = {
        "command": " ".join(["python"] + sys.argv),
        "device": name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(),
        "inference": inference,
        "training": training,
    }
    rows = [
        (
            "inference (13x512² -> 8 views)",
            f"{inference['median_s'] * 1e3:.1f} ms",
            f"<= {inference['goal_s']} s",
            "yes" if inference["median_s"] <= inference["goal_s"] else "no",
        ),
        (
            "training step (8 x 5+8 @256²)",
            f"{training['median_s'] * 1e3:.1f} ms",
            f"peak {training['peak_memory_GiB']:.1f} GiB",
            "",
        ),
    ]
    table = "| measurement | median | goal / memory | met |\n|---|---|---|---|\n" + "\n".join(
        f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows
    )
    print(f"{name}\n{table}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "h100" if "H100" in name else "h200" if "H200" in name else "gpu"
    (out / f"lrdm_{tag}.json").write_text(json.dumps(result, indent=2))
    (out / f"lrdm_{tag}.md").write_text(
        f"# LRDM benchmark\n\n{result['command']} on {name}, {result['date']}\n\n{table}\n"
    )


if __name__ == "__main__":
    main()
