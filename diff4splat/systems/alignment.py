"""Latent alignment training (reference §7.2): frames → Wan VAE (frozen) → latents → TinyVAE path (trained) → frames,
checked by a frozen RGB LRDM.

Losses (weights in ``AlignLoss``):

- ``pixel`` (MSE) and ``lpips``: the decode path's frames (``LatentAligner.decode`` of the Wan latents) against the real
  frames;
- ``latent``: the encode path (``LatentAligner.encode`` of the real frames) against the Wan latents (MSE, normalised
  space); ``cycle``: frames → encode path → decode path → frames (MSE);
- ``render``: a frozen LRDM (``encoder: rgb``) predicts Gaussians from the *decoded* input frames; they are rendered
  at the target views and compared with the real target frames (MSE), so decoding errors that hurt reconstruction
  cost more.

Batches: the clip contract (``datamodules/batch.py``: ``images`` with ``num_input`` inputs, time-ordered, 1 + 4k of
them; the outputs are the render targets) or the video contract (``datamodules/video.py``: ``frames`` 1 + 4k in time
order with ``c2w``/``fxfycxcy``; ``lrdm_num_input`` evenly spaced decoded frames are the LRDM inputs, every frame a
render target, times spread over [0, 1]). Latents come from the batch (``latents``) or the frozen Wan VAE (``vae``:
``pretrained`` at ``vae_path`` or a random ``tiny`` one for tests).

Logged: ``train/loss`` and its parts, ``train/psnr``; ``val/psnr``, ``val/ssim`` (decoded vs real frames),
``val/lpips``, ``val/latent_mse``, ``val/psnr_wan`` (the Wan VAE's own decode: the ceiling), ``val/psnr_render``
(LRDM from decoded frames) and ``val/psnr_render_real`` (LRDM from the real frames), and the same under ``test/``.
The exported weights (``export_prefix = "aligner."``) load with ``LatentAligner.load``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from diff4splat.configs import to_dataclass, to_plain
from diff4splat.losses.lpips import LPIPS
from diff4splat.losses.photometric import psnr, ssim
from diff4splat.models.alignment import AlignerConfig, LatentAligner
from diff4splat.models.lrdm import LRDM, LRDMConfig
from diff4splat.models.tiny_vae import TinyVAE
from diff4splat.models.wan_vae import WanVAE
from diff4splat.systems.frozen import check_latent_interface, frozen_wan_vae
from diff4splat.systems.optimizer import OptimConfig, check_finite_loss, configure_optimizer, optim_config
from diff4splat.systems.reconstruction import load_lrdm_weights, render_at_query_times

log = logging.getLogger(__name__)


@dataclass
class AlignLoss:
    pixel: float = 1.0
    lpips: float = 0.5
    latent: float = 1.0
    cycle: float = 0.0
    render: float = 0.0
    lpips_pretrained: bool = True  # False: random VGG (tests only; the numbers are not LPIPS)
    lpips_vgg_path: str | None = None
    lpips_lin_path: str | None = None


# The reference: AdamW, lr 1e-4, betas (0.9, 0.95), wd 0.01, 500 warm-up steps, cosine decay. One group, "aligner".
DEFAULT_OPTIM = OptimConfig(lr=1e-4, betas=[0.9, 0.95], weight_decay=0.01, warmup_steps=500, min_lr_ratio=0.0)
OPTIM_GROUPS = ("aligner",)


@dataclass
class AlignTrain:
    """Which parts of the aligner are trained."""

    decoder: bool = True
    encoder: bool = True
    decode_mapper: bool = True
    encode_mapper: bool = True


@dataclass
class AlignView:
    """The tensors of one batch that the losses use (see ``split_batch``)."""

    frames: Tensor  # [B, F, 3, H, W] time-ordered, F = 1 + 4k: what the VAEs see (and the LRDM inputs come from)
    c2w: Tensor  # [B, F, 4, 4]
    fxfycxcy: Tensor  # [B, F, 4]
    times: Tensor  # [B, F]
    lrdm_inputs: Tensor  # [F_in] indices into frames
    targets: Tensor  # [B, V, 3, H, W] render targets
    target_c2w: Tensor
    target_fxfycxcy: Tensor
    target_times: Tensor


def split_batch(batch: dict[str, Any], lrdm_num_input: int) -> AlignView:
    """Clip contract (``images`` + ``num_input``) or video contract (``frames``) -> ``AlignView``."""
    if "images" in batch:
        fi = int(batch["num_input"])
        im, c2w, k, t = batch["images"], batch["c2w"], batch["fxfycxcy"], batch["timestamps"]
        return AlignView(
            im[:, :fi],
            c2w[:, :fi],
            k[:, :fi],
            t[:, :fi],
            torch.arange(fi, device=im.device),
            im[:, fi:],
            c2w[:, fi:],
            k[:, fi:],
            t[:, fi:],
        )
    if "frames" not in batch:
        raise ValueError("alignment batch: expected 'images' + 'num_input' (clip contract) or 'frames' (video)")
    frames = batch["frames"]
    if frames.dtype == torch.uint8:
        frames = frames.float() / 255.0
    b, f = frames.shape[:2]
    times = torch.linspace(0, 1, f, device=frames.device).expand(b, f)
    n = min(lrdm_num_input, f)
    idx = torch.linspace(0, f - 1, n, device=frames.device).round().long()
    return AlignView(
        frames, batch["c2w"], batch["fxfycxcy"], times, idx, frames, batch["c2w"], batch["fxfycxcy"], times
    )


class LatentAlignmentSystem(L.LightningModule):
    export_prefix = "aligner."

    def __init__(
        self,
        aligner: dict[str, Any] | DictConfig | AlignerConfig | None = None,
        loss: dict[str, Any] | DictConfig | AlignLoss | None = None,
        optim: dict[str, Any] | DictConfig | OptimConfig | None = None,
        train_parts: dict[str, Any] | DictConfig | AlignTrain | None = None,
        taehv_path: str | None = None,
        vae: Literal["pretrained", "tiny"] = "pretrained",
        vae_path: str | None = None,
        tiny_vae_base_dim: int = 16,
        lrdm: dict[str, Any] | DictConfig | LRDMConfig | None = None,
        lrdm_init_from: str | None = None,
        lrdm_num_input: int = 5,
        render_views: int = 0,
        render_backend: str = "auto",
        eval_wan_decode: bool = True,
        max_steps: int = 100_000,
    ) -> None:
        super().__init__()
        self.aligner_cfg = to_dataclass(AlignerConfig, aligner, "system.aligner")
        self.loss_cfg = to_dataclass(AlignLoss, loss, "system.loss")
        self.optim_cfg = optim_config(optim, DEFAULT_OPTIM, OPTIM_GROUPS)
        self.train_cfg = to_dataclass(AlignTrain, train_parts, "system.train_parts")
        self.lrdm_cfg = to_dataclass(LRDMConfig, lrdm, "system.lrdm") if lrdm is not None else None
        self.max_steps, self.lrdm_num_input, self.render_views = max_steps, lrdm_num_input, render_views
        self.render_backend, self.eval_wan_decode = render_backend, eval_wan_decode
        self.save_hyperparameters(
            {
                "aligner": asdict(self.aligner_cfg),
                "loss": to_plain(self.loss_cfg),
                "optim": to_plain(self.optim_cfg),
                "train_parts": to_plain(self.train_cfg),
                "taehv_path": taehv_path,
                "vae": vae,
                "vae_path": vae_path,
                "tiny_vae_base_dim": tiny_vae_base_dim,
                "lrdm": to_plain(self.lrdm_cfg) if self.lrdm_cfg else None,
                "lrdm_init_from": lrdm_init_from,
                "lrdm_num_input": lrdm_num_input,
                "render_views": render_views,
                "max_steps": max_steps,
            }
        )

        self.aligner = LatentAligner(self.aligner_cfg)
        if taehv_path:
            tv = TinyVAE.from_taehv(taehv_path, self.aligner_cfg.version, **self.aligner_cfg.tiny_vae)
            self.aligner.tiny_vae.load_state_dict(tv.state_dict())
        # Frozen helpers are kept out of the module tree: neither trained, nor checkpointed, nor exported.
        channels = self.aligner.latent_channels
        wan = frozen_wan_vae(vae, vae_path, channels, base_dim=tiny_vae_base_dim, choices=("pretrained", "tiny"))
        self._vae: list[WanVAE] = [wan]
        check_latent_interface(
            wan, channels, self.aligner.stride_s, consumer=f"the TinyVAE ({self.aligner_cfg.version})"
        )
        self.aligner.set_normalisation(wan.mean, wan.std)

        self._lrdm: list[LRDM] = []
        if self.lrdm_cfg is not None:
            if self.lrdm_cfg.encoder != "rgb":
                raise ValueError("system.lrdm: the frozen LRDM must use encoder 'rgb' (it reads decoded frames)")
            model = LRDM(self.lrdm_cfg)
            if lrdm_init_from:
                load_lrdm_weights(model, lrdm_init_from)
            else:
                log.warning(
                    "system.lrdm_init_from is not set: the frozen LRDM has random weights, so the render loss "
                    "and val/psnr_render only check the plumbing"
                )
            self._lrdm.append(model.eval().requires_grad_(False))
        elif self.loss_cfg.render > 0:
            raise ValueError("system.loss.render > 0 needs a frozen LRDM (system.lrdm)")

        t = self.train_cfg
        self.aligner.tiny_vae.decoder.requires_grad_(t.decoder)
        self.aligner.tiny_vae.encoder.requires_grad_(t.encoder)
        self.aligner.decode_mapper.requires_grad_(t.decode_mapper)
        self.aligner.encode_mapper.requires_grad_(t.encode_mapper)
        lc = self.loss_cfg
        self.lpips = LPIPS(lc.lpips_pretrained, lc.lpips_vgg_path, lc.lpips_lin_path) if lc.lpips > 0 else None
        self.last_media: dict[str, Tensor] | None = None

    # --- frozen helpers --------------------------------------------------------------------------------------------
    def wan(self, device: torch.device) -> WanVAE:
        return self._vae[0].to(device)

    def lrdm(self, device: torch.device) -> LRDM | None:
        return self._lrdm[0].to(device) if self._lrdm else None

    def wan_latents(self, batch: dict[str, Any], view: AlignView) -> Tensor:
        if batch.get("latents") is not None:
            return batch["latents"].float()
        return self.wan(view.frames.device).encode(view.frames)

    def target_subset(self, view: AlignView) -> Tensor:
        """Indices of the render targets used: all, or ``render_views`` of them (random in training, else spread)."""
        v = view.targets.shape[1]
        n = self.render_views
        if n <= 0 or n >= v:
            return torch.arange(v, device=view.targets.device)
        if self.training:
            return torch.randperm(v, device=view.targets.device)[:n].sort().values
        return torch.linspace(0, v - 1, n, device=view.targets.device).round().long()

    def render_from(self, frames: Tensor, view: AlignView, targets: Tensor) -> Tensor:
        """Frozen LRDM on ``frames`` [B, F, 3, H, W] (the view's LRDM inputs), rendered at targets ``targets``."""
        model = self.lrdm(frames.device)
        i = view.lrdm_inputs
        h, w = frames.shape[-2:]
        out = model(
            c2w=view.c2w[:, i],
            fxfycxcy=view.fxfycxcy[:, i],
            input_times=view.times[:, i],
            query_times=view.target_times[:, targets],
            images=frames[:, i],
            image_size=(h, w),
        )
        return render_at_query_times(
            out.gaussians,
            view.target_c2w[:, targets],
            view.target_fxfycxcy[:, targets],
            h,
            w,
            backend=self.render_backend,
            background=torch.zeros(3, device=frames.device),
        )

    # --- losses ----------------------------------------------------------------------------------------------------
    def compute_losses(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], AlignView, Tensor, Tensor]:
        """(losses, view, decoded frames (unclamped), Wan latents)."""
        lc = self.loss_cfg
        view = split_batch(batch, self.lrdm_num_input)
        frames = view.frames
        if (frames.shape[1] - 1) % 4:
            raise ValueError(
                f"latent alignment needs 1 + 4k time-ordered frames per clip, got {frames.shape[1]} "
                "(clip contract: set data.sampling.num_input to 1 + 4k)"
            )
        latents = self.wan_latents(batch, view)
        decoded = self.aligner.decode(latents, clamp=False)  # [B, F, 3, H, W]
        parts: dict[str, Tensor] = {}
        if lc.pixel > 0:
            parts["pixel"] = F.mse_loss(decoded, frames)
        if self.lpips is not None:
            parts["lpips"] = self.lpips(decoded.clamp(0, 1), frames).mean()
        if lc.latent > 0:
            parts["latent"] = F.mse_loss(self.aligner.encode(frames), latents)
        if lc.cycle > 0:
            parts["cycle"] = F.mse_loss(self.aligner.decode(self.aligner.encode(frames), clamp=False), frames)
        if lc.render > 0:
            j = self.target_subset(view)
            parts["render"] = F.mse_loss(self.render_from(decoded.clamp(0, 1), view, j), view.targets[:, j])
        weights = asdict(lc)
        total = sum(weights[k] * v for k, v in parts.items())
        return {"loss": total, **parts}, view, decoded, latents

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        losses, view, decoded, _ = self.compute_losses(batch)
        check_finite_loss(losses, self.global_step, batch.get("key"))
        bs = view.frames.shape[0]
        for k, v in losses.items():
            self.log(f"train/{k}", v, prog_bar=k == "loss", batch_size=bs)
        self.log("train/psnr", psnr(decoded.detach().clamp(0, 1), view.frames), prog_bar=True, batch_size=bs)
        return losses["loss"]

    @torch.no_grad()
    def _evaluate(self, batch: dict[str, Any], prefix: str, batch_idx: int) -> None:
        losses, view, decoded, latents = self.compute_losses(batch)
        decoded = decoded.clamp(0, 1)
        frames, bs = view.frames, view.frames.shape[0]
        log_ = lambda k, v: self.log(f"{prefix}/{k}", v, sync_dist=True, batch_size=bs, prog_bar=k == "psnr")  # noqa: E731
        log_("loss", losses["loss"])
        log_("psnr", psnr(decoded, frames))
        log_("ssim", ssim(decoded.flatten(0, 1), frames.flatten(0, 1)))
        if self.lpips is not None:
            log_("lpips", losses["lpips"])
        log_("latent_mse", F.mse_loss(self.aligner.encode(frames), latents))
        if self.eval_wan_decode:
            log_("psnr_wan", psnr(self.wan(frames.device).decode(latents), frames))
        if self._lrdm:
            j = self.target_subset(view)
            log_("psnr_render", psnr(self.render_from(decoded, view, j).clamp(0, 1), view.targets[:, j]))
            log_("psnr_render_real", psnr(self.render_from(frames, view, j).clamp(0, 1), view.targets[:, j]))
        if batch_idx == 0:
            self.last_media = {
                "inputs": frames[0, :1].float().cpu(),
                "target": frames[0].float().cpu(),
                "pred": decoded[0].float().cpu(),
            }

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val", batch_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test", batch_idx)

    def configure_optimizers(self) -> Any:
        if not any(p.requires_grad for p in self.aligner.parameters()):
            raise ValueError("system.train_parts: nothing to train (every part is frozen)")
        return configure_optimizer(self.optim_cfg, {OPTIM_GROUPS[0]: list(self.aligner.parameters())}, self.max_steps)
