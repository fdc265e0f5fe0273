"""VKITTI2 converter: recovers the ground truth from a native-layout sample, and names the file of bad input."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.sources import vkitti2
from datamodules.sources.base import ConvertOptions
from datamodules.spec import decode_frames, validate_clip
from tests.native.checks import assert_valid_and_survives_encoding, convert_all
from tests.native.scene import make_scene
from tests.native.vkitti2 import SKY_ROWS, encode_flow_png, rigid_flow, write_png16_rgb, write_vkitti2

F = 6


@pytest.fixture
def sample(tmp_path: Path):
    gts = (make_scene(num_frames=F, seed=1), make_scene(num_frames=F, seed=2))
    write_vkitti2(tmp_path, gts, "Scene01", "clone")
    write_vkitti2(tmp_path, gts, "Scene02", "fog", with_flow=False, segmentation_folder="classsegmentation")
    return tmp_path, gts


def _convert(root: Path, seq: str, **kw) -> list:
    return list(vkitti2.convert_sequence(root, seq, ConvertOptions(**kw)))


def test_list_sequences_and_splits(sample):
    root, _ = sample
    assert vkitti2.list_sequences(root, "all") == [
        "Scene01/clone/Camera_0",
        "Scene01/clone/Camera_1",
        "Scene02/fog/Camera_0",
        "Scene02/fog/Camera_1",
    ]
    assert vkitti2.list_sequences(root, "train") == ["Scene01/clone/Camera_0", "Scene01/clone/Camera_1"]
    assert vkitti2.list_sequences(root, "test") == ["Scene02/fog/Camera_0", "Scene02/fog/Camera_1"]
    with pytest.raises(ValueError):
        vkitti2.list_sequences(root, "val")


@pytest.mark.parametrize("cam", [0, 1])
def test_recovers_ground_truth(sample, cam):
    root, gts = sample
    gt = gts[cam]
    (clip,) = _convert(root, f"Scene01/clone/Camera_{cam}", clip_length=F, frame_format="png")
    assert_valid_and_survives_encoding(clip)
    assert clip.key == f"Scene01-clone-Camera_{cam}_000000"
    assert clip.meta.dataset == "vkitti2" and clip.meta.is_static is False
    assert (clip.meta.depth_weight, clip.meta.motion_weight) == (1.0, 0.0)
    np.testing.assert_allclose(clip.c2w, gt.c2w, atol=1e-5)
    np.testing.assert_allclose(clip.fxfycxcy, gt.fxfycxcy, rtol=0, atol=1e-12)
    np.testing.assert_allclose(clip.timestamps, np.arange(F) / 10.0)
    # frames: the written PNGs are the native JPEGs decoded, which are the rendered frames within JPEG error
    frames = decode_frames(clip)
    native = np.stack(
        [np.asarray(Image.open(root / f"Scene01/clone/frames/rgb/Camera_{cam}/rgb_{f:05d}.jpg")) for f in range(F)]
    )
    np.testing.assert_array_equal(frames, native)
    assert np.abs(frames.astype(float) - gt.rgb).mean() < 3.0
    # depth: 1 cm quantisation, sky rows invalid
    assert clip.depth.dtype == np.float32
    assert not clip.depth_valid[:, :SKY_ROWS].any() and clip.depth_valid[:, SKY_ROWS:].all()
    err = np.abs(clip.depth - gt.depth)[clip.depth_valid]
    assert err.max() <= 0.005 + 1e-6
    # flow: PNG16 quantisation is 2 (W-1) / 65535 px; target outside the image = invalid; last frame NaN
    flow, inside = rigid_flow(gt)
    H, W = gt.shape[1:]
    ok = ~np.isnan(clip.flow[:-1, ..., 0])
    np.testing.assert_array_equal(ok, inside)
    q = np.array([W - 1, H - 1]) / 65535.0
    assert (np.abs(clip.flow[:-1] - flow)[ok] <= q.max() + 1e-6).all()
    assert np.isnan(clip.flow[-1]).all()


def test_flow_png_round_trip_quantisation(tmp_path):
    rng = np.random.default_rng(0)
    H, W = 37, 91
    flow = rng.uniform(-1, 1, (H, W, 2)) * [W - 1, H - 1]  # the representable range
    valid = rng.random((H, W)) > 0.2
    write_png16_rgb(tmp_path / "flow_00000.png", encode_flow_png(flow, valid))
    back = vkitti2.decode_flow_png(vkitti2.read_png16_rgb(tmp_path / "flow_00000.png", "s"))
    np.testing.assert_array_equal(np.isnan(back[..., 0]), ~valid)
    err = np.abs(back - flow)[valid]
    assert err[:, 0].max() <= (W - 1) / 65535 + 1e-5 and err[:, 1].max() <= (H - 1) / 65535 + 1e-5  # + float32


def test_windows_resize_and_stride(sample):
    root, gts = sample
    clips = _convert(root, "Scene01/clone/Camera_0", clip_length=3, max_side=32)
    assert [c.key for c in clips] == ["Scene01-clone-Camera_0_000000", "Scene01-clone-Camera_0_000003"]
    full = _convert(root, "Scene01/clone/Camera_0", clip_length=3)
    for c, cf in zip(clips, full, strict=True):
        validate_clip(c)
        assert (c.meta.height, c.meta.width) == (24, 32) and c.depth.shape == (3, 24, 32)
        np.testing.assert_allclose(c.fxfycxcy, cf.fxfycxcy)  # resizing keeps normalised intrinsics
        # flow of the resized clip = nearest native flow scaled by the size ratio (0.5)
        np.testing.assert_allclose(c.flow, cf.flow[:, 1::2, 1::2] * 0.5, atol=1e-6)
    np.testing.assert_allclose(clips[1].c2w, gts[0].c2w[3:6], atol=1e-5)
    strided = _convert(root, "Scene01/clone/Camera_0", clip_length=3, stride=2)
    assert len(strided) == 1 and strided[0].flow is None
    np.testing.assert_allclose(strided[0].timestamps, [0.0, 0.2, 0.4])


def test_sequence_without_flow_tar_and_lowercase_folders(sample):
    root, gts = sample
    (clip,) = _convert(root, "Scene02/fog/Camera_1", clip_length=F)
    assert clip.flow is None
    np.testing.assert_allclose(clip.c2w, gts[1].c2w, atol=1e-5)


def _break(root: Path, how: str) -> Path:
    seq = root / "Scene01/clone"
    if how == "missing_frame":
        bad = seq / "frames/rgb/Camera_0/rgb_00003.jpg"
        bad.unlink()
    elif how == "truncated_depth":
        bad = seq / "frames/depth/Camera_0/depth_00002.png"
        bad.write_bytes(bad.read_bytes()[:60])
    elif how == "truncated_flow":
        bad = seq / "frames/forwardFlow/Camera_0/flow_00001.png"
        bad.write_bytes(bad.read_bytes()[:-20])
    elif how == "wrong_shape":
        bad = seq / "frames/depth/Camera_0/depth_00004.png"
        Image.fromarray(np.full((10, 10), 500, np.uint16)).save(bad)
    elif how == "flow_8bit":
        bad = seq / "frames/forwardFlow/Camera_0/flow_00000.png"
        buf = io.BytesIO()
        Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(buf, format="PNG")
        bad.write_bytes(buf.getvalue())
    elif how == "nan_pose":
        bad = seq / "extrinsic.txt"
        lines = bad.read_text().splitlines()
        lines[1 + 2 * 2] = "2 0 " + " ".join(["nan"] * 16)
        bad.write_text("\n".join(lines) + "\n")
    elif how == "extra_image":
        bad = seq / "extrinsic.txt"
        (seq / "frames/rgb/Camera_0/rgb_00006.jpg").write_bytes(
            (seq / "frames/rgb/Camera_0/rgb_00005.jpg").read_bytes()
        )
    elif how == "bad_columns":
        bad = seq / "intrinsic.txt"
        lines = bad.read_text().splitlines()
        lines[3] = "1 0 1 2 3"
        bad.write_text("\n".join(lines) + "\n")
    return bad


@pytest.mark.parametrize(
    "how",
    [
        "missing_frame",
        "truncated_depth",
        "truncated_flow",
        "wrong_shape",
        "flow_8bit",
        "nan_pose",
        "extra_image",
        "bad_columns",
    ],
)
def test_bad_input_names_file_and_others_convert(sample, how):
    root, _ = sample
    bad = _break(root, how)
    converted, errors = convert_all(vkitti2, root, ConvertOptions(split="all", clip_length=F))
    assert list(errors) == ["Scene01/clone/Camera_0"]
    assert errors["Scene01/clone/Camera_0"].file == str(bad)
    assert sorted(converted) == ["Scene01/clone/Camera_1", "Scene02/fog/Camera_0", "Scene02/fog/Camera_1"]
    assert all(len(v) == 1 for v in converted.values())


def test_done_keys_and_flow_option(sample):
    root, _ = sample
    done = frozenset({"Scene01-clone-Camera_0_000000"})  # as `python -m datamodules.convert` resumes
    opts = ConvertOptions(clip_length=3, done_keys=done, source_options={"flow": False})
    (clip,) = vkitti2.convert_sequence(root, "Scene01/clone/Camera_0", opts)
    assert clip.key == "Scene01-clone-Camera_0_000003" and clip.flow is None
