"""TinyVAE against TAEHV's own code (fixtures in tests/fixtures/taehv), and the latent convention: the released TAEHV
decoders take the diffusion model's (Wan-normalised) latents, so LatentAligner hands them over unchanged."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diff4splat.models.alignment import AlignerConfig, LatentAligner
from diff4splat.models.tiny_vae import TinyVAE, TinyVAEConfig

TAEHV = Path(__file__).parent / "fixtures" / "taehv"
CASES = [("taew2_2", "wan22"), ("taew2_1", "wan21")]


def _generator():
    """The fixture generator's ``seeded_state`` (the seeded weights are regenerated, not stored)."""
    spec = importlib.util.spec_from_file_location("taehv_fixtures", TAEHV / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(TAEHV / "taehv_io.safetensors")


@pytest.fixture(scope="module")
def seeded() -> dict[str, TinyVAE]:
    """Full-size TinyVAEs (taew2_2 and taew2_1 layouts) holding the fixtures' seeded TAEHV weights."""
    seeded_state = _generator().seeded_state
    out = {}
    for _, version in CASES:
        vae = TinyVAE(TinyVAEConfig.preset(version)).eval()
        vae.load_taehv_state(seeded_state({k: v.shape for k, v in vae.state_dict().items()}))
        out[version] = vae
    return out


@pytest.mark.parametrize(("name", "version"), CASES)
def test_tiny_vae_reproduces_taehv_decode_and_encode(io, seeded, name: str, version: str) -> None:
    vae = seeded[version]
    with torch.no_grad():
        frames = vae.decode(io[f"{name}.latents"])
        latents = vae.encode(io[f"{name}.frames_u8"].float() / 255)
    assert frames.shape == io[f"{name}.decoded"].shape  # [1, 9, 3, H, W]: 4(T-1)+1 frames
    assert (frames - io[f"{name}.decoded"]).abs().max() <= 1e-5
    assert (latents - io[f"{name}.encoded"]).abs().max() <= 1e-5


@pytest.mark.parametrize(("name", "version"), CASES)
def test_aligner_gives_taehv_the_denoiser_latents_unchanged(io, seeded, name: str, version: str) -> None:
    """With a Wan normalisation set (far from 0 / 1), the aligner's decode of a denoiser-space latent is TAEHV's decode
    of that same latent, and its encode returns TAEHV's latents: no z · std + mean in between."""
    vae = seeded[version]
    aligner = LatentAligner(AlignerConfig(version=version, decode_mapper="linear", encode_mapper="linear")).eval()
    aligner.tiny_vae.load_state_dict(vae.state_dict())
    c = aligner.latent_channels
    gen = torch.Generator().manual_seed(0)
    aligner.set_normalisation(torch.randn(c, generator=gen), 1.5 + torch.rand(c, generator=gen))
    with torch.no_grad():
        frames = aligner.decode(io[f"{name}.latents"])
        latents = aligner.encode(io[f"{name}.frames_u8"].float() / 255)
        raw = LatentAligner(AlignerConfig(version=version, tiny_vae_space="raw")).eval()
        raw.tiny_vae.load_state_dict(vae.state_dict())
        raw.norm.load_state_dict(aligner.norm.state_dict())
        raw_frames = raw.decode(io[f"{name}.latents"])
    assert (frames - io[f"{name}.decoded"]).abs().max() <= 1e-5
    assert (latents - io[f"{name}.encoded"]).abs().max() <= 1e-5
    assert (raw_frames - io[f"{name}.decoded"]).abs().max() > 0.05  # the old convention decodes other frames


def test_a_released_taehv_file_becomes_an_aligner(tmp_path, io, seeded) -> None:
    path = tmp_path / "taew2_2.pth"
    torch.save(seeded["wan22"].state_dict(), path)
    aligner = LatentAligner.from_taehv(path)
    assert (aligner.cfg.version, aligner.cfg.decode_mapper, aligner.cfg.tiny_vae_space) == (
        "wan22",
        "none",
        "normalised",
    )
    with torch.no_grad():
        frames = aligner.decode(io["taew2_2.latents"])
    assert (frames - io["taew2_2.decoded"]).abs().max() <= 1e-5


def test_exports_without_the_field_keep_the_raw_convention(tmp_path) -> None:
    import json

    from diff4splat.weights import load_safetensors, save_safetensors

    cfg = AlignerConfig(version="wan22", tiny_vae={"encoder_width": 8, "decoder_widths": [16, 8, 8, 8]})
    aligner = LatentAligner(cfg)
    aligner.save(tmp_path / "new.safetensors")
    assert LatentAligner.load(tmp_path / "new.safetensors").cfg.tiny_vae_space == "normalised"
    state, meta = load_safetensors(tmp_path / "new.safetensors", "aligner")
    old = json.loads(meta["config"])
    del old["tiny_vae_space"]
    save_safetensors(state, tmp_path / "old.safetensors", {**meta, "config": json.dumps(old)})
    assert LatentAligner.load(tmp_path / "old.safetensors").cfg.tiny_vae_space == "raw"


@pytest.mark.parametrize(("version", "channels", "family"), [("wan22", 16, "Wan2.1"), ("wan21", 48, "Wan2.2-TI2V-5B")])
def test_a_latent_of_the_other_family_fails_with_one_line(version: str, channels: int, family: str) -> None:
    aligner = LatentAligner(
        AlignerConfig(version=version, tiny_vae={"encoder_width": 8, "decoder_widths": [16, 8, 8, 8]})
    )
    z = torch.randn(1, channels, 2, 2, 3)
    for decode in (aligner.decode, aligner.tiny_vae.decode):
        with pytest.raises(ValueError, match=rf"\({family} \(\d+ channels, taew2_\d\)\) do not fit this") as err:
            decode(z)
        assert "\n" not in str(err.value)
