"""Write the ``.npz`` that ``reconstruct`` (and the original system's inference) reads, from images and poses.

    python -m diff4splat.preprocess --images frames/ --poses cams.json --out scene.npz [--resize H W]
    python -m diff4splat.preprocess --image photo.png --trajectory orbit --num-frames 13 --out scene.npz
    python -m diff4splat.preprocess --images video.mp4 --weights $CKPT_ROOT/VGGT-1B/model.pt --out scene.npz

Without ``--poses``, ``--weights`` (``facebook/VGGT-1B``'s ``model.pt``) estimates the cameras and intrinsics with
VGGT's camera head, scaled as the reconstructor expects (`diff4splat.pipelines.poses`).

Fields: ``images`` (F,3,H,W) float32 in [0,1], ``C2W`` (F,4,4) OpenCV and canonical (camera 0 = identity),
``fxfycxcy`` (F,4) normalised, ``timestep`` (F,) = linspace(0, 1). Unlike the original script's synthetic orbit
(OpenGL axes, not canonicalised), the trajectory presets here are OpenCV and start at the identity.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

from diff4splat.cli import InputError, run_cli
from diff4splat.files import atomic_file
from diff4splat.geometry.cameras import canonicalize
from diff4splat.geometry.trajectories import PRESETS, make_trajectory
from diff4splat.pipelines.cameras import fov_intrinsics, read_cameras
from diff4splat.pipelines.inputs import fit_frames, frame_names, read_frames, read_image
from diff4splat.pipelines.poses import VGGT_FILE, estimate_cameras, load_camera_estimator


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="folder of frames (sorted by name) or a video")
    src.add_argument("--image", help="one image, repeated along a preset trajectory")
    p.add_argument(
        "--poses",
        help="cameras for --images: .npz (C2W, fxfycxcy), trajectory .json, nerfstudio / instant-ngp transforms.json "
        "(matched to the images by file name), RE10K .txt",
    )
    p.add_argument("--weights", help="without --poses: VGGT weights that estimate the cameras (VGGT-1B's model.pt)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="for --weights")
    p.add_argument("--trajectory", default="orbit", help=f"preset for --image: one of {sorted(PRESETS)}")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--fov", type=float, default=60.0, help="vertical field of view for --image (degrees)")
    p.add_argument("--num-frames", type=int, default=13)
    p.add_argument("--resize", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> Path:
    if args.images:
        if not args.poses and not args.weights:
            raise InputError(f"--images without --poses: pass --poses, or --weights with {VGGT_FILE} to estimate them")
        images = read_frames(args.images)
        if args.poses:
            c2w, fx, _ = read_cameras(args.poses, image_size=images.shape[-2:], frame_names=frame_names(args.images))
        else:
            c2w, fx = estimate_cameras(load_camera_estimator(args.weights), images, args.device)
        c2w, fx = c2w.float(), fx.float()
        if c2w.shape[0] != images.shape[0]:
            raise InputError(f"{args.poses}: {c2w.shape[0]} cameras for {images.shape[0]} frames in {args.images}")
    else:
        if args.num_frames < 1:
            raise InputError(f"--num-frames {args.num_frames}: the trajectory needs at least one frame")
        if not math.isfinite(args.strength):
            raise InputError(f"--strength {args.strength}: expected a finite number")
        if not 0 < args.fov < 180:
            raise InputError(f"--fov {args.fov}: expected a vertical field of view in (0, 180) degrees")
        images = read_image(args.image, field=None)[None].expand(args.num_frames, -1, -1, -1)
        intrinsics = fov_intrinsics(args.fov, *images.shape[-2:])
        traj = make_trajectory(args.trajectory, args.num_frames, strength=args.strength, fxfycxcy=intrinsics)
        c2w, fx = traj.c2w.float(), traj.fxfycxcy.float()
    if args.resize:
        images, fx, _ = fit_frames(images, fx, size=tuple(args.resize))
    c2w = canonicalize(c2w.double()).float()
    out = Path(args.out)
    with atomic_file(out, suffix=".npz") as tmp:
        np.savez(
            tmp,
            images=images.numpy().astype(np.float32),
            C2W=c2w.numpy(),
            fxfycxcy=fx.numpy(),
            timestep=np.linspace(0, 1, images.shape[0], dtype=np.float32),
        )
    return out


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
