"""Clip schema and shard writer: round trip, validator errors, atomic and resumable writing."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from datamodules.spec import Clip, ClipMeta, SpecError, decode_frames, decode_sample, encode_frames, validate_clip
from datamodules.write import ShardWriter, read_manifest


def toy_clip(key: str = "seq0_000000", F: int = 4, H: int = 12, W: int = 16, N: int = 5, seed: int = 0, fmt="png"):
    """A small valid clip with every optional field."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 255, (F, H, W, 3), dtype=np.uint8)
    c2w = np.tile(np.eye(4), (F, 1, 1))
    c2w[:, :3, 3] = rng.normal(size=(F, 3))
    th = rng.uniform(-0.3, 0.3, F)
    c2w[:, 0, 0], c2w[:, 0, 2], c2w[:, 2, 0], c2w[:, 2, 2] = np.cos(th), np.sin(th), -np.sin(th), np.cos(th)
    depth = rng.uniform(1, 5, (F, H, W)).astype(np.float32)
    valid = rng.random((F, H, W)) > 0.2
    vis = rng.random((F, N)) > 0.3
    tracks = rng.normal(size=(F, N, 3)).astype(np.float32)
    tracks[~vis] = np.nan
    return Clip(
        key=key,
        frames=encode_frames(rgb, fmt=fmt),
        c2w=c2w,
        fxfycxcy=np.tile([0.8, 1.0, 0.5, 0.5], (F, 1)),
        timestamps=np.arange(F) / 10.0,
        meta=ClipMeta.for_dataset("pointodyssey", "seq0"),
        depth=depth,
        depth_valid=valid,
        tracks_world=tracks,
        tracks_visible=vis,
        flow=rng.normal(size=(F, H, W, 2)).astype(np.float16),
        dynamic_mask=rng.random((F, H, W)) > 0.5,
    ), rgb


def read_tar(path):
    """{key: {suffix: bytes}} of a shard, in member order."""
    out: dict = {}
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            key, suffix = m.name.split(".", 1)
            out.setdefault(key, {"__key__": key})[suffix] = tf.extractfile(m).read()
    return out


def test_round_trip_identical_arrays(tmp_path):
    clips = [toy_clip(f"seq{i}_000000", seed=i) for i in range(5)]
    with ShardWriter(tmp_path, source="test", maxcount=2) as w:
        for c, _ in clips:
            assert w.write(c)
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == [
        "train-000000.tar",
        "train-000001.tar",
        "train-000002.tar",
    ]
    samples = {}
    for p in sorted(tmp_path.glob("*.tar")):
        samples.update(read_tar(p))
    assert len(samples) == 5
    for c, rgb in clips:
        back = decode_sample(samples[c.key])
        for name, a in c.arrays().items():
            b = getattr(back, name)
            assert b.dtype == a.dtype and b.shape == a.shape, name
            np.testing.assert_array_equal(b, a, err_msg=name)  # NaNs compare equal here
        np.testing.assert_array_equal(decode_frames(back), rgb)  # PNG is lossless
        assert back.meta == c.meta
    m = read_manifest(tmp_path)
    assert m["splits"]["train"] == {
        "shards": 3,
        "clips": 5,
        "frames": 20,
        "bytes": m["splits"]["train"]["bytes"],
        "datasets": {"pointodyssey": 5},
    }
    assert [s["clips"] for s in m["shards"]] == [2, 2, 1]
    assert m["sources"] == ["test"]


def test_jpeg_frames_decode_close(tmp_path):
    c, rgb = toy_clip(fmt="jpg", H=32, W=32)
    yy, xx = np.mgrid[0:32, 0:32]
    rgb_smooth = np.stack([xx * 6, yy * 6, (xx + yy) * 3], -1)[None].repeat(4, 0).astype(np.uint8)
    c.frames = encode_frames(rgb_smooth, quality=98)
    back = decode_frames(c)
    assert back.shape == (4, 32, 32, 3)
    assert np.abs(back.astype(int) - rgb_smooth).mean() < 1.5


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda c: setattr(c, "c2w", c.c2w[:, :3]), "c2w"),
        (lambda c: c.c2w.__setitem__((1, 0, 0), 5.0), "c2w"),
        (lambda c: setattr(c, "fxfycxcy", -c.fxfycxcy), "fxfycxcy"),
        (lambda c: setattr(c, "timestamps", c.timestamps[::-1].copy()), "timestamps"),
        (lambda c: setattr(c, "depth", c.depth[:, :-1]), "depth"),
        (
            lambda c: c.tracks_world.__setitem__((0, 0), np.nan) or c.tracks_visible.__setitem__((0, 0), True),
            "tracks_world",
        ),
        (lambda c: setattr(c, "tracks_visible", None), "tracks_visible"),
        (lambda c: setattr(c, "dynamic_mask", c.dynamic_mask.astype(np.uint8)), "dynamic_mask"),
        (lambda c: setattr(c, "frames", c.frames[:-1]), "frames"),
        (lambda c: setattr(c, "key", "bad.key"), "key"),
        (lambda c: setattr(c.meta, "depth_weight", -1.0), "meta.depth_weight"),
    ],
)
def test_validator_names_field(mutate, field):
    c, _ = toy_clip()
    validate_clip(c)
    mutate(c)
    with pytest.raises(SpecError) as e:
        validate_clip(c)
    assert e.value.field == field
    assert e.value.key == c.key
    assert repr(field) in str(e.value)


def test_reader_errors_name_field():
    c, _ = toy_clip()
    from datamodules.spec import encode_clip

    members = {"__key__": c.key, **encode_clip(c)}
    del members["c2w.npy"]
    with pytest.raises(SpecError, match="'c2w'"):
        decode_sample(members)
    members = {"__key__": c.key, **encode_clip(c)}
    meta = json.loads(members["meta.json"])
    meta["bogus"] = 1
    members["meta.json"] = json.dumps(meta).encode()
    with pytest.raises(SpecError, match="unknown keys"):
        decode_sample(members)


def test_writer_resumes_and_skips_finished(tmp_path):
    clips = [toy_clip(f"seq{i}_000000", seed=i)[0] for i in range(7)]
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, source="test", maxcount=3) as w:
            for c in clips[:5]:
                w.write(c)
            raise RuntimeError("converter crashed")
    # the finished shard survives; the open one was dropped and no temporary file is left
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".manifest")) == [
        "manifest.json",
        "train-000000.tar",
    ]
    with ShardWriter(tmp_path, source="test", maxcount=3) as w:
        assert w.is_done("seq0_000000") and not w.is_done("seq3_000000")
        written = [w.write(c) for c in clips]
    assert written == [False] * 3 + [True] * 4
    m = read_manifest(tmp_path)
    assert [s["name"] for s in m["shards"]] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert [s["keys"] for s in m["shards"]][1] == ["seq3_000000", "seq4_000000", "seq5_000000"]
    assert m["splits"]["train"]["clips"] == 7


def test_writer_rejects_invalid_clip_and_maxsize(tmp_path):
    c, _ = toy_clip()
    c.c2w = c.c2w.copy()
    c.c2w[0, 3, 3] = 2.0
    with ShardWriter(tmp_path, source="test") as w, pytest.raises(SpecError, match="'c2w'"):
        w.write(c)
    clips = [toy_clip(f"s{i}", seed=i)[0] for i in range(4)]
    with ShardWriter(tmp_path / "b", source="test", split="val", maxsize=1) as w:
        for c in clips:
            w.write(c)
    assert len(list((tmp_path / "b").glob("val-*.tar"))) == 4


@pytest.mark.parametrize("fmt", ["baseline", "progressive", "exif", "gray", "png"])
def test_image_size_reads_headers_like_pil(fmt):
    """`image_size` parses the JPEG start-of-frame / PNG IHDR itself; it must agree with PIL on every layout."""
    import io

    from PIL import Image

    from datamodules.frame_codec import image_size

    a = np.random.default_rng(0).integers(0, 255, (37, 53, 3), np.uint8)
    im = Image.fromarray(a[..., 0] if fmt == "gray" else a)
    buf = io.BytesIO()
    if fmt == "png":
        im.save(buf, "PNG")
    else:
        im.save(
            buf,
            "JPEG",
            progressive=fmt == "progressive",
            exif=b"Exif\x00\x00" + b"\x00" * 300 if fmt == "exif" else b"",
        )
    data = buf.getvalue()
    assert image_size(data) == Image.open(io.BytesIO(data)).size == (53, 37)


@pytest.mark.parametrize("width", [16, 48, 64])
def test_mp4_frames_decode_at_narrow_widths_and_truncated_bytes_fail(width):
    """decord cannot copy out frames 16 or 48 pixels wide (its row alignment); those decode through PyAV instead,
    close to what was encoded, and bytes that are no mp4 still fail as one ValueError."""
    from datamodules.frame_codec import decode_video, encode_video

    y, x = np.mgrid[0:32, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // 32, (x // 8 + y // 8) % 2 * 60 + 90], -1).astype(np.uint8)
    frames = np.repeat(rgb[None], 5, 0)
    mp4 = encode_video(frames)
    out = decode_video(mp4)
    assert out.shape == frames.shape and np.abs(out.astype(int) - frames).mean() < 6
    assert np.array_equal(decode_video(mp4, [4, 1]), out[[4, 1]])
    with pytest.raises(ValueError, match="unreadable mp4"):
        decode_video(mp4[: len(mp4) // 2])
