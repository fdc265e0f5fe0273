"""DynamicReplica converter: a native-layout split built from known scenes converts back to their ground truth."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.sources import dynamicreplica as dr
from datamodules.sources.base import ConvertOptions, SourceError
from datamodules.spec import decode_frames, validate_clip
from diff4splat.geometry.cameras import project_points
from tests.native.checks import convert_all
from tests.native.dynamicreplica import write_split
from tests.native.pointodyssey import project
from tests.native.scene import make_scene


@pytest.fixture(scope="module")
def scenes():
    return {
        "aaa111-3_obj": (make_scene(num_frames=6, num_tracks=60, seed=5), "ndc_isotropic"),
        "bbb222-3_obj": (make_scene(num_frames=5, height=40, width=72, num_tracks=30, seed=6), "ndc_norm_image_bounds"),
        "8369cb-7_obj": (make_scene(num_frames=3, seed=7), "ndc_isotropic"),  # skipped as bad by the official loader
    }


def test_recovers_ground_truth(tmp_path, scenes):
    split_dir = write_split(tmp_path, "valid", scenes)
    opts = ConvertOptions(split="valid", clip_length=10, frame_format="png")
    assert dr.list_sequences(tmp_path, "valid") == ["aaa111-3_obj", "bbb222-3_obj"]
    for name in ("aaa111-3_obj", "bbb222-3_obj"):
        gt, fmt = scenes[name]
        F, H, W = gt.shape
        (clip,) = dr.convert_sequence(tmp_path, name, opts)
        validate_clip(clip, deep=True)
        assert clip.key == f"{name}_000000" and clip.meta.extra["intrinsics_format"] == fmt
        # left camera only: the right one is 0.1 m away and would break these
        np.testing.assert_allclose(clip.c2w, gt.c2w, atol=1e-5)
        np.testing.assert_allclose(clip.fxfycxcy, gt.fxfycxcy, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(clip.timestamps, gt.timestamps)
        # PNG frames pass through byte-exact
        assert clip.frames[1] == (split_dir / f"{name}_source_left/images/{name}_source_left-0001.png").read_bytes()
        np.testing.assert_array_equal(decode_frames(clip), gt.rgb)
        # float16 depth: exact float16 rounding of the GT; the zero block is invalid
        assert clip.depth.dtype == np.float16
        assert (clip.depth[:, :2, :2] == 0).all()
        d, g = clip.depth.astype(np.float64)[:, 2:], gt.depth[:, 2:]
        assert np.abs(d - g).max() <= g.max() * 2.0**-11
        # world tracks: GT where visible (>= 2 frames), NaN elsewhere, reproject onto the frames within 0.5 px
        keep = np.flatnonzero(gt.tracks_visible.sum(0) >= 2)
        vis = clip.tracks_visible
        np.testing.assert_array_equal(vis, gt.tracks_visible[:, keep])
        np.testing.assert_allclose(clip.tracks_world[vis], gt.tracks_world[:, keep][vis], atol=1e-6)
        assert np.isnan(clip.tracks_world[~vis]).all()
        proj = project_points(
            torch.from_numpy(clip.tracks_world.astype(np.float64)),
            torch.from_numpy(clip.c2w),
            torch.from_numpy(clip.fxfycxcy),
            H,
            W,
        )
        assert np.abs(proj.uv.numpy()[vis] - project(gt)[:, keep][vis]).max() < 0.5
        assert clip.flow is None  # encoding unverified: not converted
        assert (clip.meta.depth_weight, clip.meta.motion_weight, clip.meta.is_static) == (0.5, 0.5, False)


def test_windows_resize_and_track_cap(tmp_path, scenes):
    write_split(tmp_path, "train", {"aaa111-3_obj": scenes["aaa111-3_obj"]})
    opts = ConvertOptions(split="train", clip_length=3, clip_step=2, max_side=32, source_options={"max_tracks": 7})
    clips = list(dr.convert_sequence(tmp_path, "aaa111-3_obj", opts))
    gt = scenes["aaa111-3_obj"][0]
    assert [c.key for c in clips] == ["aaa111-3_obj_000000", "aaa111-3_obj_000002"]
    for c, s in zip(clips, (0, 2), strict=True):
        assert (c.meta.height, c.meta.width, c.meta.frame_format) == (24, 32, "jpg")
        assert c.depth.shape == (3, 24, 32) and c.tracks_world.shape == (3, 7, 3)
        np.testing.assert_allclose(c.c2w, gt.c2w[s : s + 3], atol=1e-5)
        np.testing.assert_allclose(c.fxfycxcy, gt.fxfycxcy[s : s + 3], rtol=1e-12)
        vis = c.tracks_visible
        # the kept tracks are GT tracks (each column equals one GT column where visible)
        for j in range(7):
            match = [
                n
                for n in range(gt.tracks_world.shape[1])
                if np.allclose(c.tracks_world[vis[:, j], j], gt.tracks_world[s : s + 3][vis[:, j], n], atol=1e-6)
            ]
            assert len(match) == 1
    again = list(dr.convert_sequence(tmp_path, "aaa111-3_obj", opts))
    np.testing.assert_array_equal(again[0].tracks_world, clips[0].tracks_world)
    resumed = dr.convert_sequence(
        tmp_path, "aaa111-3_obj", ConvertOptions(**{**opts.__dict__, "done_keys": {clips[0].key}})
    )
    assert [c.key for c in resumed] == ["aaa111-3_obj_000002"]


def test_trajectories_holding_numpy_arrays_load_safely(tmp_path, scenes):
    split_dir = write_split(tmp_path, "train", {"aaa111-3_obj": scenes["aaa111-3_obj"]})
    for p in (split_dir / "aaa111-3_obj_source_left" / "trajectories").glob("*.pth"):
        d = torch.load(p, weights_only=True)
        torch.save({k: v.numpy() for k, v in d.items()}, p)
    (clip,) = dr.convert_sequence(tmp_path, "aaa111-3_obj", ConvertOptions(clip_length=10))
    np.testing.assert_allclose(clip.c2w, scenes["aaa111-3_obj"][0].c2w, atol=1e-5)
    assert clip.tracks_visible.sum() > 100


def test_mirrored_tracks_are_a_convention_error(tmp_path, scenes):
    split_dir = write_split(tmp_path, "train", {"aaa111-3_obj": scenes["aaa111-3_obj"]})
    for p in (split_dir / "aaa111-3_obj_source_left" / "trajectories").glob("*.pth"):
        d = torch.load(p, weights_only=True)
        d["traj_2d"][:, 0] = 64 - d["traj_2d"][:, 0]
        torch.save(d, p)
    with pytest.raises(SourceError, match="convention") as e:
        list(dr.convert_sequence(tmp_path, "aaa111-3_obj", ConvertOptions()))
    assert e.value.file.endswith("000000.pth")


def test_bad_input_names_the_file_and_spares_other_sequences(tmp_path):
    names = ["good-1_obj", "missing-1_obj", "truncated-1_obj", "shape-1_obj", "nanpose-1_obj", "pth-1_obj"]
    gt = make_scene(num_frames=4, num_tracks=20, seed=9)
    split_dir = write_split(tmp_path, "train", {n: (gt, "ndc_isotropic") for n in names})
    (split_dir / "missing-1_obj_source_left/images/missing-1_obj_source_left-0002.png").unlink()
    depth = split_dir / "truncated-1_obj_source_left/depths/truncated-1_obj_source_left_0001.geometric.png"
    depth.write_bytes(depth.read_bytes()[:80])
    from tests.native.dynamicreplica import float16_png

    float16_png(
        np.ones((10, 10)), split_dir / "shape-1_obj_source_left/depths/shape-1_obj_source_left_0003.geometric.png"
    )
    pth = split_dir / "pth-1_obj_source_left/trajectories/000001.pth"
    pth.write_bytes(pth.read_bytes()[:300])
    jgz = split_dir / "frame_annotations_train.jgz"
    with gzip.open(jgz, "rt") as f:
        entries = json.load(f)
    for e in entries:
        if e["sequence_name"] == "nanpose-1_obj" and e["camera_name"] == "left" and e["frame_number"] == 2:
            e["viewpoint"]["T"][1] = float("nan")
    with gzip.open(jgz, "wt") as f:
        json.dump(entries, f)

    ok, errors = convert_all(dr, tmp_path, ConvertOptions(split="train", clip_length=10))
    assert sorted(ok) == ["good-1_obj"] and len(ok["good-1_obj"]) == 1
    expect = {
        "missing-1_obj": "missing-1_obj_source_left-0002.png",
        "truncated-1_obj": "truncated-1_obj_source_left_0001.geometric.png",
        "shape-1_obj": "shape-1_obj_source_left_0003.geometric.png",
        "nanpose-1_obj": "frame_annotations_train.jgz",
        "pth-1_obj": "000001.pth",
    }
    assert {k: Path(e.file).name for k, e in errors.items()} == expect
    assert "non-finite viewpoint at frame(s) [2]" in str(errors["nanpose-1_obj"])
    assert "(10, 10)" in str(errors["shape-1_obj"])


def test_truncated_annotation_file(tmp_path, scenes):
    split_dir = write_split(tmp_path, "train", {"aaa111-3_obj": scenes["aaa111-3_obj"]})
    jgz = split_dir / "frame_annotations_train.jgz"
    jgz.write_bytes(jgz.read_bytes()[:-40])
    with pytest.raises(SourceError, match="unreadable annotation file") as e:
        dr.list_sequences(tmp_path, "train")
    assert e.value.file == str(jgz)


def test_clips_round_trip_through_shards(tmp_path, scenes):
    from datamodules.scene import read_clip_from_tar
    from datamodules.write import ShardWriter

    write_split(tmp_path / "native", "train", {"aaa111-3_obj": scenes["aaa111-3_obj"]})
    clips = list(dr.convert_sequence(tmp_path / "native", "aaa111-3_obj", ConvertOptions(clip_length=3)))
    with ShardWriter(tmp_path / "shards", source=dr.NAME) as w:
        assert all(w.write(c) for c in clips)
    (shard,) = sorted((tmp_path / "shards").glob("*.tar"))
    for c in clips:
        back = read_clip_from_tar(shard, c.key)
        for name, a in c.arrays().items():
            b = getattr(back, name)
            assert b.dtype == a.dtype, name
            np.testing.assert_array_equal(b, a, err_msg=name)
        assert back.meta == c.meta and back.frames == c.frames
