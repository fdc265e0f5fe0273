"""Text and latent data path of camera-controlled diffusion: the UMT5 text encoder (tiny, tokenizer trained on the fly,
loaded from disk like the real one), the prompt cache, `encode_text` / `encode_latents` on procedural clip shards with
captions, and `LatentDataModule` batches."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as tnf

from datamodules.spec import decode_frames
from datamodules.synthetic import SyntheticConfig, generate_clip
from datamodules.write import ShardWriter
from diff4splat.models.text import NEGATIVE_PROMPT, PromptCache, TextEncoder, pad_prompt_embeds
from diff4splat.models.wan_vae import WanVAE

CAPTIONS = ["a drone flies over a lake", "", "coloured blobs &amp;amp; a  textured\n wall"]
PROMPTS = ["a drone flies over a lake", "", NEGATIVE_PROMPT, "  close up of   coloured\tblobs &amp; a wall  "]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("umt5")
    TextEncoder.tiny(folder, seed=0)
    return folder


@pytest.fixture(scope="module")
def encoder(encoder_dir) -> TextEncoder:
    return TextEncoder.from_pretrained(encoder_dir)


@pytest.fixture(scope="module")
def clips():
    """Procedural 64×64 clips with captions: 9, 9, 13 and 5 frames (the last is too short for a 9-frame window)."""
    out = []
    for i, n in enumerate([9, 9, 13, 5]):
        cfg = SyntheticConfig(num_frames=n, height=64, width=64, num_blobs=2, num_rigid=1, ground_grid=8, wall_grid=8)
        clip = generate_clip(cfg, seed=i, key=f"clip{i}")
        clip.meta.caption = CAPTIONS[i % 3]
        clip.meta.metric_scale = 0.5 if i % 2 else 2.0  # stored translations = metres × metric_scale
        out.append(clip)
    return out


@pytest.fixture(scope="module")
def clip_shards(tmp_path_factory, clips) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    with ShardWriter(folder, source="test", maxcount=2) as writer:
        for clip in clips:
            writer.write(clip)
    return folder


# ------------------------------------------------------------------------------------------------------ encoder


def test_encode_matches_diffusers_and_is_zero_beyond_each_prompt(encoder):
    from diffusers.pipelines.wan.pipeline_wan import WanPipeline

    emb = encoder.encode(PROMPTS)
    assert emb.shape == (4, 512, 32) and emb.dtype == torch.float32
    _, mask = encoder.tokenize(PROMPTS)
    lengths = mask.sum(1).tolist()
    assert lengths[1] == 1 and lengths[2] > lengths[0] > 1  # "" is the EOS token alone
    for i, n in enumerate(lengths):
        assert torch.equal(emb[i, n:], torch.zeros_like(emb[i, n:]))
        assert bool((emb[i, :n].abs().sum(-1) > 0).all())
        alone = encoder.encode_unpadded([PROMPTS[i]])[0]  # encoded without the other prompts' padding
        assert alone.shape == (n, 32)
        torch.testing.assert_close(alone, emb[i, :n], atol=1e-5, rtol=1e-5)
    # diffusers' own implementation on the same tokenizer and weights (ftfy is not installed here, as in ours)
    pipe = types.SimpleNamespace(tokenizer=encoder.tokenizer, text_encoder=encoder.encoder, _execution_device="cpu")
    ref = WanPipeline._get_t5_prompt_embeds(pipe, PROMPTS, max_sequence_length=512)
    torch.testing.assert_close(emb, ref, atol=0, rtol=0)
    # prompt cleaning: HTML entities and whitespace runs do not change the embedding
    torch.testing.assert_close(encoder.encode(["close up of coloured blobs & a wall"])[0], emb[3], atol=0, rtol=0)


def test_tiny_encoders_built_alike_are_identical(tmp_path, encoder):
    """Two tiny encoders of one seed tokenize and embed alike (the tokenizer is built, not trained: tokenizers'
    UnigramTrainer gave a different vocabulary per run, so offloaded and resident tiny pipelines disagreed)."""
    other = TextEncoder.tiny(tmp_path / "again", seed=0)
    assert other.tokenizer.get_vocab() == encoder.tokenizer.get_vocab()
    ids, _ = other.tokenize(PROMPTS)
    assert torch.equal(ids, encoder.tokenize(PROMPTS)[0])
    assert (ids[2] == 2).sum() == 0  # the negative prompt's characters are all in the vocabulary (no <unk>)
    torch.testing.assert_close(other.encode(PROMPTS), encoder.encode(PROMPTS), rtol=0, atol=0)


def test_loading_errors_name_the_folder(tmp_path, encoder_dir):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        TextEncoder.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no loadable tokenizer in .*text_encoder"):
        TextEncoder.from_pretrained(encoder_dir / "text_encoder")
    both = tmp_path / "both"  # one folder with the encoder and the tokenizer files
    shutil.copytree(encoder_dir / "text_encoder", both)
    shutil.copytree(encoder_dir / "tokenizer", both, dirs_exist_ok=True)
    one = TextEncoder.from_pretrained(both, dtype="bf16")
    assert one.dtype == torch.bfloat16 and one.encode(["a lake"]).dtype == torch.bfloat16
    other = TextEncoder.tiny(tmp_path / "other", seed=1)
    assert other.identity != one.identity


# ------------------------------------------------------------------------------------------------------ cache


def test_prompt_cache_round_trip_and_fill_encodes_only_missing(tmp_path, encoder):
    cache = PromptCache(tmp_path / "cache")
    assert cache.fill(encoder, PROMPTS[:2]) == 2
    assert cache.fill(encoder, PROMPTS + PROMPTS[:1], batch_size=2) == 2  # two new, one duplicate
    assert cache.fill(encoder, PROMPTS) == 0
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")) == []  # no temp files
    reader = PromptCache(tmp_path / "cache")  # encoder id from encoders.json
    assert reader.encoder_id == encoder.identity
    padded = encoder.encode(PROMPTS)
    rows = [reader.load(p) for p in PROMPTS]
    for r, p in zip(rows, padded, strict=True):
        assert r.dtype == torch.bfloat16
        torch.testing.assert_close(r.float(), p[: len(r)].to(torch.bfloat16).float(), atol=0, rtol=0)
    torch.testing.assert_close(pad_prompt_embeds(rows).float(), padded.to(torch.bfloat16).float(), atol=0, rtol=0)
    assert pad_prompt_embeds(rows, max_len=4).shape == (4, 4, 32)  # truncated
    # exact round trip of what was saved
    x = torch.randn(7, 32).to(torch.bfloat16)
    reader.save("exact", x)
    assert torch.equal(reader.load("exact"), x)
    # different encoders never share keys
    assert PromptCache(tmp_path / "cache", encoder_id="other").key("exact") != reader.key("exact")
    with pytest.raises(KeyError, match=r"cache.*cache: no embedding of prompt 'never cached'"):
        reader.load("never cached")


# ------------------------------------------------------------------------------------------------------ CLIs


def test_encode_text_cli_fills_cache_from_shards_and_caption_file(tmp_path, clip_shards, encoder_dir, encoder):
    from datamodules.encode_text import main

    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"seqA": {"short": "a lake", "long": "a long caption of a lake"}}))
    cache_dir = tmp_path / "cache"
    args = ["--shards", str(clip_shards), "--encoder", str(encoder_dir), "--cache", str(cache_dir)]
    assert main([*args, "--captions", str(captions), "--caption-field", "long", "--batch-size", "2"]) == 0
    cache = PromptCache(cache_dir)
    expected = {CAPTIONS[0], CAPTIONS[2], "", NEGATIVE_PROMPT, "a long caption of a lake"}
    assert len(list(cache_dir.glob("*.safetensors"))) == len(expected)
    for p in expected:
        torch.testing.assert_close(cache.load(p).float(), encoder.encode_unpadded([p])[0].bfloat16().float())
    assert main([*args, "--no-negative"]) == 0  # all cached: nothing new
    assert len(list(cache_dir.glob("*.safetensors"))) == len(expected)


def test_encode_text_bad_input_names_file_and_field(tmp_path, encoder_dir, capsys):
    from datamodules.encode_text import main

    bad = tmp_path / "captions.json"
    args = ["--encoder", str(encoder_dir), "--cache", str(tmp_path / "cache"), "--captions", str(bad)]
    bad.write_text(json.dumps({"seqA": {"short": "x"}}))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "'seqA'" in err and "--caption-field" in err
    bad.write_text(json.dumps({"seqA": 3}))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "'seqA'" in err and "string" in err
    bad.write_text("[1, 2")
    assert main(args) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def _direct_windows(clip, height: int, width: int, vae: WanVAE) -> torch.Tensor:
    """The first 9 frames of a 64×64 clip, centre-cropped to the aspect and resized by hand, encoded directly."""
    rgb = torch.from_numpy(decode_frames(clip, list(range(9)))).permute(0, 3, 1, 2).float() / 255
    if width / height > 1:  # crop rows
        ch = round(64 * height / width)
        rgb = rgb[:, :, (64 - ch) // 2 : (64 - ch) // 2 + ch]
    rgb = tnf.interpolate(rgb, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return vae.encode(rgb.clamp(0, 1)[None])[0]


def _members(folder: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    for tar in sorted(folder.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for ti in tf:
                key, _, suffix = ti.name.partition(".")
                out.setdefault(key, {})[suffix] = tf.extractfile(ti).read()
    return out


@pytest.fixture(scope="module")
def latent_shards(tmp_path_factory, clip_shards) -> Path:
    from datamodules.encode_latents import main

    out = tmp_path_factory.mktemp("latents")
    argv = [
        "--shards",
        str(clip_shards),
        "--out",
        str(out),
        "--vae",
        "tiny",
        "--num-frames",
        "9",
        "--height",
        "32",
        "--width",
        "64",
        "--dtype",
        "fp32",
        "--batch-size",
        "2",
        "--maxcount",
        "2",
    ]
    assert main(argv) == 0
    return out


def _scene_unit(clip, frames: list[int]) -> float:
    """1 / the mean distance from the first frame's camera of every valid depth point of `frames` (full frames,
    unsubsampled: `normalize_scene_scale`), the unit `encode_latents --pose-scale scene` targets."""
    from diff4splat.geometry.cameras import canonicalize, normalize_scene_scale

    c2w = canonicalize(torch.from_numpy(np.asarray(clip.c2w, np.float64)[frames]))
    depth = torch.from_numpy(np.asarray(clip.depth, np.float64)[frames])
    K = torch.from_numpy(np.asarray(clip.fxfycxcy, np.float64)[frames])
    return float(normalize_scene_scale(c2w, depth, K, torch.from_numpy(clip.depth_valid[frames]))[2])


def test_encode_latents_cli_matches_direct_encode_and_scene_cameras(latent_shards, clips):
    from datamodules.latents import LatentMeta, read_latent_manifest

    vae = WanVAE.tiny()
    samples = _members(latent_shards)
    assert sorted(samples) == ["clip0_f000000", "clip1_f000000", "clip2_f000000"]  # clip3 (5 frames) skipped
    manifest = read_latent_manifest(latent_shards)
    assert manifest["splits"]["train"]["samples"] == 3 and len(manifest["shards"]) == 2
    assert not [p for p in os.listdir(latent_shards) if ".tmp" in p]
    for i, clip in enumerate(clips[:3]):
        s = samples[f"clip{i}_f000000"]
        z = np.load(io.BytesIO(s["latents.npy"]))
        assert z.dtype == np.float16 and z.shape == (48, 3, 2, 4)
        ref = _direct_windows(clip, 32, 64, vae).numpy()
        np.testing.assert_allclose(z.astype(np.float32), ref, atol=2e-3 * max(1.0, np.abs(ref).max()), rtol=1e-3)
        c2w = np.load(io.BytesIO(s["c2w.npy"]))
        np.testing.assert_allclose(c2w[0], np.eye(4), atol=1e-6)
        src = clip.c2w[:9]
        rel = np.linalg.inv(src[0]) @ src  # canonical in stored units
        np.testing.assert_allclose(c2w[:, :3, :3], rel[:, :3, :3], atol=1e-5)
        meta = LatentMeta.from_json(s["meta.json"])
        # scene units: the mean distance of frames 0, 2, .., 8's depth points from camera 0 is 1 (the subsampled
        # mean of the encoder within 1 % of the exact one), whatever the clip's metric_scale
        unit = _scene_unit(clip, [0, 2, 4, 6, 8])
        assert (meta.pose_scale, meta.scale_source, meta.scale_method) == ("scene", "metric", "depth")
        assert meta.scene_scale == pytest.approx(unit, rel=1e-2)
        np.testing.assert_allclose(c2w[:, :3, 3], rel[:, :3, 3] * meta.scene_scale, atol=1e-5)
        K = np.load(io.BytesIO(s["fxfycxcy.npy"]))
        fx, fy, cx, cy = clip.fxfycxcy[:9].T  # 64×64 -> rows 16..48 of the frame: fy and cy scale by 2
        np.testing.assert_allclose(K, np.stack([fx, fy * 2, cx, (cy * 64 - 16) / 32], 1), atol=1e-6)
        meta = LatentMeta.from_json(s["meta.json"])
        assert meta.caption == CAPTIONS[i] and meta.frame_indices == list(range(9)) and meta.clip_key == f"clip{i}"
        assert (meta.height, meta.width, meta.num_frames, meta.latent_shape) == (32, 64, 9, [48, 3, 2, 4])
        assert s["first_frame.jpg"][:3] == b"\xff\xd8\xff"


def test_encode_latents_windows_and_stride(tmp_path, clip_shards):
    from datamodules.encode_latents import encode_latents, window_starts
    from datamodules.latents import LatentMeta

    assert (
        window_starts(13, 9, 1, 3) == [0, 2, 4]
        and window_starts(13, 5, 3, 2) == [0]
        and window_starts(8, 9, 1, 1) == []
    )
    vae = WanVAE.tiny()
    shards = sorted(str(p) for p in clip_shards.glob("*.tar"))
    counts = encode_latents(
        shards, tmp_path, vae, "tiny", num_frames=5, height=32, width=32, stride=2, windows_per_clip=2
    )
    assert counts == {"clips": 4, "written": 4, "too_short": 1, "corrupt": 0, "done": 0, "arbitrary_refused": 0}
    metas = {k: LatentMeta.from_json(m["meta.json"]) for k, m in _members(tmp_path).items()}
    assert metas["clip2_f000004"].frame_indices == [4, 6, 8, 10, 12]
    again = encode_latents(
        shards, tmp_path, vae, "tiny", num_frames=5, height=32, width=32, stride=2, windows_per_clip=2
    )
    assert again["written"] == 0 and again["done"] == 4  # resumed


def test_encode_latents_bad_input_and_no_half_written_output(tmp_path, clip_shards, monkeypatch, capsys):
    from datamodules.encode_latents import main

    base = ["--shards", str(clip_shards), "--vae", "tiny", "--dtype", "fp32", "--height", "32", "--width", "64"]
    assert main([*base, "--out", str(tmp_path / "a"), "--num-frames", "8"]) == 2
    assert "1 + 4k" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main([*base, "--out", str(tmp_path / "a"), "--num-frames", "9", "--height", "40"]) == 2
    assert "multiples" in capsys.readouterr().err
    assert main([*base[:1], str(tmp_path / "none"), *base[2:], "--out", str(tmp_path / "a")]) == 2
    assert "no .tar shards" in capsys.readouterr().err

    calls = []

    def failing(self, frames):  # the second VAE batch fails: the first shard is finished, the second dropped
        calls.append(len(frames))
        if len(calls) == 2:
            raise RuntimeError("VAE failure")
        return orig(self, frames)

    orig = WanVAE.encode
    monkeypatch.setattr(WanVAE, "encode", failing)
    out = tmp_path / "b"
    with pytest.raises(RuntimeError, match="VAE failure"):
        main([*base, "--out", str(out), "--num-frames", "9", "--batch-size", "1", "--maxcount", "1"])
    assert sorted(os.listdir(out)) == [".manifest.json.lock", "manifest.json", "train-000000.tar"]
    assert json.loads((out / "manifest.json").read_text())["shards"][0]["keys"] == ["clip0_f000000"]


# ------------------------------------------------------------------------------------------------------ datamodule


def test_latent_datamodule_batches_with_cached_prompts(tmp_path, latent_shards, clip_shards, encoder_dir, encoder):
    from datamodules.encode_text import main as encode_text
    from datamodules.latents import LatentDataModule

    cache_dir = tmp_path / "cache"
    dm = LatentDataModule(
        str(latent_shards / "train-*.tar"),
        batch_size=2,
        num_workers=0,
        batches_per_epoch=4,
        text_cache=str(cache_dir),
        text_dim=32,
        seed=3,
    )
    with pytest.raises(ValueError, match="encode_text"):  # no cache yet
        next(iter(dm.train_dataloader()))
    assert encode_text(["--shards", str(clip_shards), "--encoder", str(encoder_dir), "--cache", str(cache_dir)]) == 0
    dm = LatentDataModule(
        str(latent_shards / "train-*.tar"),
        batch_size=2,
        num_workers=0,
        batches_per_epoch=4,
        text_cache=str(cache_dir),
        text_dim=32,
        seed=3,
    )
    batches = list(dm.train_dataloader())
    assert len(batches) == 4
    rows = dict(zip(CAPTIONS, encoder.encode_unpadded(CAPTIONS), strict=True))
    for b in batches:
        assert b["latents"].shape == (2, 48, 3, 2, 4) and b["latents"].dtype == torch.float32
        assert b["c2w"].shape == (2, 9, 4, 4) and b["fxfycxcy"].shape == (2, 9, 4)
        torch.testing.assert_close(b["c2w"][:, 0], torch.eye(4).expand(2, 4, 4))
        assert b["first_frame"].shape == (2, 3, 32, 64) and 0 <= b["first_frame"].min() <= b["first_frame"].max() <= 1
        assert (b["height"], b["width"]) == (32, 64) and b["prompt_embeds"].shape == (2, 512, 32)
        assert b["has_prompt"].tolist() == [c != "" for c in b["caption"]]
        for i, c in enumerate(b["caption"]):
            want = pad_prompt_embeds([rows[c].bfloat16().float()])[0]
            torch.testing.assert_close(b["prompt_embeds"][i], want, atol=0, rtol=0)
        assert all(k.startswith("synthetic/clip") for k in b["key"])
    assert len({c for b in batches for c in b["caption"]} & set(CAPTIONS)) >= 2
    # a caption that is not cached is an error naming it and the cache
    (cache_dir / f"{PromptCache(cache_dir).key('')}.safetensors").unlink()
    dm = LatentDataModule(
        str(latent_shards / "train-*.tar"),
        batch_size=3,
        num_workers=0,
        batches_per_epoch=2,
        text_cache=str(cache_dir),
        text_dim=32,
    )
    with pytest.raises(KeyError, match=str(cache_dir) + r".*prompt ''"):
        list(dm.train_dataloader())
    # no cache: zero embeddings
    dm = LatentDataModule(
        str(latent_shards / "train-*.tar"),
        batch_size=2,
        num_workers=0,
        batches_per_epoch=1,
        text_cache=None,
        text_dim=8,
    )
    b = next(iter(dm.train_dataloader()))
    assert b["prompt_embeds"].shape == (2, 512, 8) and not b["prompt_embeds"].any()


def test_latent_datamodule_resumes_with_the_next_epochs_stream(latent_shards):
    """A resumed run (Lightning restores the datamodule's state: the epoch after the checkpoint's) draws a fresh
    stream, not the interrupted epoch's batches again, and the same one whenever it is resumed from that state."""
    from datamodules.latents import LatentDataModule

    def module(state: dict | None = None) -> LatentDataModule:
        dm = LatentDataModule(
            str(latent_shards / "train-*.tar"),
            batch_size=2,
            num_workers=0,
            batches_per_epoch=6,
            text_cache=None,
            text_dim=8,
            seed=5,
        )
        if state is not None:
            dm.load_state_dict(state)
        return dm

    def keys(dm: LatentDataModule) -> list[list[str]]:
        return [b["key"] for b in dm.train_dataloader()]

    first = module()
    epoch0 = keys(first)
    state = first.state_dict()
    assert state == {"next_epoch": 1}
    resumed = keys(module(state))
    assert resumed != epoch0 and resumed == keys(module(state))
    assert keys(module()) == epoch0  # a fresh run repeats epoch 0 exactly


def test_latents_synthetic_config_instantiates(tmp_path, latent_shards, clip_shards, encoder_dir):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from datamodules.encode_text import main as encode_text

    shutil.copytree(latent_shards, tmp_path / "latents" / "synthetic")
    assert (
        encode_text(
            [
                "--shards",
                str(clip_shards),
                "--encoder",
                str(encoder_dir),
                "--cache",
                str(tmp_path / "prompt_cache" / "synthetic"),
            ]
        )
        == 0
    )
    conf = str(Path(__file__).resolve().parents[1] / "conf")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose(config_name="data/latents_synthetic").data
        base = compose(config_name="data/latents").data
    assert base.text_dim == 4096 and base.max_len == 512
    cfg = OmegaConf.merge({"paths": {"data_root": str(tmp_path)}, "data": cfg})
    OmegaConf.resolve(cfg)
    dm = instantiate(cfg.data, _recursive_=False)
    b = next(iter(dm.train_dataloader()))
    assert b["latents"].shape == (2, 48, 3, 2, 4) and b["prompt_embeds"].shape == (2, 512, 32)
    assert dm.val_dataloader() == []  # no test-*.tar shards: not validated
    assert dm.state_dict() == {"next_epoch": 1}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_encode_clis_on_cuda(tmp_path, clips, clip_shards, encoder_dir, encoder):
    from datamodules.encode_latents import main as encode_latents
    from datamodules.encode_text import main as encode_text
    from datamodules.latents import LatentDataModule

    out = tmp_path / "latents"
    argv = [
        "--shards",
        str(clip_shards),
        "--out",
        str(out),
        "--vae",
        "tiny",
        "--num-frames",
        "9",
        "--height",
        "32",
        "--width",
        "64",
        "--device",
        "cuda",
        "--dtype",
        "bf16",
    ]
    assert encode_latents(argv) == 0
    cache = tmp_path / "cache"
    args = ["--shards", str(clip_shards), "--encoder", str(encoder_dir), "--cache", str(cache), "--device", "cuda"]
    assert encode_text(args) == 0
    gpu = TextEncoder.from_pretrained(encoder_dir, device="cuda")
    assert gpu.dtype == torch.bfloat16 and gpu.encode(PROMPTS).device.type == "cuda"
    dm = LatentDataModule(
        str(out / "train-*.tar"),
        batch_size=3,
        num_workers=0,
        batches_per_epoch=1,
        text_cache=str(cache),
        text_dim=32,
        shuffle_buffer=1,
    )
    b = next(iter(dm.train_dataloader()))
    vae = WanVAE.tiny()
    by_key = {c.key: c for c in clips}
    for i, key in enumerate(b["key"]):
        clip = by_key[key.split("/")[1].split("_f")[0]]
        ref = _direct_windows(clip, 32, 64, vae)
        err = (b["latents"][i] - ref).abs().max() / ref.abs().max()
        assert err < 0.05, err  # bf16 VAE on the GPU vs float32 on the CPU
        want = encoder.encode_unpadded([clip.meta.caption])[0]
        got = b["prompt_embeds"][i, : len(want)]
        assert (got - want).abs().max() / want.abs().max() < 0.05  # bf16 UMT5 on the GPU
