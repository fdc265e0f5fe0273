"""Procedural 4D scenes: determinism, schema, geometry consistency, shards and in-process streaming."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.batch import check_batch, to_float_images
from datamodules.datamodule import ClipDataModule
from datamodules.spec import decode_frames, decode_sample, validate_clip
from datamodules.stream import SkipStats, iter_tar
from datamodules.synthetic import SyntheticConfig, generate_arrays, generate_clip, main
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
    proj = project_points(
        torch.from_numpy(np.nan_to_num(tw[:, :n_static])).double(),
        torch.from_numpy(clip.c2w),
        torch.from_numpy(clip.fxfycxcy),
        H,
        W,
    )
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
    main(
        [
            "--out",
            str(tmp_path),
            "--clips",
            "3",
            "--frames",
            "5",
            "--size",
            "32",
            "48",
            "--seed",
            "1",
            "--maxcount",
            "2",
        ]
    )
    m = read_manifest(tmp_path)
    assert m["splits"]["train"]["clips"] == 3 and m["splits"]["train"]["frames"] == 15
    assert m["splits"]["train"]["datasets"] == {"synthetic": 3}
    main(["--out", str(tmp_path), "--clips", "3", "--frames", "5", "--size", "32", "48", "--seed", "1"])
    assert read_manifest(tmp_path)["splits"]["train"]["clips"] == 3  # rerun: nothing rewritten
    dm = ClipDataModule(
        sources={"synthetic": {"shards": str(tmp_path / "train-*.tar"), "max_gap": 5}},
        sampling={"num_input": 2, "num_output": 3, "resolution": 32, "size_divisor": 8},
        batch_size=2,
        num_workers=0,
        batches_per_epoch=2,
    )
    batches = [to_float_images(b) for b in dm.train_dataloader()]
    assert len(batches) == 2
    for b in batches:
        check_batch(b)
        assert b["has_dynamic_mask"].all() and b["tracks_visible"].any()


def test_cli_scene_options_write_the_configured_scenes(tmp_path, capsys):
    args = [
        "--clips",
        "2",
        "--frames",
        "5",
        "--size",
        "32",
        "--seed",
        "2",
        "--static",
        "--texture",
        "smooth",
        "--strength",
        "1",
        "2",
        "--trajectories",
        "truck_left",
        "dolly_in",
    ]
    main(["--out", str(tmp_path / "a"), *args])
    m = read_manifest(tmp_path / "a")
    assert m["sources"] == [
        "datamodules.synthetic seed=2 dynamic=False frames=5 size=32x32 texture=smooth "
        "strength=1-2 trajectories=truck_left,dolly_in"
    ]
    cfg = SyntheticConfig(
        num_frames=5,
        height=32,
        width=32,
        dynamic=False,
        texture="smooth",
        strength_range=(1, 2),
        trajectories=("truck_left", "dolly_in"),
    )
    stats = SkipStats()
    clips = [decode_sample(x) for x in iter_tar(str(tmp_path / "a" / "train-000000.tar"), stats)]
    assert [c.key for c in clips] == ["synthstatic_0002_000000", "synthstatic_0002_000001"]
    for i, clip in enumerate(clips):
        want = generate_clip(cfg, seed=2 * 1_000_003 + i)
        assert clip.meta.extra["trajectory"] in ("truck_left", "dolly_in")
        assert clip.meta.extra["trajectory"] == want.meta.extra["trajectory"]
        np.testing.assert_array_equal(clip.c2w, want.c2w)
        np.testing.assert_array_equal(decode_frames(clip), decode_frames(want))
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "b"), "--clips", "1", "--strength", "2", "1"])
    assert e.value.code == 2 and "strength_range: expected 0 <= low <= high" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_in_process_synthetic_datamodule():
    dm = ClipDataModule(
        sources={"synthetic": {"shards": [], "max_gap": 5}},
        synthetic={"synthetic": SMALL},
        sampling={"num_input": 2, "num_output": 2, "resolution": 32, "size_divisor": 8, "random_aspect": False},
        batch_size=2,
        num_workers=0,
        batches_per_epoch=1,
        val_batches=1,
    )
    b = to_float_images(next(iter(dm.train_dataloader())))
    check_batch(b)
    assert b["images"].shape == (2, 4, 3, 32, 32) and 0.0 <= b["images"].min() and b["images"].max() <= 1.0
    v1 = next(iter(dm.val_dataloader()))
    v2 = next(iter(dm.val_dataloader()))
    assert v1["key"] == v2["key"]  # the validation view is fixed
    torch.testing.assert_close(v1["c2w"], v2["c2w"])


def test_explicit_default_options_give_the_original_clip():
    from datamodules.synthetic import TRAJECTORIES

    a = generate_clip(SyntheticConfig(**SMALL), 11)
    b = generate_clip(
        SyntheticConfig(texture="checker", trajectories=list(TRAJECTORIES), strength_range=[0.3, 1.0], **SMALL), 11
    )
    assert a.frames == b.frames
    np.testing.assert_array_equal(a.c2w, b.c2w)


def _ground_colours(texture: str, seed: int) -> np.ndarray:
    """(g, g, 3) colours of the ground's Gaussian grid of a scene."""
    from datamodules.synthetic import _Scene

    cfg = SyntheticConfig(texture=texture)
    g = cfg.ground_grid
    return _Scene(cfg, np.random.default_rng([seed, 4242])).static["colors"][: g * g].reshape(g, g, 3)


def test_smooth_texture_is_lower_frequency_than_the_checkerboard():
    def variation(c: np.ndarray) -> float:  # mean absolute difference of neighbouring Gaussians' colours
        return float(np.abs(np.diff(c, axis=0)).mean() + np.abs(np.diff(c, axis=1)).mean())

    smooth = [_ground_colours("smooth", s) for s in range(6)]
    checker = [_ground_colours("checker", s) for s in range(6)]
    assert max(map(variation, smooth)) < 0.5 * min(map(variation, checker))
    assert min(c.std(axis=(0, 1)).max() for c in smooth) > 0.05  # still a texture, not a flat colour


def test_trajectory_and_strength_options_set_the_camera_path():
    from diff4splat.geometry.trajectories import make_trajectory

    cfg = SyntheticConfig(**SMALL, trajectories=["truck_left"], strength_range=[2.0, 2.0])
    clip = generate_clip(cfg, 4)
    assert clip.meta.extra["trajectory"] == "truck_left"
    expected = make_trajectory("truck_left", SMALL["num_frames"], strength=2.0, look_at=3.0).c2w.numpy()
    np.testing.assert_allclose(clip.c2w, expected, atol=1e-6)
    np.testing.assert_allclose(clip.c2w[-1, :3, 3], [-3.0, 0.0, 0.0], atol=1e-6)  # 0.5 · strength · look-at distance
    tiny = SyntheticConfig(num_frames=2, height=8, width=8, trajectories=["arc_left", "zoom_in"])
    assert {generate_arrays(tiny, s)["trajectory"] for s in range(8)} == {"arc_left", "zoom_in"}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("texture", "noise", "SyntheticConfig.texture: expected 'checker' or 'smooth', got 'noise'"),
        ("texture_cells", 1, "SyntheticConfig.texture_cells: expected an integer >= 2"),
        ("trajectories", ["arc_left", "warp"], r"SyntheticConfig.trajectories: unknown preset\(s\) \['warp'\]"),
        ("trajectories", "arc_left", "SyntheticConfig.trajectories: expected a non-empty list"),
        ("strength_range", [2.0, 1.0], r"SyntheticConfig.strength_range: expected 0 <= low <= high"),
        ("strength_range", [1.0], r"SyntheticConfig.strength_range: expected \[low, high\] numbers"),
    ],
)
def test_bad_options_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**{field: value})
