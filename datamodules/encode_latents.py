"""Encode clip shards into latent shards for camera-controlled video diffusion (frozen Wan VAE, once per window).

    python -m datamodules.encode_latents --shards $DATA_ROOT/shards/dl3dv --out $DATA_ROOT/latents/dl3dv_49x352x640 \
        --vae /ckpt/Wan2.2-TI2V-5B-Diffusers --num-frames 49 --height 352 --width 640 [--stride 1] \
        [--windows-per-clip 1] [--captions captions.json] [--device cuda] [--dtype bf16] [--batch-size 4] \
        [--pose-scale scene|metric]

For each clip, `--windows-per-clip` windows of `--num-frames` (1 + 4k) frames, `--stride` source frames apart, spread
evenly over the clip; each window is centre-cropped to the target aspect and resized to height×width (bilinear,
antialiased; intrinsics updated by `crop_intrinsics`), encoded by the VAE in batches of windows, and written as one
latent sample (see `datamodules.latents`): latents (float16), c2w canonical to the window's first camera in the
``--pose-scale`` unit, intrinsics, the first frame as JPEG and meta (caption from the clip's meta, or from `--captions` by sequence id when
the clip has none). Clips too short for a window, and corrupt clips, are skipped and counted. Reruns resume (finished
shards are kept, their keys skipped); a failure leaves only finished shards behind.

Pose scale (`diff4splat.geometry.scale`): ``scene`` (default) scales each window's cameras so that the mean distance
from its first camera of the scene points seen by `SCENE_FRAMES` evenly spaced frames of the stored (uncropped) frames
is 1, measured from depth, else sparse points, else tracks, else the camera heuristic (`window_scene_scale`; the
method goes to the sample's ``scale_method``); ``metric`` divides by the clip's ``metric_scale`` and refuses (skips and
counts) clips whose ``scale_source`` is ``arbitrary``: arbitrary-scale poses are never written as metric. Every
sample records its source's ``scale_source``.

`--vae tiny` (or `tiny16`) uses the random-weight `WanVAE.tiny()` (tests, CPU smoke runs).
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as tnf

from datamodules.latents import POSE_SCALES, LatentMeta, LatentSample, LatentShardWriter
from datamodules.sampling import crop_box
from datamodules.scene_unit import scene_frames, scene_unit
from datamodules.shards import SkipStats, iter_tar
from datamodules.spec import Clip, decode_frames, decode_sample
from datamodules.verify import find_shards
from diff4splat.cli import run_cli
from diff4splat.geometry.cameras import canonicalize, crop_intrinsics
from diff4splat.models.wan_vae import WanVAE

log = logging.getLogger(__name__)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_SCALE_ARRAYS = ("depth", "depth_valid", "tracks_world", "tracks_visible", "points_world")


def window_starts(num_clip_frames: int, num_frames: int, stride: int, windows: int) -> list[int]:
    """First source frame of each window: `windows` starts spread evenly over the clip (fewer when they coincide);
    empty when the clip is shorter than one window ((num_frames - 1) * stride + 1 frames)."""
    span = (num_frames - 1) * stride + 1
    last = num_clip_frames - span
    if last < 0:
        return []
    return sorted({int(s) for s in np.round(np.linspace(0, last, max(1, windows)))})


@dataclass
class Window:
    """One window of a clip, cropped and resized, before encoding."""

    key: str
    frames: torch.Tensor  # (F,3,H,W) float32 in [0,1]
    c2w: np.ndarray  # (F,4,4) float32, canonical, in the pose scale
    fxfycxcy: np.ndarray  # (F,4) float32
    meta: LatentMeta


def prepare_window(
    clip: Clip, indices: list[int], height: int, width: int
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(frames (F,3,H,W) float [0,1], canonical c2w (F,4,4) in the clip's stored units, fxfycxcy (F,4)) of source
    frames `indices`: a centre crop of the largest box with the target aspect, resized to height×width."""
    Hs, Ws = clip.meta.height, clip.meta.width
    top, left, ch, cw = crop_box(Hs, Ws, height, width, 1.0, None)
    rgb = torch.from_numpy(decode_frames(clip, indices)).permute(0, 3, 1, 2).float().div_(255.0)
    if rgb.shape[-2:] != (Hs, Ws):
        raise ValueError(f"clip {clip.key!r}: frames are {tuple(rgb.shape[-2:])}, meta says {(Hs, Ws)}")
    crop = rgb[:, :, top : top + ch, left : left + cw]
    frames = tnf.interpolate(crop, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    K = crop_intrinsics(torch.from_numpy(np.asarray(clip.fxfycxcy, np.float64)[indices]), Hs, Ws, top, left, ch, cw)
    c2w = canonicalize(torch.from_numpy(np.asarray(clip.c2w, np.float64)[indices]), ref_index=0)
    return frames.clamp_(0, 1), c2w.numpy(), K.float().numpy()


def window_scene_scale(clip: Clip, indices: list[int]) -> tuple[float, str]:
    """(s, method): stored units × s = scene units for the window `indices` of `clip` (loaded with its depth,
    tracks and points): 1 / the mean distance from the window's first camera of the points that `SCENE_FRAMES`
    evenly spaced frames see (`diff4splat.geometry.scale`), from valid depth, else sparse points, else tracks, else
    the camera heuristic; (1, "none") when nothing measures it."""
    src = np.asarray(indices)[scene_frames(len(indices))]
    c2w_src = np.asarray(clip.c2w, np.float64)
    w2c = np.linalg.inv(c2w_src[indices[0]])
    tracks = visible = points = None
    if clip.tracks_world is not None:
        tracks = np.asarray(clip.tracks_world, np.float64)[src] @ w2c[:3, :3].T + w2c[:3, 3]
        visible = np.asarray(clip.tracks_visible)[src]
    if clip.points_world is not None:
        points = np.asarray(clip.points_world, np.float64) @ w2c[:3, :3].T + w2c[:3, 3]
    return scene_unit(
        w2c @ c2w_src[src],
        np.asarray(clip.fxfycxcy, np.float64)[src],
        None if clip.depth is None else clip.depth[src],
        None if clip.depth_valid is None else clip.depth_valid[src],
        tracks,
        visible,
        points,
    )


def _jpeg(frame: torch.Tensor, quality: int = 95) -> bytes:
    from PIL import Image

    arr = (frame.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def load_vae(spec: str, device: str, dtype: torch.dtype) -> tuple[WanVAE, str]:
    """(VAE, identity) of `--vae`: a local diffusers folder, or "tiny" / "tiny16" (random weights)."""
    if spec in ("tiny", "tiny48", "tiny16"):
        z = 16 if spec == "tiny16" else 48
        vae, identity = WanVAE.tiny(z_dim=z), f"tiny(z_dim={z}, seed=0)"
        if dtype != torch.float32:
            vae.vae.to(dtype)
    else:
        path = Path(spec)
        if not path.is_dir():
            raise FileNotFoundError(f"--vae: {spec} is neither a local diffusers folder nor 'tiny'")
        vae, identity = WanVAE.from_pretrained(path, torch_dtype=dtype), str(path.resolve())
    return vae.to(device), identity


def encode_latents(
    shards: list[str],
    out: str | Path,
    vae: WanVAE,
    vae_identity: str,
    *,
    num_frames: int,
    height: int,
    width: int,
    stride: int = 1,
    windows_per_clip: int = 1,
    batch_size: int = 4,
    captions: dict[str, str] | None = None,
    split: str = "train",
    maxcount: int = 256,
    pose_scale: str = "scene",
) -> dict[str, int]:
    """Encode every clip of `shards` into latent shards in `out`, cameras in `pose_scale` units ("scene" or
    "metric"); returns counts (clips, windows written, clips too short, corrupt samples, windows already done, clips
    refused because `pose_scale="metric"` and their scale is arbitrary)."""
    if pose_scale not in POSE_SCALES:
        raise ValueError(f"--pose-scale: expected one of {POSE_SCALES}, got {pose_scale!r}")
    vae.check_frames(num_frames)
    if height % vae.stride_s or width % vae.stride_s:
        raise ValueError(
            f"--height/--width {height}x{width} must be multiples of the VAE's spatial stride {vae.stride_s}"
        )
    if stride < 1 or windows_per_clip < 1 or batch_size < 1:
        raise ValueError(
            f"--stride, --windows-per-clip and --batch-size must be >= 1, got {stride}, "
            f"{windows_per_clip}, {batch_size}"
        )
    device = next(vae.parameters()).device
    counts = {"clips": 0, "written": 0, "too_short": 0, "corrupt": 0, "done": 0, "arbitrary_refused": 0}
    source = (
        f"datamodules.encode_latents vae={vae_identity} frames={num_frames} size={height}x{width} stride={stride} "
        f"pose_scale={pose_scale}"
    )
    pending: list[Window] = []

    def flush(writer: LatentShardWriter) -> None:
        if not pending:
            return
        frames = torch.stack([w.frames for w in pending]).to(device)
        latents = vae.encode(frames).cpu().numpy().astype(np.float16)
        for w, z in zip(pending, latents, strict=True):
            w.meta.latent_shape = list(z.shape)
            writer.write(
                LatentSample(
                    key=w.key, latents=z, c2w=w.c2w, fxfycxcy=w.fxfycxcy, first_frame=_jpeg(w.frames[0]), meta=w.meta
                )
            )
            counts["written"] += 1
        pending.clear()

    stats = SkipStats()
    with LatentShardWriter(out, source=source, split=split, maxcount=maxcount) as writer:
        for url in shards:
            for raw in iter_tar(url, stats):
                try:
                    clip = decode_sample(raw, values=False, arrays=_SCALE_ARRAYS if pose_scale == "scene" else ())
                except Exception as e:  # corrupt clip: skip and count
                    counts["corrupt"] += 1
                    log.warning("skipping corrupt sample %r of %s: %s", raw.get("__key__"), url, e)
                    continue
                counts["clips"] += 1
                if pose_scale == "metric" and clip.meta.scale_source == "arbitrary":
                    counts["arbitrary_refused"] += 1
                    log.warning(
                        "skipping %s/%s: its poses have arbitrary scale (scale_source 'arbitrary'); --pose-scale "
                        "metric never writes them as metres (use --pose-scale scene)",
                        clip.meta.dataset,
                        clip.key,
                    )
                    continue
                starts = window_starts(clip.num_frames, num_frames, stride, windows_per_clip)
                if not starts:
                    counts["too_short"] += 1
                    continue
                caption = clip.meta.caption or (captions or {}).get(clip.meta.sequence, "")
                for s in starts:
                    key = f"{clip.key}_f{s:06d}"
                    if writer.is_done(key):
                        counts["done"] += 1
                        continue
                    idx = list(range(s, s + (num_frames - 1) * stride + 1, stride))
                    frames, c2w, K = prepare_window(clip, idx, height, width)
                    if pose_scale == "scene":
                        factor, method = window_scene_scale(clip, idx)
                    else:
                        factor, method = 1.0 / clip.meta.metric_scale, "metric_scale"
                    c2w[:, :3, 3] *= factor
                    meta = LatentMeta(
                        dataset=clip.meta.dataset,
                        sequence=clip.meta.sequence,
                        clip_key=clip.key,
                        frame_indices=idx,
                        height=height,
                        width=width,
                        num_frames=num_frames,
                        latent_shape=[],
                        vae=vae_identity,
                        caption=caption,
                        metric_scale=float(clip.meta.metric_scale),
                        is_static=bool(clip.meta.is_static),
                        source_shard=Path(url).name,
                        pose_scale=pose_scale,
                        scale_source=clip.meta.scale_source,
                        scene_scale=float(factor) if pose_scale == "scene" else 1.0,
                        scale_method=method,
                    )
                    pending.append(Window(key, frames, c2w.astype(np.float32), K, meta))
                    if len(pending) >= batch_size:
                        flush(writer)
        flush(writer)
    counts["corrupt"] += stats.shard_errors
    return counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, nargs="+", help="clip shard folder(s) (recursive), files or globs")
    p.add_argument("--out", required=True, help="output folder of the latent shards (+ manifest.json)")
    p.add_argument("--vae", required=True, help="local diffusers Wan VAE folder (or model root), or 'tiny'")
    p.add_argument("--num-frames", type=int, default=49, help="frames per window, 1 + 4k")
    p.add_argument("--height", type=int, default=352)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--stride", type=int, default=1, help="source frames between consecutive window frames")
    p.add_argument("--windows-per-clip", type=int, default=1)
    p.add_argument("--captions", default=None, help="JSON {sequence id: caption} for clips without a caption")
    p.add_argument("--caption-field", default=None, help="field of the caption when the JSON values are objects")
    p.add_argument("--batch-size", type=int, default=4, help="windows per VAE call")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16")
    p.add_argument("--split", default="train")
    p.add_argument("--maxcount", type=int, default=256, help="samples per shard at most")
    p.add_argument(
        "--pose-scale",
        choices=POSE_SCALES,
        default="scene",
        help="camera unit: scene (mean distance of the seen scene points = 1, any source) or metric (metric sources "
        "only: arbitrary-scale clips are skipped and counted)",
    )
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    """The CLI: encode, then a one-line summary."""
    from datamodules.encode_text import load_captions

    if args.num_frames < 1 or (args.num_frames - 1) % 4:
        raise ValueError(f"--num-frames must be 1 + 4k (e.g. 49, 81, 121), got {args.num_frames}")
    shards = [str(s) for s in find_shards(args.shards)]
    if not shards:
        raise FileNotFoundError(f"--shards: no .tar shards in {args.shards}")
    captions = load_captions(args.captions, args.caption_field) if args.captions else None
    vae, identity = load_vae(args.vae, args.device, _DTYPES[args.dtype])
    counts = encode_latents(
        shards,
        args.out,
        vae,
        identity,
        num_frames=args.num_frames,
        height=args.height,
        width=args.width,
        stride=args.stride,
        windows_per_clip=args.windows_per_clip,
        batch_size=args.batch_size,
        captions=captions,
        split=args.split,
        maxcount=args.maxcount,
        pose_scale=args.pose_scale,
    )
    return (
        f"{counts['clips']} clips in {len(shards)} shards: wrote {counts['written']} latent samples to "
        f"{args.out}; {counts['done']} already done, {counts['too_short']} clips too short for "
        f"{args.num_frames} frames at stride {args.stride}, {counts['corrupt']} corrupt skipped, "
        f"{counts['arbitrary_refused']} arbitrary-scale clips refused (--pose-scale {args.pose_scale})"
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return run_cli(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
