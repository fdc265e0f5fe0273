"""TartanAir converter: NED pose txt, PNG frames, .npy depth with sky, forward flow + mask -> clips."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from datamodules.sources import tartanair
from datamodules.sources.base import ConvertOptions, SourceError
from datamodules.spec import decode_frames, validate_clip
from tests.native.scene import make_scene
from tests.native.tartanair import SKY_ROWS, forward_flow, write_trajectory

SEQ = "office/Easy/P000"


@pytest.fixture(scope="module")
def gt():
    return make_scene(num_frames=5, height=480, width=640, fov_x_deg=90.0, dynamic=False, seed=2)


@pytest.fixture
def native(tmp_path, gt):
    write_trajectory(tmp_path, gt, SEQ)
    return tmp_path


def _convert(root, opts=None, seq=SEQ):
    return list(tartanair.convert_sequence(root, seq, opts or ConvertOptions(frame_format="png")))


def _flow_from_cameras(c2w_a, c2w_b, depth, fxfycxcy):
    """Flow a -> b of a static scene from depth of frame a, both poses and (normalised) intrinsics."""
    H, W = depth.shape
    fx, fy, cx, cy = fxfycxcy * np.array([W, H, W, H])
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    p = np.stack([(u - cx) / fx * depth, (v - cy) / fy * depth, depth], -1)
    T = np.linalg.inv(c2w_b) @ c2w_a
    q = p @ T[:3, :3].T + T[:3, 3]
    return np.stack([q[..., 0] / q[..., 2] * fx + cx - u, q[..., 1] / q[..., 2] * fy + cy - v], -1)


def test_recovers_ground_truth(native, gt):
    assert tartanair.list_sequences(native, "train") == [SEQ]
    (clip,) = _convert(native)
    validate_clip(clip, deep=True)
    assert clip.key == "office-Easy-P000_000000"
    np.testing.assert_allclose(clip.c2w, gt.c2w, atol=1e-9)
    np.testing.assert_array_equal(clip.fxfycxcy, np.tile([0.5, 2 / 3, 0.5, 0.5], (5, 1)))
    np.testing.assert_array_equal(decode_frames(clip), gt.rgb)
    np.testing.assert_array_equal(clip.timestamps, np.arange(5.0))
    assert clip.depth.dtype == np.float16 and clip.depth_valid is None
    assert (clip.depth[:, :SKY_ROWS] == 0).all()  # sky (10000 m) is invalid
    np.testing.assert_allclose(clip.depth[:, SKY_ROWS:], gt.depth[:, SKY_ROWS:], rtol=1e-3)
    assert clip.meta.is_static and clip.meta.metric_scale == 1.0 and clip.meta.depth_unit == "m"
    assert (clip.meta.depth_weight, clip.meta.motion_weight) == (1.0, 0.9)

    # flow: the native forward flow, NaN where masked and on the last frame
    assert clip.flow.shape == (5, 480, 640, 2) and np.isnan(clip.flow[-1]).all()
    for i in range(4):
        native_flow, outside = forward_flow(gt, i, i + 1)
        assert outside.any() and np.isnan(clip.flow[i][outside]).all()
        np.testing.assert_allclose(clip.flow[i][~outside], native_flow[~outside], atol=0.05)
        # ... and consistent with the converted cameras: reprojecting converted depth gives the same flow
        valid = ~outside & (clip.depth[i] > 0)
        again = _flow_from_cameras(clip.c2w[i], clip.c2w[i + 1], clip.depth[i].astype(np.float64), gt.fxfycxcy[i])
        assert np.abs(again[valid] - clip.flow[i][valid]).max() < 0.05
        assert np.abs(native_flow[valid]).mean() > 3  # the cameras do move


def test_stride_drops_flow_and_resize_scales_it(native, gt):
    (clip,) = _convert(native, ConvertOptions(stride=2, frame_format="png"))
    assert clip.flow is None and clip.key == "office-Easy-P000_000000"
    np.testing.assert_allclose(clip.c2w, gt.c2w[[0, 2, 4]], atol=1e-9)
    np.testing.assert_array_equal(clip.timestamps, [0.0, 2.0, 4.0])

    (clip,) = _convert(native, ConvertOptions(max_side=320, frame_format="png"))
    assert clip.flow.shape == (5, 240, 320, 2) and clip.depth.shape == (5, 240, 320)
    f, outside = forward_flow(gt, 1, 2)
    sub = (slice(1, None, 2), slice(1, None, 2))  # nearest sampling picks pixel 2k+1 of the native grid
    ok = ~outside[sub]
    np.testing.assert_allclose(clip.flow[1][ok], f[sub][ok] / 2, atol=0.05)


def test_options_camera_and_flow(native, gt):
    opts = ConvertOptions(frame_format="png")
    opts.source_options = {"flow": False, "sky_depth": 3.0}  # type: ignore[attr-defined]
    (clip,) = _convert(native, opts)
    assert clip.flow is None
    invalid = gt.depth >= 3.0
    invalid[:, :SKY_ROWS] = True
    assert 0.2 < invalid.mean() < 0.95
    assert ((clip.depth == 0) != invalid).mean() < 1e-3  # only float16 rounding right at 3 m may differ
    opts.source_options = {"camera": "both"}  # type: ignore[attr-defined]
    with pytest.raises(SourceError, match="missing pose file") as e:
        _convert(native, opts)
    assert e.value.file.endswith("pose_right.txt")


def test_right_camera(native, gt):
    d = native / SEQ
    (d / "image_right").mkdir()
    (d / "depth_right").mkdir()
    for i in range(5):
        (d / "image_left" / f"{i:06d}_left.png").rename(d / "image_right" / f"{i:06d}_right.png")
        (d / "depth_left" / f"{i:06d}_left_depth.npy").rename(d / "depth_right" / f"{i:06d}_right_depth.npy")
    (d / "pose_right.txt").write_text((d / "pose_left.txt").read_text())
    opts = ConvertOptions(frame_format="png")
    opts.source_options = {"camera": "right"}  # type: ignore[attr-defined]
    (clip,) = _convert(native, opts)
    assert clip.key == "office-Easy-P000-right_000000" and clip.meta.extra["camera"] == "right"
    assert clip.flow is None and clip.depth is not None  # TartanAir ships flow for the left camera only
    np.testing.assert_allclose(clip.c2w, gt.c2w, atol=1e-9)
    np.testing.assert_array_equal(decode_frames(clip), gt.rgb)


def test_done_keys_skip_loading(native):
    opts = ConvertOptions(clip_length=2)
    opts.done_keys = frozenset({"office-Easy-P000_000000"})  # type: ignore[attr-defined]
    (native / SEQ / "image_left" / "000001_left.png").write_bytes(b"broken")  # only inside the done clip
    assert [c.key for c in _convert(native, opts)] == ["office-Easy-P000_000002"]


def test_bad_inputs_name_the_file(tmp_path, gt):
    d = write_trajectory(tmp_path, gt, SEQ)
    (d / "image_left" / "000003_left.png").unlink()
    with pytest.raises(SourceError, match="missing frame") as e:
        _convert(tmp_path)
    assert e.value.file == str(d / "image_left" / "000003_left.png")

    d = write_trajectory(tmp_path, gt, SEQ)
    depth = d / "depth_left" / "000002_left_depth.npy"
    depth.write_bytes(depth.read_bytes()[:1000])  # truncated
    with pytest.raises(SourceError, match="unreadable .npy") as e:
        _convert(tmp_path)
    assert e.value.file == str(depth)

    d = write_trajectory(tmp_path, gt, SEQ)
    np.save(d / "flow" / "000001_000002_flow.npy", np.zeros((480, 640), np.float32))  # wrong shape
    with pytest.raises(SourceError, match=r"expected shape \(480, 640, 2\)") as e:
        _convert(tmp_path)
    assert e.value.file.endswith("000001_000002_flow.npy")

    d = write_trajectory(tmp_path, gt, SEQ)
    Image.fromarray(gt.rgb[0][:, :320]).save(d / "image_left" / "000000_left.png")
    with pytest.raises(SourceError, match="expected 480x640 RGB"):
        _convert(tmp_path)

    d = write_trajectory(tmp_path, gt, SEQ)
    lines = (d / "pose_left.txt").read_text().splitlines()
    lines[2] = "nan " + " ".join(lines[2].split()[1:])
    (d / "pose_left.txt").write_text("\n".join(lines))
    with pytest.raises(SourceError, match=r"non-finite pose at line\(s\) \[3\]") as e:
        _convert(tmp_path)
    assert e.value.file == str(d / "pose_left.txt")


def test_no_official_split(tmp_path, gt):
    write_trajectory(tmp_path, gt, SEQ, flow=False)
    with pytest.raises(SourceError, match="no official splits"):
        tartanair.list_sequences(tmp_path, "test")
    write_trajectory(tmp_path / "test", gt, "office/Hard/P001", flow=False)
    assert tartanair.list_sequences(tmp_path, "test") == ["test/office/Hard/P001"]


def test_real_pose_file_conventions(real_fixtures):
    c2w = tartanair.read_poses(real_fixtures / "tartanair" / "pose_gt.txt", "sample")
    assert c2w.shape == (734, 4, 4)
    R = c2w[:, :3, :3]
    assert np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)).max() < 1e-6
    step = np.linalg.norm(np.diff(c2w[:, :3, 3], axis=0), axis=1)
    assert 0.15 < step.mean() < 0.2
    # NED z is down; after conversion the cameras' y axes (OpenCV down) point along world +y on average (this
    # trajectory rolls and pitches by up to about 45 degrees), and the first pose matches the file's own quaternion
    # with NED body x (forward) as the optical axis.
    assert c2w[:, 1, 1].mean() > 0.85 and c2w[:, 1, 1].min() > 0.6
    first = np.loadtxt(real_fixtures / "tartanair" / "pose_gt.txt", max_rows=1)
    ned_R = tartanair.quat_xyzw_to_matrix(first[3:])
    np.testing.assert_allclose(c2w[0, :3, 2], ned_R[[1, 2, 0], 0], atol=1e-9)  # optical axis = NED body x
    np.testing.assert_allclose(c2w[0, :3, 3], first[[1, 2, 0]], atol=1e-9)


def test_real_flow_reads_and_resizes(real_fixtures):
    root = real_fixtures / "tartanair"
    flow = tartanair.read_npy(root / "flow" / "000010_000009_flow.npy", "sample", (480, 640, 2), "f")
    f9 = np.asarray(Image.open(root / "image_left" / "000009_left.png").convert("RGB"), np.float64)
    f10 = np.asarray(Image.open(root / "image_left" / "000010_left.png").convert("RGB"), np.float64)

    def warp_error(flow, f9, f10):  # sample frame 9 at p + flow(p) for every pixel p of frame 10
        H, W = flow.shape[:2]
        u, v = np.meshgrid(np.arange(W), np.arange(H))
        x = np.clip(np.round(u + flow[..., 0]).astype(int), 0, W - 1)
        y = np.clip(np.round(v + flow[..., 1]).astype(int), 0, H - 1)
        return np.abs(f9[y, x] - f10).mean(), np.abs(f9 - f10).mean()

    warped, still = warp_error(flow, f9, f10)
    assert warped < still / 2.5
    half = tartanair.resize_flow(flow, (240, 320))
    warped_h, still_h = warp_error(half, f9[1::2, 1::2], f10[1::2, 1::2])
    assert warped_h < still_h / 1.8
    assert warp_error(flow[1::2, 1::2], f9[1::2, 1::2], f10[1::2, 1::2])[0] > warped_h * 1.3  # unscaled: worse
