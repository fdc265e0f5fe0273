"""Wan2.2 original-release <-> diffusers conversion: exact round trips, the release's key names, sharded loading with
an identical forward, the CLI's diffusers folder, clear errors, and the shipped 5B / VAE configs.

The expected original names and shapes come from skeletons below that mirror the module structure of the original
code (Wan2.2 ``wan/modules/model.py`` ``WanModel`` and ``wan/modules/vae2_2.py`` ``WanVAE_``), written independently of
the rename table under test."""

from __future__ import annotations

import math
import re

import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors.torch import save_file
from torch import nn

from diff4splat.models import wan_convert as wc
from diff4splat.models.wan_convert import CheckpointMismatchError

TINY_DIT = dict(
    patch_size=[1, 2, 2],
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=48,
    out_channels=48,
    text_dim=32,
    freq_dim=16,
    ffn_dim=40,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=64,
)
# Wan2.2 layout (is_residual, 12 = 3x2x2 patchified channels, z 48) with channel changes so every shortcut exists.
TINY_VAE = dict(
    base_dim=3,
    decoder_base_dim=4,
    z_dim=48,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    temperal_downsample=[False, True, True],
    is_residual=True,
    in_channels=12,
    out_channels=12,
    patch_size=2,
    scale_factor_spatial=16,
    scale_factor_temporal=4,
    latents_mean=[0.0] * 48,
    latents_std=[1.0] * 48,
)


# ----------------------------------------------------------------------------------------------------------------------
# Skeletons of the original modules (parameter names and shapes only)


class _OrigSelfAttention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = nn.RMSNorm(dim), nn.RMSNorm(dim)


class _OrigAttentionBlock(nn.Module):
    def __init__(self, dim: int, ffn_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.self_attn = _OrigSelfAttention(dim)
        self.norm3 = nn.LayerNorm(dim)  # cross_attn_norm=True
        self.cross_attn = _OrigSelfAttention(dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim))


class _OrigHead(nn.Module):
    def __init__(self, dim: int, out_dim: int, patch_size: list[int]) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.head = nn.Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim))


class _OrigWanModel(nn.Module):
    def __init__(self, in_dim, dim, ffn_dim, freq_dim, text_dim, out_dim, num_layers, patch_size) -> None:
        super().__init__()
        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=patch_size, stride=patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList(_OrigAttentionBlock(dim, ffn_dim) for _ in range(num_layers))
        self.head = _OrigHead(dim, out_dim, patch_size)


def _orig_wan_model(cfg: dict) -> _OrigWanModel:
    return _OrigWanModel(
        in_dim=cfg["in_channels"],
        dim=cfg["num_attention_heads"] * cfg["attention_head_dim"],
        ffn_dim=cfg["ffn_dim"],
        freq_dim=cfg["freq_dim"],
        text_dim=cfg["text_dim"],
        out_dim=cfg["out_channels"],
        num_layers=cfg["num_layers"],
        patch_size=cfg["patch_size"],
    )


class _OrigRMS(nn.Module):
    def __init__(self, dim: int, images: bool = True) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.randn(dim, *((1, 1) if images else (1, 1, 1))))


class _OrigResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            _OrigRMS(in_dim, images=False),
            nn.SiLU(),
            nn.Conv3d(in_dim, out_dim, 3),
            _OrigRMS(out_dim, images=False),
            nn.SiLU(),
            nn.Dropout(0.0),
            nn.Conv3d(out_dim, out_dim, 3),
        )
        self.shortcut = nn.Conv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()


class _OrigVAEAttention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = _OrigRMS(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)


class _OrigResample(nn.Module):
    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        first = nn.Upsample(scale_factor=2.0) if mode.startswith("up") else nn.ZeroPad2d((0, 1, 0, 1))
        self.resample = nn.Sequential(first, nn.Conv2d(dim, dim, 3))
        if mode == "upsample3d":
            self.time_conv = nn.Conv3d(dim, dim * 2, (3, 1, 1))
        elif mode == "downsample3d":
            self.time_conv = nn.Conv3d(dim, dim, (3, 1, 1))


class _OrigSampleBlock(nn.Module):
    """Down_ResidualBlock (``downsamples``) / Up_ResidualBlock (``upsamples``); their avg shortcuts hold no weights."""

    def __init__(self, name: str, in_dim: int, out_dim: int, mult: int, temporal: bool, flag: bool) -> None:
        super().__init__()
        layers = []
        for _ in range(mult):
            layers.append(_OrigResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if flag:
            layers.append(_OrigResample(out_dim, f"{name[: -len('samples')]}sample{'3d' if temporal else '2d'}"))
        setattr(self, name, nn.Sequential(*layers))


def _orig_middle(dim: int) -> nn.Sequential:
    return nn.Sequential(_OrigResidualBlock(dim, dim), _OrigVAEAttention(dim), _OrigResidualBlock(dim, dim))


def _orig_head(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(_OrigRMS(dim, images=False), nn.SiLU(), nn.Conv3d(dim, out, 3))


class _OrigVAE(nn.Module):
    def __init__(self, base_dim, decoder_base_dim, z_dim, dim_mult, num_res_blocks, temperal_downsample, **_) -> None:
        super().__init__()
        self.encoder, self.decoder = nn.Module(), nn.Module()
        dims = [base_dim * u for u in [1, *dim_mult]]
        last = len(dim_mult) - 1
        self.encoder.conv1 = nn.Conv3d(12, dims[0], 3)
        self.encoder.downsamples = nn.Sequential(
            *(
                _OrigSampleBlock(
                    "downsamples", a, b, num_res_blocks, temperal_downsample[i] if i < last else False, i != last
                )
                for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))
            )
        )
        self.encoder.middle = _orig_middle(dims[-1])
        self.encoder.head = _orig_head(dims[-1], z_dim * 2)
        self.conv1 = nn.Conv3d(z_dim * 2, z_dim * 2, 1)
        self.conv2 = nn.Conv3d(z_dim, z_dim, 1)
        dims = [decoder_base_dim * u for u in [dim_mult[-1], *dim_mult[::-1]]]
        temperal_upsample = temperal_downsample[::-1]
        self.decoder.conv1 = nn.Conv3d(z_dim, dims[0], 3)
        self.decoder.middle = _orig_middle(dims[0])
        self.decoder.upsamples = nn.Sequential(
            *(
                _OrigSampleBlock(
                    "upsamples", a, b, num_res_blocks + 1, temperal_upsample[i] if i < last else False, i != last
                )
                for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))
            )
        )
        self.decoder.head = _orig_head(dims[-1], 12)


def _shapes(sd: dict) -> dict:
    return {k: tuple(v.shape) for k, v in sd.items()}


def _tiny_dit(seed: int = 0) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return WanTransformer3DModel(**TINY_DIT).eval()


def _tiny_vae(seed: int = 0) -> AutoencoderKLWan:
    torch.manual_seed(seed)
    return AutoencoderKLWan(**TINY_VAE).eval()


def _assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def _write_shards(sd: dict, folder, n: int = 2) -> list:
    keys = sorted(sd)
    files = []
    for s in range(n):
        path = folder / f"diffusion_pytorch_model-{s + 1:05d}-of-{n:05d}.safetensors"
        save_file({k: sd[k].contiguous() for k in keys[s::n]}, str(path))
        files.append(path)
    return files


# ----------------------------------------------------------------------------------------------------------------------
# Rename table


@pytest.mark.parametrize("kind", ["transformer", "vae"])
def test_rules_carry_the_same_placeholders_both_ways(kind):
    """Invertibility by construction: both sides of a rule bind the same placeholders ({n} is recomputed)."""
    for rule in wc.RULES[kind]:
        orig = set(re.findall(r"\{(\w+)\}", rule.original)) - {"n"}
        assert orig == set(re.findall(r"\{(\w+)\}", rule.diffusers)), rule


def test_transformer_round_trips_and_release_names():
    model = _tiny_dit()
    ours = model.state_dict()
    orig = wc.diffusers_to_original(ours, "transformer")
    skeleton = _orig_wan_model(TINY_DIT).state_dict()
    assert _shapes(orig) == _shapes(skeleton)  # exactly the original names, with the original shapes
    for name in [
        "patch_embedding.weight",
        "text_embedding.0.weight",
        "text_embedding.2.bias",
        "time_embedding.0.weight",
        "time_projection.1.weight",
        "blocks.0.self_attn.q.weight",
        "blocks.0.self_attn.norm_q.weight",
        "blocks.1.cross_attn.o.bias",
        "blocks.1.cross_attn.norm_k.weight",
        "blocks.1.norm3.weight",
        "blocks.0.ffn.0.weight",
        "blocks.0.ffn.2.bias",
        "blocks.1.modulation",
        "head.head.weight",
        "head.modulation",
    ]:
        assert name in orig, name
    _assert_same(wc.original_to_diffusers(orig, "transformer"), ours)  # ours -> original -> ours
    ours_from_skeleton = wc.original_to_diffusers(skeleton, "transformer")
    model.load_state_dict(ours_from_skeleton, strict=True)  # every original tensor lands on a diffusers parameter
    _assert_same(wc.diffusers_to_original(ours_from_skeleton, "transformer"), skeleton)  # original -> ours -> original


def test_vae_round_trips_and_release_names():
    vae = _tiny_vae()
    ours = vae.state_dict()
    orig = wc.diffusers_to_original(ours, "vae")
    skeleton = _OrigVAE(**TINY_VAE).state_dict()
    assert _shapes(orig) == _shapes(skeleton)
    for name in [
        "encoder.conv1.weight",
        "encoder.downsamples.0.downsamples.0.residual.0.gamma",
        "encoder.downsamples.1.downsamples.2.time_conv.weight",
        "encoder.downsamples.0.downsamples.2.resample.1.bias",
        "encoder.downsamples.1.downsamples.0.shortcut.weight",
        "encoder.middle.1.to_qkv.weight",
        "encoder.head.2.weight",
        "conv1.weight",
        "conv2.bias",
        "decoder.middle.0.residual.0.gamma",
        "decoder.upsamples.0.upsamples.3.time_conv.weight",
        "decoder.upsamples.2.upsamples.3.resample.1.weight",
        "decoder.upsamples.3.upsamples.2.residual.6.weight",
        "decoder.head.0.gamma",
    ]:
        assert name in orig, name
    _assert_same(wc.original_to_diffusers(orig, "vae"), ours)
    ours_from_skeleton = wc.original_to_diffusers(skeleton, "vae")
    vae.load_state_dict(ours_from_skeleton, strict=True)
    _assert_same(wc.diffusers_to_original(ours_from_skeleton, "vae"), skeleton)


def test_unknown_and_inconsistent_keys_are_errors():
    orig = wc.diffusers_to_original(_tiny_dit().state_dict(), "transformer")
    with pytest.raises(CheckpointMismatchError, match=r"blocks\.0\.extra\.weight"):
        wc.original_to_diffusers({**orig, "blocks.0.extra.weight": torch.zeros(1)}, "transformer")
    vae = wc.diffusers_to_original(_tiny_vae().state_dict(), "vae")
    moved = {
        k.replace("downsamples.0.downsamples.2.resample", "downsamples.0.downsamples.5.resample"): v
        for k, v in vae.items()
    }
    with pytest.raises(CheckpointMismatchError, match="resampler of encoder block 0"):
        wc.original_to_diffusers(moved, "vae")


# ----------------------------------------------------------------------------------------------------------------------
# Loading and the CLI


def _forward(model, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 48, 2, 4, 6, generator=g)
    text = torch.randn(1, 5, TINY_DIT["text_dim"], generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([437]), text, return_dict=False)[0]


def test_load_sharded_original_transformer_gives_the_same_forward(tmp_path):
    source = _tiny_dit()
    files = _write_shards(wc.diffusers_to_original(source.state_dict(), "transformer"), tmp_path)
    loaded = wc.load_original_transformer(tmp_path, config=TINY_DIT, dtype=torch.float32)
    _assert_same(loaded.state_dict(), source.state_dict())
    out = _forward(loaded)
    assert out.shape == (1, 48, 2, 4, 6)
    assert torch.equal(out, _forward(source))
    assert torch.equal(_forward(wc.load_original_transformer(files[::-1], TINY_DIT, torch.float32)), out)  # file list
    bf16 = wc.load_original_transformer(tmp_path, config=TINY_DIT, dtype=torch.bfloat16)
    assert bf16.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert bf16.scale_shift_table.dtype == bf16.blocks[0].scale_shift_table.dtype == torch.float32  # as diffusers


def test_missing_key_error_names_key_and_file(tmp_path):
    orig = wc.diffusers_to_original(_tiny_dit().state_dict(), "transformer")
    del orig["blocks.1.cross_attn.norm_k.weight"]
    orig["blocks.0.extra.weight"] = torch.zeros(2)
    files = _write_shards(orig, tmp_path)
    with pytest.raises(CheckpointMismatchError) as err:
        wc.load_original_transformer(tmp_path, config=TINY_DIT, dtype=torch.float32)
    msg = str(err.value)
    assert "missing (1): blocks.1.cross_attn.norm_k.weight" in msg
    assert "unexpected (1): blocks.0.extra.weight" in msg
    assert all(str(f) in msg for f in files)
    out = tmp_path / "converted"
    assert wc.main(["--kind", "transformer", "--src", str(tmp_path), "--out", str(out)]) == 2  # bad input
    assert not out.exists() and not list(tmp_path.glob(".converted*"))  # nothing half-written

    vae = wc.diffusers_to_original(_tiny_vae().state_dict(), "vae")
    del vae["encoder.downsamples.1.downsamples.2.time_conv.weight"]
    torch.save(vae, tmp_path / "Wan2.2_VAE.pth")
    with pytest.raises(
        CheckpointMismatchError, match=r"Wan2\.2_VAE\.pth(.|\n)*missing \(1\): encoder\.downsamples\.1\.down"
    ):
        wc.load_original_vae(tmp_path / "Wan2.2_VAE.pth", config=TINY_VAE)


def test_cli_writes_loadable_diffusers_folders(tmp_path):
    source = _tiny_dit()
    shards = tmp_path / "release"
    shards.mkdir()
    _write_shards(wc.diffusers_to_original(source.state_dict(), "transformer"), shards)
    config = tmp_path / "config.json"
    config.write_text(WanTransformer3DModel(**TINY_DIT).to_json_string())
    out = tmp_path / "out" / "transformer"
    args = ["--kind", "transformer", "--src", str(shards), "--out", str(out), "--config", str(config)]
    args += ["--dtype", "fp32"]
    assert wc.main(args) == 0
    _assert_same(WanTransformer3DModel.from_pretrained(out).state_dict(), source.state_dict())
    assert sorted(p.name for p in out.parent.iterdir()) == ["transformer"]  # no temporary folders left
    assert wc.main(args) == 2  # an existing folder is not replaced without --overwrite
    assert wc.main([*args, "--overwrite"]) == 0
    (out / "notes.txt").write_text("mine")  # --overwrite replaces an earlier conversion, never a user's files
    assert wc.main([*args, "--overwrite"]) == 2 and (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()

    vae = _tiny_vae()
    pth = tmp_path / "Wan2.2_VAE.pth"
    torch.save({"state_dict": wc.diffusers_to_original(vae.state_dict(), "vae")}, pth)  # nested, as some exports are
    vae_config = tmp_path / "vae_config.json"
    vae_config.write_text(vae.to_json_string())
    out = tmp_path / "out" / "vae"
    assert wc.main(["--kind", "vae", "--src", str(pth), "--out", str(out), "--config", str(vae_config)]) == 0
    _assert_same(AutoencoderKLWan.from_pretrained(out).state_dict(), vae.state_dict())
    _assert_same(wc.load_original_vae(pth, config=TINY_VAE).state_dict(), vae.state_dict())


# ----------------------------------------------------------------------------------------------------------------------
# Shipped configs


def test_shipped_5b_config_builds_on_meta_with_5_0e9_parameters():
    cfg = wc.transformer_config()
    dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    assert (dim, cfg["num_attention_heads"], cfg["ffn_dim"], cfg["num_layers"]) == (3072, 24, 14336, 30)
    assert (cfg["in_channels"], cfg["out_channels"], cfg["patch_size"], cfg["text_dim"]) == (48, 48, [1, 2, 2], 4096)
    model = wc.build_transformer()
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == 4_999_787_712
    with torch.device("meta"):
        skeleton = _orig_wan_model(cfg)
    assert _shapes(wc.diffusers_to_original(model.state_dict(), "transformer")) == _shapes(skeleton.state_dict())
    with pytest.raises(ValueError, match="ti2v_5b"):
        wc.transformer_config("t2v_a14b")


def test_shipped_vae_config_builds_on_meta():
    cfg = wc.vae_config()
    assert len(cfg["latents_mean"]) == len(cfg["latents_std"]) == cfg["z_dim"] == 48
    assert (cfg["latents_mean"][0], cfg["latents_std"][39]) == (-0.2289, 1.6887)
    vae = wc.build_vae()
    assert all(p.is_meta for p in vae.parameters())
    assert sum(p.numel() for p in vae.parameters()) == 704_688_668
    with torch.device("meta"):
        skeleton = _OrigVAE(**cfg)
    assert _shapes(wc.diffusers_to_original(vae.state_dict(), "vae")) == _shapes(skeleton.state_dict())
