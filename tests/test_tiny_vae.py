"""TinyVAE (TAEHV layout) and the latent-alignment mappers and paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diff4splat.models.alignment import AlignerConfig, LatentAligner, LinearMapper, MLPMapper, UNetMapper
from diff4splat.models.tiny_vae import MemBlock, TinyVAE
from diff4splat.models.wan_vae import WanVAE


@pytest.mark.parametrize(("version", "channels", "stride"), [("wan22", 48, 16), ("wan21", 16, 8)])
def test_shapes_and_frame_counts_match_the_wan_vae(version: str, channels: int, stride: int) -> None:
    vae = TinyVAE.tiny(version)
    wan = WanVAE.tiny(z_dim=channels)
    for f in (1, 5, 9):
        x = torch.rand(2, f, 3, 64, 64)
        z = vae.encode(x)
        assert z.shape == wan.encode(x).shape == (2, channels, 1 + (f - 1) // 4, 64 // stride, 64 // stride)
        assert vae.decode(z).shape == (2, f, 3, 64, 64)
    with pytest.raises(ValueError, match=f"divisible by {stride}"):
        vae.encode(torch.rand(1, 5, 3, 64 + stride // 2, 64))
    with pytest.raises(ValueError, match=f"expected latents \\[B, {channels}"):
        vae.decode(torch.rand(1, channels + 1, 2, 4, 4))


def test_causal_time_handling() -> None:
    """Latent frame 0 <-> frame 0; latent j >= 1 <-> frames 4j-3..4j; nothing flows backwards in time."""
    torch.manual_seed(0)
    vae = TinyVAE.tiny("wan22").double()
    for m in vae.modules():
        if isinstance(m, MemBlock):  # residual branches start at zero: give the memory path weights
            torch.nn.init.normal_(m.conv[4].weight, std=0.05)
    x = torch.rand(1, 9, 3, 32, 32, dtype=torch.float64)
    z = vae.encode(x)
    x1 = x.clone()
    x1[:, 0] = torch.rand_like(x1[:, 0])  # frame 0 reaches later latent frames through the memory blocks
    assert not torch.allclose(vae.encode(x1)[:, :, 1], z[:, :, 1])
    x2 = x.clone()
    x2[:, 8] = torch.rand_like(x2[:, 8])  # the last frame: only the last latent frame may change
    z2 = vae.encode(x2)
    assert torch.equal(z[:, :, :2], z2[:, :, :2]) and not torch.allclose(z[:, :, 2], z2[:, :, 2])
    y = vae.decode(z, clamp=False)
    z3 = z.clone()
    z3[:, :, 2] += 1.0  # the last latent frame: only frames 5..8 may change
    y3 = vae.decode(z3, clamp=False)
    assert torch.equal(y[:, :5], y3[:, :5]) and not torch.allclose(y[:, 5:], y3[:, 5:])
    z4 = z.clone()
    z4[:, :, 0] += 1.0  # latent frame 0 reaches frame 0 (and, through memory, later ones)
    assert not torch.allclose(vae.decode(z4, clamp=False)[:, 0], y[:, 0])


# --- the released TAEHV layout -------------------------------------------------------------------------------------
def taehv_state(c: int, p: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with the key names and shapes of madebyollin/taehv's TAEHV (encoder_time_downscale
    (T, T, F); the decoder's first TGrow saved with stride 2, as released files are), written out by hand."""
    g = torch.Generator().manual_seed(seed)
    shapes: dict[str, tuple[int, ...]] = {"encoder.0.weight": (64, 3 * p * p, 3, 3), "encoder.0.bias": (64,)}
    for base, s in ((2, 2), (7, 2), (12, 1)):
        shapes[f"encoder.{base}.conv.weight"] = (64, 64 * s, 1, 1)
        shapes[f"encoder.{base + 1}.weight"] = (64, 64, 3, 3)
        for m in range(base + 2, base + 5):
            shapes.update(
                {
                    f"encoder.{m}.conv.0.weight": (64, 128, 3, 3),
                    f"encoder.{m}.conv.0.bias": (64,),
                    f"encoder.{m}.conv.2.weight": (64, 64, 3, 3),
                    f"encoder.{m}.conv.2.bias": (64,),
                    f"encoder.{m}.conv.4.weight": (64, 64, 3, 3),
                    f"encoder.{m}.conv.4.bias": (64,),
                }
            )
    shapes.update({"encoder.17.weight": (c, 64, 3, 3), "encoder.17.bias": (c,)})
    shapes.update({"decoder.1.weight": (256, c, 3, 3), "decoder.1.bias": (256,)})
    for base, n, n_next in ((3, 256, 128), (9, 128, 64), (15, 64, 64)):
        for m in range(base, base + 3):
            shapes.update(
                {
                    f"decoder.{m}.conv.0.weight": (n, 2 * n, 3, 3),
                    f"decoder.{m}.conv.0.bias": (n,),
                    f"decoder.{m}.conv.2.weight": (n, n, 3, 3),
                    f"decoder.{m}.conv.2.bias": (n,),
                    f"decoder.{m}.conv.4.weight": (n, n, 3, 3),
                    f"decoder.{m}.conv.4.bias": (n,),
                }
            )
        shapes[f"decoder.{base + 4}.conv.weight"] = (2 * n, n, 1, 1)
        shapes[f"decoder.{base + 5}.weight"] = (n_next, n, 3, 3)
    shapes.update({"decoder.22.weight": (3 * p * p, 64, 3, 3), "decoder.22.bias": (3 * p * p,)})
    out = {}
    for k, s in shapes.items():
        fan_in = s[1] * s[2] * s[3] if len(s) == 4 else 1
        out[k] = torch.randn(s, generator=g) * (0.5 / fan_in**0.5 if len(s) == 4 else 0.01)
    return out


def stream_decode(sd: dict[str, torch.Tensor], z: torch.Tensor, p: int) -> torch.Tensor:
    """TAEHV's decoder run frame by frame with explicit per-block memory (the streaming reading of the layout).
    z [T, C, h, w] latents of one clip -> [4T - 3, 3, H, W]."""

    def conv(x: torch.Tensor, i: int) -> torch.Tensor:
        return F.conv2d(x, sd[f"decoder.{i}.weight"], sd.get(f"decoder.{i}.bias"), padding=1)

    def mem_block(x: torch.Tensor, past: torch.Tensor, i: int) -> torch.Tensor:
        h = torch.cat([x, past], 1)
        for j in (0, 2, 4):
            h = F.conv2d(h, sd[f"decoder.{i}.conv.{j}.weight"], sd[f"decoder.{i}.conv.{j}.bias"], padding=1)
            h = F.relu(h) if j < 4 else h
        return F.relu(h + x)

    frames = [F.relu(conv(torch.tanh(zt[None] / 3) * 3, 1)) for zt in z]
    for base, stride in ((3, 1), (9, 2), (15, 2)):
        for m in range(base, base + 3):
            past, outs = torch.zeros_like(frames[0]), []
            for x in frames:
                outs.append(mem_block(x, past, m))
                past = x
            frames = outs
        grown = []
        w = sd[f"decoder.{base + 4}.conv.weight"][-frames[0].shape[1] * stride :]  # stride-1 TGrow: last rows
        for x in frames:
            y = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w)
            grown += list(y.chunk(stride, 1))
        frames = [conv(x, base + 5) for x in grown]
    out = torch.cat([F.pixel_shuffle(conv(F.relu(x), 22), p) if p > 1 else conv(F.relu(x), 22) for x in frames])
    return out[3:].clamp(0, 1)


@pytest.mark.parametrize(("version", "c", "p"), [("wan22", 48, 2), ("wan21", 16, 1)])
def test_loads_the_released_taehv_layout(tmp_path, version: str, c: int, p: int) -> None:
    sd = taehv_state(c, p)
    path = tmp_path / f"taew2_{version[-1]}.pth"
    torch.save(sd, path)
    vae = TinyVAE.from_taehv(path)  # version inferred from the weights
    assert vae.cfg.latent_channels == c and vae.cfg.patch_size == p
    own = vae.state_dict()
    assert set(own) == set(sd)
    assert torch.equal(own["decoder.7.conv.weight"], sd["decoder.7.conv.weight"][-256:])  # stride-1 TGrow: last rows
    assert all(torch.equal(own[k], v) for k, v in sd.items() if k != "decoder.7.conv.weight")
    z = torch.randn(1, c, 3, 2, 3)
    ref = stream_decode(sd, z[0].transpose(0, 1), p)
    torch.testing.assert_close(vae.decode(z)[0], ref, rtol=1e-4, atol=1e-5)
    bad = dict(sd)
    del bad["encoder.9.conv.2.bias"]
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad\.pth.*missing \['encoder\.9\.conv\.2\.bias'\]"):
        TinyVAE.from_taehv(tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError, match="no weight file"):
        TinyVAE.from_taehv(tmp_path / "absent.pth")


# --- mappers and the two paths -------------------------------------------------------------------------------------
@pytest.mark.parametrize("mapper", [LinearMapper(48), MLPMapper(48), UNetMapper(48, width=16)])
def test_zero_initialised_mappers_are_the_identity_and_train(mapper: torch.nn.Module) -> None:
    x = torch.randn(2, 48, 3, 5, 7)  # odd latent sizes (e.g. 22 x 40 / 2 levels)
    assert torch.equal(mapper(x), x)
    mapper(x).square().sum().backward()
    last = [p for p in mapper.parameters() if p.grad is not None][-2]  # the zero-initialised output weight
    assert last.grad.abs().sum() > 0


@pytest.mark.parametrize("space", ["normalised", "raw"])
def test_aligner_paths_and_the_wan_normalisation(tmp_path, space: str) -> None:
    """``normalised`` (TAEHV's convention, tests/test_taehv.py): the TinyVAE sees the denoiser's latents as they are;
    ``raw`` (aligners trained before): the Wan normalisation is undone before decoding and applied after encoding."""
    torch.manual_seed(0)
    aligner = LatentAligner(
        AlignerConfig(
            version="wan22",
            tiny_vae={"encoder_width": 8, "decoder_widths": [16, 8, 8, 8]},
            decode_mapper="unet",
            encode_mapper="mlp",
            mapper_width=16,
            tiny_vae_space=space,
        )
    )
    mean, std = torch.randn(48), torch.rand(48) + 0.5
    aligner.set_normalisation(mean, std)
    z = torch.randn(2, 48, 2, 2, 3)
    raw = z * std.view(1, 48, 1, 1, 1) + mean.view(1, 48, 1, 1, 1)
    expect_frames = aligner.tiny_vae.decode(raw if space == "raw" else z)
    torch.testing.assert_close(aligner.decode(z), expect_frames)  # zero-init mapper: identity
    frames = torch.rand(2, 5, 3, 32, 48)
    expect = aligner.tiny_vae.encode(frames)
    if space == "raw":
        expect = (expect - mean.view(1, 48, 1, 1, 1)) / std.view(1, 48, 1, 1, 1)
    torch.testing.assert_close(aligner.encode(frames), expect)
    with torch.no_grad():
        for p in aligner.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "aligner.safetensors"
    aligner.save(path)
    again = LatentAligner.load(path)
    assert again.cfg == aligner.cfg
    assert all(
        torch.equal(a, b) for a, b in zip(aligner.state_dict().values(), again.state_dict().values(), strict=True)
    )
    assert torch.equal(again.decode(z), aligner.decode(z))
