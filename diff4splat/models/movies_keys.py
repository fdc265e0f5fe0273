"""MoVieS's checkpoint layout: the ``backbone.`` prefix of its ``SplatRecon`` wrapper (`strip_checkpoint_prefix`) and
which VGGT-1B tensor each of its tensors is initialised from (`vggt_key`; the rest are new parts, `_new_parts`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

CHECKPOINT_PREFIX = "backbone."  # MoVieS's SplatRecon wrapper: movies_ckpt.safetensors keys are "backbone." + ours
_VGGT_UNUSED = ("camera_head.", "track_head.")  # VGGT parts MoVieS does not use


def vggt_key(key: str) -> str | None:
    """The VGGT tensor a MoVieS tensor is initialised from (MoVieS's ``VGGSplaT.__init__``), or None for new ones."""
    if key.startswith("encoder."):
        return "aggregator.patch_embed." + key[len("encoder.") :]
    if key.startswith("backbone."):
        rest = key[len("backbone.") :]
        return None if rest.startswith(("extra_embed.", "time_embed.")) else "aggregator." + rest
    if key.startswith("depth_head."):
        return None if key.startswith("depth_head.time_embed.") else key
    if key.startswith("motion_head."):
        rest = key[len("motion_head.") :]
        return None if rest.startswith("time_embed.") else "point_head." + rest
    return None


def _new_parts(keys: Sequence[str]) -> list[str]:
    """Module-level names of new tensors: ``plucker_embed``, ``backbone.time_embed``, ``motion_head.time_embed``..."""
    parts = []
    for key in keys:
        head, *rest = key.split(".")
        part = (
            head if head in ("plucker_embed", "plucker_ln", "splat_head", "motion_splat_head") else f"{head}.{rest[0]}"
        )
        if part not in parts:
            parts.append(part)
    return parts


def strip_checkpoint_prefix(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop the ``backbone.`` of MoVieS's ``SplatRecon`` wrapper (``movies_ckpt``: every key has it, and the model's
    own ``encoder.`` tensors appear as ``backbone.encoder.``)."""
    wrapped = any(k.startswith(CHECKPOINT_PREFIX + "encoder.") for k in state_dict)
    if wrapped and all(k.startswith(CHECKPOINT_PREFIX) for k in state_dict):
        return {k[len(CHECKPOINT_PREFIX) :]: v for k, v in state_dict.items()}
    return dict(state_dict)
