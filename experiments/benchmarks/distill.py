"""Distillation throughput in the real trainer: ``python -m diff4splat.train experiment=distill_5b`` (DMD2 with the
5B teacher, student and critic under FSDP2 at 352×640×49, latents 48×13×22×40), random full-size weights.

    python experiments/benchmarks/distill.py [--latents DIR] [--adapt lora] [--steps 200] [--time-limit 300]

Each run trains ``experiment=distill_5b`` with ``model.init=random``, bf16 weights (``model.dtype=bfloat16``), no
camera weights, no validation, checkpoints or EMA, zero prompt embeddings, on as many GPUs as are visible
(``trainer.devices``). ``--adapt lora`` (default: the one that fits one 80 GB GPU; the memory plan in
``diff4splat/systems/distill.py``) or ``full`` (needs >= 4 GPUs). Reported from the throughput callback's ``perf/*``
windows (median after the first) and Lightning's ``DeviceStatsMonitor`` (peak allocated and reserved CUDA memory);
the trainer is stopped after ``--time-limit`` seconds and whatever windows it logged are reported (their count says
how many steps ran). MFU counts the model FLOPs of ``DistillationSystem.model_flops`` (expected per step over the
student's steps and generator updates; a LoRA backward counted as one forward) against ``--peak-tflops`` (798: the
measured dense bf16 peak of the project's H100s).

Without ``--latents`` the shards are made first (``camera_wan_trainer.make_latents``: 6 procedural clips through the
random tiny Wan VAE). ``--extra`` appends Hydra overrides (the CPU rehearsal shrinks the model with it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from timing import provenance


def overrides(args: argparse.Namespace, shards: str, run_root: Path) -> list[str]:
    return [
        "experiment=distill_5b",
        "model.init=random",
        "model.dtype=bfloat16",
        "model.camera_weights=null",
        f"system.adaptation.adapt={args.adapt}",
        f"system.objective.steps={args.student_steps}",
        f"data.shards={shards}",
        f"data.val_shards={shards}",
        "data.text_cache=null",
        f"data.batch_size={args.batch}",
        "data.num_workers=2",
        f"trainer.max_steps={args.steps}",
        "+trainer.limit_val_batches=0",
        "trainer.log_every_n_steps=5",
        "logger=csv",
        "+logger.csv.flush_logs_every_n_steps=5",
        "extras.print_config=false",
        "~callbacks.progress_bar",
        "~callbacks.media",
        "~callbacks.model_checkpoint",
        "~callbacks.last_checkpoint",
        "~callbacks.periodic_checkpoint",
        "+callbacks.device_stats._target_=lightning.pytorch.callbacks.DeviceStatsMonitor",
        "test=false",
        f"callbacks.throughput.peak_tflops={args.peak_tflops}",
        f"callbacks.throughput.window={args.window}",
        "callbacks.throughput.warmup_steps=3",
        f"paths.output_root={run_root}",
        "optimized_metric=train/loss",
        "+trainer.enable_progress_bar=false",
        *args.extra,
    ]


def run(args: argparse.Namespace) -> dict:
    run_root = Path(args.runs_root)
    run_id = f"distill_{args.adapt}_{int(time.time())}"
    shards = str(Path(args.latents).resolve() / "*.tar")
    cmd = [sys.executable, "-m", "diff4splat.train", *overrides(args, shards, run_root)]
    env = dict(os.environ, DIFF4SPLAT_RUN_ID=run_id, WANDB_MODE="offline")
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=args.time_limit)
        stopped = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        stopped = True
    wall = time.perf_counter() - t0
    tail = (out or "")[-3000:]
    rows: list[dict] = []
    for f in run_root.glob(f"**/{run_id}/csv/*/metrics.csv"):
        rows += list(csv.DictReader(open(f)))
    perf = sorted((r for r in rows if r.get("perf/mfu")), key=lambda r: int(r["step"]))
    mem = [r for r in rows if any("allocated_bytes.all.peak" in k and r.get(k) for k in r)]
    result = {"adapt": args.adapt, "wall_s": wall, "stopped_at_time_limit": stopped, "exit": proc.returncode}
    if not stopped and proc.returncode != 0:
        print(tail, flush=True)
        result["error"] = "OOM" if "OutOfMemoryError" in tail else f"exit {proc.returncode}"
        result["tail"] = tail[-800:]
    if mem:
        peak_key = next(k for k in mem[-1] if "allocated_bytes.all.peak" in k)
        reserved_key = next((k for k in mem[-1] if "reserved_bytes.all.peak" in k), None)
        result["peak_allocated_gib"] = max(float(r[peak_key]) for r in mem if r.get(peak_key)) / 2**30
        if reserved_key:
            result["peak_reserved_gib"] = max(float(r[reserved_key]) for r in mem if r.get(reserved_key)) / 2**30
    if len(perf) >= 2:
        kept = perf[1:]  # the first window still holds the allocator's growth

        def med(key: str) -> float:
            return statistics.median(float(r[key]) for r in kept)

        result.update(
            steps_logged=max(int(r["step"]) for r in rows if r.get("step")),
            windows=[int(r["step"]) for r in perf],
            step_time_s=med("perf/step_time_s"),
            samples_per_s=med("perf/samples_per_s"),
            model_tflops=med("perf/model_tflops"),
            mfu=med("perf/mfu"),
            mfu_per_window=[float(r["perf/mfu"]) for r in perf],
        )
    elif "error" not in result:
        result["error"] = f"{len(perf)} throughput windows logged"
        result["tail"] = tail[-800:]
    return result


def main(argv: list[str] | None = None) -> None:
    from camera_wan_trainer import make_latents

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latents", default=None, help="folder of latent shards at 48x13x22x40 (default: make them)")
    p.add_argument("--out", default="experiments/benchmarks/results")
    p.add_argument("--name", default="distill_5b_h100", help="results file stem")
    p.add_argument("--adapt", choices=["lora", "full"], default="lora")
    p.add_argument("--student-steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--time-limit", type=float, default=300.0, help="stop the trainer after this many seconds")
    p.add_argument("--peak-tflops", type=float, default=798.0)
    p.add_argument("--runs-root", default="/tmp/distill_runs")
    p.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available() and (args.latents is None or not args.extra):
        sys.exit("distill benchmark: needs a CUDA GPU (a CPU rehearsal passes --latents and shrinking --extra)")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (rehearsal)"
    record = {
        **provenance("distill.py", argv, device),
        "trainer_overrides": overrides(args, "<latents>/*.tar", Path(args.runs_root)),
        "gpus": torch.cuda.device_count(),
        "peak_tflops": args.peak_tflops,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.latents is None:
        args.latents = str(make_latents(Path(args.runs_root) / "data"))
    r = run(args)
    record["result"] = r
    print(json.dumps({k: v for k, v in r.items() if k != "tail"}), flush=True)
    (out / f"{args.name}.json").write_text(json.dumps(record, indent=2))
    if "step_time_s" in r:
        per = ", ".join(f"{100 * m:.1f}" for m in r["mfu_per_window"])
        row = (
            f"| {args.adapt} | {args.student_steps} | {args.batch} | {r['steps_logged']} | {r['step_time_s']:.3f} "
            f"| {r['samples_per_s']:.2f} | {r['model_tflops']:.0f} | **{100 * r['mfu']:.1f} %** "
            f"| {r.get('peak_allocated_gib', float('nan')):.1f} / {r.get('peak_reserved_gib', float('nan')):.1f} "
            f"| {per} |"
        )
    else:
        row = f"| {args.adapt} | {args.student_steps} | {args.batch} | {r.get('error')} | | | | | | |"
    table = "\n".join(
        [
            f"{record['command']} — {device} x{record['gpus']}, {record['date']}, commit {record['commit']}",
            "",
            "| student/critic | student steps | batch | steps run | step s | samples/s | model TFLOP/s | MFU (798) "
            "| peak GiB alloc / reserved | MFU per window |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
            row,
        ]
    )
    (out / f"{args.name}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
