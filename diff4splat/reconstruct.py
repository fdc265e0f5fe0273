"""Reconstruct a 4D scene from frames and cameras with a trained LRDM.

    python -m diff4splat.reconstruct --weights ckpt.safetensors --input frames/ --cameras cams.json --out out/
    python -m diff4splat.reconstruct --weights ckpt.safetensors --input scene.npz --out out/

The scene comes out in the units of the input cameras (the LRDM runs in its own units, reached automatically:
``meta.json``'s ``scale``; ``--translation-scale`` fixes the factor instead). ``--input`` is a folder of frames, a video, or an ``.npz`` (``images``, ``C2W``, ``fxfycxcy``, ``timestep``: the
original system's format, written by ``python -m diff4splat.preprocess``); ``--cameras`` (.npz, trajectory .json or
RealEstate10K .txt) is needed unless the ``.npz`` has them, or ``--pose-weights`` (``facebook/VGGT-1B``'s
``model.pt``) estimates them with VGGT's camera head (`diff4splat.pipelines.poses`). ``--weights`` may also be a
released checkpoint (MoVieS's ``movies_ckpt.safetensors``, VGGT-1B's ``model.pt``), whose frames are read at its native
size (long side 518). Writes ``scene.safetensors`` (native 4D), ``ply/``
(one standard 3DGS ``.ply`` per query time), and videos: ``input.mp4``, ``render_input_cameras.mp4`` (each input
camera at its own time), ``render_fixed_camera.mp4`` (camera 0, time moving), ``render_fixed_time.mp4`` (last time,
camera moving through the inputs) and ``depth.mp4``. Everything is written into a temporary folder beside ``--out``
that is renamed into place when complete, with ``meta.json`` (inputs, weights, files); an existing non-empty ``--out``
is replaced only with ``--overwrite`` and only when it is an earlier output (its ``meta.json`` lists every entry).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import torch

from diff4splat.cli import InputError, run_cli
from diff4splat.gaussians.io import save_4d, save_ply_sequence
from diff4splat.media import depth_to_color, to_uint8, write_video
from diff4splat.pipelines.cameras import read_cameras, read_npz
from diff4splat.pipelines.inputs import fit_frames, frame_names, read_frames
from diff4splat.pipelines.memory import check_reconstruction_memory
from diff4splat.pipelines.outputs import (
    META_FILE,
    RECONSTRUCTION_FORMAT,
    atomic_output_dir,
    check_output_dir,
    check_writable,
)
from diff4splat.pipelines.poses import VGGT_FILE, estimate_cameras, load_camera_estimator
from diff4splat.pipelines.reconstruction import (
    Reconstruction,
    ReconstructionPipeline,
    load_lrdm,
    load_vae_for,
    native_size,
    size_multiple,
)

log = logging.getLogger("diff4splat.reconstruct")
UNITS = (
    "the input cameras' units: scene.safetensors, ply/ and the renders' cameras are in them; the LRDM ran at "
    "scale.lrdm_scale x these units (mean scene distance 1)"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="LRDM weights: a training export (.safetensors) or a .ckpt")
    p.add_argument("--input", required=True, help="frames folder, video file or .npz")
    p.add_argument("--cameras", help="cameras: .npz (C2W, fxfycxcy), trajectory .json or RealEstate10K .txt")
    p.add_argument("--pose-weights", help="without cameras: estimate them with VGGT (facebook/VGGT-1B's model.pt)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace --out when it is an earlier output")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize frames to H W before cropping")
    p.add_argument("--num-frames", type=int, default=0, help="use this many frames spread over the input (0 = all)")
    p.add_argument("--num-times", type=int, default=0, help="query times (0 = the input times)")
    p.add_argument(
        "--translation-scale",
        type=float,
        default=None,
        help="camera units x this = the LRDM's units (default: automatic, from a first pass's mean scene distance)",
    )
    p.add_argument("--prune", type=float, default=None, help="opacity pruning threshold (default: the model's)")
    p.add_argument("--vae", help="Wan VAE folder (latent-encoder models)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--fps", type=int, default=8)
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """The numeric options must mean something; each error names its option."""
    if args.fps < 1:
        raise InputError(f"--fps {args.fps}: expected a frame rate >= 1")
    if args.num_frames < 0 or args.num_times < 0:
        raise InputError(f"--num-frames {args.num_frames} --num-times {args.num_times}: expected counts >= 0 (0: all)")
    if args.size is not None and min(args.size) < 1:
        raise InputError(f"--size {args.size[0]} {args.size[1]}: expected a positive height and width")
    if args.translation_scale is not None and not (
        math.isfinite(args.translation_scale) and args.translation_scale > 0
    ):
        raise InputError(f"--translation-scale {args.translation_scale}: expected a finite number > 0")
    if args.prune is not None and not (math.isfinite(args.prune) and 0 <= args.prune < 1):
        raise InputError(f"--prune {args.prune}: expected an opacity threshold in [0, 1)")


def run(args: argparse.Namespace) -> Path:
    out = Path(args.out).absolute()
    inp = Path(args.input)
    check_args(args)
    check_output_dir(out, args.overwrite)
    check_writable(out)
    if inp.suffix == ".npz":
        views = read_npz(inp)
        images, c2w, fx, times = views.images, views.c2w, views.fxfycxcy, views.times
        if images.numel() == 0:
            raise InputError(f"{inp}: field images is missing (this .npz holds cameras only; pass frames as --input)")
    else:
        images, c2w, fx, times = read_frames(inp), None, None, None
    if args.cameras:
        c2w, fx, _ = read_cameras(args.cameras, image_size=images.shape[-2:], frame_names=frame_names(inp))
        c2w, fx = c2w.float(), fx.float()
    if c2w is None:
        if not args.pose_weights:
            raise InputError(
                f"{inp}: no cameras in the input; pass --cameras (.npz, .json or .txt), or --pose-weights with "
                f"{VGGT_FILE} to estimate them"
            )
        c2w, fx = estimate_cameras(load_camera_estimator(args.pose_weights, "--pose-weights"), images, args.device)
    if c2w.shape[0] != images.shape[0]:
        raise InputError(f"{args.cameras or inp}: {c2w.shape[0]} cameras for {images.shape[0]} frames")
    if args.num_frames and args.num_frames < images.shape[0]:
        idx = torch.linspace(0, images.shape[0] - 1, args.num_frames).round().long()
        images, c2w, fx = images[idx], c2w[idx], fx[idx]
        times = times[idx] if times is not None else idx.float() / max(1, int(idx[-1]))
    h, w = tuple(args.size) if args.size else tuple(images.shape[-2:])
    check_reconstruction_memory(images.shape[0], h, w, args.num_times or images.shape[0], args.weights, args.device)
    model = load_lrdm(args.weights, args.device)
    pipe = ReconstructionPipeline(model, load_vae_for(model, args.vae))
    size = tuple(args.size) if args.size else native_size(model, *images.shape[-2:])
    images, fx, _ = fit_frames(images, fx, size_multiple(model), size)
    query = torch.linspace(0, 1, args.num_times) if args.num_times else None
    rec = pipe(images, c2w, fx, times, query, args.translation_scale, args.prune)

    with atomic_output_dir(out, args.overwrite) as tmp:
        files = write_outputs(pipe, rec, images, inp, args, tmp)
        meta = {
            "format": RECONSTRUCTION_FORMAT,
            "version": 1,
            "input": str(inp.resolve()),
            "cameras": str(Path(args.cameras).resolve()) if args.cameras else None,
            "weights": str(args.weights),
            "num_gaussians": rec.gaussians.num_gaussians,
            "units": UNITS,
            "scale": rec.scale.to_json(),
            "query_times": rec.gaussians.times.tolist(),
            "fps": args.fps,
            "files": [*files, META_FILE],
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
    log.info("%d Gaussians, %d query times -> %s", rec.gaussians.num_gaussians, len(rec.gaussians.times), out)
    return out


def write_outputs(
    pipe: ReconstructionPipeline,
    rec: Reconstruction,
    images: torch.Tensor,
    inp: Path,
    args: argparse.Namespace,
    out: Path,
) -> list[str]:
    """scene.safetensors, ply/ and the videos of one reconstruction into ``out``; returns their names."""
    save_4d(rec.gaussians, out / "scene.safetensors", metadata={"source": str(inp), "weights": str(args.weights)})
    save_ply_sequence(rec.gaussians, out / "ply")
    f = rec.c2w.shape[0]
    last = torch.full((f,), float(rec.gaussians.times[-1]), device=rec.c2w.device)
    cam0 = rec.c2w[:1].expand(len(rec.gaussians.times), -1, -1)
    fx0 = rec.fxfycxcy[:1].expand(len(rec.gaussians.times), -1)
    rgb_in, depth_in = pipe.render_views(rec, rec.c2w, rec.fxfycxcy, rec.input_times)
    rgb_cam0, _ = pipe.render_views(rec, cam0, fx0, rec.gaussians.times)
    rgb_last, _ = pipe.render_views(rec, rec.c2w, rec.fxfycxcy, last)
    write_video(to_uint8(images), out / "input.mp4", args.fps)
    write_video(to_uint8(rgb_in), out / "render_input_cameras.mp4", args.fps)
    write_video(to_uint8(rgb_cam0), out / "render_fixed_camera.mp4", args.fps)
    write_video(to_uint8(rgb_last), out / "render_fixed_time.mp4", args.fps)
    write_video(depth_to_color(depth_in), out / "depth.mp4", args.fps)
    return [
        "scene.safetensors",
        "ply/",
        "input.mp4",
        "render_input_cameras.mp4",
        "render_fixed_camera.mp4",
        "render_fixed_time.mp4",
        "depth.mp4",
    ]


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, parse_args(argv), log=True)


if __name__ == "__main__":
    sys.exit(main())
