"""Stereo4D converter: recovers the ground truth from a released-layout sample, and names the file of bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datamodules.sources import stereo4d
from datamodules.sources.base import ConvertOptions
from datamodules.spec import decode_frames, decode_video, validate_clip
from tests.native.checks import assert_valid_and_survives_encoding, convert_all
from tests.native.stereo4d import stereo4d_scene, write_stereo4d

F = 8
UIDS = ("abcDEF123_4004000", "zzTop_0")


@pytest.fixture(scope="module")
def scene():
    return stereo4d_scene(num_frames=F)


@pytest.fixture
def sample(tmp_path: Path, scene):
    paths = {uid: write_stereo4d(tmp_path, scene, "train", uid) for uid in UIDS}
    (tmp_path / "train" / "npz" / "noVideo_1.npz").write_bytes(paths[UIDS[0]][0].read_bytes())
    return tmp_path, paths


def _convert(root: Path, seq: str, max_tracks: int | None = None, **kw) -> list:
    opts = ConvertOptions(**kw)
    if max_tracks is not None:  # as `python -m datamodules.convert source=stereo4d max_tracks=...` passes it
        opts.source_options = {"max_tracks": max_tracks}
    return list(stereo4d.convert_sequence(root, seq, opts))


def _project(points: np.ndarray, c2w: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(F,N,3) world points -> (F,N,2) pixels with (F,3,3) pixel intrinsics."""
    w2c = np.linalg.inv(c2w)
    p = np.einsum("fij,fnj->fni", w2c[:, :3, :3], points) + w2c[:, None, :3, 3]
    q = np.einsum("fij,fnj->fni", K, p)
    return q[..., :2] / q[..., 2:]


def test_list_sequences(sample):
    root, _ = sample
    assert stereo4d.list_sequences(root, "train") == [f"train/{u}" for u in sorted(UIDS)]
    assert stereo4d.list_sequences(root, "test") == []


def test_recovers_ground_truth(sample, scene):
    root, paths = sample
    gt = scene
    (clip,) = _convert(root, f"train/{UIDS[0]}", clip_length=F, frame_format="png")
    assert_valid_and_survives_encoding(clip)
    assert clip.key == "train-abcDEF123_4004000_000000"
    assert (clip.meta.dataset, clip.meta.is_static, clip.meta.depth_weight, clip.meta.motion_weight) == (
        "stereo4d",
        False,
        0.2,
        0.2,
    )
    assert clip.meta.extra["video_id"] == "abcDEF123"
    np.testing.assert_allclose(clip.c2w, gt.c2w, atol=1e-5)
    fx = 0.5 / np.tan(np.deg2rad(30.0))
    np.testing.assert_allclose(clip.fxfycxcy, np.tile([fx, fx, 0.5, 0.5], (F, 1)), rtol=0, atol=1e-15)
    np.testing.assert_allclose(clip.timestamps, 4.004 + np.round(np.arange(F) * 1e6 / 30) / 1e6, atol=1e-9)
    # frames: exactly the decoded video (PNG out), which is the rendering within H.264 4:2:0 error, index-aligned
    frames = decode_frames(clip)
    np.testing.assert_array_equal(frames, decode_video(paths[UIDS[0]][1].read_bytes()))
    err = np.abs(frames[:, None].astype(float) - gt.rgb[None]).mean(axis=(2, 3, 4))  # (F, F)
    assert err.diagonal().max() < 5.0 and (err.argmin(axis=1) == np.arange(F)).all()
    # tracks: every ground-truth track that is visible somewhere, dense, NaN exactly where invisible
    seen = gt.tracks_visible.any(0)
    assert clip.tracks_world.shape == (F, seen.sum(), 3)
    np.testing.assert_array_equal(clip.tracks_visible, gt.tracks_visible[:, seen])
    vis = clip.tracks_visible
    np.testing.assert_allclose(clip.tracks_world[vis], gt.tracks_world[:, seen][vis], atol=1e-5)
    # projected with the converter's cameras they land where the ground truth cameras see them
    H, W = gt.shape[1:]
    K = np.zeros((F, 3, 3))
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = (clip.fxfycxcy * [W, H, W, H]).T.tolist() + [1]
    uv = _project(np.nan_to_num(clip.tracks_world.astype(np.float64)), clip.c2w, K)
    uv_gt = _project(gt.tracks_world[:, seen], gt.c2w, gt.K)
    assert np.abs(uv - uv_gt)[vis].max() < 0.5
    # sparse depth: each visible track's pixel (under the converter's cameras) holds the smallest z landing there
    w2c = np.linalg.inv(gt.c2w)
    z = (np.einsum("fij,fnj->fni", w2c[:, :3, :3], gt.tracks_world[:, seen]) + w2c[:, None, :3, 3])[..., 2]
    expected = np.full((F, H, W), np.inf)
    f_idx, n_idx = np.nonzero(vis)
    cols, rows = np.floor(uv[f_idx, n_idx].T).astype(int)
    np.minimum.at(expected, (f_idx, rows, cols), z[f_idx, n_idx])
    np.testing.assert_array_equal(clip.depth_valid, np.isfinite(expected))
    np.testing.assert_allclose(clip.depth[clip.depth_valid], expected[np.isfinite(expected)], rtol=1e-5)
    assert clip.depth_valid.sum() >= 0.8 * gt.tracks_visible.sum()


def test_track_subsampling_is_deterministic(sample, scene):
    root, _ = sample
    (full,) = _convert(root, f"train/{UIDS[0]}", clip_length=F)
    (a,) = _convert(root, f"train/{UIDS[0]}", clip_length=F, max_tracks=7)
    (b,) = _convert(root, f"train/{UIDS[0]}", clip_length=F, max_tracks=7)
    validate_clip(a)
    assert a.tracks_world.shape == (F, 7, 3) and a.meta.extra["num_tracks_visible"] == full.tracks_world.shape[1]
    np.testing.assert_array_equal(a.tracks_world, b.tracks_world)
    cols = [
        int(np.nonzero((np.nan_to_num(full.tracks_world) == np.nan_to_num(a.tracks_world[:, [k]])).all((0, 2)))[0][0])
        for k in range(7)
    ]
    assert cols == sorted(cols) and len(set(cols)) == 7  # a subset, in native order
    np.testing.assert_array_equal(a.depth, full.depth)  # depth uses every visible track


def test_windows_and_resize(sample, scene):
    root, _ = sample
    clips = _convert(root, f"train/{UIDS[1]}", clip_length=4, max_side=32)
    assert [c.key for c in clips] == ["train-zzTop_0_000000", "train-zzTop_0_000004"]
    for k, c in enumerate(clips):
        validate_clip(c)
        assert c.depth.shape == (4, 32, 32) and (c.meta.height, c.meta.width) == (32, 32)
        np.testing.assert_allclose(c.c2w, scene.c2w[4 * k : 4 * k + 4], atol=1e-5)
        vis = scene.tracks_visible[4 * k : 4 * k + 4]
        assert c.tracks_visible.sum() == vis.sum()  # only tracks seen in this window, all their entries


def _break(root: Path, paths: dict, how: str) -> Path:
    npz, video = paths[UIDS[0]]
    data = dict(np.load(npz))
    if how == "missing_video":
        video.unlink()
        return video
    if how == "truncated_video":
        video.write_bytes(video.read_bytes()[:300])
        return video
    if how == "frame_count":
        data["timestamps"] = np.concatenate([data["timestamps"], data["timestamps"][-1:] + 1])
        data["camera2world"] = np.concatenate([data["camera2world"], data["camera2world"][-1:]])
        np.savez(npz, **data)
        return video
    if how == "truncated_npz":
        npz.write_bytes(npz.read_bytes()[:200])
    elif how == "nan_pose":
        data["camera2world"][3, 0, 3] = np.nan
        np.savez(npz, **data)
    elif how == "wrong_shape":
        data["camera2world"] = data["camera2world"][:, :, :3]
        np.savez(npz, **data)
    elif how == "ragged_mismatch":
        data["track_lengths"][0] += 1
        np.savez(npz, **data)
    return npz


@pytest.mark.parametrize(
    "how",
    ["missing_video", "truncated_video", "frame_count", "truncated_npz", "nan_pose", "wrong_shape", "ragged_mismatch"],
)
def test_bad_input_names_file_and_others_convert(sample, how):
    root, paths = sample
    bad = _break(root, paths, how)
    converted, errors = convert_all(stereo4d, root, ConvertOptions(clip_length=F))
    assert list(errors) == [f"train/{UIDS[0]}"] and errors[f"train/{UIDS[0]}"].file == str(bad)
    assert list(converted) == [f"train/{UIDS[1]}"] and len(converted[f"train/{UIDS[1]}"]) == 1


def test_done_keys_skip_decoding(sample):
    root, paths = sample
    opts = ConvertOptions(clip_length=4)
    opts.done_keys = frozenset({f"train-{UIDS[0]}_000000"})  # as `python -m datamodules.convert` resumes
    (clip,) = stereo4d.convert_sequence(root, f"train/{UIDS[0]}", opts)
    assert clip.key == f"train-{UIDS[0]}_000004"
    opts.done_keys = frozenset({f"train-{UIDS[0]}_000000", f"train-{UIDS[0]}_000004"})
    paths[UIDS[0]][1].unlink()  # a finished sequence does not need its video again
    assert list(stereo4d.convert_sequence(root, f"train/{UIDS[0]}", opts)) == []
