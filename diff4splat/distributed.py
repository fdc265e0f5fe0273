"""Distributed-training pieces the trainer configs name (``conf/trainer/``): an FSDP2 strategy whose data-parallel
size fills the job, and the FSDP (v1) wrap policy by block class names.

The systems apply parallelism themselves (``configure_model``: FSDP2 per transformer block for CameraWan, see
`diff4splat.models.parallel`); these only adapt Lightning's strategies to that.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` (FSDP2 through ``configure_model``) whose ``data_parallel_size="auto"`` means every
    process of the job not used for tensor parallelism: ``nodes × devices / tensor_parallel_size``.

    Lightning's own ``auto`` is one data-parallel group per node (``data_parallel_size = num_nodes``), which with
    ``tensor_parallel_size=1`` fails on any node with more than one GPU ("multiplied should equal the world size").
    """

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto" and self._tensor_parallel_size != "auto":
            processes = self.num_nodes * self.num_processes
            tp = int(self._tensor_parallel_size)
            if processes % tp:
                raise ValueError(f"trainer.strategy.tensor_parallel_size={tp} does not divide the {processes} "
                                 "processes of the job")  # fmt: skip
            self._data_parallel_size = processes // tp
        super().setup_environment()


class BlockWrapPolicy:
    """FSDP (v1) ``auto_wrap_policy``: one FSDP unit per module whose class name is listed (the models' transformer
    blocks, their ``_no_split_modules``), the rest in the root unit.

    A callable with FSDP's ``(module, recurse, nonwrapped_numel)`` signature, so the configs can name classes without
    importing them: ``auto_wrap_policy: {_target_: diff4splat.distributed.BlockWrapPolicy, names: [Block]}``.
    """

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)
        if not self.names:
            raise ValueError("BlockWrapPolicy: give at least one module class name (e.g. Block, WanTransformerBlock)")

    def __call__(self, module: nn.Module, recurse: bool, nonwrapped_numel: int, **kwargs: Any) -> bool:
        if recurse:
            return True
        return type(module).__name__ in self.names
