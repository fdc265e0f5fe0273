"""Per-scene fitting of a 4D Gaussian field to the views of one clip (no network; see `models.gaussian_field`).

Trains on the clip's training views, validates and tests on its held-out views (novel views at known times), and
logs ``train/loss``, ``train/psnr``, ``val/psnr``, ``val/ssim``, ``test/psnr``, ``test/ssim``. Batches follow the
data contract with one scene: ``images`` [1, V, 3, H, W], ``c2w`` [1, V, 4, 4], ``fxfycxcy`` [1, V, 4] and
``time_index`` [1, V] (the row of the deformation table each view was taken at).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from diff4splat.configs import to_dataclass, to_plain
from diff4splat.losses.photometric import psnr, ssim
from diff4splat.models.gaussian_field import GaussianField, GaussianFieldConfig
from diff4splat.rendering import render
from diff4splat.systems.optimizer import OptimConfig, check_finite_loss, configure_optimizer, optim_config

# 3DGS practice: per-attribute learning rates (positions slow, opacities fast), no weight decay, and the positions'
# lr decaying exponentially to 0.05 × at max_steps while the others stay constant.
DEFAULT_OPTIM = OptimConfig(
    lr=2e-3,
    lr_mult={"scales": 5.0, "quats": 1.0, "opacities": 25.0, "colors": 5.0, "deformation": 1.0},
    betas=[0.9, 0.999],
    weight_decay=0.0,
    eps=1e-15,
    min_lr_ratio=0.05,
    decay="exponential",
    decay_groups=["means"],
)
OPTIM_GROUPS = ("means", "scales", "quats", "opacities", "colors", "deformation")


@dataclass
class SceneFitLoss:
    ssim_weight: float = 0.2  # loss = (1 - w) * L1 + w * (1 - SSIM), as 3DGS
    deformation_l2: float = 0.0  # optional pull of Δμ towards 0


@dataclass
class SceneFitEval:
    background: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    backend: str = "auto"  # render backend: auto | torch | gsplat


class SceneFitSystem(L.LightningModule):
    export_prefix = "field."

    def __init__(
        self,
        model: dict[str, Any] | DictConfig | GaussianFieldConfig | None = None,
        optim: dict[str, Any] | DictConfig | OptimConfig | None = None,
        loss: dict[str, Any] | DictConfig | SceneFitLoss | None = None,
        render_cfg: dict[str, Any] | DictConfig | SceneFitEval | None = None,
        max_steps: int = 1000,
        init_from_data: bool = True,
    ) -> None:
        super().__init__()
        self.model_cfg = to_dataclass(GaussianFieldConfig, model, "system.model")
        self.optim_cfg = optim_config(optim, DEFAULT_OPTIM, OPTIM_GROUPS)
        self.loss_cfg = to_dataclass(SceneFitLoss, loss, "system.loss")
        self.render_cfg = to_dataclass(SceneFitEval, render_cfg, "system.render_cfg")
        self.max_steps = max_steps
        self.init_from_data = init_from_data
        self.save_hyperparameters(
            {
                "model": to_plain(self.model_cfg),
                "optim": to_plain(self.optim_cfg),
                "loss": to_plain(self.loss_cfg),
                "render_cfg": to_plain(self.render_cfg),
                "max_steps": max_steps,
                "init_from_data": init_from_data,
            }
        )
        self.field = GaussianField(self.model_cfg)
        self.register_buffer("background", torch.tensor(self.render_cfg.background, dtype=torch.float32))
        self.last_media: dict[str, Tensor] | None = None

    # --- setup ---------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage == "fit" and self.init_from_data and dm is not None and hasattr(dm, "init_points"):
            points = dm.init_points()
            if points is not None:
                self.field.initialize_from_points(*points)

    # --- forward ---------------------------------------------------------------------------------------------------
    def render_views(self, batch: dict[str, Tensor]) -> Tensor:
        """Render every view of ``batch`` at its own time: returns RGB [1, V, 3, H, W]."""
        images = batch["images"]
        _, v, _, h, w = images.shape
        out = images.new_zeros(images.shape)
        time_index = batch["time_index"][0]
        for k in torch.unique(time_index).tolist():
            sel = (time_index == k).nonzero(as_tuple=True)[0]
            g = self.field.at_index(int(k))
            r = render(
                g,
                batch["c2w"][0, sel],
                batch["fxfycxcy"][0, sel],
                h,
                w,
                background=self.background,
                backend=self.render_cfg.backend,
            )
            out[0, sel] = r.rgb
        return out

    def _loss(self, pred: Tensor, target: Tensor) -> Tensor:
        w = self.loss_cfg.ssim_weight
        loss = (1 - w) * F.l1_loss(pred, target)
        if w > 0:
            loss = loss + w * (1 - ssim(pred[0], target[0]))
        if self.loss_cfg.deformation_l2 > 0 and self.field.delta_means is not None:
            loss = loss + self.loss_cfg.deformation_l2 * self.field.delta_means.square().mean()
        return loss

    # --- steps -----------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        pred = self.render_views(batch)
        loss = self._loss(pred, batch["images"])
        check_finite_loss({"loss": loss}, self.global_step, batch.get("key"))
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/psnr", psnr(pred.detach(), batch["images"]), prog_bar=True)
        self.log("train/num_gaussians", float(self.model_cfg.num_gaussians))
        return loss

    def _evaluate(self, batch: dict[str, Tensor], prefix: str, batch_idx: int = 0) -> None:
        pred = self.render_views(batch).clamp(0, 1)
        target = batch["images"]
        self.log(f"{prefix}/psnr", psnr(pred, target), prog_bar=True, sync_dist=True)
        self.log(f"{prefix}/ssim", ssim(pred[0], target[0]), sync_dist=True)
        self.log(f"{prefix}/loss", self._loss(pred, target), sync_dist=True)
        if batch_idx == 0:
            self.last_media = {"inputs": target[0, :0].cpu(), "target": target[0].cpu(), "pred": pred[0].cpu()}

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", batch_idx)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", batch_idx)

    # --- optimisation ------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        f = self.field
        groups = {
            "means": [f.means],
            "scales": [f.log_scales],
            "quats": [f.quats],
            "opacities": [f.opacity_logits],
            "colors": [f.color_logits],
            "deformation": [f.delta_means, f.delta_quats, f.delta_log_scales] if f.delta_means is not None else [],
        }
        return configure_optimizer(self.optim_cfg, groups, self.max_steps)
