"""Latent -> RGB decoding speed on one GPU: the TinyVAE (TAEHV layout, Wan2.2 interface) against the Wan2.2 VAE decoder.

Both with random weights and their real architectures (TinyVAE 11.4 M parameters; Wan2.2 VAE from
``diff4splat/models/configs/wan2.2_vae.json``, 705 M), decoding normalised Wan2.2 latents of 49 frames at 352x640
(1 x 48 x 13 x 22 x 40) and at 480x832. Rows: the Wan2.2 VAE decoder (bf16, diffusers ``AutoencoderKLWan``), the
TinyVAE decoder through ``LatentAligner.decode`` (linear mapper -> TinyVAE, the normalised latents as they are, TAEHV's
convention; the results recorded before that change also ran z * std + mean first; bf16 and fp16, channels-last and
torch.compile variants), and both encoders for reference. Median of ``--repeats`` runs after warm-up, peak memory
(``torch.cuda.max_memory_allocated`` above what was allocated before the call). Goal: TinyVAE decode >= 10x faster
than the Wan2.2 VAE decoder at 352x640x49 (the Wan2.2 decoder was measured at 0.68 s in bf16).

    python experiments/benchmarks/tiny_vae.py [--out experiments/benchmarks/results] [--repeats 10] [--no-compile]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from timing import cuda_times

from diff4splat.models.alignment import AlignerConfig, LatentAligner
from diff4splat.models.wan_convert import vae_config
from diff4splat.models.wan_vae import WanVAE


def timed(fn: Callable[[], object], repeats: int, warmup: int = 2) -> dict:
    """Median and best seconds of ``fn``, and its peak memory above what was allocated before the timed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = cuda_times(fn, repeats, warmup=0)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    return {"median_s": times[len(times) // 2], "min_s": times[0], "peak_GiB": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("tiny_vae.py needs a CUDA GPU; run it on the device")
    dev = "cuda"
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name()
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    wan = WanVAE(AutoencoderKLWan(**vae_config()).to(torch.bfloat16)).to(dev)
    wan_params = sum(q.numel() for q in wan.parameters())
    aligner = LatentAligner(AlignerConfig(version="wan22")).to(dev).eval().requires_grad_(False)
    aligner.set_normalisation(wan.mean, wan.std)
    tiny_params = sum(q.numel() for q in aligner.tiny_vae.parameters())
    rows: list[dict] = []

    def add(size: str, what: str, fn: Callable[[], object], repeats: int) -> None:
        with torch.no_grad():
            r = timed(fn, repeats)
        rows.append({"size": size, "what": what, **r})
        print(f"{size:>12} {what:<48} {r['median_s'] * 1e3:9.1f} ms  peak {r['peak_GiB']:6.2f} GiB", flush=True)

    for h, w in ((352, 640), (480, 832)):
        size = f"49x{h}x{w}"
        z = torch.randn(1, 48, 13, h // 16, w // 16, device=dev)
        frames = torch.rand(1, 49, 3, h, w, device=dev)
        add(size, "Wan2.2 VAE decode (bf16)", lambda z=z: wan.decode(z), max(3, args.repeats // 3))
        for dtype, tag in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
            aligner.to(dtype)
            add(size, f"TinyVAE decode ({tag})", lambda z=z: aligner.decode(z), args.repeats)
            aligner.tiny_vae.to(memory_format=torch.channels_last)
            add(size, f"TinyVAE decode ({tag}, channels-last)", lambda z=z: aligner.decode(z), args.repeats)
            aligner.tiny_vae.to(memory_format=torch.contiguous_format)
        aligner.to(torch.bfloat16)
        if not args.no_compile:
            compiled = torch.compile(aligner.tiny_vae.decode)
            raw = z * wan.std + wan.mean
            add(
                size,
                "TinyVAE decode (bf16, torch.compile, raw latents)",
                lambda raw=raw, c=compiled: c(raw),
                args.repeats,
            )
        add(size, "Wan2.2 VAE encode (bf16)", lambda f=frames: wan.encode(f), max(3, args.repeats // 3))
        add(size, "TinyVAE encode (bf16)", lambda f=frames: aligner.encode(f), args.repeats)
        del z, frames
        torch.cuda.empty_cache()

    def get(size: str, what: str) -> float:
        return next(r["median_s"] for r in rows if r["size"] == size and r["what"] == what)

    speedups = {}
    for size in ("49x352x640", "49x480x832"):
        wan_s = get(size, "Wan2.2 VAE decode (bf16)")
        best = min(
            (r for r in rows if r["size"] == size and r["what"].startswith("TinyVAE decode")),
            key=lambda r: r["median_s"],
        )
        speedups[size] = {
            "wan_s": wan_s,
            "tiny_best": best["what"],
            "tiny_s": best["median_s"],
            "bf16_s": get(size, "TinyVAE decode (bf16)"),
            "speedup_best": wan_s / best["median_s"],
            "speedup_bf16": wan_s / get(size, "TinyVAE decode (bf16)"),
        }
    head = speedups["49x352x640"]
    result = {
        "command": " ".join(["python"] + sys.argv),
        "device": name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(),
        "commit": os.environ.get("GIT_COMMIT", ""),
        "wan_vae_params": wan_params,
        "tiny_vae_params": tiny_params,
        "rows": rows,
        "speedups": speedups,
        "goal": ">= 10x at 49x352x640",
        "goal_met": head["speedup_bf16"] >= 10,
    }
    table = "| size | decoder | median ms | min ms | peak GiB |\n|---|---|---:|---:|---:|\n" + "\n".join(
        f"| {r['size']} | {r['what']} | {r['median_s'] * 1e3:.1f} | {r['min_s'] * 1e3:.1f} | {r['peak_GiB']:.2f} |"
        for r in rows
    )
    summary = "\n".join(
        f"- {s}: Wan2.2 VAE decode {v['wan_s'] * 1e3:.0f} ms; TinyVAE bf16 {v['bf16_s'] * 1e3:.1f} ms "
        f"(**{v['speedup_bf16']:.1f}×**); best: {v['tiny_best']} {v['tiny_s'] * 1e3:.1f} ms ({v['speedup_best']:.1f}×)"
        for s, v in speedups.items()
    )
    print(f"{name}\n{table}\n{summary}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "h100" if "H100" in name else "h200" if "H200" in name else "gpu"
    (out / f"tiny_vae_{tag}.json").write_text(json.dumps(result, indent=2))
    (out / f"tiny_vae_{tag}.md").write_text(
        f"# TinyVAE vs Wan2.2 VAE decoding\n\n`{result['command']}` on {name}, {result['date']}, commit "
        f"{result['commit']}, torch {result['torch']}\n\nRandom weights, real architectures: TinyVAE {tiny_params / 1e6:.1f} M "
        f"parameters, Wan2.2 VAE {wan_params / 1e6:.0f} M. Goal: >= 10× faster decoding at 49x352x640 "
        f"(met: {'yes' if result['goal_met'] else 'no'}).\n\n{summary}\n\n{table}\n"
    )


if __name__ == "__main__":
    main()
