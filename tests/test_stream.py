"""Streaming pipeline: shard splitting over ranks/workers, mixture weights, augmentation geometry, corrupt data."""

from __future__ import annotations

import io
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datamodules.batch import check_batch, collate, finish_batch, to_float_images
from datamodules.spec import DATASET_DEFAULTS, Clip, ClipMeta, encode_clip, encode_frames
from datamodules.stream import ClipSamplingConfig, ClipStream, ClipTransform, DataSkipRateError, SourceConfig
from datamodules.write import ShardWriter, read_manifest
from diff4splat.geometry.cameras import project_points, unproject_depth

TINY = ClipSamplingConfig(num_input=2, num_output=2, resolution=16, size_divisor=8, random_aspect=False)


def tiny_clip(key: str, dataset: str = "pointodyssey", F: int = 4, H: int = 16, W: int = 16, seed: int = 0) -> Clip:
    """A small valid clip (cameras on a line looking down +z, constant depth, a few tracks)."""
    rng = np.random.default_rng(seed)
    c2w = np.tile(np.eye(4), (F, 1, 1))
    c2w[:, 0, 3] = np.linspace(0, 0.3, F)
    vis = np.ones((F, 3), bool)
    vis[0, 0] = False
    tracks = rng.uniform(-1, 1, (F, 3, 3)).astype(np.float32) + [0, 0, 4]
    tracks[~vis] = np.nan
    return Clip(
        key=key,
        frames=encode_frames(rng.integers(0, 255, (F, H, W, 3), dtype=np.uint8), fmt="png"),
        c2w=c2w,
        fxfycxcy=np.tile([1.0, 1.0, 0.5, 0.5], (F, 1)),
        timestamps=np.arange(F, dtype=np.float64),
        meta=ClipMeta.for_dataset(dataset, key),
        depth=np.full((F, H, W), 2.0, np.float32),
        tracks_world=tracks,
        tracks_visible=vis,
    )


def write_shards(folder: Path, dataset: str, num_shards: int, per_shard: int, **kw) -> list[str]:
    with ShardWriter(folder, source="test", maxcount=per_shard) as w:
        for i in range(num_shards * per_shard):
            w.write(tiny_clip(f"{dataset}{i:04d}", dataset, seed=i, **kw))
    return sorted(str(p) for p in folder.glob("train-*.tar"))


@pytest.mark.parametrize("augment_on", ["worker", "device"])
def test_ranks_and_workers_read_disjoint_shards_and_equal_batches(tmp_path, augment_on):
    write_shards(tmp_path, "pointodyssey", num_shards=8, per_shard=2)
    owner = {k: s["name"] for s in read_manifest(tmp_path)["shards"] for k in s["keys"]}
    src = SourceConfig("pointodyssey", str(tmp_path / "train-*.tar"), max_gap=4)
    shards_of: dict[tuple[int, int], set[str]] = {}
    counts = []
    sampling = replace(TINY, augment_on=augment_on)
    for rank in range(2):
        stream = ClipStream(
            [src], sampling, batch_size=2, batches_per_epoch=5, seed=3, shuffle_buffer=2, rank=rank, world_size=2
        )
        batches = list(DataLoader(stream, batch_size=None, num_workers=2))
        counts.append(len(batches))
        for i, b in enumerate(batches):  # in-order loader: batch i comes from worker i % 2
            check_batch(to_float_images(b))
            shards_of.setdefault((rank, i % 2), set()).update(owner[k.split("/")[1]] for k in b["key"])
    assert counts == [5, 5]
    slots = list(shards_of)
    assert len(slots) == 4
    for a in range(4):
        assert len(shards_of[slots[a]]) >= 1
        for b in range(a + 1, 4):
            assert not shards_of[slots[a]] & shards_of[slots[b]], (slots[a], slots[b])
    # each slot reads exactly its slice of the sorted shard list: shard index % 4 == rank * 2 + worker
    for (rank, worker), names in shards_of.items():
        assert {int(n[-10:-4]) % 4 for n in names} == {rank * 2 + worker}


def test_mixture_proportions_within_3_percent(tmp_path):
    weights = {"re10k": 0.5, "tartanair": 0.3, "spring": 0.2}
    sources = []
    for name, w in weights.items():
        write_shards(tmp_path / name, name, num_shards=2, per_shard=4, F=2, H=8, W=8)
        sources.append(SourceConfig(name, str(tmp_path / name / "train-*.tar"), weight=w, max_gap=2))
    cfg = ClipSamplingConfig(num_input=1, num_output=1, resolution=8, size_divisor=8, random_aspect=False)
    stream = ClipStream(sources, cfg, batch_size=50, batches_per_epoch=40, seed=0, shuffle_buffer=4)
    names = [d for b in stream for d in b["dataset"]]
    assert len(names) == 2000
    for name, w in weights.items():
        share = names.count(name) / len(names)
        assert abs(share - w) < 0.03, (name, share, w)


def _blob_image(uv: np.ndarray, H: int, W: int, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    img = np.zeros((H, W))
    for u, v in uv:
        img += np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * sigma**2))
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


@pytest.mark.parametrize("augment_on", ["worker", "device"])
@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_crop_resize_flip_keep_tracks_on_image_content(fmt, augment_on):
    """Project tracks before and after augmentation: the positions agree with the crop/resize/flip map (< 0.5 px),
    and the blobs drawn at the tracks in the source frames are found at the projected positions in the output.
    `augment_on="device"`: the images come from the batched augmentation (`finish_batch`, float32 resize)."""
    F, H, W, N = 3, 192, 256, 4
    rng = np.random.default_rng(0)
    c2w = np.tile(np.eye(4), (F, 1, 1))
    c2w[:, :3, 3] = [[0, 0, 0], [0.2, -0.1, 0.1], [0.4, 0.1, -0.1]]
    c2w[1:, :3, :3] = np.array([[0.995, 0, 0.0998], [0, 1, 0], [-0.0998, 0, 0.995]])  # ~5.7° yaw
    K = np.tile([0.9, 1.2, 0.52, 0.47], (F, 1))
    # tracks: points at known pixels of frame 0 lifted with depth 3..5, away from the borders
    uv0 = np.array([[0.4, 0.4], [0.6, 0.4], [0.4, 0.6], [0.6, 0.62]]) * [W, H] + rng.uniform(-2, 2, (N, 2))
    z = rng.uniform(3, 5, N)
    pts = np.stack([(uv0[:, 0] / W - K[0, 2]) / K[0, 0] * z, (uv0[:, 1] / H - K[0, 3]) / K[0, 1] * z, z], -1)
    tracks = np.repeat(pts[None], F, 0).astype(np.float32)
    proj = project_points(torch.from_numpy(tracks).double(), torch.from_numpy(c2w)[:, None], torch.from_numpy(K), H, W)
    uv_src = proj.uv.numpy()[:, 0] if proj.uv.dim() == 4 else proj.uv.numpy()
    frames = np.stack([np.repeat(_blob_image(uv_src[f], H, W, sigma=6.0)[..., None], 3, -1) for f in range(F)])
    clip = Clip(
        key="blobs",
        frames=encode_frames(frames, fmt=fmt, quality=100),
        c2w=c2w,
        fxfycxcy=K,
        timestamps=np.arange(F, dtype=float),
        meta=ClipMeta.for_dataset("pointodyssey", "blobs"),
        depth=np.full((F, H, W), 4.0, np.float32),
        tracks_world=tracks,
        tracks_visible=np.ones((F, N), bool),
    )
    cfg = ClipSamplingConfig(
        num_input=2,
        num_output=1,
        resolution=48,
        size_divisor=8,
        crop_scale=(0.77, 1.0),
        crop_position="random",
        random_aspect=True,
        aspect_range=(0.6, 1.6),
        flip_prob=0.5,
        include_input_prob=0.0,
        augment_on=augment_on,
    )
    transform = ClipTransform(cfg, train=True)
    src = SourceConfig("pointodyssey", "unused", max_gap=3)
    from datamodules.stream import batch_size_hw

    flips, errors, content = 0, [], []
    for seed in range(8):
        r = np.random.default_rng(seed)
        Ho, Wo = batch_size_hw(cfg, r)
        sample = transform({"__key__": "blobs", **encode_clip(clip)}, r, (Ho, Wo), src)
        top, left, ch, cw = sample["crop"]
        idx = sample["frame_indices"]
        p = project_points(
            sample["tracks_world"].double(), sample["c2w"].double()[:, None], sample["fxfycxcy"].double(), Ho, Wo
        ).uv
        p = p[:, 0] if p.dim() == 4 else p
        expected = np.stack([(uv_src[idx, :, 0] - left) * Wo / cw, (uv_src[idx, :, 1] - top) * Ho / ch], -1)
        if sample["flipped"]:
            flips += 1
            expected[..., 0] = Wo - expected[..., 0]
        errors.append(np.abs(p.numpy() - expected).max())
        if augment_on == "device":
            from datamodules.augment import augment_pixels

            images = augment_pixels(collate([sample], 2), float_resize=True)["images"][0] * 255
        else:
            images = sample["images"].float()
        img = images.mean(1).numpy()  # (F, Ho, Wo)
        for f in range(len(idx)):
            for n in range(N):
                u, v = expected[f, n]
                if 5 <= u <= Wo - 5 and 5 <= v <= Ho - 5:
                    content.append(np.linalg.norm(_centroid(img[f], expected[f, n], radius=4.0) - expected[f, n]))
    assert max(errors) < 0.5, errors
    assert max(errors) < 1e-3  # the geometry is exact; only the image content is approximate
    assert 1 <= flips <= 7
    assert len(content) >= 40
    assert max(content) < 0.5, max(content)


def _centroid(img: np.ndarray, at: np.ndarray, radius: float) -> np.ndarray:
    """Intensity centroid in a disc, re-centred a few times (mean shift) so the window does not bias it."""
    H, W = img.shape
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    c = np.asarray(at, float)
    for _ in range(5):
        w = img * (((xx - c[0]) ** 2 + (yy - c[1]) ** 2) <= radius**2)
        c = np.array([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()])
    return c


def _corrupt_shards(folder: Path) -> None:
    """4 shards × 3 clips; shard 1 loses c2w.npy of its 2nd clip; shard 2 is cut inside its 2nd clip."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(4):
        with tarfile.open(folder / f"train-{s:06d}.tar", "w") as tf:
            for i in range(3):
                members = encode_clip(tiny_clip(f"c{s}x{i}", seed=s * 3 + i))
                if s == 1 and i == 1:
                    del members["c2w.npy"]
                for suffix, data in members.items():
                    ti = tarfile.TarInfo(f"c{s}x{i}.{suffix}")
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))
    path = folder / "train-000002.tar"
    with tarfile.open(path) as tf:
        cut = next(m for m in tf.getmembers() if m.name == "c2x1.c2w.npy").offset_data + 10
    with open(path, "r+b") as f:
        f.truncate(cut)


def test_corrupt_samples_are_skipped_and_counted(tmp_path):
    _corrupt_shards(tmp_path)
    src = SourceConfig("pointodyssey", "unused", val_shards=str(tmp_path / "train-*.tar"), max_gap=4)
    # the validation stream reads the shards once in order: 12 clips, 1 missing a member, 1 cut off + the rest of
    # shard 2 (c2x2) lost
    stream = ClipStream([src], TINY, batch_size=1, batches_per_epoch=9, train=False, max_skip_rate=0.5)
    keys = [b["key"][0] for b in stream]
    assert len(keys) == 9  # the epoch completes
    assert keys == [
        f"pointodyssey/c{s}x{i}" for s, i in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (3, 0), (3, 1), (3, 2)]
    ]
    assert (stream.stats.good, stream.stats.skipped, stream.stats.shard_errors) == (9, 2, 1)
    assert any("'c2w'" in r for r in stream.stats.reasons)
    # a training stream (resampled) with a low tolerance stops with a clear error
    src_train = SourceConfig("pointodyssey", str(tmp_path / "train-*.tar"), max_gap=4)
    strict = ClipStream(
        [src_train],
        TINY,
        batch_size=4,
        batches_per_epoch=50,
        max_skip_rate=0.05,
        skip_rate_min_samples=20,
        shuffle_buffer=1,
    )
    with pytest.raises(DataSkipRateError, match="max_skip_rate"):
        for _ in strict:
            pass


def test_scale_normalisation_and_canonical_frame(tmp_path):
    write_shards(tmp_path, "pointodyssey", num_shards=1, per_shard=2)
    for mode in ("mean_depth", "mean_xyz"):
        cfg = ClipSamplingConfig(
            num_input=2, num_output=2, resolution=16, size_divisor=8, random_aspect=False, scale_norm=mode
        )
        src = SourceConfig("pointodyssey", str(tmp_path / "train-*.tar"), max_gap=4)
        b = next(iter(ClipStream([src], cfg, batch_size=2, batches_per_epoch=1)))
        check_batch(to_float_images(b))
        d, v = b["depth"][:, :2], b["depth_valid"][:, :2]
        if mode == "mean_depth":
            assert torch.allclose(d[v].reshape(2, -1).mean(1), torch.ones(2), atol=1e-5)
        else:
            pts = unproject_depth(d, b["c2w"][:, :2], b["fxfycxcy"][:, :2])
            assert torch.allclose(pts[v].norm(dim=-1).reshape(2, -1).mean(1), torch.ones(2), atol=1e-4)
        # metric cameras: translation / metric_scale; tiny_clip is metric (meta.metric_scale 1)
        ratio = b["c2w"][:, :, :3, 3] / b["metric_scale"][:, None, None]
        assert torch.allclose(ratio, b["metric_c2w"][:, :, :3, 3], atol=1e-5)
        assert torch.allclose(b["c2w"][:, 0], torch.eye(4).expand(2, 4, 4), atol=1e-6)


def test_datamodule_from_hydra_configs(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    for name in ("re10k", "tartanair", "matrixcity", "stereo4d", "dynamicreplica", "pointodyssey", "vkitti2", "spring"):
        write_shards(tmp_path / "shards" / name, name, num_shards=1, per_shard=2)
    conf = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose(config_name="data/mix_all").data
    cfg = OmegaConf.merge({"paths": {"data_root": str(tmp_path)}, "data": cfg})
    OmegaConf.resolve(cfg)
    data = cfg.data
    assert len(data.sources) == 8 and data.sources.spring.max_gap == 85 and data.sources.re10k.is_static
    assert data.sources.stereo4d.depth_weight == 0.2 and data.sources.vkitti2.motion_weight == 0.0
    data.num_workers, data.batches_per_epoch, data.batch_size, data.val_batches = 0, 3, 2, 0
    data.sampling.resolution, data.sampling.size_divisor = 16, 8
    data.sampling.num_input, data.sampling.num_output = 2, 2
    dm = instantiate(data, _recursive_=False)
    batches = [to_float_images(b) for b in dm.train_dataloader()]
    assert len(batches) == 3
    for b in batches:
        check_batch(b)
        for k, ds in zip(b["key"], b["dataset"], strict=True):
            assert k.startswith(ds + "/")
        ref = [DATASET_DEFAULTS[d] for d in b["dataset"]]
        assert b["depth_weight"].tolist() == pytest.approx([r.depth_weight for r in ref])
        assert b["motion_weight"].tolist() == pytest.approx([r.motion_weight for r in ref])
        assert b["is_static"].tolist() == [r.is_static for r in ref]
    assert {d for b in batches for d in b["dataset"]} <= set(data.sources)
    assert dm.state_dict() == {"next_epoch": 1}


def _bench_clip(seed: int = 0) -> Clip:
    """A 13-frame 256² synthetic clip as the data benchmark writes it (128² render, nearest 2× for depth/masks)."""
    from datamodules.synthetic import SyntheticConfig, generate_arrays

    a = generate_arrays(SyntheticConfig(num_frames=13, height=128, width=128), seed=seed)
    up = lambda x: np.repeat(np.repeat(x, 2, 1), 2, 2)  # noqa: E731
    return Clip(
        key=f"bench{seed}",
        frames=encode_frames(up(a["frames"]), quality=95),
        c2w=a["c2w"],
        fxfycxcy=a["fxfycxcy"],
        timestamps=a["timestamps"],
        meta=ClipMeta.for_dataset("synthetic", "b"),
        depth=up(a["depth"]),
        depth_valid=up(a["depth_valid"]),
        tracks_world=a["tracks_world"],
        tracks_visible=a["tracks_visible"],
        dynamic_mask=up(a["dynamic_mask"]),
    )


def test_subsampled_scene_scale_within_1_percent_of_exact():
    """The scene scale averages a regular subsample of the output pixels (13×256²: stride 5); the exact mean distance
    of the normalised points (`unproject_depth` in float64 over every valid pixel) stays within 1 % of 1, and the
    stride-1 path is exact."""
    from datamodules.augment import scale_sample_stride
    from datamodules.scene_unit import _depth_mean

    assert scale_sample_stride(13, 256, 256) == 5 and scale_sample_stride(2, 16, 16) == 1
    cfg = ClipSamplingConfig(
        num_input=13, num_output=1, include_input_prob=1.0, resolution=256, size_divisor=8, random_aspect=False
    )
    transform, src = ClipTransform(cfg, train=True), SourceConfig("synthetic", "unused", max_gap=13)
    errors = []
    for seed in range(3):
        sample = {"__key__": f"bench{seed}", **encode_clip(_bench_clip(seed))}
        b = transform(sample, np.random.default_rng(seed), (256, 256), src)
        d, v = b["depth"][:13].double(), b["depth_valid"][:13]
        c2w, K = b["c2w"][:13].double(), b["fxfycxcy"][:13].double()
        exact = unproject_depth(d, c2w, K)[v].norm(dim=-1).mean().item()
        errors.append(abs(exact - 1))
        assert _depth_mean(d.numpy(), v.numpy(), c2w, K, "mean_xyz", 1) == pytest.approx(exact, rel=1e-9)
        assert _depth_mean(d.numpy(), v.numpy(), c2w, K, "mean_depth", 1) == pytest.approx(d[v].mean().item())
    assert max(errors) < 0.01, errors
    assert 0 < max(errors)  # it is a subsample (not the exact path by accident)


@pytest.mark.parametrize("hw", [(16, 16), (48, 64), (40, 24)])
def test_pixel_maps_gather_equals_interpolate_nearest(hw):
    """Depth and masks are cropped and resized by one gather per frame: the same pixels as cropping and
    `interpolate(mode="nearest-exact")` (up- and downsampling), for float32, float16 and bool; validity is
    `depth > 0 & isfinite`, and invalid depth becomes 0, also for NaN, ±inf, -0 and subnormals."""
    import torch.nn.functional as tnf

    from datamodules.augment import _gather, _positive_finite, _zero_invalid
    from datamodules.transform import _crop_resize_index

    rng = np.random.default_rng(0)
    Fs, Hs, Ws = 5, 37, 45
    idx = np.array([3, 0, 3, 4])
    for top, left, ch, cw in [(0, 0, Hs, Ws), (5, 7, 20, 31), (1, 2, 36, 9)]:
        lin = _crop_resize_index(Ws, top, left, ch, cw, *hw)
        for dtype in (np.float32, np.float16, bool):
            a = rng.uniform(-1, 3, (Fs, Hs, Ws)).astype(dtype) if dtype is not bool else rng.random((Fs, Hs, Ws)) < 0.5
            ref = torch.from_numpy(a[idx, top : top + ch, left : left + cw].astype(np.float32))[:, None]
            ref = tnf.interpolate(ref, size=hw, mode="nearest-exact")[:, 0].numpy().astype(dtype)
            np.testing.assert_array_equal(_gather(a, idx, lin, None).reshape(len(idx), *hw), ref)
    special = np.array([1.5, 0.0, -0.0, -2.0, np.inf, -np.inf, np.nan, 1e-45, 3.4e38, -1e-45], np.float32)
    valid = np.empty(special.shape, bool)
    _positive_finite(special, valid, np.empty(special.shape, np.uint32))
    np.testing.assert_array_equal(valid, (special > 0) & np.isfinite(special))
    depth = special.copy()
    _zero_invalid(depth, valid, np.empty(special.shape, np.uint32))
    np.testing.assert_array_equal(depth, np.where(valid, special, 0).astype(np.float32))


def test_batch_buffers_give_the_same_batch_as_stacking():
    """Clips written in place into `BatchBuffers` (the stream's path) equal fresh per-clip tensors stacked by
    `collate`, field by field (flips and a depth-free clip included)."""
    from datamodules.batch import BatchBuffers, collate

    cfg = ClipSamplingConfig(
        num_input=2,
        num_output=3,
        resolution=32,
        size_divisor=8,
        random_aspect=False,
        flip_prob=0.5,
        crop_position="random",
    )
    transform, src = ClipTransform(cfg, train=True), SourceConfig("pointodyssey", "unused", max_gap=4)
    clips = [tiny_clip("a", H=24, W=40), tiny_clip("b", seed=1), tiny_clip("c", seed=2)]
    clips[1].dynamic_mask = np.random.default_rng(1).random((4, 16, 16)) < 0.3
    clips[1].depth_valid = np.random.default_rng(2).random((4, 16, 16)) < 0.8
    clips[2].depth = None
    for seed in range(4):
        buffers = BatchBuffers(len(clips), 5, 32, 32)
        a, b = [], []
        for i, c in enumerate(clips):
            sample = {"__key__": c.key, **encode_clip(c)}
            a.append(transform(sample, np.random.default_rng([seed, i]), (32, 32), src, buffers.slot(i)))
            b.append(transform(sample, np.random.default_rng([seed, i]), (32, 32), src))
        x, y = collate(a, 2, buffers=buffers), collate(b, 2)
        check_batch(to_float_images(dict(x)))
        for k, v in y.items():
            if torch.is_tensor(v):
                assert torch.equal(x[k].nan_to_num(7.0), v.nan_to_num(7.0)), k
            else:
                assert x[k] == v, k


def _mixed_clips() -> list[Clip]:
    """Clips of different native sizes, float16 and float32 depth, stored validity and dynamic masks, no depth."""
    a = tiny_clip("a", H=24, W=40)
    b = tiny_clip("b", seed=1, F=5)
    b.dynamic_mask = np.random.default_rng(1).random((5, 16, 16)) < 0.3
    b.depth = np.where(np.random.default_rng(3).random((5, 16, 16)) < 0.1, np.nan, 2.5).astype(np.float16)
    b.depth_valid = (np.random.default_rng(2).random((5, 16, 16)) < 0.8) & np.isfinite(b.depth)
    c = tiny_clip("c", seed=2, H=48, W=36)
    c.depth = None
    c.dynamic_mask = np.random.default_rng(4).random((4, 48, 36)) < 0.5
    t = tiny_clip("d", F=13, H=64, W=80, seed=5)  # JPEG frames (decoded at reduced scale when the crop allows)
    yy, xx = np.mgrid[0:64, 0:80]
    frames = np.stack([np.stack([xx * 3 + f * 7, yy * 4, xx + yy + 9 * f], -1) % 256 for f in range(13)])
    d = Clip(
        key="d",
        frames=encode_frames(frames.astype(np.uint8), quality=95),
        c2w=t.c2w,
        fxfycxcy=t.fxfycxcy,
        timestamps=t.timestamps,
        meta=ClipMeta.for_dataset("pointodyssey", "d"),
        depth=t.depth,
        depth_valid=np.random.default_rng(6).random((13, 64, 80)) < 0.9,
        tracks_world=t.tracks_world,
        tracks_visible=t.tracks_visible,
        dynamic_mask=np.random.default_rng(7).random((13, 64, 80)) < 0.2,
    )
    # sparse, varying depth (3 % valid: at 256² the scale subsample is too small and every pixel is used) seen by
    # rotating cameras, no tracks
    e = tiny_clip("e", seed=8, F=6, H=32, W=32)
    r = np.random.default_rng(8)
    yaw = np.linspace(0.0, 0.3, 6)
    e.c2w[:, 0, 0], e.c2w[:, 0, 2], e.c2w[:, 2, 0], e.c2w[:, 2, 2] = np.cos(yaw), np.sin(yaw), -np.sin(yaw), np.cos(yaw)
    e.c2w[:, 1, 3] = np.linspace(0.0, -0.2, 6)
    e.depth = r.uniform(1.0, 6.0, (6, 32, 32)).astype(np.float32)
    e.depth_valid = r.random((6, 32, 32)) < 0.03
    e.tracks_world = e.tracks_visible = None
    # no depth, no tracks: the scale comes from the cameras
    f = tiny_clip("f", seed=9, F=5, H=20, W=28)
    f.depth = f.tracks_world = f.tracks_visible = None
    return [a, b, c, d, e, f]


@pytest.mark.parametrize("out_hw", [(32, 32), (8, 16), (40, 24), (256, 256)])
def test_device_augmentation_equals_worker_path(out_hw):
    """`augment_on="device"` (workers send crops and indices, `finish_batch` resizes and scale-normalises batched)
    gives the worker path's batch for the same draws: clips of different native sizes in one batch (24×40, 16×16,
    48×36, 13 JPEG frames of 64×80, 32×32, 20×28), up- and downsampling, JPEG draft decoding, flips, repeated frames,
    float16 depth with NaN, stored validity, sparse depth (the scale's fallback to every pixel), dynamic masks, clips
    without depth (scale from tracks; from cameras), both scale modes. On the CPU every field is identical (the uint8
    resize kernel) except those the scene scale multiplies — c2w, tracks_world, depth, metric_scale —, which agree to
    float32 rounding (the device computes the same scale from the float32 cameras of the batch); with the float32
    resize that the GPU runs, images differ by the resampling arithmetic only: ≤ 1.5/255 (observed ≤ 1.0/255),
    ≤ 0.35/255 on average."""
    from datamodules.augment import augment_pixels

    base = ClipSamplingConfig(
        num_input=3,
        num_output=3,
        resolution=max(out_hw),
        size_divisor=8,
        random_aspect=False,
        flip_prob=0.5,
        crop_position="random",
        include_input_prob=0.5,
    )
    src = SourceConfig("pointodyssey", "unused", max_gap=13)
    raw = [{"__key__": c.key, **encode_clip(c)} for c in _mixed_clips()]
    flips = 0
    for seed, norm in ((0, "mean_xyz"), (1, "mean_xyz"), (2, "mean_depth")):
        batches = {}
        for mode in ("worker", "device", "device_float"):
            cfg = replace(base, augment_on=mode.removesuffix("_float"), scale_norm=norm)
            transform = ClipTransform(cfg, train=True)
            samples = [transform(r, np.random.default_rng([seed, i]), out_hw, src) for i, r in enumerate(raw)]
            flips += sum(s["flipped"] for s in samples) if mode == "worker" else 0
            b = collate(samples, 3)
            if mode == "device_float":
                augment_pixels(b, float_resize=True)
            batches[mode] = finish_batch(b)
            check_batch(batches[mode])
        ref = batches["worker"]
        assert set(ref) == set(batches["device"]) == set(batches["device_float"])
        for mode in ("device", "device_float"):
            for k, v in ref.items():
                x = batches[mode][k]
                if k == "images" and mode == "device_float":
                    diff = (x - v).abs()
                    assert diff.max() <= 1.5 / 255 and diff.mean() <= 0.35 / 255, (diff.max() * 255, diff.mean() * 255)
                elif k in ("c2w", "tracks_world", "depth", "metric_scale"):  # × the scene scale
                    assert v.dtype == x.dtype and torch.equal(v.isnan(), x.isnan()), (mode, k)
                    torch.testing.assert_close(x, v, rtol=3e-7, atol=1e-7, equal_nan=True, msg=(mode, k))
                elif torch.is_tensor(v):
                    assert v.dtype == x.dtype and torch.equal(v.nan_to_num(7.0), x.nan_to_num(7.0)), (mode, k)
                else:
                    assert x == v, (mode, k)
        assert ref["depth_valid"][0].any() and not ref["depth_valid"][2].any() and ref["dynamic_mask"][2].any()
        assert not ref["depth_valid"][5].any() and not ref["tracks_visible"][4:].any()
        # every clip was scaled: metric_scale = stored metric_scale (1 here) × s, s ≠ 1
        assert (ref["metric_scale"] - 1).abs().min() > 1e-3, ref["metric_scale"]
    assert 0 < flips < 18


def test_device_payload_stays_within_output_size_when_downsampling():
    """Along an axis that shrinks only the rows/columns the nearest resize reads leave the worker; along one that
    grows, the crop."""
    cfg = ClipSamplingConfig(
        num_input=2, num_output=1, resolution=16, size_divisor=8, random_aspect=False, augment_on="device"
    )
    clip = tiny_clip("a", H=24, W=40)
    sample = ClipTransform(cfg, train=False)(
        {"__key__": "a", **encode_clip(clip)},
        np.random.default_rng(0),
        (16, 8),
        SourceConfig("pointodyssey", "unused", max_gap=4),
    )
    px = sample["pixels"]
    top, left, ch, cw = sample["crop"]
    assert (ch, cw) == (24, 12)  # the centre crop of aspect 1/2
    assert tuple(px["images"].shape[1:]) == (24, 12, 3)  # the decoded crop (resized on the device)
    assert tuple(px["depth"].shape[1:]) == (16, 8)  # rows and columns picked by the nearest map only
    assert px["rows"].tolist() == list(range(16)) and px["cols"].tolist() == list(range(8))


def test_datamodule_device_augmentation_in_after_batch_transfer(tmp_path):
    """The DataModule option: batches leave the loader (2 workers) with "pixels" and satisfy the contract after
    `on_after_batch_transfer`; a typo in `augment_on` fails."""
    from datamodules.datamodule import ClipDataModule

    write_shards(tmp_path, "pointodyssey", num_shards=2, per_shard=2)
    sources = {"pointodyssey": {"shards": str(tmp_path / "train-*.tar"), "max_gap": 4}}
    sampling = {
        "num_input": 2,
        "num_output": 2,
        "resolution": 16,
        "size_divisor": 8,
        "random_aspect": False,
        "augment_on": "device",
    }
    dm = ClipDataModule(sources, sampling=sampling, batch_size=2, num_workers=2, batches_per_epoch=2)
    batches = list(dm.train_dataloader())
    assert len(batches) == 2 and all("pixels" in b and "images" not in b for b in batches)
    for b in batches:
        with pytest.raises(ValueError, match="finish_batch"):
            check_batch(b)
        b = dm.on_after_batch_transfer(b, 0)
        check_batch(b)
        assert b["images"].dtype == torch.float32 and b["images"].shape == (2, 4, 3, 16, 16)
    with pytest.raises(ValueError, match="augment_on"):
        ClipDataModule(sources, sampling={**sampling, "augment_on": "gpu"})


def test_a_bug_in_the_transform_is_not_counted_as_corrupt_data(tmp_path, monkeypatch):
    """Only data errors are skipped and counted: a programming error in decoding propagates at once."""
    write_shards(tmp_path, "pointodyssey", num_shards=1, per_shard=4)
    src = SourceConfig("pointodyssey", "unused", val_shards=str(tmp_path / "train-*.tar"), max_gap=4)
    stream = ClipStream([src], TINY, batch_size=1, batches_per_epoch=2, train=False, max_skip_rate=0.9)
    calls = [0]
    real = ClipStream._decode

    def buggy(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            raise AttributeError("'NoneType' object has no attribute 'shape'")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ClipStream, "_decode", buggy)
    with pytest.raises(AttributeError, match="no attribute 'shape'"):
        list(stream)
    assert stream.stats.skipped == 0
