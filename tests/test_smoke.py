"""The embedded default (`make train` = `experiment=smoke`): its held-out views are novel (the nearest input frame is
far from them), its test scenes are not the validation scenes that select the checkpoint, the small renderer tile it
trains with renders exactly what the default tile renders, and (slow) a full run reaches the bar on the test scenes."""

from __future__ import annotations

import hydra
import pytest
import torch

from datamodules.batch import finish_batch
from diff4splat.losses.photometric import psnr
from diff4splat.systems.reconstruction import nearest_input_frames


def test_smoke_validation_views_are_novel(make_cfg):
    cfg = make_cfg("experiment=smoke")
    dm = hydra.utils.instantiate(cfg.data, _recursive_=False)
    values, weights = [], []
    for batch in dm.val_dataloader():
        batch = finish_batch(batch)
        fi = int(batch["num_input"])
        t = batch["timestamps"]
        assert ((t[:, fi:, None] - t[:, None, :fi]).abs().amin(-1) > 0).all()  # no output is an input frame
        values.append(float(psnr(nearest_input_frames(batch), batch["images"][:, fi:])))
        weights.append(len(batch["key"]))
    assert sum(weights) == cfg.data.val_batches * cfg.data.batch_size
    baseline = sum(v * w for v, w in zip(values, weights, strict=True)) / sum(weights)
    # `val/psnr_nearest_input` of these clips: 20.2 dB, so the bar (>= 24 dB and >= 3 dB above it) asks for real
    # novel-view synthesis; the earlier smoke scenes (checkerboards, small camera motion) gave 26.2 dB
    assert 18.0 < baseline < 21.5, baseline


def test_smoke_render_tile_gives_the_default_tile_renders_and_gradients(make_cfg):
    cfg = make_cfg("experiment=smoke")
    assert cfg.system.render_cfg.tile_size < 16
    torch.manual_seed(0)
    system = hydra.utils.instantiate(cfg.system, _recursive_=False)
    dm = hydra.utils.instantiate(cfg.data, _recursive_=False)
    batch = finish_batch(next(iter(dm.val_dataloader())))
    weight = torch.rand_like(batch["images"][:, int(batch["num_input"]) :])
    results = []
    for tile in (cfg.system.render_cfg.tile_size, 16):
        system.render_cfg.tile_size = tile
        system.zero_grad()
        _, rgb = system(batch)
        (rgb * weight).sum().backward()
        grads = {n: p.grad.clone() for n, p in system.named_parameters() if p.grad is not None}
        results.append((rgb.detach(), grads))
    (rgb_small, g_small), (rgb_default, g_default) = results
    assert rgb_small.std() > 0.05  # a real render, not an empty image
    torch.testing.assert_close(rgb_small, rgb_default, atol=1e-6, rtol=0)
    assert g_small.keys() == g_default.keys() and len(g_small) > 10
    for name in g_small:
        torch.testing.assert_close(g_small[name], g_default[name], atol=1e-5, rtol=1e-4, msg=name)


def test_smoke_tests_on_other_scenes_than_it_validates_on(make_cfg):
    cfg = make_cfg("experiment=smoke", "data.synthetic_val_pool=4", "data.val_batches=4")  # smaller pools: faster
    dm = hydra.utils.instantiate(cfg.data, _recursive_=False)
    val = {k for batch in dm.val_dataloader() for k in batch["key"]}
    test = {k for batch in dm.test_dataloader() for k in batch["key"]}
    assert len(val) >= 2 and len(test) >= 2 and not val & test


@pytest.mark.slow
def test_smoke_reaches_the_bar_on_its_test_scenes(make_cfg):
    """`make train` in process (1200 steps; about 5 minutes of CPU, more on a loaded machine): the checkpoint chosen on
    the validation scenes reaches test PSNR >= 24 dB and >= 3 dB above the nearest input frame on the test scenes."""
    from diff4splat.train import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: OpenMP threads spinning on a shared CPU cost far more than they gain
    try:
        metrics, _ = train(make_cfg("experiment=smoke", "logger=csv", "extras.print_config=false", tiny=False))
    finally:
        torch.set_num_threads(threads)
    print(f"smoke: test/psnr {metrics['test/psnr']:.2f} dB, nearest input {metrics['test/psnr_nearest_input']:.2f} dB")
    assert metrics["test/psnr"] >= 24.0
    assert metrics["test/psnr"] - metrics["test/psnr_nearest_input"] >= 3.0
