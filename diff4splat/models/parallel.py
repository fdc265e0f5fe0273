"""Scale-out helpers for the Wan transformer: FSDP2 sharding per ``WanTransformerBlock``, activation checkpointing and
``torch.compile`` per block, applied in place so state-dict keys stay those of diffusers.

Order per block (as torchtitan does it): checkpointing -> compile -> ``fully_shard``; then the root module is sharded.
Checkpointing replaces the block instance's ``forward`` by a non-reentrant ``torch.utils.checkpoint`` call of the
original one (no wrapper module, so no ``_checkpoint_wrapped_module.`` in the keys); FSDP2 unshards the block's
parameters in its pre-backward hook, before the recomputation runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

log = logging.getLogger(__name__)


def checkpoint_module(module: nn.Module) -> nn.Module:
    """Recompute ``module``'s forward in backward (non-reentrant); idempotent."""
    if getattr(module, "_d4s_checkpointed", False):
        return module
    forward = module.forward

    def checkpointed_forward(*args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    module.forward = checkpointed_forward
    module._d4s_checkpointed = True
    return module


def select_blocks(num_blocks: int, checkpoint_blocks: int) -> list[int]:
    """Indices of the blocks to checkpoint: ``-1`` all, ``0`` none, ``k`` > 0 every block whose index is below ``k``
    spread evenly (k of num_blocks, so memory is freed uniformly through depth)."""
    if checkpoint_blocks < 0 or checkpoint_blocks >= num_blocks:
        return list(range(num_blocks))
    if checkpoint_blocks == 0:
        return []
    step = num_blocks / checkpoint_blocks
    return sorted({int(i * step) for i in range(checkpoint_blocks)})


def prepare_blocks(blocks: Sequence[nn.Module], checkpoint_blocks: int = -1, compile_blocks: bool = False) -> None:
    """Checkpoint the selected blocks and compile every block (in place)."""
    chosen = set(select_blocks(len(blocks), checkpoint_blocks))
    for i, block in enumerate(blocks):
        if i in chosen:
            checkpoint_module(block)
        if compile_blocks:
            block.compile()
    log.info("blocks: %d of %d checkpointed, compile=%s", len(chosen), len(blocks), compile_blocks)


def shard_wan(
    model: nn.Module,
    blocks: Sequence[nn.Module],
    mesh: Any = None,
    param_dtype: torch.dtype | None = torch.bfloat16,
    reduce_dtype: torch.dtype | None = torch.float32,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """FSDP2: each transformer block is a unit, the rest (patch/text/time embeddings, head, camera branch) the root."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
    return model
