"""LRDM training: frames (or Wan latents) of the input views -> deformable Gaussians -> every output view rendered at
its own time -> photometric, depth and motion losses.

Batches follow ``datamodules/batch.py``: frames ``[:num_input]`` are the inputs, the rest the outputs. Losses per
scene are weighted by the per-dataset ``depth_weight`` / ``motion_weight``. ``stage="static"`` freezes the
deformation head (the paper's first two stages); ``stage="dynamic"`` trains everything. Logged: ``train/loss`` and
its parts, ``val/psnr``, ``val/ssim``, ``val/lpips`` and ``val/psnr_nearest_input`` (the baseline that shows each output
view the input frame whose camera is nearest), the loss-independent geometry metrics ``val/depth_abs_rel`` (predicted
depth of the Gaussian frames against ground truth) and ``val/motion_epe`` (predicted Δμ against the tracks' world
motion, scene units; batches with tracks only), and the same under ``test/``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn
from torchmetrics import MeanMetric

from diff4splat.configs import to_dataclass, to_plain
from diff4splat.gaussians import DeformableGaussians
from diff4splat.losses.geometry import depth_loss_paper, depth_loss_released
from diff4splat.losses.lpips import LPIPS
from diff4splat.losses.motion import motion_loss_paper, motion_loss_released, no_motion_loss, track_motion
from diff4splat.losses.photometric import psnr, ssim
from diff4splat.metrics import nearest_input_frames
from diff4splat.models.lrdm import LRDM, LRDMConfig, LRDMOutput, gaussians_at_all_times
from diff4splat.models.wan_vae import WanVAE
from diff4splat.rendering import render
from diff4splat.systems.frozen import check_latent_interface, frozen_wan_vae
from diff4splat.systems.optimizer import OptimConfig, check_finite_loss, configure_optimizer, optim_config

log = logging.getLogger(__name__)


@dataclass
class ReconLoss:
    """Loss weights and variants (released code vs paper)."""

    mse: float = 1.0
    lpips: float = 0.5
    ssim: float = 0.0
    depth: float = 1.0
    depth_mode: Literal["released", "paper"] = "released"
    depth_gradient_weight: float = 1.0  # released: multi-scale gradient matching weight
    depth_tv_weight: float = 0.1  # paper: TV weight
    motion: float = 10.0
    motion_mode: Literal["released", "paper"] = "released"
    motion_distribution_weight: float = 10.0  # released: Gram distribution loss weight
    opacity_l1: float = 0.0
    deformation_l2: float = 0.0
    lpips_pretrained: bool = True  # False: random VGG (tests only; the numbers are not LPIPS)
    lpips_vgg_path: str | None = None
    lpips_lin_path: str | None = None


# vggt encoder: parameter names (substrings, as MoVieS matches them) in the "heads" group: the Gaussian heads, the
# pose and time tokens and the heads' time AdaLN; everything else ("trunk": the VGGT-1B parts and the Plücker
# embedding) is fine-tuned at lr × lr_mult.trunk (MoVieS: 0.1).
VGGT_HEAD_NAMES = ("splat_head", "extra_embed", "time_embed")

# The reference's recipe: AdamW, linear warm-up then cosine decay. Groups: "trunk" (the transformer trunk and patch
# embedding; the reference fine-tunes it at 0.1 × lr) and "heads" (heads, decoder and conditioning embeddings).
DEFAULT_OPTIM = OptimConfig(lr=4e-4, betas=[0.9, 0.95], weight_decay=0.05, warmup_steps=1000, min_lr_ratio=0.0)
OPTIM_GROUPS = ("trunk", "heads")


@dataclass
class ReconRender:
    backend: str = "auto"
    background: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    tile_size: int = 16  # rasteriser tile side; small images render faster on the torch backend with 4-8


class ReconstructionSystem(L.LightningModule):
    export_prefix = "model."

    def __init__(
        self,
        model: dict[str, Any] | DictConfig | LRDMConfig | None = None,
        loss: dict[str, Any] | DictConfig | ReconLoss | None = None,
        optim: dict[str, Any] | DictConfig | OptimConfig | None = None,
        render_cfg: dict[str, Any] | DictConfig | ReconRender | None = None,
        stage: Literal["static", "dynamic"] = "dynamic",
        max_steps: int = 100_000,
        init_from: str | list[str] | None = None,
        compile: bool = False,
        vae: Literal["none", "pretrained", "tiny"] = "none",
        vae_path: str | None = None,
    ) -> None:
        super().__init__()
        self.model_cfg = to_dataclass(LRDMConfig, model, "system.model")
        self.loss_cfg = to_dataclass(ReconLoss, loss, "system.loss")
        self.optim_cfg = optim_config(optim, DEFAULT_OPTIM, OPTIM_GROUPS)
        self.render_cfg = to_dataclass(ReconRender, render_cfg, "system.render_cfg")
        if stage not in ("static", "dynamic"):
            raise ValueError(f"system.stage must be 'static' or 'dynamic', got {stage!r}")
        self.stage, self.max_steps = stage, max_steps
        self.save_hyperparameters(
            {
                "model": to_plain(self.model_cfg),
                "loss": to_plain(self.loss_cfg),
                "optim": to_plain(self.optim_cfg),
                "render_cfg": to_plain(self.render_cfg),
                "stage": stage,
                "max_steps": max_steps,
                "init_from": init_from if isinstance(init_from, str | None) else [str(p) for p in init_from],
            }
        )
        self.model = LRDM(self.model_cfg)
        for path in [init_from] if isinstance(init_from, str) else init_from or []:
            load_lrdm_weights(self.model, path)  # in order: e.g. VGGT-1B, then a static stage's export over it
        if self.model_cfg.encoder == "vggt":
            freeze_vggt_stage(self.model, stage)
        elif stage == "static" and self.model.deform_head is not None:
            self.model.deform_head.requires_grad_(False)
            self.model.deform_norm.requires_grad_(False)
        lc = self.loss_cfg
        self.lpips = (
            LPIPS(lc.lpips_pretrained, lc.lpips_vgg_path, lc.lpips_lin_path) if lc.lpips > 0 else None
        )  # loss term; also the val/lpips metric when present
        self.register_buffer("background", torch.tensor(self.render_cfg.background), persistent=False)
        self.geometry_means = nn.ModuleDict(
            {f"{p}_{n}": MeanMetric() for p in ("val", "test") for n in ("depth_abs_rel", "motion_epe")}
        )
        self.last_media: dict[str, Tensor] | None = None
        self._compile = compile
        # The frozen Wan VAE (latent encoder only; see `systems.frozen`); batches may instead carry latents.
        mc = self.model_cfg
        wan = frozen_wan_vae(vae if mc.encoder == "latent" else "none", vae_path, mc.latent_channels, calibrate=False)
        self._vae: list[WanVAE] = [wan] if wan is not None else []
        if wan is not None:
            check_latent_interface(wan, mc.latent_channels, mc.latent_stride_s)

    def configure_model(self) -> None:
        if self._compile:  # in place: no `_orig_mod.` wrapper, so checkpoints and exports keep the model's keys
            from diff4splat.models.parallel import compile_in_place

            for block in self.model.transformer_blocks():
                compile_in_place(block)

    # --- forward ---------------------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> tuple[LRDMOutput, Tensor]:
        """Predict Gaussians from the input frames and render every output view: (output, rgb [B, F_out, 3, H, W])."""
        fi = int(batch["num_input"])
        h, w = batch["images"].shape[-2:]
        out = self.predict(batch, self.input_latents(batch))
        rgb = render_at_query_times(
            out.gaussians,
            batch["c2w"][:, fi:],
            batch["fxfycxcy"][:, fi:],
            h,
            w,
            backend=self.render_cfg.backend,
            background=self.background,
            tile_size=self.render_cfg.tile_size,
        )
        return out, rgb

    def input_latents(self, batch: dict[str, Any]) -> Tensor | None:
        """The input frames' latents of a latent-encoder LRDM: the batch's, or encoded online by the frozen VAE."""
        latents = batch.get("latents")
        if self.model_cfg.encoder == "latent" and latents is None:
            if not self._vae:
                raise ValueError("LRDM(encoder='latent'): the batch has no 'latents' and system.vae is 'none'")
            images = batch["images"]
            latents = self._vae[0].to(images.device).encode(images[:, : int(batch["num_input"])])
        return latents

    def predict(self, batch: dict[str, Any], latents: Tensor | None) -> LRDMOutput:
        fi = int(batch["num_input"])
        images = batch["images"]
        return self.model(
            c2w=batch["c2w"][:, :fi],
            fxfycxcy=batch["fxfycxcy"][:, :fi],
            input_times=batch["timestamps"][:, :fi],
            query_times=batch["timestamps"][:, fi:],
            images=images[:, :fi] if self.model_cfg.encoder != "latent" else None,
            latents=latents,
            image_size=tuple(images.shape[-2:]),
        )

    @torch.no_grad()
    def model_flops(self, batch: dict[str, Any]) -> float:
        """Training FLOPs of ``batch`` for the throughput callback: 3 × the LRDM network's forward FLOPs (online VAE
        encoding and Gaussian rasterisation are not counted)."""
        from diff4splat.models.parallel import forward_flops

        latents = self.input_latents(batch)
        return 3 * forward_flops(lambda: self.predict(batch, latents))

    # --- losses ----------------------------------------------------------------------------------------------------
    def compute_losses(self, batch: dict[str, Any], out: LRDMOutput, rgb: Tensor) -> dict[str, Tensor]:
        lc = self.loss_cfg
        fi = int(batch["num_input"])
        target = batch["images"][:, fi:]
        parts: dict[str, Tensor] = {}
        parts["mse"] = F.mse_loss(rgb, target, reduction="none").flatten(1).mean(1)  # [B]
        if self.lpips is not None:
            parts["lpips"] = self.lpips(rgb * 1.0, target).mean(1)  # LPIPS per view -> per scene
        if lc.ssim > 0:
            parts["ssim"] = 1 - ssim(rgb, target, reduction="none").mean(1)
        if lc.depth > 0:
            gt, valid = depth_targets(batch, out)
            fn = depth_loss_released if lc.depth_mode == "released" else depth_loss_paper
            kw = (
                {"gradient_weight": lc.depth_gradient_weight}
                if lc.depth_mode == "released"
                else {"tv_weight": lc.depth_tv_weight}
            )
            has = valid.flatten(1).any(1)
            parts["depth"] = torch.where(has, fn(out.depth, gt, valid, **kw), torch.zeros_like(has, dtype=rgb.dtype))
            parts["depth"] = parts["depth"] * batch["depth_weight"]
        if lc.motion > 0 and self.stage == "dynamic" and self.model.dynamic:
            dm = out.gaussians.delta_means
            pred, gt_motion, valid = track_pairs(batch, out)
            fn = motion_loss_released if lc.motion_mode == "released" else motion_loss_paper
            kw = {"distribution_weight": lc.motion_distribution_weight} if lc.motion_mode == "released" else {}
            has_tracks = valid.flatten(1).any(1)
            with_tracks = fn(pred, gt_motion, valid, **kw)
            parts["motion"] = torch.where(has_tracks, with_tracks, no_motion_loss(dm)) * batch["motion_weight"]
        if lc.opacity_l1 > 0:
            parts["opacity"] = out.gaussians.opacities_at_times().flatten(1).mean(1)  # at the query times
        if lc.deformation_l2 > 0 and self.model.dynamic:
            parts["deformation"] = out.gaussians.delta_means.square().flatten(1).mean(1)
        weights = {
            "mse": lc.mse,
            "lpips": lc.lpips,
            "ssim": lc.ssim,
            "depth": lc.depth,
            "motion": lc.motion,
            "opacity": lc.opacity_l1,
            "deformation": lc.deformation_l2,
        }
        total = sum(weights[k] * v for k, v in parts.items())
        return {"loss": total.mean(), **{k: v.mean() for k, v in parts.items()}}

    # --- steps -----------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out, rgb = self(batch)
        losses = self.compute_losses(batch, out, rgb)
        check_finite_loss(losses, self.global_step, batch.get("key"))
        bs = rgb.shape[0]
        for k, v in losses.items():
            self.log(f"train/{k}", v, prog_bar=k == "loss", batch_size=bs)
        fi = int(batch["num_input"])
        self.log("train/psnr", psnr(rgb.detach(), batch["images"][:, fi:]), prog_bar=True, batch_size=bs)
        self.log("train/num_gaussians", float(out.gaussians.num_gaussians), batch_size=bs)
        return losses["loss"]

    @torch.no_grad()
    def _evaluate(self, batch: dict[str, Any], prefix: str, batch_idx: int) -> None:
        out, rgb = self(batch)
        rgb = rgb.clamp(0, 1)
        fi = int(batch["num_input"])
        target = batch["images"][:, fi:]
        bs = rgb.shape[0]
        self.log(f"{prefix}/psnr", psnr(rgb, target), prog_bar=True, sync_dist=True, batch_size=bs)
        self.log(f"{prefix}/ssim", ssim(rgb, target), sync_dist=True, batch_size=bs)
        if self.lpips is not None:
            self.log(f"{prefix}/lpips", self.lpips(rgb, target).mean(), sync_dist=True, batch_size=bs)
        nearest = nearest_input_frames(batch)
        self.log(f"{prefix}/psnr_nearest_input", psnr(nearest, target), sync_dist=True, batch_size=bs)
        self.log(f"{prefix}/loss", self.compute_losses(batch, out, rgb)["loss"], sync_dist=True, batch_size=bs)
        for name, (value, count) in geometry_metrics(batch, out).items():
            metric = self.geometry_means[f"{prefix}_{name}"]  # weighted by pixels/pairs; DDP-safe when count is 0
            metric.update(value, count)
            self.log(f"{prefix}/{name}", metric)
        if batch_idx == 0:
            self.last_media = {
                "pred": rgb[0].float().cpu(),
                "target": target[0].float().cpu(),
                "inputs": batch["images"][0, :fi].float().cpu(),
            }

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val", batch_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test", batch_idx)

    # --- optimisation ------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        groups: dict[str, list[nn.Parameter]] = {name: [] for name in OPTIM_GROUPS}
        vggt = self.model_cfg.encoder == "vggt"
        for name, p in self.model.named_parameters():
            if vggt:  # MoVieS's exclude_name_lr_mult: these at the full lr, the rest (VGGT's parts, Plücker) × lr_mult
                groups["heads" if any(k in name for k in VGGT_HEAD_NAMES) else "trunk"].append(p)
            else:
                groups["trunk" if name.startswith(("trunk.", "patch_embed.")) else "heads"].append(p)
        return configure_optimizer(self.optim_cfg, groups, self.max_steps)


def render_at_query_times(
    gaussians: DeformableGaussians,  # batch [B], T query times
    c2w: Tensor,  # [B, T, 4, 4]
    fxfycxcy: Tensor,  # [B, T, 4]
    height: int,
    width: int,
    **render_kw: Any,
) -> Tensor:  # [B, T, 3, H, W]
    """Render view k at query time k of every scene, all in one call (``render_kw``: `diff4splat.rendering.render`'s
    options)."""
    g = gaussians_at_all_times(gaussians)  # batch [B, T]
    return render(g, c2w[:, :, None], fxfycxcy[:, :, None], height, width, **render_kw).rgb[:, :, 0]


def depth_targets(batch: dict[str, Any], out: LRDMOutput) -> tuple[Tensor, Tensor]:
    """Ground-truth depth and its validity [B, F_g, h, w] at the Gaussian cells: the frames that emitted Gaussians,
    sampled nearest at the cell centres when the Gaussian grid is coarser than the pixels."""
    gt = batch["depth"][:, out.frame_indices]
    valid = batch["depth_valid"][:, out.frame_indices]
    grid = tuple(out.grid[1:])
    if tuple(gt.shape[-2:]) != grid:
        gt = F.interpolate(gt, size=grid, mode="nearest")
        valid = F.interpolate(valid.float(), size=grid, mode="nearest") > 0.5
    return gt, valid


def track_pairs(batch: dict[str, Any], out: LRDMOutput) -> tuple[Tensor, Tensor, Tensor]:
    """(predicted Δμ, world motion, valid) of the tracks at every output frame (see `losses.motion.track_motion`)."""
    fi = int(batch["num_input"])
    h, w = batch["images"].shape[-2:]
    dm = out.gaussians.delta_means
    query_frames = torch.arange(fi, batch["c2w"].shape[1], device=dm.device)
    return track_motion(
        dm,
        out.grid,
        out.frame_indices,
        query_frames,
        batch["tracks_world"],
        batch["tracks_visible"],
        batch["c2w"],
        batch["fxfycxcy"],
        h,
        w,
    )


def geometry_metrics(batch: dict[str, Any], out: LRDMOutput) -> dict[str, tuple[Tensor, Tensor]]:
    """Name -> (mean, count): ``depth_abs_rel``, mean |d̂ - d| / d over the Gaussian cells with ground-truth depth
    (sampled as the depth loss does), and ``motion_epe``, mean ‖Δμ̂ - Δx‖₂ over the visible track pairs (the pairs
    of the motion loss). The mean is 0 where the count is 0 (a batch without depth or tracks)."""
    metrics: dict[str, tuple[Tensor, Tensor]] = {}

    def masked(x: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        n = m.sum()
        return torch.where(m, x, 0.0).sum() / n.clamp_min(1), n

    if "depth" in batch:
        gt, valid = depth_targets(batch, out)
        metrics["depth_abs_rel"] = masked((out.depth - gt).abs() / gt.clamp_min(1e-8), valid & (gt > 0))
    if "tracks_world" in batch:
        pred, target, valid = track_pairs(batch, out)
        metrics["motion_epe"] = masked((pred - target).norm(dim=-1), valid)
    return metrics


def freeze_vggt_stage(model: LRDM, stage: Literal["static", "dynamic"]) -> None:
    """MoVieS's freezing for a ``vggt`` LRDM: the DINO encoder frozen in the static stage (``movies_static``:
    ``freeze_dino_encoder``), everything trainable in the dynamic one. The static stage trains MoVieS's static model
    (``model.dynamic=false``): a dynamic one's motion head starts as VGGT's point head, not as zero motion."""
    if stage == "static":
        if model.dynamic:
            raise ValueError(
                "system.stage=static with a dynamic vggt LRDM: the static stage trains MoVieS's static model; set "
                "model.dynamic=false (the dynamic stage then loads VGGT-1B and this stage's export: init_from=[...])"
            )
        model.backbone.encoder.requires_grad_(False)


def load_lrdm_weights(model: LRDM, path: str | Path) -> None:
    """Load LRDM weights: our own (a ``.safetensors`` export, or a Lightning ``.ckpt`` with ``model.*`` keys), or, for a
    ``vggt`` LRDM, a released checkpoint (VGGT-1B's ``model.pt`` / ``model.safetensors``, MoVieS's
    ``movies_ckpt.safetensors``; `diff4splat.models.released.init_from_released`: strict).

    Of our own weights, parameters whose shapes differ (e.g. a static checkpoint into a dynamic model's new head) are
    reported and left at their initialisation; missing and unexpected keys are logged.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"init_from: no weights file at {path}")
    from diff4splat.models.released import init_from_released, released_kind
    from diff4splat.weights import WeightsError, load_safetensors, load_torch_file

    if path.suffix == ".safetensors":
        state, meta = load_safetensors(path, "init_from")
        if "hparams" not in meta and released_kind(state) is not None:  # ours carry their config as metadata
            init_from_released(model, state, str(path))
            return
    else:
        ckpt = load_torch_file(path, "init_from")
        if isinstance(ckpt, dict) and all(isinstance(v, Tensor) for v in ckpt.values()) and released_kind(ckpt):
            init_from_released(model, ckpt, str(path))  # VGGT-1B's model.pt
            return
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
            raise WeightsError(
                f"init_from: {path}: expected a Lightning checkpoint with a 'state_dict' (or a .safetensors export)"
            )
        state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    own = model.state_dict()
    compatible = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    result = model.load_state_dict(compatible, strict=False)
    log.info(
        "init_from %s: loaded %d tensors; shape mismatch %s; missing %s; unexpected %s",
        path,
        len(compatible),
        skipped,
        result.missing_keys,
        result.unexpected_keys,
    )
    if not compatible:
        raise ValueError(f"init_from {path}: no tensor matches the model (is it an LRDM export?)")
