"""Reconstruction pipeline: frames + cameras (+ times) -> a trained LRDM -> deformable Gaussians, renders and files.

Load weights exported by training (``<checkpoint>.safetensors``, whose metadata holds the model config), a
Lightning ``.ckpt``, or a released reconstructor checkpoint: MoVieS's ``movies_ckpt.safetensors`` or
``facebook/VGGT-1B``'s ``model.pt`` / ``model.safetensors`` (a ``vggt``-encoder LRDM, architecture from the shapes;
see `diff4splat.models.released`). Cameras are canonicalised to the first input camera, as in training, and brought to
the LRDM's units automatically (a first pass measures the scene's mean distance, `diff4splat.pipelines.scale`;
``translation_scale`` overrides with a fixed factor); the Gaussians come back in the cameras' units.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from diff4splat.cli import InputError
from diff4splat.configs import to_dataclass
from diff4splat.gaussians import DeformableGaussians
from diff4splat.geometry.cameras import canonicalize
from diff4splat.models.lrdm import LRDM, LRDMConfig
from diff4splat.models.wan_vae import WanVAE
from diff4splat.pipelines.scale import SceneScale, rescaled_reconstruction
from diff4splat.rendering import render


@dataclass
class Reconstruction:
    gaussians: DeformableGaussians  # unbatched, pruned, with deformations at the query times
    c2w: Tensor  # [F, 4, 4] the canonicalised input cameras
    fxfycxcy: Tensor  # [F, 4]
    input_times: Tensor  # [F]
    image_size: tuple[int, int]
    scale: SceneScale | None = None  # how the cameras were brought to LRDM units (c2w and gaussians are in theirs)


def load_lrdm(path: str | Path, device: str | torch.device = "cpu") -> LRDM:
    """An LRDM from our ``.safetensors`` export (config in its metadata), a Lightning ``.ckpt``
    (``torch.load(weights_only=True)``), or a released VGGT / MoVieS checkpoint. Errors
    (`diff4splat.weights.WeightsError`) name the file and what is wrong."""
    from diff4splat.configs import ConfigError
    from diff4splat.models.released import lrdm_from_released, released_kind
    from diff4splat.weights import WeightsError, load_safetensors, load_state_checked, load_torch_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights: no file at {path}")
    if path.suffix == ".safetensors":
        state, meta = load_safetensors(path, "LRDM weights")
        if "hparams" not in meta and released_kind(state) is not None:
            return lrdm_from_released(state, str(path)).to(device).eval()
        if "hparams" not in meta:
            raise WeightsError(
                f"LRDM weights: {path}: no 'hparams' metadata (not a diff4splat export); cannot tell the model config"
            )
        try:
            model_cfg = json.loads(meta["hparams"]).get("model")
        except (json.JSONDecodeError, AttributeError) as e:
            raise WeightsError(f"LRDM weights: {path}: metadata 'hparams' is not a JSON object ({e})") from e
    else:
        ckpt = load_torch_file(path, "LRDM weights")
        if isinstance(ckpt, dict) and all(isinstance(v, Tensor) for v in ckpt.values()) and released_kind(ckpt):
            return lrdm_from_released(ckpt, str(path)).to(device).eval()  # VGGT-1B's model.pt
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
            raise WeightsError(
                f"LRDM weights: {path}: no 'state_dict' mapping; expected a Lightning checkpoint "
                "(.ckpt) of a reconstruction run, or a .safetensors export"
            )
        hparams = ckpt.get("hyper_parameters")
        model_cfg = hparams.get("model") if isinstance(hparams, dict) else None
        state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    if not isinstance(model_cfg, dict):
        raise WeightsError(f"LRDM weights: {path}: the model config is missing from the file")
    try:
        model = LRDM(to_dataclass(LRDMConfig, model_cfg, f"{path.name}:model"))
    except ConfigError as e:
        raise WeightsError(f"LRDM weights: {path}: the stored model config does not fit this LRDM ({e})") from e
    load_state_checked(model, state, path, "LRDM weights")
    return model.to(device).eval()


def size_multiple(model: LRDM) -> int:
    """Frame sides must be multiples of this: the LRDM's patch (``rgb`` encoder; ``vggt``: its DINO encoder's, 14) or
    latent cell (``latent``)."""
    c = model.config
    if c.encoder == "vggt":
        return c.vggt.encoder.patch_size
    return c.patch_size if c.encoder == "rgb" else c.latent_stride_s


def native_size(model: LRDM, height: int, width: int) -> tuple[int, int] | None:
    """The frame size a ``vggt`` LRDM reads frames of ``height`` x ``width`` at (give it to `fit_frames` as ``size``):
    the long side at the encoder's native size (its position grid x patch: VGGT-1B's 518), the other side scaled by
    the same factor and rounded to the nearest whole number of patches, as VGGT's own preprocessing does (a stretch
    of at most half a patch, which leaves normalised intrinsics exact; nothing is cropped). None for the other
    encoders (they read frames at the size given)."""
    c = model.config
    if c.encoder != "vggt":
        return None
    patch = c.vggt.encoder.patch_size
    scale = c.vggt.encoder.pos_grid * patch / max(height, width)
    return tuple(max(1, round(side * scale / patch)) * patch for side in (height, width))


def load_vae_for(model: LRDM, vae: str | Path | None, flag: str = "--vae") -> WanVAE | None:
    """The Wan VAE folder ``vae`` when ``model`` reads Wan latents (None otherwise); a missing path names ``flag``."""
    if model.config.encoder != "latent":
        return None
    if not vae:
        raise InputError(f"{flag}: this LRDM reads Wan latents; pass the Wan VAE folder")
    return WanVAE.from_pretrained(vae)


class ReconstructionPipeline:
    def __init__(self, model: LRDM, vae: WanVAE | None = None, backend: str = "auto") -> None:
        self.model, self.vae, self.backend = model.eval(), vae, backend
        if model.config.encoder == "latent" and vae is None:
            raise ValueError("a latent-encoder LRDM needs a Wan VAE to encode frames (pass vae=WanVAE...)")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def __call__(
        self,
        images: Tensor,  # [F, 3, H, W] in [0, 1]
        c2w: Tensor,  # [F, 4, 4] OpenCV
        fxfycxcy: Tensor,  # [F, 4]
        times: Tensor | None = None,  # [F] in [0, 1]; default linspace
        query_times: Tensor | None = None,  # [T]; default = the input times
        translation_scale: float | None = None,  # c2w units x this = LRDM units; None: automatic
        prune_threshold: float | None = None,
    ) -> Reconstruction:
        f = images.shape[0]
        if c2w.shape != (f, 4, 4) or fxfycxcy.shape != (f, 4):
            raise ValueError(f"{f} frames but cameras {tuple(c2w.shape)} / intrinsics {tuple(fxfycxcy.shape)}")
        dev = self.device
        times = torch.linspace(0, 1, f) if times is None else times.float()
        query = times.clone() if query_times is None else query_times.float()
        cams = canonicalize(c2w.double()).float()
        images, cams, fx = images.to(dev), cams.to(dev), fxfycxcy.to(dev).float()
        latents = None
        if self.model.config.encoder == "latent":
            latents = self.vae.to(dev).encode(images[None])

        def run(lrdm_cams: Tensor, canonical_only: bool) -> DeformableGaussians:  # [F, 4, 4] in LRDM units
            out = self.model(
                lrdm_cams[None],
                fx[None],
                times.to(dev)[None],
                query.to(dev)[None],
                images=images[None] if latents is None else None,
                latents=latents,
                image_size=tuple(images.shape[-2:]),
                canonical_only=canonical_only,
            )
            return out.gaussians.unbind()[0]  # unpruned

        unbatched, scale = rescaled_reconstruction(run, cams, translation_scale)
        threshold = self.model.config.prune_threshold if prune_threshold is None else prune_threshold
        if threshold > 0:
            unbatched = unbatched.prune(threshold)
        return Reconstruction(unbatched, cams, fx, times.to(dev), tuple(images.shape[-2:]), scale)

    @torch.no_grad()
    def render_views(self, rec: Reconstruction, c2w: Tensor, fxfycxcy: Tensor, times: Tensor) -> tuple[Tensor, Tensor]:
        """Render view k with camera k at time k: RGB [V, 3, H, W] and depth [V, 1, H, W]."""
        h, w = rec.image_size
        rgbs, depths = [], []
        for k in range(c2w.shape[0]):
            g = rec.gaussians.at(times[k])
            r = render(g, c2w[k : k + 1], fxfycxcy[k : k + 1], h, w, backend=self.backend)
            rgbs.append(r.rgb[0])
            depths.append(r.depth[0])
        return torch.stack(rgbs).clamp(0, 1), torch.stack(depths)
