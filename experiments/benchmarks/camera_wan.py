"""CameraWan training throughput (model-FLOP MFU) and the camera branch's inference overhead, Wan2.2-TI2V-5B.

    python experiments/benchmarks/camera_wan.py --out experiments/benchmarks/results [--configs ...] [--steps 6]

Everything at the reference's training size: 352×640, 49 frames -> latents 48×13×22×40, 2860 DiT tokens, 512 text
tokens of 4096; random weights of the real 5B architecture (the shipped config), bf16 parameters.

Training configurations (``name:batch`` or ``name:batchxN``: N micro-batches of ``batch`` per optimizer step, as
Lightning's ``accumulate_grad_batches``; each builds a fresh model):

- ``diffusers_plain``: diffusers' ``WanTransformer3DModel`` alone, no checkpointing, no FSDP (the baseline the issue
  quotes at 51 % MFU).
- ``diffusers_ckpt``: the same with diffusers' own gradient checkpointing (``enable_gradient_checkpointing``; 38 %).
- ``diffusers_compile``: ``diffusers_plain`` with ``torch.compile`` per block.
- ``camerawan_full`` / ``camerawan_selective`` / ``camerawan_nockpt``, each also ``_eager`` or ``_around``: our
  training path, i.e. ``CameraDiffusionSystem.configure_model`` (CameraWan, FSDP2 ``fully_shard`` per
  ``WanTransformerBlock`` on a one-GPU mesh, activation checkpointing full, selective or none, ``torch.compile`` per
  block inside the checkpoint wrapper; ``_eager``: not compiled; ``_around``: compiled around the wrapper),
  ``flow_loss`` (per-sample σ, Plücker rays from cameras at 352×640, CFG dropout) and its AdamW groups.
- ``camerawan_single``: the same training path without a device mesh (what a one-GPU, single-device run builds): no
  FSDP2, no checkpointing (``system.scale``'s checkpointing applies to the FSDP2 path), blocks compiled.

A step is forward + backward + optimizer step. Model FLOPs = 3 × the forward FLOPs counted by
``torch.utils.flop_counter.FlopCounterMode`` on one forward of the same model, run eagerly
(``diff4splat.models.parallel.forward_flops``; recomputation is not counted: it is what checkpointing costs); MFU =
model FLOP/s / 798 TFLOP/s (dense bf16 peak used by the issue). Each row records how many frames dynamo compiled
(``compiled_frames``; 0 means the configuration ran eager) and its graph breaks.

Inference: one denoising step of a CFG batch (2 samples) in bf16 without gradients: the base transformer vs CameraWan
with the camera tokens encoded once per sampling run (what ``sample_latents`` does) and vs re-encoding the Plücker
rays every step. Overhead = CameraWan / base - 1.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from timing import cuda_times, provenance

PEAK_TFLOPS = 798.0
DEFAULT_CONFIGS = ["camerawan_single:2x4", "camerawan_single:3", "diffusers_compile:2x4", "camerawan_selective:4"]


def init_dist() -> Any:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=0, world_size=1)
    return init_device_mesh("cuda" if torch.cuda.is_available() else "cpu", (1,), mesh_dim_names=("data_parallel",))


def make_batch(b: int, args: argparse.Namespace, text_dim: int, latent_channels: int, device: torch.device) -> dict:
    from diff4splat.geometry.trajectories import make_trajectory

    t = 1 + (args.frames - 1) // 4
    h, w = args.height // args.stride, args.width // args.stride
    g = torch.Generator().manual_seed(0)
    traj = make_trajectory("orbit_left", args.frames, strength=0.3)
    return {
        "latents": torch.randn(b, latent_channels, t, h, w, generator=g).to(device),
        "c2w": traj.c2w.float()[None].expand(b, -1, -1, -1).to(device),
        "fxfycxcy": traj.fxfycxcy.float()[None].expand(b, -1, -1).to(device),
        "prompt_embeds": torch.randn(b, 512, text_dim, generator=g).to(device, torch.bfloat16),
        "key": [f"bench-{i}" for i in range(b)],
    }


def system_for(
    args: argparse.Namespace, mode: str, compile_blocks: bool, mesh: Any, device: torch.device, inside: bool = True
) -> Any:
    from diff4splat.systems.diffusion import CameraDiffusionSystem

    system = CameraDiffusionSystem(
        model={"arch": args.arch, "init": "random", "dtype": "bfloat16", "vae_stride": [4, args.stride, args.stride]},
        scale={
            "checkpoint_blocks": -1,
            "checkpoint_mode": mode,
            "compile_blocks": compile_blocks,
            "compile_inside_checkpoint": inside,
        },
        objective={"cfg_dropout": 0.1},
    )
    system._device_mesh = mesh
    system.to(device)
    system.configure_model()
    system.train()
    return system


def base_transformer(args: argparse.Namespace, device: torch.device) -> Any:
    from diff4splat.models.camera_wan import CameraWanConfig, build_transformer

    cfg = CameraWanConfig(arch=args.arch, init="random", dtype="bfloat16")
    return build_transformer(cfg, device).train()


def run_training(
    name: str, b: int, args: argparse.Namespace, mesh: Any, device: torch.device, accum: int = 1
) -> dict[str, Any]:
    import torch._dynamo

    from diff4splat.callbacks.throughput import first_sample
    from diff4splat.models.camera_wan import flow_sigmas_shift, masked_flow_loss
    from diff4splat.models.parallel import forward_flops

    torch._dynamo.reset()  # each configuration compiles its own blocks; counters below are per configuration
    torch._dynamo.utils.counters.clear()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    t_build = time.perf_counter()
    if name.startswith("diffusers"):
        model = base_transformer(args, device)
        if name == "diffusers_ckpt":
            model.enable_gradient_checkpointing()
        if name == "diffusers_compile":
            from diff4splat.models.parallel import compile_in_place

            for block in model.blocks:
                compile_in_place(block)
        tcfg = model.config
        optimizer = torch.optim.AdamW(model.parameters(), lr=4e-5, weight_decay=0.01, fused=True)
        batch = make_batch(b, args, tcfg.text_dim, tcfg.in_channels, device)
        pt = tuple(tcfg.patch_size)
        x0 = batch["latents"]
        grid = (x0.shape[2] // pt[0], x0.shape[3] // pt[1], x0.shape[4] // pt[2])

        def token_t(t: torch.Tensor) -> torch.Tensor:
            mask = torch.ones(grid, device=device)
            mask[0] = 0
            return t[:, None] * mask.flatten()[None]

        def step_loss() -> torch.Tensor:
            sig = flow_sigmas_shift(torch.rand(b, device=device), 5.0).view(-1, 1, 1, 1, 1)
            noise = torch.randn_like(x0)
            xt = torch.cat([x0[:, :, :1], ((1 - sig) * x0 + sig * noise)[:, :, 1:]], 2)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                pred = model(xt.bfloat16(), token_t(sig.flatten() * 1000), batch["prompt_embeds"], return_dict=False)[0]
            return masked_flow_loss(pred, noise - x0).mean()

        def sample_flops() -> float:
            return forward_flops(
                lambda: model(
                    x0[:1].bfloat16(),
                    token_t(torch.full((1,), 500.0, device=device)),
                    batch["prompt_embeds"][:1],
                    return_dict=False,
                )
            )

        params = sum(p.numel() for p in model.parameters())
    else:
        base = name.removesuffix("_eager").removesuffix("_around")
        mode = {
            "camerawan_full": "full",
            "camerawan_selective": "selective",
            "camerawan_nockpt": "none",
            "camerawan_single": "none",
        }[base]
        single = base == "camerawan_single"
        system = system_for(
            args, mode, not name.endswith("_eager"), None if single else mesh, device, not name.endswith("_around")
        )
        model = system.model
        optimizer = system.configure_optimizers()["optimizer"]
        batch = make_batch(b, args, model.text_dim, model.latent_channels, device)

        def step_loss() -> torch.Tensor:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return system.flow_loss(batch)[0].mean()

        def sample_flops() -> float:  # what the trainer's throughput callback counts
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return system.model_flops(first_sample(batch)) / 3

        params = sum(p.numel() for p in model.parameters())
    build_s = time.perf_counter() - t_build
    fwd_flops = sample_flops()
    times: list[float] = []
    fb_times: list[float] = []
    compile_s = 0.0
    for i in range(args.warmup + args.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(accum):  # micro-batches of one optimizer step (Lightning's accumulate_grad_batches)
            loss = step_loss()
            (loss / accum).backward()
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if i == 0:
            compile_s = dt
        if i >= args.warmup:
            times.append(dt)
            fb_times.append(t1 - t0)
        print(
            f"  {name}:{b}x{accum} step {i} {dt * 1000:.0f} ms (fwd+bwd {1000 * (t1 - t0):.0f}) loss {float(loss.detach()):.4f}",
            flush=True,
        )
    if args.profile_dir:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            loss = step_loss()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=60)
        Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.profile_dir) / f"profile_{name}_{b}.txt").write_text(table)
    times.sort()
    fb_times.sort()
    med = times[len(times) // 2]
    fb_med = fb_times[len(fb_times) // 2]
    model_flops = 3 * fwd_flops * b * accum
    out = {
        "config": name,
        "batch": b,
        "accumulate": accum,
        "params": params,
        "step_ms_median": med * 1000,
        "step_ms_best": times[0] * 1000,
        "forward_tflop_per_sample": fwd_flops / 1e12,
        "model_tflops_per_s": model_flops / med / 1e12,
        "mfu": model_flops / med / (PEAK_TFLOPS * 1e12),
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
        "fwd_bwd_ms_median": fb_med * 1000,
        "mfu_fwd_bwd": model_flops / fb_med / (PEAK_TFLOPS * 1e12),
        "build_s": build_s,
        "first_step_s": compile_s,
        "final_loss": float(loss),
        "compiled_frames": int(torch._dynamo.utils.counters["frames"]["ok"]),
        "graph_breaks": int(sum(torch._dynamo.utils.counters["graph_break"].values())),
    }
    return out


@torch.no_grad()
def run_inference(args: argparse.Namespace, device: torch.device, reps: int = 10) -> dict[str, Any]:
    from diff4splat.models.camera_wan import CameraWan, plucker_for_latents

    base = base_transformer(args, device).eval()
    model = CameraWan(base, "add", (4, args.stride, args.stride)).to(device).eval()
    torch.nn.init.normal_(model.camera.plucker.weight, std=1e-3)  # a trained branch is not zero
    b = 2  # one CFG batch: conditional + unconditional
    batch = make_batch(b, args, model.text_dim, model.latent_channels, device)
    x = batch["latents"].bfloat16()
    t = model.token_timesteps(torch.full((b,), 500.0, device=device), x.shape)
    text = batch["prompt_embeds"]

    def timed(fn: Any) -> float:
        samples = cuda_times(fn, reps)
        return samples[len(samples) // 2] * 1000

    with torch.autocast("cuda", dtype=torch.bfloat16):
        cams = plucker_for_latents(batch["c2w"], batch["fxfycxcy"], args.height, args.width)
        tokens = model.camera_tokens(cams)
        base_ms = timed(lambda: base(x, t, text, return_dict=False))
        cached_ms = timed(lambda: model(x, t, text, camera_tokens=tokens))
        recompute_ms = timed(
            lambda: model(x, t, text, plucker_for_latents(batch["c2w"], batch["fxfycxcy"], args.height, args.width))
        )
    out = {
        "batch": b,
        "base_ms": base_ms,
        "camerawan_cached_tokens_ms": cached_ms,
        "camerawan_recompute_ms": recompute_ms,
        "overhead_cached": cached_ms / base_ms - 1,
        "overhead_recompute": recompute_ms / base_ms - 1,
        "camera_params": sum(p.numel() for p in model.camera.parameters()),
    }
    return out


def write_results(out_dir: Path, record: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "camera_wan_h100.json").write_text(json.dumps(record, indent=2))
    lines = [
        f"# CameraWan (Wan2.2-TI2V-5B) training MFU and camera overhead ({record['date']}, commit {record['commit']})",
        "",
        f"Command: `{record['command']}`  ",
        f"Device: {record['device']}  ",
        f"Size: {record['size']}; MFU against {PEAK_TFLOPS:.0f} TFLOP/s bf16",
        "",
        "| config | batch × accumulation | step ms (median) | model TFLOP/s | MFU | fwd+bwd ms | MFU fwd+bwd | peak GiB | first step s "
        "| compiled frames |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in record["training"]:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['batch']} × {r.get('accumulate', 1)} | {r['error']} | | | | | | | |")
            continue
        lines.append(
            f"| {r['config']} | {r['batch']} × {r['accumulate']} | {r['step_ms_median']:.0f} | {r['model_tflops_per_s']:.0f} | "
            f"{100 * r['mfu']:.1f} % | {r['fwd_bwd_ms_median']:.0f} | {100 * r['mfu_fwd_bwd']:.1f} % | "
            f"{r['peak_mem_gib']:.1f} | {r['first_step_s']:.0f} | {r['compiled_frames']} |"
        )
    inf = record.get("inference")
    if inf:
        lines += [
            "",
            "Inference, one denoising step of a CFG batch (2 × 2860 tokens), bf16:",
            "",
            "| path | ms | overhead vs base |",
            "|---|---:|---:|",
            f"| base WanTransformer3DModel | {inf['base_ms']:.1f} | |",
            f"| CameraWan, camera tokens encoded once per run | {inf['camerawan_cached_tokens_ms']:.1f} | "
            f"{100 * inf['overhead_cached']:+.2f} % |",
            f"| CameraWan, Plücker re-encoded every step | {inf['camerawan_recompute_ms']:.1f} | "
            f"{100 * inf['overhead_recompute']:+.2f} % |",
        ]
    (out_dir / "camera_wan_h100.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="experiments/benchmarks/results")
    p.add_argument("--configs", nargs="*", default=DEFAULT_CONFIGS)
    p.add_argument("--arch", default="ti2v_5b")
    p.add_argument("--frames", type=int, default=49)
    p.add_argument("--height", type=int, default=352)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--stride", type=int, default=16, help="VAE spatial stride")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-inference", action="store_true")
    p.add_argument("--profile-dir", default=None, help="write a torch.profiler kernel table per configuration here")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("camera_wan benchmark: needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device("cuda")
    mesh = init_dist()
    record: dict[str, Any] = {
        **provenance("camera_wan.py", argv, f"{torch.cuda.get_device_name()} ({platform.node()})"),
        "size": f"{args.frames}x{args.height}x{args.width}",
        "training": [],
        "inference": None,
    }
    out_dir = Path(args.out)
    if not args.no_inference:
        record["inference"] = run_inference(args, device)
        gc.collect()
        torch.cuda.empty_cache()
        print(json.dumps(record["inference"]), flush=True)
        write_results(out_dir, record)
    for spec in args.configs:
        name, _, size = spec.partition(":")
        b, _, accum = (size or "1").partition("x")
        b, accum = int(b), int(accum or 1)
        try:
            r = run_training(name, b, args, mesh, device, accum)
        except torch.OutOfMemoryError as e:
            r = {"config": name, "batch": b, "accumulate": accum, "error": "OOM"}
            print(f"  {spec}: OOM ({str(e).splitlines()[0][:120]})", flush=True)
        except Exception as e:  # record and go on with the other configurations
            r = {"config": name, "batch": b, "accumulate": accum, "error": f"{type(e).__name__}: {str(e)[:200]}"}
            print(f"  {spec}: {r['error']}", flush=True)
            gc.collect()
            torch.cuda.empty_cache()
        gc.collect()
        torch.cuda.empty_cache()
        record["training"].append(r)
        print(json.dumps(r), flush=True)
        write_results(out_dir, record)
    print((out_dir / "camera_wan_h100.md").read_text())


if __name__ == "__main__":
    main()
