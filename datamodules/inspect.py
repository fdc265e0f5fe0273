"""Summarise shards and draw a contact sheet: `python -m datamodules.inspect PATH [--clips 4] [--out sheet.png]`.

Prints shard/clip/frame counts and per-dataset statistics (resolution, frames per clip, static share, which fields
are present, valid-depth ratio, tracks per clip, camera path length), and writes a PNG with a few clips: a row of
frames each, and the clip's camera trajectory (`diff4splat.geometry.trajectories.plot_trajectory`) at the row's end.
A path that does not exist, or paths that hold no shard, are one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from datamodules.shards import SkipStats, iter_tar
from datamodules.spec import Clip, decode_frames, decode_sample
from datamodules.verify import find_shards
from diff4splat.files import atomic_file


def summarise(paths: list[str], max_clips: int | None = None) -> tuple[dict, list[Clip]]:
    """Per-dataset statistics of the clips in `paths` and the clips read (all, or the first `max_clips`)."""
    per: dict[str, dict] = defaultdict(lambda: defaultdict(list))
    clips: list[Clip] = []
    shards = find_shards(paths)
    stats = SkipStats()
    for shard in shards:
        for sample in iter_tar(str(shard), stats):
            try:
                c = decode_sample(sample)
            except Exception as e:  # noqa: BLE001 - counted, reported by datamodules.verify
                stats.skipped += 1
                stats.reasons.append(f"{sample.get('__key__')}: {e}")
                continue
            d = per[c.meta.dataset]
            d["frames"].append(c.num_frames)
            d["hw"].append((c.meta.height, c.meta.width))
            d["static"].append(c.meta.is_static)
            d["depth"].append(c.depth is not None)
            d["valid"].append(float(c.depth_valid.mean()) if c.depth_valid is not None else np.nan)
            d["tracks"].append(0 if c.tracks_world is None else c.tracks_world.shape[1])
            d["dyn"].append(c.dynamic_mask is not None)
            d["path"].append(float(np.linalg.norm(np.diff(c.c2w[:, :3, 3], axis=0), axis=-1).sum()))
            if max_clips is None or len(clips) < max_clips:
                clips.append(c)
    table = {}
    for name, d in sorted(per.items()):
        hws = sorted(set(d["hw"]))
        table[name] = {
            "clips": len(d["frames"]),
            "frames": int(np.sum(d["frames"])),
            "frames_per_clip": float(np.mean(d["frames"])),
            "resolutions": [f"{h}x{w}" for h, w in hws[:5]] + (["..."] if len(hws) > 5 else []),
            "static_share": float(np.mean(d["static"])),
            "with_depth": float(np.mean(d["depth"])),
            "valid_depth_ratio": float(np.nanmean(d["valid"])) if np.isfinite(d["valid"]).any() else None,
            "tracks_per_clip": float(np.mean(d["tracks"])),
            "with_dynamic_mask": float(np.mean(d["dyn"])),
            "camera_path_length": float(np.mean(d["path"])),
        }
    summary = {
        "shards": len(shards),
        "clips": sum(t["clips"] for t in table.values()),
        "frames": sum(t["frames"] for t in table.values()),
        "skipped": stats.skipped,
        "shard_errors": stats.shard_errors,
        "datasets": table,
    }
    return summary, clips


def contact_sheet(clips: list[Clip], path: str | Path, frames_per_row: int = 6, thumb: int = 128) -> Path:
    """PNG: one row per clip (evenly spaced frames, resized to `thumb` high) + its trajectory plot."""
    import torch
    from PIL import Image, ImageDraw

    from diff4splat.geometry.trajectories import plot_trajectory

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for c in clips:
            idx = np.unique(np.linspace(0, c.num_frames - 1, frames_per_row).round().astype(int)).tolist()
            frames = decode_frames(c, idx)
            w = max(1, round(thumb * c.meta.width / c.meta.height))
            tiles = [Image.fromarray(f).resize((w, thumb)) for f in frames]
            plot = Path(tmp) / f"{c.key}.png"
            plot_trajectory(torch.from_numpy(c.c2w), plot, fxfycxcy=torch.from_numpy(c.fxfycxcy), title=c.key)
            traj = Image.open(plot).convert("RGB")
            traj = traj.resize((max(1, round(traj.width * thumb / traj.height)), thumb))
            row = Image.new("RGB", (sum(t.width for t in tiles) + traj.width, thumb + 14), "white")
            x = 0
            for t in [*tiles, traj]:
                row.paste(t, (x, 14))
                x += t.width
            ImageDraw.Draw(row).text((2, 1), f"{c.meta.dataset}/{c.key}  F={c.num_frames}  frames {idx}", fill="black")
            rows.append(row)
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    with atomic_file(path) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+")
    p.add_argument("--clips", type=int, default=4, help="clips on the contact sheet")
    p.add_argument("--out", default="contact_sheet.png")
    args = p.parse_args(argv)
    missing = [q for q in args.paths if not Path(q).exists() and not glob.glob(q)]
    if missing:
        print(
            f"error: {', '.join(missing)}: no such file, folder or glob match; expected shards (.tar)", file=sys.stderr
        )
        return 2
    if not find_shards(args.paths):
        print(f"error: {', '.join(args.paths)}: no shards (.tar) found", file=sys.stderr)
        return 2
    summary, clips = summarise(args.paths, max_clips=args.clips)
    print(json.dumps(summary, indent=1))
    if clips:
        print(f"contact sheet: {contact_sheet(clips, args.out)}")
    return 0 if summary["clips"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
