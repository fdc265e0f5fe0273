"""LatentAlignmentSystem end to end on CPU: the tiny experiment learns to decode Wan latents into the frames of
held-out clips, its render loss reaches the aligner through the frozen LRDM, its export loads, and bad clips fail
clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diff4splat.models.alignment import LatentAligner
from diff4splat.systems.alignment import LatentAlignmentSystem
from diff4splat.train import train

# The +10 dB run: the decode path only (no render / latent loss: they train other parts or need the CPU rasteriser),
# 256 training scenes (32 overfit: train PSNR runs away from held-out PSNR), batch 8.
DECODE_ONLY = [
    "experiment=latent_align_tiny",
    "data.pool=256",
    "data.batch_size=8",
    "data.val_batches=2",
    "system.loss.render=0.0",
    "system.loss.latent=0.0",
    "system.train_parts.encoder=false",
    "system.train_parts.encode_mapper=false",
    "system.optim.lr=2e-3",
    "callbacks.ema=null",
    "test=true",
]


@pytest.mark.slow  # 800 training steps: about 3-4 minutes on two cores, run by `make test-slow` in CI
def test_tiny_alignment_raises_held_out_psnr_by_10_db(make_cfg):
    """Decoded frames vs the real frames of held-out scenes (test split, other seeds): PSNR at initialisation (the
    same seed, so the same initial weights) vs after training; the issue's bar is +10 dB."""
    init, _ = train(make_cfg(*DECODE_ONLY, "train=false"))
    cfg = make_cfg(*DECODE_ONLY, "trainer.max_steps=800", "trainer.val_check_interval=400")
    metrics, objects = train(cfg)
    before, after = init["test/psnr"], metrics["test/psnr"]
    print(f"held-out test/psnr {before:.2f} -> {after:.2f} dB (Wan decode {metrics['test/psnr_wan']:.2f})")
    assert after >= before + 10.0, (before, after)
    assert after > metrics["test/psnr_wan"], "the aligner should decode better than the random tiny Wan decoder"
    # the exported sidecar is a LatentAligner that reproduces the trained one
    system: LatentAlignmentSystem = objects["system"]
    loaded = LatentAligner.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.safetensors")
    z = torch.randn(1, system.aligner.latent_channels, 3, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(z), system.aligner.cpu().eval().decode(z))


def test_render_loss_reaches_the_aligner_and_bad_clips_fail(make_cfg):
    cfg = make_cfg(
        "experiment=latent_align_tiny",
        "system.loss.pixel=0.0",
        "system.loss.latent=0.0",
        "system.loss.render=1.0",
        "trainer.max_steps=2",
    )
    import hydra

    system: LatentAlignmentSystem = hydra.utils.instantiate(cfg.system, _recursive_=False)
    datamodule = hydra.utils.instantiate(cfg.data, _recursive_=False)
    datamodule.setup("fit")
    batch = datamodule.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0)
    system.train()
    losses, *_ = system.compute_losses(batch)
    assert set(losses) == {"loss", "render"} and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    grads = [p.grad for p in system.aligner.tiny_vae.decoder.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0, "no gradient from the render loss"
    assert all(p.grad is None for p in system.lrdm(torch.device("cpu")).parameters()), "the LRDM must stay frozen"
    bad = {**batch, "frames": batch["frames"][:, :6]}
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        system.compute_losses(bad)
