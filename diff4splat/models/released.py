"""The released reconstructor checkpoints as LRDMs (``encoder="vggt"``): ``facebook/VGGT-1B``'s ``model.pt`` (or its
``model.safetensors``) and MoVieS's ``movies_ckpt.safetensors``, from local paths.

- **MoVieS** loads strictly into everything: the LRDM's ``backbone`` is a VGGSplaT whose keys are the checkpoint's
  (``backbone.`` + MoVieS's own names), its architecture read from the tensor shapes.
- **VGGT-1B** loads strictly into everything VGGT has (encoder, aggregator, depth head, and the point head as the
  motion head); the parts MoVieS adds (Plücker embedding, pose and time tokens, the Gaussian heads, the heads' AdaLN)
  are initialised as the reference does and listed in one log line (`VGGSplat.load_vggt`).

A mismatch fails naming the missing, unexpected and mis-shaped tensors (`diff4splat.weights.WeightsError`). The same
tensors, with the LRDM config as metadata, are our export (`diff4splat.checkpoints` ``convert``), which every CLI takes
as ``--weights``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Literal

from torch import Tensor

from diff4splat.models.lrdm import LRDM, LRDMConfig
from diff4splat.models.movies import CHECKPOINT_PREFIX, VGGSplat, VGGSplatConfig, strip_checkpoint_prefix
from diff4splat.models.vggt import drop_track_head, read_state_dict
from diff4splat.weights import WeightsError, load_state_checked

log = logging.getLogger(__name__)

ReleasedKind = Literal["movies", "vggt"]

# MoVieS's renderer drops Gaussians with opacity <= 0.001 (``opacity_threshold``) before rasterising.
MOVIES_PRUNE_THRESHOLD = 0.001


def released_kind(state_dict: Mapping[str, Tensor]) -> ReleasedKind | None:
    """``"vggt"`` for a VGGT state dict (``aggregator.patch_embed.*``), ``"movies"`` for a MoVieS one (``encoder.*``
    and ``depth_head.*``, with or without the checkpoint's ``backbone.`` prefix), else None."""
    if any(k.startswith("aggregator.patch_embed.") for k in state_dict):
        return "vggt"
    sd = strip_checkpoint_prefix(state_dict)
    if "encoder.cls_token" in sd and "backbone.camera_token" in sd and "depth_head.norm.weight" in sd:
        return "movies"
    return None


def lrdm_config_for(config: VGGSplatConfig, **fields) -> LRDMConfig:
    """The LRDM config of a ``vggt`` LRDM with VGGSplaT architecture ``config`` (``fields``: other LRDM fields, e.g.
    ``gradient_checkpointing``). Pruning defaults to MoVieS's threshold."""
    fields.setdefault("prune_threshold", MOVIES_PRUNE_THRESHOLD)
    return LRDMConfig(
        encoder="vggt",
        vggt=config,
        dynamic=config.motion_head is not None,
        sh_degree=config.sh_degree,
        time_freqs=config.time_dim // 2,
        patch_size=config.encoder.patch_size,
        **fields,
    )


def lrdm_from_released(
    state_dict: Mapping[str, Tensor],
    source: str = "state dict",
    *,
    dynamic: bool = True,
    encoder_num_heads: int | None = None,
    **fields,
) -> LRDM:
    """A ``vggt`` LRDM holding a released checkpoint's tensors (architecture from their shapes). A VGGT state dict
    gives MoVieS's initialisation (``dynamic``: with the motion heads); ``fields``: other LRDM config fields."""
    kind = released_kind(state_dict)
    if kind == "movies":
        sd = strip_checkpoint_prefix(state_dict)
        config = VGGSplat.config_from_state_dict(sd, encoder_num_heads=encoder_num_heads)
        model = LRDM(lrdm_config_for(config, **fields))
        load_state_checked(model.backbone, sd, source, "MoVieS")
        return model
    if kind == "vggt":
        sd = drop_track_head(state_dict, source)
        config = VGGSplat.config_from_vggt(sd, dynamic=dynamic, encoder_num_heads=encoder_num_heads)
        model = LRDM(lrdm_config_for(config, **fields))
        model.backbone.load_vggt(sd, source)
        log.warning(
            "%s: VGGT-1B weights without MoVieS's training: the Gaussian heads are untrained, so renders are noise "
            "until the model is trained (or load movies_ckpt.safetensors)",
            source,
        )
        return model
    raise WeightsError(
        f"{source}: neither a VGGT checkpoint (aggregator.patch_embed.* tensors, as facebook/VGGT-1B's model.pt) nor "
        f"a MoVieS checkpoint ({CHECKPOINT_PREFIX}encoder.*, {CHECKPOINT_PREFIX}depth_head.*, as "
        f"movies_ckpt.safetensors)"
    )


def load_released(path: str | os.PathLike, **kwargs) -> LRDM:
    """`lrdm_from_released` on a file: ``.safetensors`` or a ``torch.load(weights_only=True)`` state dict."""
    return lrdm_from_released(read_state_dict(path, "reconstructor weights"), str(path), **kwargs)


def init_from_released(model: LRDM, state_dict: Mapping[str, Tensor], source: str = "state dict") -> None:
    """Initialise a ``vggt`` LRDM (training's ``init_from``) from a released checkpoint: VGGT strictly into everything
    VGGT has (new parts as initialised, listed in one log line), MoVieS strictly into everything."""
    if model.config.encoder != "vggt":
        raise WeightsError(
            f"init_from {source}: a VGGT / MoVieS checkpoint initialises only an LRDM with encoder 'vggt' "
            f"(this one is {model.config.encoder!r}; use model=lrdm_vggt_1b)"
        )
    kind = released_kind(state_dict)
    if kind == "movies":
        load_state_checked(model.backbone, strip_checkpoint_prefix(state_dict), source, "MoVieS")
        log.info("init_from %s: MoVieS weights loaded into every tensor", source)
    elif kind == "vggt":
        model.backbone.load_vggt(state_dict, source)
    else:
        raise WeightsError(f"init_from {source}: not a VGGT or MoVieS checkpoint")


__all__ = [
    "MOVIES_PRUNE_THRESHOLD",
    "init_from_released",
    "load_released",
    "lrdm_config_for",
    "lrdm_from_released",
    "released_kind",
]
