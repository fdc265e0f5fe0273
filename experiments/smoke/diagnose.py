"""How hard are the smoke experiment's held-out views? Baseline and oracle PSNR of its validation clips, no training.

For the validation batches of ``experiment=smoke`` (plus any Hydra overrides given), prints:

- ``nearest``: PSNR of the nearest-input-frame baseline (``diff4splat.metrics.nearest_input_frames``, the metric
  ``val/psnr_nearest_input``);
- ``oracle_static``: PSNR, on the static pixels of the output views (dynamic mask False), of a render of the
  inputs' static pixels lifted as pixel-aligned Gaussians with their **ground-truth** depth and colours (std
  ``--oracle-scale`` × the pixel footprint): roughly the ceiling of a perfect LRDM on the static scene;
- ``nearest_static``: the baseline on the same pixels, and ``dist``: the camera distance between each output view and
  its nearest input (scene units: the mean input depth point is at distance 1).

    python experiments/smoke/diagnose.py data.synthetic.synthetic.texture=smooth data.val_batches=8
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from diff4splat.runs import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train.yaml", overrides=["experiment=smoke", *overrides])


def oracle_render(batch: dict, scale: float) -> torch.Tensor:
    """Output views rendered from the inputs' static pixels lifted with ground-truth depth: [B, F_out, 3, H, W]."""
    from diff4splat.gaussians import Gaussians
    from diff4splat.geometry.cameras import unproject_depth
    from diff4splat.rendering import render

    fi = int(batch["num_input"])
    images, depth, valid = batch["images"][:, :fi], batch["depth"][:, :fi], batch["depth_valid"][:, :fi]
    c2w, K = batch["c2w"], batch["fxfycxcy"]
    b, _, _, h, w = images.shape
    means = unproject_depth(depth, c2w[:, :fi], K[:, :fi])  # [B, F_in, H, W, 3]
    footprint = depth / (K[:, :fi, 0, None, None] * w)
    n = fi * h * w
    g = Gaussians(
        means=means.reshape(b, n, 3),
        quats=torch.tensor([1.0, 0, 0, 0]).expand(b, n, 4).contiguous(),
        scales=(footprint * scale).clamp_min(1e-6).reshape(b, n, 1).expand(b, n, 3).contiguous(),
        opacities=(valid & ~batch["dynamic_mask"][:, :fi]).float().reshape(b, n) * 0.99,
        colors=images.permute(0, 1, 3, 4, 2).reshape(b, n, 3),
    )
    return render(g, c2w[:, fi:], K[:, fi:], h, w, backend="torch").rgb


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides after experiment=smoke")
    p.add_argument("--oracle-scale", type=float, default=0.5, help="oracle Gaussian std / pixel footprint")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    import hydra

    from datamodules.batch import finish_batch
    from diff4splat.losses.photometric import psnr
    from diff4splat.metrics import nearest_input_frames

    cfg = compose(args.overrides)
    dm = hydra.utils.instantiate(cfg.data, _recursive_=False)
    sums = {k: 0.0 for k in ("nearest", "nearest_static", "oracle_static", "dist", "n")}

    def masked_psnr(x: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> float:
        m = m[:, :, None].expand_as(x)
        return float(10 * torch.log10(1 / ((x - y)[m] ** 2).mean().clamp_min(1e-12)))

    with torch.no_grad():
        for batch in dm.val_dataloader():
            batch = finish_batch(batch)
            fi = int(batch["num_input"])
            target = batch["images"][:, fi:]
            static = ~batch["dynamic_mask"][:, fi:]
            near, orc = nearest_input_frames(batch), oracle_render(batch, args.oracle_scale).clamp(0, 1)
            centres = batch["c2w"][..., :3, 3]
            sums["dist"] += float(torch.cdist(centres[:, fi:], centres[:, :fi]).min(-1).values.mean())
            sums["nearest"] += float(psnr(near, target))
            sums["nearest_static"] += masked_psnr(near, target, static)
            sums["oracle_static"] += masked_psnr(orc, target, static)
            sums["n"] += 1
    n = sums.pop("n")
    print(" ".join(f"{k}={v / n:.2f}" for k, v in sums.items()), f"batches={int(n)}")


if __name__ == "__main__":
    main()
