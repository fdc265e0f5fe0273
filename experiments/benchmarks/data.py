"""Data pipeline throughput: clips per second per CPU core through the full streaming pipeline vs plain decoding.

    python experiments/benchmarks/data.py [--clips 32] [--repeats 3] [--out experiments/benchmarks/results]

Data: 13-frame 256×256 JPEG (quality 95) clips with depth, tracks and dynamic masks, made from procedural scenes
(`datamodules.synthetic`, rendered at 128² and upsampled to 256² so that the JPEGs hold smooth image content), written
with `ShardWriter`. Both measurements run in one process on one thread (`torch.set_num_threads(1)`), so clips/s is
per core:

- plain decode: read the same shards with `datamodules.stream.iter_tar` and decode every JPEG with PIL to uint8.
- pipeline: `ClipStream` (train mode: resampled shards, shuffle buffer, clip sampling, crop/resize augmentation,
  canonical cameras, scale normalisation, track selection, collation to the batch contract, uint8 images),
  batch size 4. Configurations: "all13" decodes all 13 frames of every clip (13 inputs + 1 output drawn from them;
  the like-for-like comparison); "ref" is the reference sampling (5 inputs over a random gap, 8 outputs; frames
  not selected are not decoded); `+float` also converts images to float on the CPU (the DataModule does this after
  the transfer to the GPU instead).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from datamodules.batch import to_float_images
from datamodules.spec import Clip, ClipMeta, decode_image, encode_frames
from datamodules.stream import ClipSamplingConfig, ClipStream, SkipStats, SourceConfig, iter_tar
from datamodules.synthetic import SyntheticConfig, generate_arrays
from datamodules.write import ShardWriter


def make_shards(folder: Path, clips: int, scenes: int = 8) -> None:
    arrays = [generate_arrays(SyntheticConfig(num_frames=13, height=128, width=128), seed=s) for s in range(scenes)]
    with ShardWriter(folder, source="benchmark", maxcount=8) as w:
        for i in range(clips):
            a = arrays[i % scenes]
            frames = np.stack([np.asarray(Image.fromarray(f).resize((256, 256), Image.BICUBIC)) for f in a["frames"]])
            up = lambda x: np.repeat(np.repeat(x, 2, 1), 2, 2)  # noqa: E731 - nearest 2× for depth and masks
            w.write(Clip(key=f"bench{i:05d}", frames=encode_frames(frames, quality=95), c2w=a["c2w"],
                         fxfycxcy=a["fxfycxcy"], timestamps=a["timestamps"],
                         meta=ClipMeta.for_dataset("synthetic", f"bench{i:05d}"), depth=up(a["depth"]),
                         depth_valid=up(a["depth_valid"]), tracks_world=a["tracks_world"],
                         tracks_visible=a["tracks_visible"], dynamic_mask=up(a["dynamic_mask"])))  # fmt: skip


def plain_decode(urls: list[str], min_seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while True:
        for u in urls:
            for s in iter_tar(u, SkipStats()):
                for k in sorted(s):
                    if k.endswith(".jpg"):
                        decode_image(s[k])
                n += 1
        if time.perf_counter() - t0 >= min_seconds:
            return n / (time.perf_counter() - t0)


def pipeline(glob: str, sampling: ClipSamplingConfig, min_seconds: float, to_float: bool) -> float:
    src = SourceConfig("synthetic", glob, max_gap=13)
    batch = 4
    stream = ClipStream([src], sampling, batch_size=batch, batches_per_epoch=10**9, seed=0, shuffle_buffer=16)
    it = iter(stream)
    next(it)  # warm up (first shard open, buffers)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        b = next(it)
        if to_float:
            to_float_images(b)
        n += batch
    return n / (time.perf_counter() - t0)


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--seconds", type=float, default=4.0, help="minimum time per measurement")
    p.add_argument("--repeats", type=int, default=3, help="measurements per row (the median is reported)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        make_shards(tmp, args.clips)
        urls = sorted(str(u) for u in tmp.glob("train-*.tar"))
        glob = str(tmp / "train-*.tar")
        base = dict(size_divisor=8, random_aspect=False, crop_scale=(0.77, 1.0))
        configs = {
            "all13 @256": (ClipSamplingConfig(num_input=13, num_output=1, include_input_prob=1.0, resolution=256, **base), False),
            "all13 @224": (ClipSamplingConfig(num_input=13, num_output=1, include_input_prob=1.0, resolution=224, **base), False),
            "all13 @256 +float": (ClipSamplingConfig(num_input=13, num_output=1, include_input_prob=1.0, resolution=256, **base), True),
            "ref 5+8 @224": (ClipSamplingConfig(num_input=5, num_output=8, resolution=224, **base), False),
            "all13 @128 (JPEG draft 2x)": (ClipSamplingConfig(num_input=13, num_output=1, include_input_prob=1.0, resolution=128, **base), False),
        }  # fmt: skip
        # repeats are interleaved (plain, then every config) so that load from other processes hits all rows alike;
        # each ratio is taken against the plain measurement of the same repeat
        runs: dict[str, list[float]] = {"plain": [], **{name: [] for name in configs}}
        ratios: dict[str, list[float]] = {name: [] for name in configs}
        for _ in range(args.repeats):
            runs["plain"].append(plain_decode(urls, args.seconds))
            for name, (cfg, to_float) in configs.items():
                runs[name].append(pipeline(glob, cfg, args.seconds, to_float))
                ratios[name].append(runs[name][-1] / runs["plain"][-1])
        rows = [{"config": "plain decode (13 JPEG/clip)", "clips_per_s": float(np.median(runs["plain"])),
                 "ratio": 1.0, "runs": runs["plain"]}]  # fmt: skip
        for name in configs:
            rows.append({"config": name, "clips_per_s": float(np.median(runs[name])),
                         "ratio": float(np.median(ratios[name])), "runs": runs[name]})  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'config':34s} {'clips/s/core':>12s} {'vs plain':>9s}")
    for r in rows:
        print(f"{r['config']:34s} {r['clips_per_s']:12.1f} {r['ratio']:9.2f}")
    try:
        commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    result = {
        "command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": commit,
        "device": {"cpu": cpu_model(), "cores_visible": os.cpu_count(), "threads_used": 1},
        "data": f"{args.clips} clips, 13 frames 256x256 JPEG q95 + depth/tracks/masks, batch 4",
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data.json").write_text(json.dumps(result, indent=1))
    md = [f"# Data pipeline throughput ({result['date']}, commit {commit})", "",
          f"Command: `{result['command']}`  ", f"Device: {result['device']['cpu']}, {os.cpu_count()} cores visible, "
          "1 thread used (clips/s is per core)  ", f"Data: {result['data']}", "",
          "| config | clips/s/core (median) | vs plain decode (median of per-repeat ratios) |", "|---|---:|---:|"]  # fmt: skip
    md += [f"| {r['config']} | {r['clips_per_s']:.1f} | {r['ratio']:.2f} |" for r in rows]
    (out / "data.md").write_text("\n".join(md) + "\n")
    print(f"wrote {out / 'data.json'} and {out / 'data.md'}")


if __name__ == "__main__":
    main()
