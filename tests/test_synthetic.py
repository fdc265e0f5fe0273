"""Procedural 4D scenes: determinism, schema, geometry consistency, shards and in-process streaming."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.batch import check_batch, to_float_images
from datamodules.datamodule import ClipDataModule
from datamodules.spec import decode_frames, validate_clip
from datamodules.synthetic import SyntheticConfig, generate_clip, main
from datamodules.write import read_manifest
from diff4splat.geometry.cameras import project_points

SMALL = dict(num_frames=5, height=32, width=48)


def test_deterministic_per_seed_and_valid():
    cfg = SyntheticConfig(**SMALL)
    a, b, c = generate_clip(cfg, 7), generate_clip(cfg, 7), generate_clip(cfg, 8)
    validate_clip(a, deep=True)
    assert a.frames == b.frames
    for name, arr in a.arrays().items():
        np.testing.assert_array_equal(arr, getattr(b, name), err_msg=name)
    assert a.frames != c.frames
    assert decode_frames(a).shape == (5, 32, 48, 3)
    assert a.depth_valid.mean() > 0.9  # ground and wall cover the view


@pytest.mark.filterwarnings("ignore:Mean of empty slice")
def test_static_scene_has_fixed_tracks_and_no_dynamic_pixels():
    clip = generate_clip(SyntheticConfig(dynamic=False, **SMALL), 3)
    assert clip.meta.is_static and not clip.dynamic_mask.any()
    tw, tv = clip.tracks_world, clip.tracks_visible
    ref = np.nanmean(np.where(tv[..., None], tw, np.nan), axis=0)
    both = tv & np.isfinite(ref).all(-1)[None]
    assert both.sum() > 20
    assert np.abs(tw[both] - np.broadcast_to(ref, tw.shape)[both]).max() < 1e-6


@pytest.mark.filterwarnings("ignore:All-NaN slice")
def test_dynamic_scene_moves_and_depth_matches_tracks():
    clip = generate_clip(SyntheticConfig(**SMALL), 5)
    tw, tv = clip.tracks_world, clip.tracks_visible
    assert not clip.meta.is_static and clip.dynamic_mask.mean() > 0.005
    moved = np.nanmax(np.linalg.norm(tw - tw[:1], axis=-1), axis=0)  # per track, over frames where visible
    assert np.nanmax(moved) > 0.05
    # static tracks (the first `static_tracks`) are points on the ground/wall: their camera depth equals the
    # rendered depth at their pixel
    n_static = SyntheticConfig().static_tracks
    H, W = clip.meta.height, clip.meta.width
    proj = project_points(torch.from_numpy(np.nan_to_num(tw[:, :n_static])).double(),
                          torch.from_numpy(clip.c2w),
                          torch.from_numpy(clip.fxfycxcy), H, W)  # fmt: skip
    uv = proj.uv.floor().long().numpy()
    errs = []
    for f in range(clip.num_frames):
        for n in np.flatnonzero(tv[f, :n_static]):
            u, v = uv[f, n]
            if clip.depth_valid[f, v, u]:
                errs.append(abs(clip.depth[f, v, u] - proj.depth[f, n].item()) / proj.depth[f, n].item())
    assert len(errs) > 10
    assert np.median(errs) < 0.05, np.median(errs)


def test_cli_shards_stream_through_the_pipeline(tmp_path):
    main(["--out", str(tmp_path), "--clips", "3", "--frames", "5", "--size", "32", "48", "--seed", "1",
          "--maxcount", "2"])  # fmt: skip
    m = read_manifest(tmp_path)
    assert m["splits"]["train"]["clips"] == 3 and m["splits"]["train"]["frames"] == 15
    assert m["splits"]["train"]["datasets"] == {"synthetic": 3}
    main(["--out", str(tmp_path), "--clips", "3", "--frames", "5", "--size", "32", "48", "--seed", "1"])
    assert read_manifest(tmp_path)["splits"]["train"]["clips"] == 3  # rerun: nothing rewritten
    dm = ClipDataModule(
        sources={"synthetic": {"shards": str(tmp_path / "train-*.tar"), "max_gap": 5}},
        sampling={"num_input": 2, "num_output": 3, "resolution": 32, "size_divisor": 8},
        batch_size=2, num_workers=0, batches_per_epoch=2,
    )  # fmt: skip
    batches = [to_float_images(b) for b in dm.train_dataloader()]
    assert len(batches) == 2
    for b in batches:
        check_batch(b)
        assert b["has_dynamic_mask"].all() and b["tracks_visible"].any()


def test_in_process_synthetic_datamodule():
    dm = ClipDataModule(
        sources={"synthetic": {"shards": [], "max_gap": 5}},
        synthetic={"synthetic": SMALL},
        sampling={"num_input": 2, "num_output": 2, "resolution": 32, "size_divisor": 8, "random_aspect": False},
        batch_size=2, num_workers=0, batches_per_epoch=1, val_batches=1,
    )  # fmt: skip
    b = to_float_images(next(iter(dm.train_dataloader())))
    check_batch(b)
    assert b["images"].shape == (2, 4, 3, 32, 32) and 0.0 <= b["images"].min() and b["images"].max() <= 1.0
    v1 = next(iter(dm.val_dataloader()))
    v2 = next(iter(dm.val_dataloader()))
    assert v1["key"] == v2["key"]  # the validation view is fixed
    torch.testing.assert_close(v1["c2w"], v2["c2w"])
