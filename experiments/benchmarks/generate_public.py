"""The public-weights route (``layout=public``) on one GPU: per-stage seconds and peak memory, end to end.

Random weights in the released layouts at full size: Wan2.2-Fun-5B-Control-Camera (the shipped
``fun_5b_control_camera`` config: TI2V-5B with a 100-channel patch embedding and the camera adapter; bf16), the
UMT5-XXL encoder (5.7 B, bf16; a small trained tokenizer), the Wan2.2 VAE (bf16), TAEHV ``wan22`` at full width
(``decoder=tiny_vae``, bf16) and MoVieS's VGGSplaT on VGGT-1B (``conf/model/lrdm_vggt_1b.yaml``, 1.2 B; bf16 autocast).
Each run is the CLI's own path (``make_job`` -> ``run_job``: the Fun model's masked-video encoding and its sampling
loop, decoding, VGGSplaT on ``--lrdm-frames`` decoded frames at its native 518-pixel size, the renders and every file
written), timed by the pipeline's CUDA-synchronised stage timer (``meta.json`` ``timings``). Configurations are
``HxWxF:steps[:warm-ups]`` (warm-ups before the first run of a size and decoder only): by default 352x640x49 with the release's 50 Euler steps, and the Fun model's native
704x1280x121 with 4 steps (each step's seconds are reported, and the total at the preset's 50 steps is extrapolated
from them and marked so). CFG 6 (prompt-only guidance: two branches per step in one batched forward).

Modes: ``default`` (every model resident on the GPU) and ``low_memory`` (``low_memory.offload``: models wait on the CPU
and visit the GPU one at a time, and ``low_memory.vae_tiling``); the goal for ``low_memory`` is a peak of <= 24 GiB.

    python experiments/benchmarks/generate_public.py [--out experiments/benchmarks/results]
    python experiments/benchmarks/generate_public.py --tiny --device cpu --out /tmp/bench   # tiny: any machine
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from generate import STAGES, available_outputs, input_image, params, random_umt5_xxl, random_wan22_vae
from timing import device_name, device_tag, provenance, provenance_line

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIGS = ["352x640x49:50", "704x1280x121:4:0"]
TINY_CONFIGS = ["96x160x13:3", "64x96x9:2:0"]
PRESET_STEPS = 50  # the release's example (FUN_5B_CAMERA_PRESET.num_inference_steps)
LOW_MEMORY_GOAL_GIB = 24.0
MODES = ("default", "low_memory")


def parse_config(text: str, warmup: int) -> tuple[int, int, int, int, int]:
    """``HxWxF:steps[:warm-ups]`` -> (H, W, F, steps, warm-ups)."""
    parts = text.split(":")
    h, w, f = (int(v) for v in parts[0].split("x"))
    return h, w, f, int(parts[1]), int(parts[2]) if len(parts) > 2 else warmup


def build_public(device: torch.device) -> Any:
    """Random weights in the public layouts (module docstring), as the CLI's pipeline."""
    from omegaconf import OmegaConf

    from diff4splat.configs import to_dataclass
    from diff4splat.models.alignment import AlignerConfig, LatentAligner
    from diff4splat.models.camera_wan import CameraWan, CameraWanConfig
    from diff4splat.models.lrdm import LRDM, LRDMConfig
    from diff4splat.pipelines.generation import Diff4SplatPipeline

    torch.manual_seed(0)
    fun = CameraWanConfig(arch="fun_5b_control_camera", init="random", camera_injection="fun", dtype="bfloat16")
    camera_wan = CameraWan.from_config(fun, device)
    text, vae = random_umt5_xxl(device), random_wan22_vae()
    raw = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "lrdm_vggt_1b.yaml"))
    with torch.device(device):
        lrdm = LRDM(to_dataclass(LRDMConfig, raw, "lrdm_vggt_1b"))
    aligner = LatentAligner(AlignerConfig(version="wan22", decode_mapper="none", encode_mapper="none"))
    aligner.to(torch.bfloat16)
    sources = {
        "kind": "random weights, released layouts",
        "layout": "public",
        "camera_wan": "Wan2.2-Fun-5B-Control-Camera (fun_5b_control_camera)",
        "text_encoder": "UMT5-XXL encoder",
        "vae": "Wan2.2 VAE",
        "lrdm": "MoVieS VGGSplaT on VGGT-1B (lrdm_vggt_1b)",
        "aligner": "TAEHV wan22",
    }
    return Diff4SplatPipeline(text, camera_wan, vae, lrdm, aligner, device=device, untrained=True, sources=sources)


def skip_renders(pipe: Any) -> None:
    """Blank views instead of rasterising (``--skip-renders``): every other stage and file runs as in the CLI."""

    def render(scene: Any, c2w: Any, fxfycxcy: Any, times: Any, bar: Any = None, **_: Any) -> tuple:
        v, (h, w) = c2w.shape[0], scene.image_size
        if bar is not None:
            bar.update(v)
        return torch.zeros(v, 3, h, w, device=pipe.device), torch.zeros(v, 1, h, w, device=pipe.device)

    pipe.render = render


def set_mode(pipe: Any, mode: str) -> None:
    """``low_memory``: every model on the CPU, each visiting the GPU while it runs, and the tiled Wan VAE."""
    modules = [pipe.text_encoder, pipe.camera_wan, pipe.vae, pipe.lrdm, pipe.aligner]
    pipe.offload = mode == "low_memory"
    for m in modules:
        m.to("cpu" if pipe.offload else pipe.device)
    if pipe.offload:
        pipe.enable_vae_tiling(256, 192)
    else:
        pipe.vae.vae.disable_tiling()
    gc.collect()
    if pipe.device.type == "cuda":
        torch.cuda.empty_cache()


def run_config(
    pipe: Any, args: argparse.Namespace, config: tuple, decoder: str, mode: str, work: Path, outputs: tuple
) -> dict[str, Any]:

    from diff4splat.pipelines.jobs import (
        GenerateConfig,
        LRDMOptions,
        RenderOptions,
        TrajectoryOptions,
        make_job,
        run_job,
    )
    from diff4splat.sampling import SamplingConfig

    h, w, f, steps, warmup = config
    pipe.decoder = decoder
    image = input_image(work, h, w)
    runs, peak = [], 0.0
    for i in range(warmup + args.repeats):
        target = work / f"run_{h}x{w}x{f}_{decoder}_{mode}_{i}"
        cfg = GenerateConfig(
            layout="public",
            output_dir=str(target),
            overwrite=True,
            tiny=args.tiny,
            height=h,
            width=w,
            decoder=decoder,
            progress=False,
            check_memory=False,
            trajectory=TrajectoryOptions(num_frames=f, strength=0.3),
            sampling=SamplingConfig(scheduler="euler", steps=steps, guidance_scale=6.0),
            lrdm=LRDMOptions(input_frames=args.lrdm_frames),
            render=RenderOptions(backend=args.render_backend),
            video_preset=args.video_preset,
        )
        job = make_job(cfg, image, "orbit", "a drone flies over a lake at sunset", i, target)
        if pipe.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        folder = run_job(pipe, job, cfg, outputs=outputs)
        if pipe.device.type == "cuda":
            peak = max(peak, torch.cuda.max_memory_allocated() / 2**30)
        meta = json.loads((folder / "meta.json").read_text())
        n_gauss = meta["lrdm"]["num_gaussians"]
        shutil.rmtree(folder)
        t = {k: meta["timings"][k] for k in STAGES}
        t["total"] = sum(t.values())
        print(
            f"  {h}x{w}x{f} {steps} steps {decoder:<8} {mode:<10} run {i}{' (warm-up)' if i < warmup else ''}: "
            + " ".join(f"{k} {v:.3f}" for k, v in t.items()),
            flush=True,
        )
        if i >= warmup:
            runs.append(t)
    median = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    per_step = median["sampling"] / steps
    at_preset = median["total"] - median["sampling"] + per_step * PRESET_STEPS
    return {
        "size": f"{h}x{w}x{f}",
        "steps": steps,
        "warmups": warmup,
        "decoder": decoder,
        "mode": mode,
        "median_s": median,
        "runs": runs,
        "sampling_s_per_step": per_step,
        "total_at_50_steps_s": at_preset,
        "extrapolated": steps != PRESET_STEPS,
        "peak_GiB": peak,
        "num_gaussians": n_gauss,
        "low_memory_goal_met": (peak <= LOW_MEMORY_GOAL_GIB) if mode == "low_memory" and peak else None,
    }


def markdown(record: dict[str, Any]) -> str:
    head = (
        "| size | steps | decoder | mode | " + " | ".join(STAGES) + " | total | s/step | total @50 steps | peak GiB |\n"
    )
    head += "|---|---:|---|---|" + "---:|" * (len(STAGES) + 4) + "\n"
    rows = []
    for r in record["results"]:
        m = r["median_s"]
        at50 = f"{r['total_at_50_steps_s']:.2f}" + (" (extrapolated)" if r["extrapolated"] else "")
        goal = ""
        if r["low_memory_goal_met"] is not None:
            goal = f" ({'<=' if r['low_memory_goal_met'] else '>'} {LOW_MEMORY_GOAL_GIB:.0f})"
        rows.append(
            f"| {r['size']} | {r['steps']} | {r['decoder']} | {r['mode']} | "
            + " | ".join(f"{m[k]:.3f}" for k in STAGES)
            + f" | **{m['total']:.2f}** | {r['sampling_s_per_step']:.3f} | {at50} | {r['peak_GiB']:.1f}{goal} |"
        )
    notes = [
        f"- {record['models']}",
        f"- Seconds: medians of {record['repeats']} run(s) after the configuration's warm-ups (the `HxWxF:steps:warm-ups`"
        " in the command); model building is not counted. `total @50 steps` replaces the measured sampling by 50 x"
        " the measured seconds per step (the release's example runs 50 Euler steps).",
        f"- LRDM input: {record['lrdm_frames']} decoded frames at VGGSplaT's native size; render backend "
        f"{record['render_backend']}; outputs {', '.join(record['outputs'])}"
        + (f" (skipped: {'; '.join(record['skipped'])})" if record["skipped"] else ""),
        "- Peak: torch.cuda.max_memory_allocated over each configuration's runs. low_memory = offload (each model "
        "visits the GPU while it runs) + tiled Wan VAE (256-pixel tiles, stride 192); goal <= 24 GiB.",
    ]
    for e in record.get("errors", []):
        notes.append(f"- {e['size']} {e['decoder']} {e['mode']}: {e['error']}")
    return (
        f"# Public-weights route (layout=public): image + trajectory + prompt -> 4D scene, per stage\n\n"
        f"{provenance_line(record)}\n\n{head}" + "\n".join(rows) + "\n\n" + "\n".join(notes) + "\n"
    )


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--configs", nargs="*", default=None, help="HxWxF:steps[:warm-ups] (default: see the docstring)")
    p.add_argument("--decoders", nargs="*", default=["wan", "tiny_vae"], choices=["wan", "tiny_vae"])
    p.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES))
    p.add_argument("--lrdm-frames", type=int, default=13, help="decoded frames VGGSplaT reads (lrdm.input_frames)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1, help="warm-up runs of a configuration without its own count")
    p.add_argument("--render-backend", default="auto", choices=["auto", "gsplat", "torch"])
    p.add_argument("--video-preset", default="veryfast")
    p.add_argument(
        "--skip-renders",
        action="store_true",
        help="blank renders (no gsplat: saves its ~93 s JIT build on a fresh machine); the render stage is not measured",
    )
    p.add_argument("--tiny", action="store_true", help="tiny instances of the public layouts (any machine)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if not args.tiny and device.type != "cuda":
        sys.exit("generate_public benchmark: the full-size models need a CUDA GPU; use --tiny --device cpu")
    configs = [parse_config(c, args.warmup) for c in (args.configs or (TINY_CONFIGS if args.tiny else DEFAULT_CONFIGS))]
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = True

    from diff4splat.pipelines import public
    from diff4splat.pipelines.generation import Diff4SplatPipeline
    from diff4splat.rendering.api import resolve_backend

    outputs, skipped = available_outputs()
    t0 = time.perf_counter()
    if args.tiny:
        pipe = public.tiny_public(Diff4SplatPipeline, seed=0, decoder="tiny_vae", device=device)
    else:
        pipe = build_public(device)
    build_s = time.perf_counter() - t0
    if args.skip_renders:
        skip_renders(pipe)
    counts = {name: params(getattr(pipe, name)) for name in ("text_encoder", "camera_wan", "vae", "lrdm", "aligner")}
    models = (
        "Models"
        + (" (tiny)" if args.tiny else "")
        + ": "
        + ", ".join(f"{k} {v / 1e6:,.1f} M" for k, v in counts.items())
    )
    print(f"built in {build_s:.1f} s. {models}", flush=True)
    record: dict[str, Any] = {
        **provenance("generate_public.py", argv, device_name(device)),
        "tiny": args.tiny,
        "models": models,
        "parameters": counts,
        "build_s": build_s,
        "repeats": args.repeats,
        "lrdm_frames": args.lrdm_frames,
        "outputs": list(outputs),
        "skipped": skipped,
        "render_backend": "none (--skip-renders: blank views)"
        if args.skip_renders
        else resolve_backend(args.render_backend, device),
        "results": [],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "tiny_" if args.tiny else ""
    tag += device_tag(record["device"])
    path = out / f"generate_public_{tag}.json"
    work = Path(tempfile.mkdtemp(prefix="diff4splat-bench-public-"))
    warmed: set[tuple] = set()  # a size and decoder warm up once (the caches persist across modes)
    try:
        for decoder in args.decoders:
            for mode in args.modes:
                set_mode(pipe, mode)
                for config in configs:
                    key = (config[:3], decoder)
                    run = config if key not in warmed else (*config[:4], 0)
                    warmed.add(key)
                    try:
                        record["results"].append(run_config(pipe, args, run, decoder, mode, work, outputs))
                    except torch.OutOfMemoryError as e:
                        print(f"  {config} {decoder} {mode}: OOM ({str(e).splitlines()[0][:160]})", flush=True)
                        size = "x".join(map(str, config[:3]))
                        record.setdefault("errors", []).append(
                            {"size": size, "decoder": decoder, "mode": mode, "error": "OOM"}
                        )
                    gc.collect()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    path.write_text(json.dumps(record, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not record["results"]:
        sys.exit("generate_public benchmark: no configuration ran (see the errors above)")
    md = markdown(record)
    path.with_suffix(".md").write_text(md)
    print(md)
    return path


if __name__ == "__main__":
    main()
