"""Exponential moving average of the trained weights.

The shadow copy covers the parameters that require gradients (frozen parts never change, so they are not copied)
plus floating-point buffers. Decay warms up as ``min(decay, 1 - (1 + step) ** -power)`` (the reference's EMA schedule,
power 0.75), so early steps are not dominated by the random initialisation. The shadow weights can be swapped in
for validation and test, are saved in the Lightning checkpoint (resume continues the same average), and are what
the safetensors export writes.

Sharded parameters (FSDP2 DTensors) get sharded shadows with the same placements, so the average costs no
communication; the checkpoint holds full tensors (gathered to rank 0 when saving, re-sharded when resuming), so it
does not depend on the number of processes. Shadow names are the state-dict names (no activation-checkpoint or
compile wrapper prefixes).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn


def is_dtensor(t: Tensor) -> bool:
    return type(t).__name__ == "DTensor" and hasattr(t, "full_tensor")


def full_tensor(t: Tensor) -> Tensor:
    """The whole tensor of a DTensor (a collective: call it on every rank), or ``t`` itself."""
    return t.full_tensor() if is_dtensor(t) else t


def _like(full: Tensor, ref: Tensor) -> Tensor:
    """``full`` (float32) on ``ref``'s device, sharded like ``ref`` when ``ref`` is a DTensor."""
    if is_dtensor(full) or not is_dtensor(ref):
        return full.to(device=ref.device, dtype=torch.float32)
    full = full.to(device=ref.device, dtype=torch.float32)
    from torch.distributed.tensor import distribute_tensor

    try:  # every rank holds the same full tensor (from the checkpoint): take the local shard, no communication
        return distribute_tensor(full, ref.device_mesh, ref.placements, src_data_rank=None)
    except TypeError:  # torch without src_data_rank
        return distribute_tensor(full, ref.device_mesh, ref.placements)


_WRAPPER_PARTS = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


def state_dict_key(name: str) -> str:
    """A parameter name as ``state_dict`` spells it: without the prefixes that activation-checkpoint, compile and
    FSDP wrappers add to ``named_parameters`` (their state-dict hooks strip them)."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def reshard(module: nn.Module) -> None:
    """Put FSDP2 units back in their sharded state (a local operation). After an evaluation forward the root unit
    (``reshard_after_forward=False``) keeps its unsharded parameters registered, so ``named_parameters()`` would give
    plain tensors instead of the DTensors the shadow mirrors."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        return
    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


class EMA(L.Callback):
    def __init__(
        self,
        decay: float = 0.9999,
        power: float = 0.75,
        update_every: int = 1,
        validate_with_ema: bool = True,
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if update_every < 1:
            raise ValueError(f"EMA update_every must be >= 1, got {update_every}")
        self.decay = decay
        self.power = power
        self.update_every = update_every
        self.validate_with_ema = validate_with_ema
        self.shadow: dict[str, Tensor] = {}
        self.num_updates = 0
        self._backup: dict[str, Tensor] | None = None

    # --- bookkeeping -------------------------------------------------------------------------------------------
    @staticmethod
    def _tracked(module: nn.Module) -> dict[str, Tensor]:
        reshard(module)
        tensors: dict[str, Tensor] = {}
        for name, p in module.named_parameters():
            if p.requires_grad:
                tensors[state_dict_key(name)] = p
        for name, b in module.named_buffers():
            if b.is_floating_point():
                tensors[state_dict_key(name)] = b
        return tensors

    def current_decay(self) -> float:
        return min(self.decay, 1.0 - (1.0 + self.num_updates) ** -self.power)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._bind(pl_module)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Strategies that restore checkpoints after setup (FSDP2's ModelParallelStrategy) load the EMA state after
        # on_fit_start: place the restored shadow now.
        self._bind(pl_module)

    def _bind(self, pl_module: nn.Module) -> None:
        """Start the shadow from the weights, or put a restored one on the weights' devices (and shards)."""
        tracked = self._tracked(pl_module)
        if not self.shadow:
            self.shadow = {n: t.detach().float().clone() for n, t in tracked.items()}
            return
        missing = set(tracked) - set(self.shadow)
        if missing:
            raise KeyError(f"EMA state from the checkpoint lacks {len(missing)} tensors, e.g. {sorted(missing)[:3]}")
        self.shadow = {n: _like(self.shadow[n], t) for n, t in tracked.items()}

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step % self.update_every != 0 or not self.shadow:
            return
        decay = self.current_decay()
        self.num_updates += 1
        for name, t in self._tracked(pl_module).items():
            shadow = self.shadow[name]
            shadow.lerp_(t.detach().float(), 1.0 - decay)

    # --- swapping for evaluation --------------------------------------------------------------------------------
    @contextmanager
    def swapped(self, pl_module: nn.Module):
        """Temporarily load the EMA weights into ``pl_module``."""
        self._swap_in(pl_module)
        try:
            yield pl_module
        finally:
            self._swap_out(pl_module)

    @torch.no_grad()
    def _swap_in(self, pl_module: nn.Module) -> None:
        if not self.shadow or self._backup is not None:
            return
        tracked = self._tracked(pl_module)
        self._backup = {n: t.detach().clone() for n, t in tracked.items()}
        for name, t in tracked.items():
            t.copy_(self.shadow[name].to(t.dtype))

    @torch.no_grad()
    def _swap_out(self, pl_module: nn.Module) -> None:
        if self._backup is None:
            return
        for name, t in self._tracked(pl_module).items():
            t.copy_(self._backup[name])
        self._backup = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.validate_with_ema and not trainer.sanity_checking:
            self._swap_in(pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_out(pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.validate_with_ema:
            self._swap_in(pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_out(pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._swap_out(pl_module)  # stopped during validation: the module gets its trained weights back

    def ema_state_dict(self, pl_module: nn.Module) -> dict[str, Tensor]:
        """The module's state dict with the EMA values in place of the tracked tensors (float32 shadow cast back)."""
        reshard(pl_module)
        state = {k: v.detach() for k, v in pl_module.state_dict().items()}
        for name, value in self.shadow.items():
            key = state_dict_key(name)
            if key in state:
                state[key] = value.to(state[key].dtype)
        return state

    # --- checkpointing -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Full float32 tensors on the CPU. Sharded shadows are gathered (every rank takes part) and kept on rank 0
        only, the one that writes the checkpoint; other ranks return the names with empty tensors."""
        rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
        shadow = {}
        for k, v in self.shadow.items():
            full = full_tensor(v)
            shadow[k] = full.cpu() if rank0 or not is_dtensor(v) else torch.empty(0)
        return {"shadow": shadow, "num_updates": self.num_updates}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.shadow = dict(state_dict["shadow"])
        self.num_updates = int(state_dict["num_updates"])
