"""The FSDP strategy the trainer configs name (``trainer=fsdp``, ``trainer=fsdp2``): FSDP2 (``fully_shard``) through
Lightning's ``ModelParallelStrategy``, for every system.

A system that shards itself in ``configure_model`` (the diffusion system: CameraWan per ``WanTransformerBlock``, with
activation checkpointing and compile, `diff4splat.models.parallel`) is left as it is. Any other system is sharded
here, from outside: one FSDP unit per block (modules whose class is in ``shard_blocks``, the models'
``_no_split_modules``), then one per remaining module that owns trainable parameters (`shard_by_blocks`). Parameters are then DTensors; checkpoints are distributed-checkpoint folders (``last.ckpt/``) that
``python -m diff4splat.checkpoints consolidate`` turns into single-device weights, and the ``.safetensors`` export
next to each checkpoint is gathered.

Lightning's ``data_parallel_size="auto"`` is one data-parallel group per node, which with ``tensor_parallel_size=1``
fails on any node with more than one GPU; here ``auto`` is every process of the job not used for tensor parallelism.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import types
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn

log = logging.getLogger(__name__)


def exit_with_launcher(
    interval: float = 2.0, grace: float = 60.0, env: Mapping[str, str] | None = None
) -> threading.Thread | None:
    """In a process another training process launched, exit (status 1) once the launcher has been gone ``grace`` s.

    Lightning starts ranks > 0 from rank 0's process, and torchrun starts every rank from its agent. If that parent
    dies (rank 0 failed, the agent was killed), a rank left behind would wait in its next collective forever, holding
    its GPU and the job's output. A daemon thread polls the parent pid every ``interval`` seconds; once it has changed,
    the process gets ``grace`` seconds (a rank that is only finishing after rank 0 ended normally is done by then) and
    is then ended. Started only for such launched processes (``LOCAL_RANK`` > 0, or any torchrun worker); a rank 0
    run from a shell keeps running when the shell goes (``nohup``). Returns the thread, or None when not started.
    """
    env = os.environ if env is None else env
    launched = "TORCHELASTIC_RUN_ID" in env or int(env.get("LOCAL_RANK", "0") or 0) > 0
    if not launched:
        return None
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                time.sleep(grace)
                msg = (
                    f"rank {env.get('RANK', env.get('LOCAL_RANK', '?'))}: the process that launched this rank "
                    f"(pid {parent}) exited {grace:g} s ago; stopping instead of waiting in a collective"
                )
                log.error(msg)
                print(f"error: {msg}", file=sys.stderr, flush=True)
                os._exit(1)

    thread = threading.Thread(target=watch, name="exit-with-launcher", daemon=True)
    thread.start()
    return thread


def _is_dtensor(t: Any) -> bool:
    return type(t).__name__ == "DTensor"


def shard_by_blocks(module: nn.Module, names: Sequence[str], mesh: Any, reshard_after_forward: bool = True) -> int:
    """``fully_shard`` each submodule whose class name is in ``names``, then, bottom-up, every other submodule that
    owns trainable parameters itself (not inside a block). Returns the number of block units.

    FSDP2 gathers a unit's parameters when its ``forward`` runs; the models are entered through other methods too
    (``LatentAligner.decode``), so the rest is not one unit per top-level model but one per parameter owner, whose
    ``forward`` is what uses them."""
    from torch.distributed.fsdp import fully_shard

    wanted = set(names)
    blocks = [m for m in module.modules() if type(m).__name__ in wanted and m is not module]
    inside = {id(sub) for b in blocks for sub in b.modules()}
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    owners = [
        m
        for m in module.modules()
        if m is not module and id(m) not in inside and any(p.requires_grad for p in m.parameters(recurse=False))
    ]
    for owner in reversed(owners):  # modules() is pre-order: reversed, children come before their parents
        fully_shard(owner, mesh=mesh, reshard_after_forward=False)
    return len(blocks)


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` that shards systems which do not shard themselves, with a job-wide ``auto``
    data-parallel size (see the module docstring).

    Args:
        shard_blocks: class names of the blocks that become FSDP units when the system left its model unsharded
            (empty: such a system is an error with more than one process, since nothing would synchronise it).
        **kwargs: ``ModelParallelStrategy`` arguments (``data_parallel_size``, ``tensor_parallel_size``,
            ``save_distributed_checkpoint``, ``process_group_backend``, ``timeout``).
    """

    def __init__(self, shard_blocks: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shard_blocks = list(shard_blocks)

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto" and self._tensor_parallel_size != "auto":
            processes = self.num_nodes * self.num_processes
            tp = int(self._tensor_parallel_size)
            if processes % tp:
                raise ValueError(
                    f"trainer.strategy.tensor_parallel_size={tp} does not divide the {processes} processes of the job"
                )
            self._data_parallel_size = processes // tp
        super().setup_environment()

    def setup(self, trainer: L.Trainer) -> None:
        module = self.model
        assert module is not None
        trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        # sharded on one process too: a checkpoint is then the same distributed-checkpoint folder at any scale, and
        # Lightning restores such a folder only into FSDP2 modules (an unsharded 1-GPU run could save, not resume)
        if not any(_is_dtensor(p) for _, p in trainable) and (self.shard_blocks or self.world_size > 1):
            if not self.shard_blocks:
                raise RuntimeError(
                    f"{type(module).__name__} did not shard its model in configure_model and "
                    "trainer.strategy.shard_blocks is empty: nothing would keep the ranks in sync "
                    "(use trainer=fsdp, which shards any system, or trainer=ddp)"
                )
            mesh = self.device_mesh["data_parallel"]
            n = shard_by_blocks(module, self.shard_blocks, mesh)
            log.info("FSDP2: %d block units (%s) in %s", n, ", ".join(self.shard_blocks), type(module).__name__)
            unsharded = [n for n, p in module.named_parameters() if p.requires_grad and not _is_dtensor(p)]
            if unsharded:
                raise RuntimeError(
                    f"FSDP2: trainable parameters outside any FSDP unit (registered on the system "
                    f"itself?): {unsharded[:5]}"
                )
            if not is_overridden("configure_model", module):
                # Lightning requires the parallelisation in configure_model; it was applied here instead.
                module.configure_model = types.MethodType(lambda self: None, module)
        super().setup(trainer)
