"""PointOdyssey converter: a native-layout sample built from a known scene converts back to its ground truth."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.sources import pointodyssey as po
from datamodules.sources.base import ConvertOptions, SourceError
from datamodules.spec import decode_frames, validate_clip
from diff4splat.geometry.cameras import project_points
from tests.native.checks import convert_all
from tests.native.pointodyssey import project, write_pointodyssey
from tests.native.scene import make_scene

DEPTH_STEP = 1000.0 / 65535.0


@pytest.fixture(scope="module")
def gt():
    return make_scene(num_frames=6, num_tracks=80, seed=3)


def test_recovers_ground_truth(tmp_path, gt):
    seq_dir = write_pointodyssey(tmp_path / "train" / "ani1", gt)
    assert po.list_sequences(tmp_path, "train") == ["ani1"]
    (clip,) = po.convert_sequence(tmp_path, "ani1", ConvertOptions(clip_length=6))
    validate_clip(clip, deep=True)
    assert clip.key == "ani1_000000"
    np.testing.assert_allclose(clip.c2w, gt.c2w, atol=1e-5)
    np.testing.assert_allclose(clip.fxfycxcy, gt.fxfycxcy, rtol=1e-12)
    np.testing.assert_array_equal(clip.timestamps, np.arange(6))
    # depth within the PNG16 quantisation step (half a step from rounding)
    assert clip.depth_valid.all()
    assert np.abs(clip.depth - gt.depth).max() <= DEPTH_STEP / 2 + 1e-4
    # frames: the native JPEG bytes pass through unchanged; they decode close to the GT image
    assert clip.frames[2] == (seq_dir / "rgbs" / "rgb_00002.jpg").read_bytes()
    err = np.abs(decode_frames(clip).astype(int) - gt.rgb.astype(int))
    assert err.mean() < 3.0
    # tracks: the GT points visible and valid in >= 2 frames, exact where visible, NaN elsewhere
    valid = np.ones(80, bool)
    valid[::7] = False
    expect_vis = gt.tracks_visible & valid
    keep = np.flatnonzero(expect_vis.sum(0) >= 2)
    assert clip.tracks_world.shape == (6, len(keep), 3)
    np.testing.assert_array_equal(clip.tracks_visible, expect_vis[:, keep])
    vis = clip.tracks_visible
    np.testing.assert_allclose(clip.tracks_world[vis], gt.tracks_world[:, keep][vis], atol=1e-6)
    assert np.isnan(clip.tracks_world[~vis]).all()
    proj = project_points(
        torch.from_numpy(clip.tracks_world.astype(np.float64)),
        torch.from_numpy(clip.c2w),
        torch.from_numpy(clip.fxfycxcy),
        48,
        64,
    )
    uv_gt = project(gt)[:, keep]
    assert np.abs(proj.uv.numpy()[vis] - uv_gt[vis]).max() < 0.5
    assert clip.meta.dataset == "pointodyssey" and not clip.meta.is_static
    assert (clip.meta.depth_weight, clip.meta.motion_weight, clip.meta.metric_scale) == (1.0, 1.0, 1.0)


def test_v1_annotations_match_current_release(tmp_path, gt):
    write_pointodyssey(tmp_path / "train" / "a", gt, variant="anno")
    write_pointodyssey(tmp_path / "train" / "b", gt, variant="v1")
    opts = ConvertOptions(clip_length=6)
    (a,) = po.convert_sequence(tmp_path, "a", opts)
    (b,) = po.convert_sequence(tmp_path, "b", opts)
    assert b.meta.extra["annotation_file"] == "annotations.npz"
    np.testing.assert_array_equal(a.tracks_visible, b.tracks_visible)
    np.testing.assert_array_equal(a.tracks_world, b.tracks_world)
    np.testing.assert_array_equal(a.c2w, b.c2w)


def test_windows_resize_and_track_cap(tmp_path, gt):
    write_pointodyssey(tmp_path / "train" / "s", gt)
    opts = ConvertOptions(clip_length=3, max_side=32, source_options={"max_tracks": 5})
    clips = list(po.convert_sequence(tmp_path, "s", opts))
    assert [c.key for c in clips] == ["s_000000", "s_000003"]
    for c, start in zip(clips, (0, 3), strict=True):
        assert (c.meta.height, c.meta.width) == (24, 32) and c.depth.shape == (3, 24, 32)
        np.testing.assert_allclose(c.c2w, gt.c2w[start : start + 3], atol=1e-5)
        np.testing.assert_allclose(c.fxfycxcy, gt.fxfycxcy[start : start + 3], rtol=1e-12)
        assert c.tracks_world.shape == (3, 5, 3)
        np.testing.assert_array_equal(c.timestamps, np.arange(start, start + 3))
    again = list(po.convert_sequence(tmp_path, "s", opts))
    np.testing.assert_array_equal(clips[1].tracks_world, again[1].tracks_world)
    # the subsample is a subset of the uncapped clip's tracks
    full = list(po.convert_sequence(tmp_path, "s", dataclasses.replace(opts, source_options={"max_tracks": 0})))[1]
    assert full.tracks_world.shape[1] > 5
    for j in range(5):
        assert any(
            np.array_equal(full.tracks_world[:, i], clips[1].tracks_world[:, j], equal_nan=True)
            for i in range(full.tracks_world.shape[1])
        )


def test_done_keys_are_not_converted_again(tmp_path, gt):
    write_pointodyssey(tmp_path / "train" / "s", gt)
    (tmp_path / "train" / "s" / "rgbs" / "rgb_00001.jpg").unlink()  # only the done clip reads this frame
    (tmp_path / "train" / "s" / "rgbs" / "rgb_00001.jpg").write_bytes(b"")  # present (the upfront check) but empty
    opts = ConvertOptions(clip_length=3, done_keys=frozenset({"s_000000"}))
    assert [c.key for c in po.convert_sequence(tmp_path, "s", opts)] == ["s_000003"]


def test_sequence_with_few_tracks_is_skipped(tmp_path):
    write_pointodyssey(tmp_path / "train" / "few", make_scene(num_frames=4, num_tracks=20, seed=1))
    assert list(po.convert_sequence(tmp_path, "few", ConvertOptions())) == []


def test_wrong_extrinsics_convention_is_caught(tmp_path, gt):
    seq_dir = write_pointodyssey(tmp_path / "train" / "s", gt)
    z = dict(np.load(seq_dir / "anno.npz"))
    z["extrinsics"] = gt.c2w.astype(np.float32)  # c2w stored where w2c belongs
    np.savez(seq_dir / "anno.npz", **z)
    with pytest.raises(SourceError, match="convention") as e:
        list(po.convert_sequence(tmp_path, "s", ConvertOptions()))
    assert e.value.file.endswith("anno.npz")


def test_bad_input_names_the_file_and_spares_other_sequences(tmp_path, gt):
    root = tmp_path
    for name in ("good", "missing_frame", "truncated_depth", "wrong_shape", "nan_pose", "truncated_anno"):
        write_pointodyssey(root / "train" / name, gt)
    (root / "train" / "missing_frame" / "rgbs" / "rgb_00003.jpg").unlink()
    depth = root / "train" / "truncated_depth" / "depths" / "depth_00002.png"
    depth.write_bytes(depth.read_bytes()[:100])
    for name, key, bad in (("wrong_shape", "extrinsics", gt.c2w[:, :3]), ("nan_pose", "extrinsics", None)):
        z = dict(np.load(root / "train" / name / "anno.npz"))
        if bad is None:
            bad = z[key].copy()
            bad[4, 0, 3] = np.nan
        z[key] = bad
        np.savez(root / "train" / name / "anno.npz", **z)
    anno = root / "train" / "truncated_anno" / "anno.npz"
    anno.write_bytes(anno.read_bytes()[:200])

    ok, errors = convert_all(po, root, ConvertOptions(clip_length=6))
    assert sorted(ok) == ["good"] and len(ok["good"]) == 1
    expect = {
        "missing_frame": "rgb_00003.jpg",
        "truncated_depth": "depth_00002.png",
        "wrong_shape": "anno.npz",
        "nan_pose": "anno.npz",
        "truncated_anno": "anno.npz",
    }
    assert {k: Path(e.file).name for k, e in errors.items()} == expect
    assert "non-finite pose at frame(s) [4]" in str(errors["nan_pose"])
    assert "(6, 3, 4)" in str(errors["wrong_shape"])


def test_depth_png_must_be_16_bit(tmp_path, gt):
    seq_dir = write_pointodyssey(tmp_path / "train" / "s", gt)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(gt.rgb[0]).save(buf, format="PNG")
    (seq_dir / "depths" / "depth_00001.png").write_bytes(buf.getvalue())
    with pytest.raises(SourceError, match="16-bit") as e:
        list(po.convert_sequence(tmp_path, "s", ConvertOptions()))
    assert e.value.file.endswith("depth_00001.png")
