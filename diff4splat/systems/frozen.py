"""The frozen Wan VAE of the training systems: built from ``system.vae`` / ``system.vae_path`` and kept out of the
system's module tree (held in a list, not a submodule), so it is neither trained, nor checkpointed, nor exported
(705 M parameters for Wan2.2's)."""

from __future__ import annotations

from collections.abc import Sequence

from diff4splat.models.wan_vae import WanVAE

VAE_CHOICES = ("none", "pretrained", "tiny")


def frozen_wan_vae(
    choice: str,
    path: str | None,
    z_dim: int,
    calibrate: bool = True,
    base_dim: int | None = None,
    choices: Sequence[str] = VAE_CHOICES,
) -> WanVAE | None:
    """``none``: no VAE; ``pretrained``: the diffusers Wan VAE folder at ``path``; ``tiny``: a random tiny one with
    ``z_dim`` latent channels (tests, CPU runs; see `WanVAE.tiny` for ``calibrate`` and ``base_dim``)."""
    if choice not in choices:
        raise ValueError(f"system.vae must be one of {list(choices)}, got {choice!r}")
    if choice == "pretrained":
        if not path:
            raise ValueError("system.vae=pretrained needs system.vae_path (a local diffusers Wan VAE folder)")
        return WanVAE.from_pretrained(path)
    if choice == "tiny":
        return WanVAE.tiny(z_dim=z_dim, calibrate=calibrate, base_dim=base_dim)
    return None


def check_latent_interface(
    vae: WanVAE, channels: int, stride_s: int, stride_t: int | None = None, consumer: str = "the model"
) -> None:
    """The VAE's latents have the ``channels`` and spatial (and, when given, temporal) stride ``consumer`` expects."""
    got = (vae.latent_channels, vae.stride_s, vae.stride_t if stride_t is not None else None)
    if got != (channels, stride_s, stride_t):
        strides = "strides (t, s)" if stride_t is not None else "stride"
        given = (vae.stride_t, vae.stride_s) if stride_t is not None else vae.stride_s
        wanted = (stride_t, stride_s) if stride_t is not None else stride_s
        raise ValueError(
            f"Wan VAE gives {vae.latent_channels} channels at {strides} {given}, but {consumer} expects {channels} "
            f"at {wanted}"
        )
