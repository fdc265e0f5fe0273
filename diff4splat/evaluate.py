"""Evaluate an LRDM on held-out clips of a shard set, or generated scenes against their videos.

    python -m diff4splat.evaluate clips --weights lrdm.safetensors --shards "$DATA_ROOT/shards/re10k/val-*.tar" \\
        --out results/re10k
    python -m diff4splat.evaluate scenes outputs/gen/scene_a outputs/gen/scene_b --out results/generated

``clips``: novel-view PSNR / SSIM / LPIPS, the nearest-input PSNR baseline, depth AbsRel and δ<1.25 (where clips
have depth) and 3D track EPE (where they have tracks). ``scenes``: re-rendering consistency (the Gaussians at the
requested cameras against the generated frames: PSNR / SSIM / LPIPS) and temporal consistency (warping error along
the scene's motion). Definitions: `diff4splat.pipelines.evaluation` and `diff4splat.metrics`.

Writes ``results.csv`` (one row per clip / scene), ``views.csv`` / ``frames.csv`` (one row per view / frame),
``results.md`` (the table with a mean row), ``summary.json`` and PNG plots into ``--out``, each atomically, after
everything is computed. LPIPS needs local VGG weights (default ``$CKPT_ROOT/lpips/{vgg16-397923af.pth,vgg.pth}``);
``--no-lpips`` leaves it out and ``--lpips-random`` uses a random network (tests only: not LPIPS).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch

from datamodules.shards import expand_shards
from diff4splat.cli import InputError, run_cli
from diff4splat.losses.lpips import LPIPS
from diff4splat.pipelines.evaluation import ClipEvalConfig, evaluate_clips, evaluate_scenes, write_results
from diff4splat.pipelines.outputs import read_scene_output
from diff4splat.pipelines.reconstruction import load_lrdm, load_vae_for

log = logging.getLogger("diff4splat.evaluate")


def _ckpt_root() -> Path:
    return Path(os.environ.get("CKPT_ROOT", "checkpoints"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="results folder")
    common.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    common.add_argument("--backend", default="auto", choices=["auto", "gsplat", "torch"], help="renderer")
    lp = common.add_mutually_exclusive_group()
    lp.add_argument("--no-lpips", action="store_true", help="leave LPIPS out")
    lp.add_argument("--lpips-random", action="store_true", help="random VGG weights (tests only: not LPIPS)")
    common.add_argument("--lpips-vgg", help="torchvision VGG16 weights (default $CKPT_ROOT/lpips/vgg16-397923af.pth)")
    common.add_argument("--lpips-lin", help="LPIPS linear layers (default $CKPT_ROOT/lpips/vgg.pth)")

    c = sub.add_parser("clips", parents=[common], help="an LRDM on held-out clips of a shard set")
    c.add_argument("--weights", required=True, help="LRDM weights: a training export (.safetensors) or a .ckpt")
    c.add_argument("--shards", required=True, nargs="+", help="shard files, globs, brace patterns or folders")
    c.add_argument("--vae", help="Wan VAE folder (latent-encoder models)")
    d = ClipEvalConfig()
    c.add_argument("--num-input", type=int, default=d.num_input)
    c.add_argument("--num-output", type=int, default=d.num_output)
    c.add_argument("--resolution", type=int, default=d.resolution, help="long side of the evaluated frames")
    c.add_argument("--max-gap", type=int, default=d.max_gap, help="frames of each clip that inputs/outputs span")
    c.add_argument("--eval-outputs", choices=["held_out", "uniform"], default=d.eval_outputs)
    c.add_argument("--depth-align", choices=["none", "median"], default=d.depth_align)
    c.add_argument("--prune", type=float, default=None, help="opacity pruning threshold (default: the model's)")
    c.add_argument("--max-clips", type=int, default=0, help="evaluate at most this many clips (0 = all)")

    s = sub.add_parser("scenes", parents=[common], help="generated scenes against their own videos")
    s.add_argument("folders", nargs="+", help="output folders of the generation CLI")
    s.add_argument("--occlusion-tol", type=float, default=0.05, help="relative depth tolerance of the warp")
    return p.parse_args(argv)


def make_lpips(args: argparse.Namespace, device: str) -> LPIPS | None:
    """The LPIPS network the flags ask for; missing weight files are an error naming them and the flags."""
    if args.no_lpips:
        return None
    if args.lpips_random:
        torch.manual_seed(0)
        return LPIPS(pretrained=False).to(device)
    vgg = Path(args.lpips_vgg) if args.lpips_vgg else _ckpt_root() / "lpips" / "vgg16-397923af.pth"
    lin = Path(args.lpips_lin) if args.lpips_lin else _ckpt_root() / "lpips" / "vgg.pth"
    missing = [str(x) for x in (vgg, lin) if not x.is_file()]
    if missing:
        raise InputError(
            f"LPIPS weights not found: {missing}; pass --lpips-vgg / --lpips-lin (or set CKPT_ROOT), or --no-lpips"
        )
    return LPIPS(pretrained=True, vgg_path=vgg, lin_path=lin).to(device)


def shard_paths(specs: list[str]) -> list[str]:
    """Shard files of globs, brace patterns, files or folders (a folder: its ``*.tar``)."""
    out: list[str] = []
    for spec in specs:
        if Path(spec).is_dir():
            found = sorted(str(p) for p in Path(spec).glob("*.tar"))
            if not found:
                raise InputError(f"{spec}: no .tar shards in this folder")
            out += found
        else:
            found = expand_shards(spec)
            if not found or not all(Path(f).is_file() for f in found):
                raise InputError(f"{spec}: no shard file matches")
            out += found
    return sorted(set(out))


@torch.no_grad()  # scoped: a global set_grad_enabled(False) leaked into whatever ran next in the process
def run(args: argparse.Namespace) -> Path:
    lpips = make_lpips(args, args.device)
    if args.mode == "clips":
        shards = shard_paths(args.shards)
        model = load_lrdm(args.weights, args.device)
        vae = load_vae_for(model, args.vae)
        cfg = ClipEvalConfig(
            num_input=args.num_input,
            num_output=args.num_output,
            resolution=args.resolution,
            max_gap=args.max_gap,
            eval_outputs=args.eval_outputs,
            depth_align=args.depth_align,
            prune_threshold=args.prune,
            max_clips=args.max_clips,
            backend=args.backend,
        )
        results = evaluate_clips(model, shards, cfg, lpips, vae, args.device, progress=log.info)
    else:
        scenes = [read_scene_output(f, args.device) for f in args.folders]
        results = evaluate_scenes(scenes, lpips, args.backend, args.occlusion_tol)
    write_results(results, args.out)
    summary = results.summary()
    log.info(
        "%d %s -> %s; means %s",
        summary["count"],
        results.kind,
        args.out,
        {k: round(v, 4) for k, v in summary["mean"].items()},
    )
    return Path(args.out)


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, parse_args(argv), log=True)


if __name__ == "__main__":
    sys.exit(main())
