"""Faults below the CLIs: a TartanAir sequence without depth is marked depth-less (and said so); a DL3DV / nerfstudio
scene with missing images converts the frames that exist under ``skip_missing=true``; a Wan2.2 VAE names a Wan2.1
latent; the auto render backend says once why CUDA tensors fall back to the torch rasteriser."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from datamodules.sources import dl3dv, tartanair
from datamodules.sources.base import ConvertOptions, SourceError
from datamodules.spec import validate_clip
from tests.native.dl3dv import write_dl3dv
from tests.native.scene import make_scene
from tests.native.tartanair import write_trajectory

SEQ = "office/Easy/P000"


def test_tartanair_without_depth_is_marked_depth_less(tmp_path, caplog):
    gt = make_scene(num_frames=5, height=480, width=640, fov_x_deg=90.0, dynamic=False, seed=2)
    write_trajectory(tmp_path, gt, SEQ)
    (with_depth,) = tartanair.convert_sequence(tmp_path, SEQ, ConvertOptions(frame_format="png"))
    assert with_depth.depth is not None and with_depth.meta.depth_unit == "m"
    shutil.rmtree(tmp_path / SEQ / "depth_left")
    with caplog.at_level(logging.WARNING, logger="datamodules.sources.tartanair"):
        (clip,) = tartanair.convert_sequence(tmp_path, SEQ, ConvertOptions(frame_format="png"))
    validate_clip(clip, deep=True)
    assert clip.depth is None
    assert clip.meta.depth_unit == "none" and clip.meta.depth_weight == 0.0
    assert any("no depth_left/ folder" in r.getMessage() and SEQ in r.getMessage() for r in caplog.records)


def test_dl3dv_missing_images_skip_missing_converts_the_rest(tmp_path, caplog):
    gt = make_scene(num_frames=5, dynamic=False, seed=11)
    write_dl3dv(tmp_path / "1K" / "scene", gt)
    (tmp_path / "1K/scene/images_4/frame_00003.png").unlink()
    with pytest.raises(SourceError, match=r"1 of 5 missing; pass skip_missing=true"):
        list(dl3dv.convert_sequence(tmp_path, "1K/scene", ConvertOptions(frame_format="png")))
    opts = ConvertOptions(frame_format="png", source_options={"skip_missing": True})
    with caplog.at_level(logging.WARNING, logger="datamodules.sources.dl3dv"):
        (clip,) = dl3dv.convert_sequence(tmp_path, "1K/scene", opts)
    validate_clip(clip, deep=True)
    keep = [0, 1, 3, 4]  # frame_00003 is the third frame
    np.testing.assert_allclose(clip.c2w, gt.c2w[keep], atol=1e-5)
    np.testing.assert_allclose(clip.fxfycxcy, gt.fxfycxcy[keep], rtol=1e-12)
    np.testing.assert_array_equal(clip.timestamps, [1, 2, 4, 5])
    assert any("skipped 1 of 5 frames" in r.getMessage() for r in caplog.records)


def test_wan22_vae_refuses_a_wan21_latent_by_name():
    import torch

    from diff4splat.models.wan_vae import WanVAE

    vae = WanVAE.tiny(seed=0)
    with pytest.raises(ValueError, match=r"\(Wan2.1 \(16 channels\)\) do not fit this Wan2.2 \(48 channels\) VAE"):
        vae.decode(torch.zeros(1, 16, 2, 4, 4))
    assert vae.decode(torch.zeros(1, 48, 2, 4, 4)).shape[1:3] == (5, 3)


def test_auto_backend_on_cuda_without_gsplat_warns_once(monkeypatch, caplog):
    import builtins

    import torch

    from diff4splat.rendering import api

    real_import = builtins.__import__

    def no_gsplat(name, *args, **kwargs):
        if name == "gsplat":
            raise ImportError("libcudart.so.13: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    api.gsplat_available.cache_clear()
    api._warn_torch_fallback.cache_clear()
    monkeypatch.setattr(builtins, "__import__", no_gsplat)
    try:
        with caplog.at_level(logging.WARNING, logger="diff4splat.rendering.api"):
            assert api.resolve_backend("auto", torch.device("cuda")) == "torch"
            assert api.resolve_backend("auto", torch.device("cuda")) == "torch"
            assert api.resolve_backend("auto", torch.device("cpu")) == "torch"
    finally:
        api.gsplat_available.cache_clear()
        api._warn_torch_fallback.cache_clear()
    warnings = [r.getMessage() for r in caplog.records if "gsplat does not import" in r.getMessage()]
    assert len(warnings) == 1 and "libcudart.so.13" in warnings[0]
