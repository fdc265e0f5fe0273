"""The reconstruction system on real synthetic batches: the latent path (frozen tiny Wan VAE) trains, the static stage
freezes the deformation head, non-finite losses are reported with the batch's ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.batch import collate, to_float_images
from datamodules.spec import encode_clip
from datamodules.stream import ClipSamplingConfig, ClipTransform, SourceConfig
from datamodules.synthetic import SyntheticConfig, generate_clip
from diff4splat.systems.reconstruction import ReconstructionSystem

TINY = dict(dim=64, depth=2, num_heads=4, decoder_channels=16, patch_size=8)


def _batch(num_input=4, num_output=4, size=32, frames=13, seed=3, held_out=False, dynamic=True):
    clip = generate_clip(SyntheticConfig(num_frames=frames, height=size, width=size, dynamic=dynamic), seed=seed)
    sampling = ClipSamplingConfig(num_input=num_input, num_output=num_output, resolution=size, size_divisor=8,
                                  random_aspect=False, crop_scale=(1.0, 1.0),
                                  eval_outputs="held_out" if held_out else "uniform")  # fmt: skip
    transform = ClipTransform(sampling, train=False)
    source = SourceConfig(name="synthetic", shards=[], max_gap=frames)
    raw = {"__key__": clip.key, "__url__": "synthetic", **encode_clip(clip)}
    sample = transform(raw, rng=np.random.default_rng(0), out_hw=(size, size), source=source)
    return to_float_images(collate([sample], num_input))


def test_latent_path_with_tiny_wan_vae_trains():
    torch.manual_seed(0)
    batch = _batch(num_input=5, num_output=2, size=32, held_out=True)
    model = dict(TINY, encoder="latent", latent_channels=48, latent_stride_s=16)
    system = ReconstructionSystem(model=model, loss=dict(lpips=0.0), vae="tiny", optim=dict(lr=2e-3, warmup_steps=1))
    assert not any(n.startswith("_vae") for n, _ in system.named_parameters())  # frozen VAE is not a submodule
    opt = system.configure_optimizers()["optimizer"]
    losses = []
    for _ in range(25):
        out, rgb = system(batch)
        loss = system.compute_losses(batch, out, rgb)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert out.grid == (5, 32, 32)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses


def test_static_stage_freezes_deformation_and_nan_is_reported():
    system = ReconstructionSystem(model=TINY, loss=dict(lpips=0.0), stage="static")
    assert not any(p.requires_grad for p in system.model.deform_head.parameters())
    names = [n for g in system.configure_optimizers()["optimizer"].param_groups for n in [g["name"]]]
    assert set(names) == {"trunk", "heads"}
    batch = _batch(num_input=2, num_output=2, size=16, frames=5)
    batch["images"][0, -1, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"non-finite loss.*synthetic/"):
        system.training_step(batch, 0)
