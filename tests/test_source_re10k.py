"""RealEstate10K converter: native txt + frames (png/jpg folder, mp4 by index or by timestamp) -> clips."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from datamodules.sources import re10k
from datamodules.sources.base import ConvertOptions, SourceError
from datamodules.spec import decode_frames, validate_clip
from tests.native.re10k import write_clip
from tests.native.scene import make_scene

CLIP = "0123456789abcdef"


@pytest.fixture(scope="module")
def gt():
    return make_scene(num_frames=6, height=48, width=64, dynamic=False, seed=1)


def _convert(root: Path, opts: ConvertOptions | None = None, clip: str = CLIP):
    return list(re10k.convert_sequence(root, clip, opts or ConvertOptions(frame_format="png")))


def test_png_folder_recovers_ground_truth(tmp_path, gt):
    write_clip(tmp_path, gt, frames="png")
    assert re10k.list_sequences(tmp_path, "train") == [CLIP]
    (clip,) = _convert(tmp_path)
    validate_clip(clip, deep=True)
    assert clip.key == f"{CLIP}_000000"
    np.testing.assert_allclose(clip.c2w, gt.c2w, atol=1e-9)
    np.testing.assert_allclose(clip.fxfycxcy, gt.fxfycxcy, atol=1e-12)
    np.testing.assert_array_equal(decode_frames(clip), gt.rgb)
    np.testing.assert_allclose(clip.timestamps, np.arange(6) / 10.0, atol=1e-9)
    assert clip.meta.is_static and clip.meta.depth_unit == "arbitrary" and clip.meta.metric_scale == 1.0
    assert clip.meta.scale_source == "arbitrary"
    assert (clip.meta.depth_weight, clip.meta.motion_weight) == (0.1, 0.9)
    assert clip.depth is None and clip.meta.extra["url"].startswith("https://www.youtube.com/")


def test_jpg_folder_windows_and_resize(tmp_path, gt):
    write_clip(tmp_path, gt, frames="jpg")
    opts = ConvertOptions(clip_length=3, clip_step=2, max_side=32, frame_format="jpg")
    clips = _convert(tmp_path, opts)
    assert [c.key for c in clips] == [f"{CLIP}_000000", f"{CLIP}_000002"]
    assert clips[1].meta.extra["native_frames"] == [2, 3, 4]
    np.testing.assert_allclose(clips[1].c2w, gt.c2w[2:5], atol=1e-9)
    np.testing.assert_allclose(clips[1].fxfycxcy, gt.fxfycxcy[2:5], atol=1e-12)  # resizing keeps normalised K
    assert (clips[0].meta.height, clips[0].meta.width) == (24, 32)
    small = gt.rgb[2:5].reshape(3, 24, 2, 32, 2, 3).mean((2, 4))
    assert np.abs(decode_frames(clips[1]).astype(float) - small).mean() < 6


def test_video_by_index_cameractrl_layout(tmp_path, gt):
    # timestamps 100 s into the source video, but the mp4 holds exactly the 6 frames: aligned by index
    write_clip(tmp_path, gt, layout="cameractrl", frames="mp4", time_offset_us=100_000_000)
    assert re10k.list_sequences(tmp_path, "test") == [CLIP]
    (clip,) = _convert(tmp_path)
    rgb = decode_frames(clip).astype(float)
    err = np.abs(rgb[:, None] - gt.rgb[None].astype(float)).mean((2, 3, 4))  # (written, truth)
    np.testing.assert_array_equal(err.argmin(1), np.arange(6))
    assert err.diagonal().max() < 8  # H.264 yuv420 on a 64x48 checkerboard; other frames differ by ~60


def test_video_by_timestamp_picks_nearest_frames(tmp_path, gt):
    rows = [1, 2, 4, 5]
    write_clip(tmp_path, gt, frames="mp4", rows=rows)
    (clip,) = _convert(tmp_path)
    assert clip.num_frames == 4
    rgb = decode_frames(clip).astype(float)
    err = np.abs(rgb[:, None] - gt.rgb[None].astype(float)).mean((2, 3, 4))
    np.testing.assert_array_equal(err.argmin(1), rows)
    np.testing.assert_allclose(clip.c2w, gt.c2w[rows], atol=1e-9)
    # forcing index alignment on a video with more frames than rows is an error naming the video
    opts = ConvertOptions()
    opts.source_options = {"video_align": "index"}  # type: ignore[attr-defined]
    with pytest.raises(SourceError, match=r"has 6 frames, the pose file 4 rows") as e:
        _convert(tmp_path, opts)
    assert e.value.file.endswith(f"{CLIP}.mp4")


def test_bad_inputs_name_the_file(tmp_path, gt):
    txt = write_clip(tmp_path, gt, frames="png")
    frames = sorted((tmp_path / "train" / "frames" / CLIP).glob("*.png"))
    frames[3].unlink()
    with pytest.raises(SourceError, match="missing frame") as e:
        _convert(tmp_path)
    assert e.value.file == str(frames[3])

    write_clip(tmp_path, gt, frames="png")
    frames[2].write_bytes(frames[2].read_bytes()[:200])  # truncated PNG
    with pytest.raises(SourceError, match="unreadable image") as e:
        _convert(tmp_path)
    assert e.value.file == str(frames[2])

    write_clip(tmp_path, gt, frames="png")
    from PIL import Image

    Image.fromarray(gt.rgb[1][:40]).save(frames[1])  # wrong shape
    with pytest.raises(SourceError, match=r"frame 1 is \(40, 64, 3\)"):
        _convert(tmp_path)

    write_clip(tmp_path, gt, frames="png")
    lines = txt.read_text().splitlines()
    parts = lines[3].split()
    parts[10] = "nan"
    txt.write_text("\n".join([*lines[:3], " ".join(parts), *lines[4:]]))
    with pytest.raises(SourceError, match=r"non-finite pose at frame\(s\) \[2\]") as e:
        _convert(tmp_path)
    assert e.value.file == str(txt)

    txt.write_text("\n".join([*lines[:3], " ".join(lines[3].split()[:12])]))  # truncated row
    with pytest.raises(SourceError, match="line 4: expected 19 numbers, got 12"):
        _convert(tmp_path)

    video = tmp_path / "train" / "videos" / "fedcba9876543210.mp4"
    write_clip(tmp_path, gt, clip="fedcba9876543210", frames="mp4")
    video.write_bytes(video.read_bytes()[:300])  # truncated mp4
    with pytest.raises(SourceError) as e:
        _convert(tmp_path, clip="fedcba9876543210")
    assert e.value.file == str(video)


def test_real_fixture_frames_align_with_rows(real_fixtures):
    root = real_fixtures / "re10k"
    seqs = re10k.list_sequences(root, "train")
    assert len(seqs) == 5
    for seq in seqs:
        (clip,) = _convert(root, ConvertOptions(frame_format="png"), clip=seq)
        lines = (root / "pose_files" / f"{seq}.txt").read_text().split("\n")
        rows = np.array([[float(v) for v in ln.split()] for ln in lines[1:] if ln.strip()])
        assert clip.num_frames == len(rows) == 16
        w2c = np.tile(np.eye(4), (16, 1, 1))
        w2c[:, :3] = rows[:, 7:].reshape(16, 3, 4)
        np.testing.assert_allclose(clip.c2w @ w2c, np.tile(np.eye(4), (16, 1, 1)), atol=1e-6)
        np.testing.assert_array_equal(clip.fxfycxcy, rows[:, 1:5])
        np.testing.assert_array_equal(clip.timestamps, rows[:, 0] / 1e6)
        with av.open(str(root / "videos" / f"{seq}.mp4")) as c:
            video = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        np.testing.assert_array_equal(decode_frames(clip), video)  # frame i of the clip = decoded frame i
        assert (clip.meta.width, clip.meta.height) == (384, 256)
        validate_clip(clip)
