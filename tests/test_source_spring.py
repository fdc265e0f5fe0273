"""Spring converter: recovers the ground truth from a native-layout sample, and names the file of bad input."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from datamodules.sources import spring
from datamodules.sources.base import ConvertOptions
from datamodules.spec import decode_frames, validate_clip
from tests.native.checks import assert_valid_and_survives_encoding, convert_all
from tests.native.scene import make_scene
from tests.native.spring import NAN_BLOCK, ZERO_BLOCK, write_spring
from tests.native.vkitti2 import rigid_flow

F = 6


@pytest.fixture
def sample(tmp_path: Path):
    gts = {"0001": make_scene(num_frames=F, seed=3), "0002": make_scene(num_frames=F, seed=4)}
    for scene, gt in gts.items():
        write_spring(tmp_path, gt, "train", scene)
    write_spring(tmp_path, gts["0001"], "test", "0004", with_gt=False)
    return tmp_path, gts


def _convert(root: Path, seq: str, **kw) -> list:
    return list(spring.convert_sequence(root, seq, ConvertOptions(**kw)))


def test_list_sequences(sample):
    root, _ = sample
    assert spring.list_sequences(root, "train") == ["train/0001", "train/0002"]
    assert spring.list_sequences(root, "test") == ["test/0004"]


def test_recovers_ground_truth(sample):
    root, gts = sample
    gt = gts["0001"]
    (clip,) = _convert(root, "train/0001", clip_length=F, frame_format="png")
    assert_valid_and_survives_encoding(clip)
    assert clip.key == "train-0001_000000"
    assert (clip.meta.dataset, clip.meta.is_static, clip.meta.depth_weight, clip.meta.motion_weight) == (
        "spring",
        False,
        1.0,
        0.0,
    )
    np.testing.assert_allclose(clip.c2w, gt.c2w, atol=1e-5)
    np.testing.assert_allclose(clip.fxfycxcy, gt.fxfycxcy, rtol=0, atol=1e-12)
    np.testing.assert_allclose(clip.timestamps, np.arange(F) / 24.0)
    np.testing.assert_array_equal(decode_frames(clip), gt.rgb)
    # depth: [::2, ::2] of the 2x disparity, fx * 0.065 / d, NaN and 0 invalid
    expected_valid = np.ones(gt.depth.shape, bool)
    expected_valid[(slice(None), *NAN_BLOCK)] = False
    expected_valid[(slice(None), *ZERO_BLOCK)] = False
    np.testing.assert_array_equal(clip.depth_valid, expected_valid)
    np.testing.assert_allclose(clip.depth[expected_valid], gt.depth[expected_valid], rtol=1e-6)
    assert (clip.depth[~expected_valid] == 0).all()
    # flow: [::2, ::2] of the 2x flow, NaN kept, last frame NaN
    flow, inside = rigid_flow(gt)
    np.testing.assert_array_equal(~np.isnan(clip.flow[:-1, ..., 0]), inside)
    np.testing.assert_allclose(clip.flow[:-1][inside], flow[inside], atol=1e-4)
    assert np.isnan(clip.flow[-1]).all()
    # the pose-convention evidence: the OpenCV reading explains the flow, the OpenGL reading does not
    res = clip.meta.extra["flow_residual_px"]
    assert res["opencv"] < 1e-3 and res["opengl"] > 0.5


def test_resize_and_windows(sample):
    root, gts = sample
    clips = _convert(root, "train/0002", clip_length=3, max_side=32)
    full = _convert(root, "train/0002", clip_length=3)
    assert [c.key for c in clips] == ["train-0002_000000", "train-0002_000003"]
    for c, cf in zip(clips, full, strict=True):
        validate_clip(c)
        assert c.depth.shape == (3, 24, 32) and c.flow.shape == (3, 24, 32, 2)
        np.testing.assert_allclose(c.fxfycxcy, cf.fxfycxcy)
        np.testing.assert_allclose(c.flow, cf.flow[:, 1::2, 1::2] * 0.5, atol=1e-6)
        np.testing.assert_array_equal(c.depth, cf.depth[:, 1::2, 1::2])
    np.testing.assert_allclose(clips[1].c2w, gts["0002"].c2w[3:], atol=1e-5)
    (strided,) = _convert(root, "train/0002", clip_length=3, stride=2)
    assert strided.flow is None and strided.meta.extra["native_frames"] == [1, 5]


def test_test_split_has_no_depth_or_flow(sample):
    root, gts = sample
    (clip,) = _convert(root, "test/0004", clip_length=F)
    validate_clip(clip)
    assert clip.depth is None and clip.depth_valid is None and clip.flow is None
    np.testing.assert_allclose(clip.c2w, gts["0001"].c2w, atol=1e-5)


def _break(root: Path, how: str) -> Path:
    seq = root / "train" / "0001"
    if how == "missing_frame":
        bad = seq / "frame_left" / "frame_left_0003.png"
        bad.unlink()
    elif how == "missing_flow":
        bad = seq / "flow_FW_left" / "flow_FW_left_0002.flo5"
        bad.unlink()
    elif how == "truncated_disparity":
        bad = seq / "disp1_left" / "disp1_left_0004.dsp5"
        bad.write_bytes(bad.read_bytes()[:100])
    elif how == "disparity_not_2x":
        bad = seq / "disp1_left" / "disp1_left_0002.dsp5"
        with h5py.File(bad, "w") as f:
            f.create_dataset("disparity", data=np.ones((48, 64), np.float32))
    elif how == "wrong_key":
        bad = seq / "flow_FW_left" / "flow_FW_left_0001.flo5"
        with h5py.File(bad, "w") as f:
            f.create_dataset("disparity", data=np.ones((96, 128, 2), np.float32))
    elif how == "nan_pose":
        bad = seq / "cam_data" / "extrinsics.txt"
        lines = bad.read_text().splitlines()
        lines[2] = " ".join(["nan"] * 16)
        bad.write_text("\n".join(lines) + "\n")
    elif how == "short_intrinsics":
        bad = seq / "cam_data" / "intrinsics.txt"
        bad.write_text("\n".join(bad.read_text().splitlines()[:-1]) + "\n")
    return bad


@pytest.mark.parametrize(
    "how",
    [
        "missing_frame",
        "missing_flow",
        "truncated_disparity",
        "disparity_not_2x",
        "wrong_key",
        "nan_pose",
        "short_intrinsics",
    ],
)
def test_bad_input_names_file_and_others_convert(sample, how):
    root, _ = sample
    bad = _break(root, how)
    converted, errors = convert_all(spring, root, ConvertOptions(clip_length=F))
    assert list(errors) == ["train/0001"] and errors["train/0001"].file == str(bad)
    assert list(converted) == ["train/0002"] and len(converted["train/0002"]) == 1


def test_done_keys_and_flow_option(sample):
    root, _ = sample
    # as `python -m datamodules.convert` resumes and passes flow=false
    opts = ConvertOptions(clip_length=3, done_keys=frozenset({"train-0001_000003"}), source_options={"flow": False})
    (clip,) = spring.convert_sequence(root, "train/0001", opts)
    assert clip.key == "train-0001_000000" and clip.flow is None and "flow_residual_px" not in clip.meta.extra
