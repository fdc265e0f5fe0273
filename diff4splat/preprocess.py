"""Write the ``.npz`` that ``reconstruct`` (and the original system's inference) reads, from images and poses.

    python -m diff4splat.preprocess --images frames/ --poses cams.json --out scene.npz [--resize H W]
    python -m diff4splat.preprocess --image photo.png --trajectory orbit --num-frames 13 --out scene.npz

Fields: ``images`` (F,3,H,W) float32 in [0,1], ``C2W`` (F,4,4) OpenCV and canonical (camera 0 = identity),
``fxfycxcy`` (F,4) normalised, ``timestep`` (F,) = linspace(0, 1). Unlike the original script's synthetic orbit
(OpenGL axes, not canonicalised), the trajectory presets here are OpenCV and start at the identity.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diff4splat.cli import InputError, run_cli
from diff4splat.files import atomic_file
from diff4splat.geometry.cameras import canonicalize
from diff4splat.geometry.trajectories import PRESETS, make_trajectory
from diff4splat.pipelines.inputs import read_cameras, read_frames


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="folder of frames (sorted by name) or a video")
    src.add_argument("--image", help="one image, repeated along a preset trajectory")
    p.add_argument("--poses", help="cameras for --images: .npz (C2W, fxfycxcy), trajectory .json, RE10K .txt")
    p.add_argument("--trajectory", default="orbit", help=f"preset for --image: one of {sorted(PRESETS)}")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--fov", type=float, default=60.0, help="vertical field of view for --image (degrees)")
    p.add_argument("--num-frames", type=int, default=13)
    p.add_argument("--resize", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> Path:
    if args.images:
        if not args.poses:
            raise InputError("--poses is required with --images")
        images = read_frames(args.images)
        c2w, fx = read_cameras(args.poses)
        if c2w.shape[0] != images.shape[0]:
            raise InputError(f"{args.poses}: {c2w.shape[0]} cameras for {images.shape[0]} frames in {args.images}")
    else:
        if args.num_frames < 1:
            raise InputError(f"--num-frames {args.num_frames}: the trajectory needs at least one frame")
        images = read_frames_single(Path(args.image)).expand(args.num_frames, -1, -1, -1)
        h, w = images.shape[-2:]
        fy = 0.5 / np.tan(np.deg2rad(args.fov) / 2)
        traj = make_trajectory(
            args.trajectory, args.num_frames, strength=args.strength, fxfycxcy=[fy * h / w, fy, 0.5, 0.5]
        )
        c2w, fx = traj.c2w.float(), traj.fxfycxcy.float()
    if args.resize:
        images = F.interpolate(images, size=tuple(args.resize), mode="bicubic", antialias=True).clamp(0, 1)
    c2w = canonicalize(c2w.double()).float()
    out = Path(args.out)
    with atomic_file(out) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez(
            f,
            images=images.numpy().astype(np.float32),
            C2W=c2w.numpy(),
            fxfycxcy=fx.numpy(),
            timestep=np.linspace(0, 1, images.shape[0], dtype=np.float32),
        )
    return out


def read_frames_single(path: Path) -> torch.Tensor:
    """One image file as [1, 3, H, W]."""
    from PIL import Image

    if not path.is_file():
        raise InputError(f"{path}: no such image")
    try:
        with Image.open(path) as im:
            arr = np.array(im.convert("RGB"))
    except OSError as e:  # PIL's UnidentifiedImageError and truncated files
        raise InputError(f"{path}: unreadable image ({e}); expected a PNG/JPEG/WebP file") from e
    return torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255.0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
