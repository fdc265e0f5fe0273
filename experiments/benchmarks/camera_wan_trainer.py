"""CameraWan MFU measured in the real trainer: ``python -m diff4splat.train experiment=camctrl_5b`` on one GPU, read
back from the throughput callback's ``perf/*`` metrics (diff4splat/callbacks/throughput.py).

    python experiments/benchmarks/camera_wan_trainer.py [--latents DIR] [--out DIR] [--runs 2x4 3x1] [--steps 14]

DIR holds latent shards at the reference's training size (48×13×22×40; any content: throughput does not depend on
it). Without ``--latents`` they are made first (in ``--runs-root``), from procedural clips through the random tiny
Wan VAE:

    python -m datamodules.synthetic --out /tmp/clips --clips 6 --frames 49 --size 352 640 --texture smooth
    python -m datamodules.encode_latents --shards /tmp/clips --out DIR --vae tiny --num-frames 49 --height 352 \\
        --width 640 --dtype fp32 --batch-size 1

Each run (``BxN``: micro-batch B, N micro-batches per optimizer step) trains the random-weight 5B CameraWan
(``model.init=random``, bf16 parameters: a 5B model with fp32 AdamW state does not fit one 80 GB GPU) with the
single-device path (``trainer=gpu``: no FSDP, blocks compiled), the latent data module (4 workers), zero prompt
embeddings, gradient clipping, no validation, EMA or checkpoints (the fp32 EMA shadow of 5B weights needs 20 GB more;
checkpoints are I/O). Reported: the median of the callback's windows after the first.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run(spec: str, args: argparse.Namespace) -> dict:
    b, _, n = spec.partition("x")
    b, n = int(b), int(n or 1)
    run_root = Path(args.runs_root)
    run_id = f"perf_{b}x{n}_{int(time.time())}"
    shards = str(Path(args.latents).resolve() / "*.tar")
    cmd = [
        sys.executable,
        "-m",
        "diff4splat.train",
        "experiment=camctrl_5b",
        "trainer=gpu",
        "model.init=random",
        "model.dtype=bfloat16",
        f"data.shards={shards}",
        f"data.val_shards={shards}",
        "data.text_cache=null",
        "system.text_cache=null",
        f"data.batch_size={b}",
        f"+trainer.accumulate_grad_batches={n}",
        "data.num_workers=4",
        f"trainer.max_steps={args.steps}",
        "+trainer.limit_val_batches=0",
        "logger=csv",
        "extras.print_config=false",
        "~callbacks.progress_bar",
        "~callbacks.media",
        "~callbacks.ema",
        "~callbacks.model_checkpoint",
        "~callbacks.last_checkpoint",
        "~callbacks.periodic_checkpoint",
        "test=false",
        f"callbacks.throughput.peak_tflops={args.peak_tflops}",
        f"callbacks.throughput.window={args.window}",
        "callbacks.throughput.warmup_steps=2",
        f"paths.output_root={run_root}",
        "optimized_metric=train/loss",
        "+trainer.enable_progress_bar=false",
    ]
    env = dict(os.environ, DIFF4SPLAT_RUN_ID=run_id, WANDB_MODE="offline")
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # 3x1 peaks at ~71 GiB of 79
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    tail = (proc.stdout + proc.stderr)[-3000:]
    if proc.returncode != 0:
        print(tail, flush=True)
        error = "OOM" if "OutOfMemoryError" in tail else f"exit {proc.returncode}"
        return {"run": spec, "error": error, "tail": tail[-600:]}
    rows = []
    for f in run_root.glob(f"**/{run_id}/csv/*/metrics.csv"):
        rows += [r for r in csv.DictReader(open(f)) if r.get("perf/mfu")]
    rows.sort(key=lambda r: int(r["step"]))
    if len(rows) < 2:
        return {"run": spec, "error": f"{len(rows)} throughput windows logged", "tail": tail[-600:]}
    kept = rows[1:]  # the first window still holds the allocator's growth

    def med(key: str) -> float:
        return statistics.median(float(r[key]) for r in kept)

    return {
        "run": spec,
        "micro_batch": b,
        "accumulate": n,
        "windows": [int(r["step"]) for r in rows],
        "step_time_s": med("perf/step_time_s"),
        "samples_per_s": med("perf/samples_per_s"),
        "model_tflops": med("perf/model_tflops"),
        "mfu": med("perf/mfu"),
        "wall_s": wall,
        "mfu_per_window": [float(r["perf/mfu"]) for r in rows],
    }


def make_latents(root: Path) -> Path:
    """Latent shards of 6 procedural 49×352×640 clips through the random tiny Wan VAE (the docstring's commands)."""
    clips, latents = root / "clips", root / "latents"
    if not list(latents.glob("*.tar")):
        for cmd in (
            [
                "-m",
                "datamodules.synthetic",
                "--out",
                str(clips),
                "--clips",
                "6",
                "--frames",
                "49",
                "--size",
                "352",
                "640",
                "--texture",
                "smooth",
            ],
            [
                "-m",
                "datamodules.encode_latents",
                "--shards",
                str(clips),
                "--out",
                str(latents),
                "--vae",
                "tiny",
                "--num-frames",
                "49",
                "--height",
                "352",
                "--width",
                "640",
                "--dtype",
                "fp32",
                "--batch-size",
                "1",
                "--device",
                "cuda",
            ],
        ):
            subprocess.run([sys.executable, *cmd], check=True)
    return latents


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latents", default=None, help="folder of latent shards at 48x13x22x40 (default: make them)")
    p.add_argument("--out", default="experiments/benchmarks/results")
    p.add_argument("--runs", nargs="+", default=["2x4"], help="BxN: micro-batch B, N micro-batches per step")
    p.add_argument("--steps", type=int, default=14)
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--peak-tflops", type=float, default=798.0)
    p.add_argument("--runs-root", default="/tmp/perf_runs")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        sys.exit("camera_wan_trainer benchmark: needs a CUDA GPU")
    record = {
        "command": " ".join(["camera_wan_trainer.py", *(argv if argv is not None else sys.argv[1:])]),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": os.environ.get("GIT_COMMIT", "unknown"),
        "results": [],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.latents is None:
        args.latents = str(make_latents(Path(args.runs_root) / "data"))
    lines = [
        "| run (B×N) | step s | samples/s | model TFLOP/s | MFU | MFU per window |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for spec in args.runs:
        r = run(spec, args)
        record["results"].append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "tail"}), flush=True)
        if "error" in r:
            lines.append(f"| {spec} | {r['error']} | | | | |")
        else:
            per = ", ".join(f"{100 * m:.1f}" for m in r["mfu_per_window"])
            lines.append(
                f"| {r['micro_batch']} × {r['accumulate']} | {r['step_time_s']:.3f} | {r['samples_per_s']:.2f} "
                f"| {r['model_tflops']:.0f} | **{100 * r['mfu']:.1f} %** | {per} |"
            )
        (out / "camera_wan_trainer.json").write_text(json.dumps(record, indent=2))
    table = "\n".join(
        [f"{record['command']} — {record['device']}, {record['date']}, commit {record['commit']}", "", *lines]
    )
    (out / "camera_wan_trainer.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
