"""MatrixCity converter: pose JSONs (100 m units) or raw rot_mat JSONs, PNG frames, EXR depth in cm -> metres."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datamodules.sources import matrixcity
from datamodules.sources.base import ConvertOptions, SourceError
from datamodules.spec import decode_frames, validate_clip
from tests.native.matrixcity import SKY_ROWS, write_block, write_exr
from tests.native.scene import make_scene

POSE_SEQ = "small_city/aerial/pose/block_A/transforms_train"
RAW_SEQ = "small_city/aerial/train/block_1/transforms"


@pytest.fixture(scope="module")
def gt():
    return make_scene(num_frames=5, height=48, width=64, fov_x_deg=60.0, dynamic=False, seed=3)


def _convert(root, seq=POSE_SEQ, opts=None):
    return list(matrixcity.convert_sequence(root, seq, opts or ConvertOptions(frame_format="png")))


@pytest.mark.parametrize("compression", ["NONE", "RLE", "ZIPS", "ZIP"])
def test_exr_reader_round_trip(tmp_path, compression):
    rng = np.random.default_rng(0)
    chans = {
        "B": (rng.random((37, 21)) * 3e4).astype(np.float16),
        "Z": rng.random((37, 21)).astype(np.float32),
        "id": rng.integers(0, 2**32, (37, 21), dtype=np.uint32),
    }
    chans["B"][:7] = 65504.0  # long runs, as sky rows give
    write_exr(tmp_path / "d.exr", chans, compression)
    back = matrixcity.read_exr(tmp_path / "d.exr")
    assert sorted(back) == ["B", "Z", "id"]
    for k, v in chans.items():
        assert back[k].dtype == v.dtype
        np.testing.assert_array_equal(back[k], v)


def test_pose_json_recovers_ground_truth(tmp_path, gt):
    write_block(tmp_path, gt, "pose")
    assert matrixcity.list_sequences(tmp_path, "train") == [POSE_SEQ]
    assert matrixcity.list_sequences(tmp_path / "small_city", "train") == ["aerial/pose/block_A/transforms_train"]
    (clip,) = _convert(tmp_path)
    validate_clip(clip, deep=True)
    np.testing.assert_allclose(clip.c2w, gt.c2w, atol=1e-9)  # 100 m units -> metres, OpenGL -> OpenCV
    np.testing.assert_allclose(clip.fxfycxcy, gt.fxfycxcy, atol=1e-12)
    np.testing.assert_array_equal(decode_frames(clip), gt.rgb)
    assert clip.depth.dtype == np.float16 and (clip.depth[:, :SKY_ROWS] == 0).all()
    expected = (gt.depth * 100).astype(np.float16).astype(np.float64) / 100  # float16 centimetres in the EXR
    np.testing.assert_allclose(clip.depth[:, SKY_ROWS:], expected[:, SKY_ROWS:], rtol=1e-3)
    assert clip.meta.is_static and clip.meta.metric_scale == 1.0 and clip.meta.depth_unit == "m"
    assert (clip.meta.depth_weight, clip.meta.motion_weight) == (0.8, 1.0)


def test_raw_rot_mat_json(tmp_path, gt):
    write_block(tmp_path, gt, "raw", compression="NONE")
    assert matrixcity.list_sequences(tmp_path, "train") == [RAW_SEQ]
    (clip,) = _convert(tmp_path, RAW_SEQ)
    np.testing.assert_allclose(clip.c2w, gt.c2w, atol=1e-9)  # rotation × 0.01 undone, translation already metres
    fx = gt.fxfycxcy[0, 0]
    np.testing.assert_allclose(clip.fxfycxcy, np.tile([fx, fx * 64 / 48, 0.5, 0.5], (5, 1)), atol=1e-12)
    assert (clip.depth[:, SKY_ROWS:] > 0).all()


def test_pose_unit_option_windows_and_resize(tmp_path, gt):
    write_block(tmp_path, gt, "pose", depth=False)
    opts = ConvertOptions(clip_length=3, clip_step=1, max_side=32)
    opts.source_options = {"pose_unit_m": 1.0}  # type: ignore[attr-defined]
    clips = _convert(tmp_path, opts=opts)
    assert [c.key for c in clips] == [f"{POSE_SEQ.replace('/', '-')}_{i:06d}" for i in range(3)]
    np.testing.assert_allclose(clips[2].c2w[:, :3, 3], gt.c2w[2:5, :3, 3] / 100, atol=1e-9)
    assert clips[0].depth is None and (clips[0].meta.height, clips[0].meta.width) == (24, 32)


def test_clips_do_not_span_image_folders(tmp_path, gt):
    path = write_block(tmp_path, gt, "pose", depth=False)
    d = json.loads(path.read_text())
    other = tmp_path / "small_city" / "aerial" / "train" / "block_2"
    other.mkdir(parents=True)
    for i in (3, 4):
        (tmp_path / "small_city" / "aerial" / "train" / "block_1" / f"{i:04d}.png").rename(other / f"{i:04d}.png")
        d["frames"][i]["file_path"] = f"../../train/block_2/{i:04d}"  # no extension, as Blender JSONs
    path.write_text(json.dumps(d))
    clips = _convert(tmp_path)
    assert [c.timestamps.tolist() for c in clips] == [[0.0, 1.0, 2.0], [3.0, 4.0]]
    assert [c.meta.extra["images"] for c in clips] == ["block_1", "block_2"]
    np.testing.assert_allclose(clips[1].c2w, gt.c2w[3:], atol=1e-9)


def test_bad_inputs_name_the_file(tmp_path, gt):
    path = write_block(tmp_path, gt, "pose")
    depth = tmp_path / "small_city_depth" / "aerial" / "train" / "block_1_depth"
    (depth / "0002.exr").write_bytes((depth / "0002.exr").read_bytes()[:500])
    with pytest.raises(SourceError, match="truncated EXR") as e:
        _convert(tmp_path)
    assert e.value.file == str(depth / "0002.exr")

    write_block(tmp_path, gt, "pose")
    (depth / "0003.exr").unlink()
    with pytest.raises(SourceError, match="missing depth file") as e:
        _convert(tmp_path)
    assert e.value.file == str(depth / "0003.exr")

    write_block(tmp_path, gt, "pose")
    write_exr(depth / "0001.exr", {"B": np.ones((10, 10), np.float16)}, "ZIP")
    with pytest.raises(SourceError, match=r"depth is \(10, 10\), the images \(48, 64\)"):
        _convert(tmp_path)

    write_block(tmp_path, gt, "pose")
    (tmp_path / "small_city" / "aerial" / "train" / "block_1" / "0004.png").unlink()
    with pytest.raises(SourceError, match="missing image file"):
        _convert(tmp_path)

    write_block(tmp_path, gt, "pose")
    d = json.loads(path.read_text())
    d["frames"][1]["transform_matrix"][0][3] = float("nan")
    path.write_text(json.dumps(d).replace("NaN", "NaN"))
    with pytest.raises(SourceError, match=r"non-finite pose at frame\(s\) \[1\]") as e:
        _convert(tmp_path)
    assert e.value.file == str(path)

    d["frames"][1]["transform_matrix"] = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    path.write_text(json.dumps(d))
    with pytest.raises(SourceError, match="matrices must be 4x4"):
        _convert(tmp_path)


def test_lego_json_cameras_look_at_origin(real_fixtures):
    path = real_fixtures / "nerf_synthetic_lego" / "transforms_train.json"
    images, c2w, camera = matrixcity.read_transforms(path, "lego", pose_unit_m=1.0)
    assert len(images) == 100 and images[0].name == "r_0.png" and images[0].is_file()
    centres, forward = c2w[:, :3, 3], c2w[:, :3, 2]  # OpenCV: +z is the optical axis
    to_origin = -centres / np.linalg.norm(centres, axis=1, keepdims=True)
    assert (np.einsum("fi,fi->f", forward, to_origin) > 0.9999).all()
    assert np.abs(np.linalg.norm(centres, axis=1) - 4.0311).max() < 1e-3  # all on one sphere
    K = matrixcity.normalised_intrinsics(camera, 800, 800, "lego", path)
    np.testing.assert_allclose(K, [1111.1110311937682 / 800] * 2 + [0.5, 0.5], rtol=1e-6)
