"""Data pipeline throughput: clips per second per CPU core through the full streaming pipeline vs plain decoding.

    python experiments/benchmarks/data.py [--clips 32] [--repeats 5] [--seconds 4] [--out experiments/benchmarks/results]
        [--own-reader STREAM_PY]

Data: 13-frame 256×256 JPEG (quality 95) clips with depth, tracks and dynamic masks, made from procedural scenes
(`datamodules.synthetic`, rendered at 128² and upsampled to 256² so that the JPEGs hold smooth image content), written
with `ShardWriter` as the converters write clips: float32 depth + `depth_valid` (dl3dv, pointodyssey, spring,
stereo4d, vkitti2); the "depth f16" row uses float16 depth as tartanair, matrixcity and dynamicreplica write it.
Everything runs in one process on one thread (`torch.set_num_threads(1)`); throughput is clips per CPU-second of the
process (`time.process_time`), i.e. per core, so that time the process spends waiting for a core on a shared machine
does not count (wall-clock clips/s are recorded too).

- plain decode: read the same shards with `datamodules.shards.iter_tar` (the pipeline's tar reader) and decode the
  JPEG bytes of all 13 frames of every clip with PIL to uint8 arrays (`datamodules.frame_codec.decode_image`). This is the
  least any loader of these shards does.
- decode only (extra): the same 13 JPEG decodes per clip from bytes already in memory (no tar reading).
- pipeline: `ClipStream` (train mode), batch size 4: reading the tar (resampled shards, shuffle buffer of 16),
  `decode_sample` (npy arrays, meta, schema check), frame sampling, JPEG decoding of the selected frames, random
  crop (77-100 %) + bilinear antialiased resize of the images, nearest crop/resize of depth, depth_valid and dynamic
  mask, cropped intrinsics, canonical cameras (first input = identity), track selection and transform, scene-scale
  normalisation (`mean_xyz`), timestamps, collation to the batch contract (`datamodules.batch`; images uint8, as
  they leave DataLoader workers). Rows: "all13" decodes all 13 frames of every clip (13 inputs + 1 output drawn
  from them: the like-for-like comparison with plain decoding; "@256" is the issue's configuration); "ref 5+8" is
  the reference sampling (5 inputs over a random gap, 8 outputs; unused frames are not decoded); `+float` also
  converts images to float32 on the CPU (the DataModule does this on the GPU instead); "@128" decodes the JPEGs at
  half scale (`draft`).
- `augment_on=device` rows (`datamodules.augment`): the workers do everything above except the per-pixel crop/resize
  of images, depth and masks and the depth validity (they crop, copy and send the source pixels and the resampling
  indices; the scene scale reads its subsample from the source); the DataModule applies that batched in
  `on_after_batch_transfer`, on the GPU in training. "worker only" counts what DataLoader workers do: the headline,
  because the issue measures the DataLoader side that feeds a GPU trainer, and there the rest is GPU work.
  "worker + augmentation on CPU" also runs `augment_pixels` on the CPU in the same process (numpy/uint8 kernels;
  images stay uint8 as in the worker rows): the whole CPU cost when nothing runs on a GPU.
- reader comparison (`--own-reader STREAM_PY`, a `datamodules/stream.py` of a commit before the streams ran on
  webdataset, e.g. `git show 07a9fb1:datamodules/stream.py > /tmp/stream_own.py`): the same rows through that
  module's `ClipStream` (its own tar reader, resampler and shuffle buffer) interleaved with the current ones, and
  "tar read only" rows (the shards' samples, nothing decoded) through either module's `iter_tar`.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from datamodules.augment import augment_pixels
from datamodules.batch import to_float_images
from datamodules.frame_codec import decode_image, encode_frames
from datamodules.sampling import ClipSamplingConfig, SourceConfig
from datamodules.shards import SkipStats, iter_tar
from datamodules.spec import Clip, ClipMeta
from datamodules.stream import ClipStream
from datamodules.synthetic import SyntheticConfig, generate_arrays
from datamodules.write import ShardWriter


def make_shards(folder: Path, clips: int, scenes: int = 8, depth_dtype: Any = np.float32) -> None:
    arrays = [generate_arrays(SyntheticConfig(num_frames=13, height=128, width=128), seed=s) for s in range(scenes)]
    with ShardWriter(folder, source="benchmark", maxcount=8) as w:
        for i in range(clips):
            a = arrays[i % scenes]
            frames = np.stack([np.asarray(Image.fromarray(f).resize((256, 256), Image.BICUBIC)) for f in a["frames"]])
            up = lambda x: np.repeat(np.repeat(x, 2, 1), 2, 2)  # noqa: E731 - nearest 2× for depth and masks
            w.write(
                Clip(
                    key=f"bench{i:05d}",
                    frames=encode_frames(frames, quality=95),
                    c2w=a["c2w"],
                    fxfycxcy=a["fxfycxcy"],
                    timestamps=a["timestamps"],
                    meta=ClipMeta.for_dataset("synthetic", f"bench{i:05d}"),
                    depth=up(a["depth"]).astype(depth_dtype),
                    depth_valid=up(a["depth_valid"]),
                    tracks_world=a["tracks_world"],
                    tracks_visible=a["tracks_visible"],
                    dynamic_mask=up(a["dynamic_mask"]),
                )
            )


def _rates(n: int, t0: float, c0: float) -> tuple[float, float]:
    """(clips per CPU-second, clips per wall-second) since (perf_counter, process_time) = (t0, c0)."""
    return n / (time.process_time() - c0), n / (time.perf_counter() - t0)


def load_own_reader(path: str) -> Any:
    """The stream module saved at ``path`` (an earlier `datamodules/stream.py`), imported beside the current one."""
    spec = importlib.util.spec_from_file_location("own_reader_stream", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def tar_read(urls: list[str], min_seconds: float, reader: Any = iter_tar) -> tuple[float, float]:
    """Samples read from the shards by ``reader`` (an `iter_tar`), nothing decoded."""
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.process_time() - c0 < min_seconds:
        for u in urls:
            for _ in reader(u, SkipStats()):
                n += 1
    return _rates(n, t0, c0)


def plain_decode(urls: list[str], min_seconds: float) -> tuple[float, float]:
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while True:
        for u in urls:
            for s in iter_tar(u, SkipStats()):
                for k in sorted(s):
                    if k.endswith(".jpg"):
                        decode_image(s[k])
                n += 1
        if time.process_time() - c0 >= min_seconds:
            return _rates(n, t0, c0)


def decode_only(jpegs: list[list[bytes]], min_seconds: float) -> tuple[float, float]:
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.process_time() - c0 < min_seconds:
        for clip in jpegs:
            for b in clip:
                decode_image(b)
            n += 1
    return _rates(n, t0, c0)


def pipeline(
    glob: str,
    sampling: ClipSamplingConfig,
    min_seconds: float,
    to_float: bool,
    augment: bool = False,
    stream_class: Any = ClipStream,
) -> tuple[float, float]:
    src = SourceConfig("synthetic", glob, max_gap=13)
    batch = 4
    stream = stream_class([src], sampling, batch_size=batch, batches_per_epoch=10**9, seed=0, shuffle_buffer=16)
    it = iter(stream)
    next(it)  # warm up (first shard open, buffers)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.process_time() - c0 < min_seconds:
        b = next(it)
        if augment:  # augment_on="device" batches, augmented on the CPU (images stay uint8)
            augment_pixels(b)
        if to_float:
            to_float_images(b)
        n += batch
    return _rates(n, t0, c0)


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


HEADLINE = "all13 @256, augment_on=device: worker only"
COMPARED = (HEADLINE, "all13 @256")  # rows that get an own-reader twin with --own-reader
OWN = "[own reader]"
READ = "tar read only"

INCLUDES = {
    READ: "tar read (iter_tar: samples grouped by key, nothing decoded)",
    "plain decode": "tar read (iter_tar) + PIL decode of the 13 JPEGs of each clip",
    "decode only": "PIL decode of the 13 JPEGs of each clip, bytes already in memory",
    "pipeline": "tar read, decode_sample, frame sampling, JPEG decode, crop + resize (images bilinear AA; depth, "
    "depth_valid, dynamic_mask nearest), intrinsics, canonical cameras, tracks, scene-scale normalisation, "
    "timestamps, collation (uint8 images)",
    "augment_on=device, worker only": "tar read, decode_sample, frame sampling, JPEG decode + copy of the crop, "
    "the depth/mask crops (views of the stored frames when they are only upsampled and consecutive, else copies), "
    "intrinsics, canonical cameras, tracks, timestamps, collation (per-clip payloads); not the per-pixel resize, "
    "the depth validity and the scene scale (GPU work)",
    "augment_on=device, worker + augmentation on CPU": "the above + `augment_pixels` on the CPU (uint8 antialiased "
    "resize, depth/mask gathers, validity, scene scale from the resized depth and its application to c2w, tracks, "
    "depth and metric_scale, output-frame indexing; uint8 images)",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=32)
    p.add_argument("--seconds", type=float, default=4.0, help="minimum CPU time per measurement")
    p.add_argument("--repeats", type=int, default=5, help="measurements per row (the median is reported)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--own-reader", default=None, help="an earlier datamodules/stream.py to compare readers with")
    args = p.parse_args()
    own = load_own_reader(args.own_reader) if args.own_reader else None
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        make_shards(tmp / "f32", args.clips)
        make_shards(tmp / "f16", args.clips, depth_dtype=np.float16)
        urls = sorted(str(u) for u in (tmp / "f32").glob("train-*.tar"))
        jpegs = []
        for u in urls:
            jpegs += [[s[k] for k in sorted(s) if k.endswith(".jpg")] for s in iter_tar(u, SkipStats())]
        glob, glob16 = str(tmp / "f32" / "train-*.tar"), str(tmp / "f16" / "train-*.tar")
        base = dict(size_divisor=8, random_aspect=False, crop_scale=(0.77, 1.0))
        all13 = dict(num_input=13, num_output=1, include_input_prob=1.0, **base)
        dev = dict(augment_on="device")
        configs = {
            "all13 @256": (glob, ClipSamplingConfig(resolution=256, **all13), False, False),
            "all13 @256, depth f16": (glob16, ClipSamplingConfig(resolution=256, **all13), False, False),
            "all13 @224": (glob, ClipSamplingConfig(resolution=224, **all13), False, False),
            "all13 @256 +float": (glob, ClipSamplingConfig(resolution=256, **all13), True, False),
            "ref 5+8 @224": (glob, ClipSamplingConfig(num_input=5, num_output=8, resolution=224, **base), False, False),
            "all13 @128 (JPEG draft 2x)": (glob, ClipSamplingConfig(resolution=128, **all13), False, False),
            HEADLINE: (glob, ClipSamplingConfig(resolution=256, **all13, **dev), False, False),
            "all13 @256, augment_on=device: worker + augmentation on CPU": (
                glob,
                ClipSamplingConfig(resolution=256, **all13, **dev),
                False,
                True,
            ),
            "all13 @256, depth f16, augment_on=device: worker only": (
                glob16,
                ClipSamplingConfig(resolution=256, **all13, **dev),
                False,
                False,
            ),
            "ref 5+8 @224, augment_on=device: worker only": (
                glob,
                ClipSamplingConfig(num_input=5, num_output=8, resolution=224, **base, **dev),
                False,
                False,
            ),
        }
        # with --own-reader, twins of these rows run through the earlier module's ClipStream, each right after its row
        classes = {name: ClipStream for name in configs}
        if own is not None:
            ordered = {}
            for name, config in configs.items():
                ordered[name] = config
                if name in COMPARED:
                    ordered[f"{name} {OWN}"] = config
                    classes[f"{name} {OWN}"] = own.ClipStream
            configs = ordered
        readers = {READ: iter_tar, **({f"{READ} {OWN}": own.iter_tar} if own is not None else {})}
        # repeats are interleaved (plain, decode only, then every config) so that load from other processes hits all
        # rows alike; each ratio is taken against the plain measurement of the same repeat
        runs: dict[str, list[tuple[float, float]]] = {
            "plain": [],
            "decode": [],
            **{k: [] for k in [*readers, *configs]},
        }
        ratios: dict[str, list[float]] = {"decode": [], **{name: [] for name in [*readers, *configs]}}
        for _ in range(args.repeats):
            runs["plain"].append(plain_decode(urls, args.seconds))
            runs["decode"].append(decode_only(jpegs, args.seconds))
            ratios["decode"].append(runs["decode"][-1][0] / runs["plain"][-1][0])
            for name, reader in readers.items():
                runs[name].append(tar_read(urls, args.seconds, reader))
                ratios[name].append(runs[name][-1][0] / runs["plain"][-1][0])
            for name, (g, cfg, to_float, augment) in configs.items():
                runs[name].append(pipeline(g, cfg, args.seconds, to_float, augment, classes[name]))
                ratios[name].append(runs[name][-1][0] / runs["plain"][-1][0])

        def row(config: str, key: str, ratio: float, includes: str) -> dict[str, Any]:
            cpu, wall = [r[0] for r in runs[key]], [r[1] for r in runs[key]]
            return {
                "config": config,
                "clips_per_cpu_s": float(np.median(cpu)),
                "ms_per_clip": 1000 / float(np.median(cpu)),
                "clips_per_wall_s": float(np.median(wall)),
                "ratio": ratio,
                "includes": includes,
                "runs_cpu": cpu,
                "runs_wall": wall,
            }

        rows = [
            row("plain decode (13 JPEG/clip)", "plain", 1.0, INCLUDES["plain decode"]),
            row("decode only (bytes in memory)", "decode", float(np.median(ratios["decode"])), INCLUDES["decode only"]),
        ]
        rows += [row(name, name, float(np.median(ratios[name])), INCLUDES[READ]) for name in readers]
        for name in configs:
            includes = INCLUDES["pipeline"]
            if "worker only" in name:
                includes = INCLUDES["augment_on=device, worker only"]
            elif "augmentation on CPU" in name:
                includes = INCLUDES["augment_on=device, worker + augmentation on CPU"]
            rows.append(row(name, name, float(np.median(ratios[name])), includes))
        comparison = [
            {
                "config": name,
                "webdataset_clips_per_cpu_s": float(np.median([r[0] for r in runs[name]])),
                "own_clips_per_cpu_s": float(np.median([r[0] for r in runs[f"{name} {OWN}"]])),
                "webdataset_vs_own": float(
                    np.median([a[0] / b[0] for a, b in zip(runs[name], runs[f"{name} {OWN}"], strict=True)])
                ),
            }
            for name in [*readers, *configs]
            if f"{name} {OWN}" in runs
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'config':60s} {'clips/cpu-s':>11s} {'ms/clip':>8s} {'clips/wall-s':>12s} {'vs plain':>9s}")
    for r in rows:
        print(
            f"{r['config']:60s} {r['clips_per_cpu_s']:11.1f} {r['ms_per_clip']:8.2f} {r['clips_per_wall_s']:12.1f} "
            f"{r['ratio']:9.2f}"
        )
    try:
        commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    headline = next(r for r in rows if r["config"] == HEADLINE)
    result = {
        "command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": commit,
        "device": {
            "cpu": cpu_model(),
            "cores_visible": os.cpu_count(),
            "threads_used": 1,
            "load_average": os.getloadavg(),
        },
        "data": f"{args.clips} clips, 13 frames 256x256 JPEG q95 + float32 depth, depth_valid, tracks, dynamic masks "
        "(float16 depth in the 'depth f16' row), batch 4",
        "goal": "pipeline >= 0.8x plain decode (issue 3/9)",
        "headline": {"config": HEADLINE, "ratio": headline["ratio"], "met": headline["ratio"] >= 0.8},
        "rows": rows,
        "reader_comparison": {"own_reader": args.own_reader, "rows": comparison},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data.json").write_text(json.dumps(result, indent=1))
    md = [
        f"# Data pipeline throughput ({result['date']}, commit {commit})",
        "",
        f"Command: `{result['command']}`  ",
        f"Device: {result['device']['cpu']}, {os.cpu_count()} cores visible "
        f"(load average {result['device']['load_average'][0]:.1f} at the end), 1 thread; throughput is clips per "
        "CPU-second of the process (= per core)  ",
        f"Data: {result['data']}  ",
        f"Headline ({HEADLINE}, the issue's configuration): **{headline['ratio']:.2f}×** plain decode "
        f"(goal ≥ 0.8×: {'met' if result['headline']['met'] else 'not met'})",
        "",
        "| config | clips/s/core (median) | ms/clip | clips/s wall (median) | vs plain decode (median of per-repeat ratios) |",
        "|---|---:|---:|---:|---:|",
    ]
    md += [
        f"| {r['config']} | {r['clips_per_cpu_s']:.1f} | {r['ms_per_clip']:.2f} | {r['clips_per_wall_s']:.1f} | "
        f"{r['ratio']:.2f} |"
        for r in rows
    ]
    if comparison:
        md += [
            "",
            f"Reader comparison: webdataset (this commit) vs the own reader ({OWN}: `{args.own_reader}`), same "
            "settings, run interleaved; ratio = median of the per-repeat ratios of clips/s/core (> 1: webdataset "
            "faster)",
            "",
            "| config | webdataset clips/s/core | own reader clips/s/core | webdataset / own |",
            "|---|---:|---:|---:|",
        ]
        md += [
            f"| {c['config']} | {c['webdataset_clips_per_cpu_s']:.1f} | {c['own_clips_per_cpu_s']:.1f} | "
            f"{c['webdataset_vs_own']:.3f} |"
            for c in comparison
        ]
    md += ["", "What each row includes:", ""] + [f"- {k}: {v}" for k, v in INCLUDES.items()]
    (out / "data.md").write_text("\n".join(md) + "\n")
    print(f"wrote {out / 'data.json'} and {out / 'data.md'}")


if __name__ == "__main__":
    main()
