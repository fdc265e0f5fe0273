"""DL3DV converter: a nerfstudio-layout scene built from a known scene converts back to its ground truth."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from datamodules.sources import dl3dv
from datamodules.sources.base import ConvertOptions, SourceError
from datamodules.spec import decode_frames, validate_clip
from tests.native.checks import convert_all
from tests.native.dl3dv import DISTORTION, write_dl3dv
from tests.native.scene import make_scene

HASH = "0a1b2c" * 10 + "3d4e"
HAS_H5PY = importlib.util.find_spec("h5py") is not None


@pytest.fixture(scope="module")
def gt():
    return make_scene(num_frames=5, dynamic=False, seed=11)


@pytest.mark.parametrize(("factor", "image_dir"), [(4, "images_4"), (1, "images")])
def test_recovers_ground_truth(tmp_path, gt, factor, image_dir):
    write_dl3dv(tmp_path / "1K" / HASH, gt, factor=factor, image_dir=image_dir)
    assert dl3dv.list_sequences(tmp_path, "train") == [f"1K/{HASH}"]
    (clip,) = dl3dv.convert_sequence(tmp_path, f"1K/{HASH}", ConvertOptions(frame_format="png"))
    validate_clip(clip, deep=True)
    assert clip.key == f"1K-{HASH}_000000"
    np.testing.assert_allclose(clip.c2w, gt.c2w, atol=1e-5)
    np.testing.assert_allclose(clip.fxfycxcy, gt.fxfycxcy, rtol=1e-12)
    np.testing.assert_array_equal(decode_frames(clip), gt.rgb)  # frames sorted by number, PNG exact
    np.testing.assert_array_equal(clip.timestamps, np.arange(1, 6))
    assert clip.depth is None
    extra = clip.meta.extra
    assert extra["distortion"] == {"camera_model": "OPENCV", **DISTORTION} and extra["image_dir"] == image_dir
    assert clip.meta.is_static and clip.meta.depth_unit == "arbitrary" and clip.meta.scale_source == "arbitrary"
    assert (clip.meta.depth_weight, clip.meta.motion_weight) == (0.9, 1.0)
    assert clip.points_world is None  # no sparse_pc.ply


def test_sparse_points_normalise_a_depth_less_scene_like_its_depth(tmp_path, gt):
    """nerfstudio's sparse_pc.ply becomes points_world (world of the poses), and the stream's scene unit of the
    depth-less clip from those points lands within the measured `points` error of the unit from the scene's depth."""
    from datamodules.stream import ClipSamplingConfig, ClipTransform, SourceConfig
    from diff4splat.geometry.scale import FALLBACK_ERROR, points_from_depth

    valid = np.isfinite(gt.depth) & (gt.depth > 0)
    points = points_from_depth(gt.depth, valid, gt.c2w, gt.fxfycxcy, 2000, np.random.default_rng(0))
    write_dl3dv(tmp_path / "1K" / HASH, gt, points=points)
    (clip,) = dl3dv.convert_sequence(tmp_path, f"1K/{HASH}", ConvertOptions(frame_format="png"))
    np.testing.assert_allclose(clip.points_world, points, rtol=1e-6, atol=1e-6)
    with_depth = dataclasses.replace(clip, depth=gt.depth.astype(np.float32), points_world=None)
    cfg = ClipSamplingConfig(num_input=3, num_output=2, resolution=32, random_aspect=False)
    source = SourceConfig(name="dl3dv", shards=[], max_gap=5)
    t = ClipTransform(cfg, train=False)
    s_depth = float(t.transform(with_depth, np.random.default_rng(0), (32, 32), source)["metric_scale"])
    s_points = float(t.transform(clip, np.random.default_rng(0), (32, 32), source)["metric_scale"])
    assert s_points != s_depth and abs(s_depth / s_points - 1) <= FALLBACK_ERROR["points"], (s_depth, s_points)


def test_windows_and_resize(tmp_path, gt):
    write_dl3dv(tmp_path / "train" / "2K" / HASH, gt)
    opts = ConvertOptions(split="train", clip_length=2, stride=2, max_side=32)
    clips = list(dl3dv.convert_sequence(tmp_path, f"2K/{HASH}", opts))
    # strided frames 0, 2, 4 -> one clip of 2 (windows do not overlap; the remainder is dropped)
    assert [c.key for c in clips] == [f"2K-{HASH}_000000"]
    assert (clips[0].meta.height, clips[0].meta.width) == (24, 32)
    np.testing.assert_allclose(clips[0].c2w, gt.c2w[[0, 2]], atol=1e-5)
    np.testing.assert_array_equal(clips[0].timestamps, [1, 3])
    resumed = ConvertOptions(split="train", clip_length=2, stride=2, done_keys=frozenset({clips[0].key}))
    assert list(dl3dv.convert_sequence(tmp_path, f"2K/{HASH}", resumed)) == []


def test_nerfstudio_pose_path_on_blender_lego(real_fixtures):
    """Blender/nerfstudio OpenGL c2w -> OpenCV: every lego camera looks at the origin with image y pointing down."""
    data = json.loads((real_fixtures / "nerf_synthetic_lego" / "transforms_train.json").read_text())
    c2w = dl3dv.nerfstudio_poses(data["frames"], "lego", "transforms_train.json")
    assert c2w.shape == (100, 4, 4)
    to_origin = -c2w[:, :3, 3] / np.linalg.norm(c2w[:, :3, 3], axis=-1, keepdims=True)
    assert np.einsum("ni,ni->n", c2w[:, :3, 2], to_origin).min() > 0.9999  # +z (forward) towards the origin
    assert (c2w[:, 2, 1] < 0).all()  # camera +y (down in the image) has a negative world-z (Blender z is up)
    raw = np.asarray([f["transform_matrix"] for f in data["frames"]])
    assert np.einsum("ni,ni->n", raw[:, :3, 2], to_origin).max() < -0.9999  # unconverted: +z points away


def test_bad_input_names_the_file_and_spares_other_sequences(tmp_path, gt):
    names = ["good", "missing", "truncated", "wrong_size", "nan_pose", "bad_json", "wrong_shape"]
    for n in names:
        write_dl3dv(tmp_path / "1K" / n, gt)
    (tmp_path / "1K/missing/images_4/frame_00003.png").unlink()
    png = tmp_path / "1K/truncated/images_4/frame_00002.png"
    png.write_bytes(png.read_bytes()[:120])
    from PIL import Image

    Image.fromarray(gt.rgb[0, :40]).save(tmp_path / "1K/wrong_size/images_4/frame_00004.png")
    for n, edit in (("nan_pose", "nan"), ("wrong_shape", "shape")):
        p = tmp_path / "1K" / n / "transforms.json"
        d = json.loads(p.read_text())
        f = next(f for f in d["frames"] if f["file_path"].endswith("00002.png"))
        if edit == "nan":
            f["transform_matrix"][0][3] = float("nan")
        else:
            f["transform_matrix"] = f["transform_matrix"][:2]
        p.write_text(json.dumps(d))
    p = tmp_path / "1K/bad_json/transforms.json"
    p.write_text(p.read_text()[:300])

    ok, errors = convert_all(dl3dv, tmp_path, ConvertOptions(frame_format="png"))
    assert sorted(ok) == ["1K/good"] and len(ok["1K/good"]) == 1
    expect = {
        "1K/missing": "frame_00003.png",
        "1K/truncated": "frame_00002.png",
        "1K/wrong_size": "frame_00004.png",
        "1K/nan_pose": "transforms.json",
        "1K/bad_json": "transforms.json",
        "1K/wrong_shape": "transforms.json",
    }
    assert {k: Path(e.file).name for k, e in errors.items()} == expect
    assert "non-finite pose at frame(s) [1]" in str(errors["1K/nan_pose"])  # frame_00002 is the second frame
    assert "shape (2, 4)" in str(errors["1K/wrong_shape"])


def test_intrinsics_of_another_resolution_are_rejected(tmp_path, gt):
    p = write_dl3dv(tmp_path / "1K" / HASH, gt)
    d = json.loads(p.read_text())
    d["cx"], d["cy"] = d["cx"] / 4, d["cy"] / 4  # principal point of images_4 with w, h of the full images
    p.write_text(json.dumps(d))
    with pytest.raises(SourceError, match="principal point"):
        list(dl3dv.convert_sequence(tmp_path, f"1K/{HASH}", ConvertOptions()))


def test_mvs_depth_without_h5py_is_skipped_with_a_warning(tmp_path, gt, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py raises ImportError
    write_dl3dv(tmp_path / "960P" / "1K" / HASH, gt)
    (tmp_path / "960P_mvs").mkdir()
    (tmp_path / "960P_mvs" / f"{HASH}.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    with caplog.at_level(logging.WARNING):
        (clip,) = dl3dv.convert_sequence(tmp_path / "960P", f"1K/{HASH}", ConvertOptions())
    assert clip.depth is None and "h5py is not installed" in caplog.text


@pytest.mark.skipif(not HAS_H5PY, reason="h5py not installed (optional MVS depth path)")
def test_mvs_depth_with_h5py(tmp_path, gt):
    import h5py

    write_dl3dv(tmp_path / "960P" / "1K" / HASH, gt)
    (tmp_path / "960P_mvs").mkdir()
    with h5py.File(tmp_path / "960P_mvs" / f"{HASH}.h5", "w") as f:
        f["depth"] = gt.depth.astype(np.float32)
    (clip,) = dl3dv.convert_sequence(tmp_path / "960P", f"1K/{HASH}", ConvertOptions())
    validate_clip(clip)
    np.testing.assert_allclose(clip.depth, gt.depth, rtol=1e-6)
