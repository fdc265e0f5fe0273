"""How far the depth-less fallbacks of the scene unit land from the depth-based value, on clips that have both.

    .venv/bin/python experiments/scale_fallback/measure.py --clips 40 --windows 4 --out experiments/scale_fallback

Each clip (procedural `synthetic` scenes, 17 frames, static and dynamic, the generator's camera presets) goes
through the training stream's own transform (`ClipTransform`, worker path, the default sampling: 5 inputs over a gap
up to 17 frames, random aspect, 77-100 % crops) `--windows` times, once as it is (the scene unit from the input
frames' valid depth: exact) and once per depth-less copy with the same random draws: `points` (no depth, no tracks,
a 2000-point SfM-like cloud unprojected from random valid depth pixels of all frames, `points_from_depth`), `tracks`
(no depth), `cameras` (no depth, tracks or points: the camera heuristic). The error of a copy is
|mean_copy / mean_depth - 1| = |s_depth / s_copy - 1| (s = the factor the stream applies). The camera heuristic's
ratio is re-calibrated as the median over the windows (`camera_distance_ratio`: what `CAMERA_DISTANCE_RATIO` is set
to) and its errors are reported at that ratio. Writes `results.json` and `results.md`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
from pathlib import Path

import numpy as np

from datamodules.sampling import ClipSamplingConfig, SourceConfig, batch_size_hw
from datamodules.synthetic import SyntheticConfig, generate_clip
from datamodules.transform import ClipTransform
from diff4splat.geometry import scale as S


def _scale(transform: ClipTransform, clip, seed: int, hw: tuple[int, int], source: SourceConfig) -> float:
    """The factor s the stream applied (the sample's metric_scale = meta.metric_scale x s)."""
    out = transform.transform(clip, np.random.default_rng(seed), hw, source)
    return float(out["metric_scale"]) / clip.meta.metric_scale


def measure(clips: int, windows: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    cfg = ClipSamplingConfig()
    transform = ClipTransform(cfg, train=True)
    source = SourceConfig(name="synthetic", shards=[], max_gap=17)
    rows = []
    for c in range(clips):
        clip = generate_clip(SyntheticConfig(num_frames=17, height=48, width=64, dynamic=bool(c % 2)), seed=c)
        cloud = S.points_from_depth(clip.depth, clip.depth_valid, clip.c2w, clip.fxfycxcy, 2000, rng)
        bare = dict(depth=None, depth_valid=None, tracks_world=None, tracks_visible=None)
        copies = {
            "points": dataclasses.replace(clip, **bare, points_world=cloud),
            "tracks": dataclasses.replace(clip, depth=None, depth_valid=None),
            "cameras": dataclasses.replace(clip, **bare),
        }
        for w in range(windows):
            draw = seed * 100003 + c * 101 + w
            hw = batch_size_hw(cfg, np.random.default_rng(draw))
            full = _scale(transform, clip, draw, hw, source)
            row = {"clip": clip.key, "trajectory": clip.meta.extra["trajectory"], "s_depth": full}
            for method, copy in copies.items():
                row[f"s_{method}"] = _scale(transform, copy, draw, hw, source)
            rows.append(row)
    # the camera heuristic: s_cameras = 1 / (ratio x distance); "none" (s = 1 exactly) when the cameras do not move
    moving = [r for r in rows if np.isfinite(r["s_cameras"]) and r["s_cameras"] != 1.0 and np.isfinite(r["s_depth"])]
    ratio = S.CAMERA_DISTANCE_RATIO * float(np.median([r["s_cameras"] / r["s_depth"] for r in moving]))
    summary = {}
    for method in ("points", "tracks", "cameras"):
        use = moving if method == "cameras" else [r for r in rows if np.isfinite(r[f"s_{method}"])]
        rescale = ratio / S.CAMERA_DISTANCE_RATIO if method == "cameras" else 1.0
        err = np.array([abs(r["s_depth"] / (r[f"s_{method}"] / rescale) - 1.0) for r in use])
        summary[method] = {
            "windows": len(rows),
            "measured": len(use),
            "median": float(np.median(err)) if len(err) else None,
            "p90": float(np.quantile(err, 0.9)) if len(err) else None,
            "max": float(err.max()) if len(err) else None,
        }
    return {"camera_distance_ratio": ratio, "summary": summary, "rows": rows}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).parent))
    args = p.parse_args(argv)
    res = measure(args.clips, args.windows, args.seed)
    res["command"] = "python experiments/scale_fallback/measure.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    res["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    lines = [
        "# Scene-unit fallbacks against depth (synthetic clips)",
        "",
        f"`{res['command']}` ({res['date']}, CPU). Relative error |fallback / depth - 1| of the scene's mean",
        "distance from the first input camera, per training window of the stream's transform (5 inputs, random crops);",
        "`measured` = windows the method could measure (cameras: not when the inputs only turn).",
        f"Camera heuristic ratio (median depth / camera distance): {res['camera_distance_ratio']:.3f}.",
        "",
        "| method | windows | measured | median | p90 | max |",
        "|---|---|---|---|---|---|",
    ]
    for m, s in res["summary"].items():
        lines.append(
            f"| {m} | {s['windows']} | {s['measured']} | {_fmt(s['median'])} | {_fmt(s['p90'])} | {_fmt(s['max'])} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
