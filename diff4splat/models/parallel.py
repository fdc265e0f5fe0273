"""Scale-out helpers for the Wan transformer: activation checkpointing, ``torch.compile`` and FSDP2 sharding per
``WanTransformerBlock``, applied in place.

Order per block: in-place compile -> checkpoint wrapper -> ``fully_shard``; then the root (``prepare_blocks`` says
why the compile goes inside the checkpoint; torchtitan compiles around it, which needs graph-break-free blocks).
Checkpointing uses torch's ``checkpoint_wrapper`` (non-reentrant), whose state-dict hooks strip its
``_checkpoint_wrapped_module.`` prefix, so checkpoints keep diffusers' keys; ``compile_in_place`` compiles a module's
``forward`` (no ``_orig_mod.``). Two checkpointing modes:

- ``full``: keep only each block's input; recompute the whole block in backward (one extra forward: model FLOPs
  utilisation is at most 3/4 of the hardware's).
- ``selective``: keep the outputs of the matmuls and attention kernels and recompute only the cheap element-wise
  work between them (norms, modulation, GELU, residual adds), a few percent of the FLOPs, while dropping the
  fp32 intermediates that dominate a Wan block's activation memory.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

log = logging.getLogger(__name__)

CheckpointMode = Literal["full", "selective", "none"]


def _save_matmul_and_attention_policy() -> Any:
    from torch.utils.checkpoint import CheckpointPolicy

    aten = torch.ops.aten
    save = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default, aten.linear.default}
    for name in (
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_flash_attention_forward",
        "_efficient_attention_forward",
    ):
        op = getattr(aten, name, None)
        if op is not None:
            save.add(op.default)

    def policy(ctx: Any, func: Any, *args: Any, **kwargs: Any) -> Any:
        return CheckpointPolicy.MUST_SAVE if func in save else CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def _selective_context() -> Any:
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(_save_matmul_and_attention_policy())


def wrap_checkpoint(module: nn.Module, mode: CheckpointMode = "full") -> nn.Module:
    """``module`` wrapped for activation checkpointing (``mode`` full or selective); ``none`` returns it as is."""
    if mode == "none":
        return module
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    if mode == "full":
        return checkpoint_wrapper(module, preserve_rng_state=False)
    if mode == "selective":
        return checkpoint_wrapper(module, preserve_rng_state=False, context_fn=_selective_context)
    raise ValueError(f"checkpoint mode must be full, selective or none, got {mode!r}")


def select_blocks(num_blocks: int, checkpoint_blocks: int) -> list[int]:
    """Indices of the blocks to checkpoint: ``-1`` all, ``0`` none, ``k`` > 0: k blocks spread evenly through depth."""
    if checkpoint_blocks < 0 or checkpoint_blocks >= num_blocks:
        return list(range(num_blocks))
    if checkpoint_blocks == 0:
        return []
    step = num_blocks / checkpoint_blocks
    return sorted({int(i * step) for i in range(checkpoint_blocks)})


def compile_in_place(module: nn.Module, backend: str = "inductor") -> nn.Module:
    """``torch.compile`` ``module.forward`` in place: hooks (FSDP2's), wrappers and state-dict keys are unchanged
    (``nn.Module.compile()`` compiles too, and keeps the keys, but routes through ``_compiled_call_impl``).

    All instances of one block class share one compiled graph (dynamo guards on the class, not the instance: 1 frame
    for 12 diffusers Wan blocks, checked with ``torch._dynamo.utils.counters``). Running a compiled function first
    under a ``TorchDispatchMode`` such as ``FlopCounterMode`` makes dynamo skip its code for good — count FLOPs with
    ``forward_flops``, which runs eagerly."""
    module.forward = torch.compile(module.forward, backend=backend)
    return module


def forward_flops(fn: Any) -> float:
    """FLOPs of ``fn()`` under ``FlopCounterMode`` without gradients, compiled code run eagerly (``force_eager``).

    Calling a ``torch.compile``'d function for the first time inside a dispatch mode makes dynamo mark its code as
    skipped, after which it stays eager outside the mode too: counting FLOPs that way before timing would time
    eager blocks in every "compiled" configuration."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.compiler.set_stance("force_eager"), torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def prepare_blocks(
    blocks: nn.ModuleList,
    checkpoint_blocks: int = -1,
    compile_blocks: bool = False,
    mode: CheckpointMode = "full",
    compile_inside_checkpoint: bool = True,
) -> None:
    """Checkpoint the selected blocks (replacing them in ``blocks`` by wrappers) and compile every block in place.

    ``compile_inside_checkpoint``: compile the block itself and wrap the compiled block (the recomputation runs the
    compiled forward again), rather than compiling the wrapper. Compiling the wrapper traces the checkpoint as one
    higher-order op, and a graph break anywhere inside the block (diffusers' attention dispatch has them) sends the
    whole block back to eager (unfused element-wise kernels in an H100 profile)."""
    chosen = set(select_blocks(len(blocks), checkpoint_blocks)) if mode != "none" else set()
    for i in range(len(blocks)):
        if compile_blocks and compile_inside_checkpoint:
            compile_in_place(blocks[i])
        if i in chosen:
            blocks[i] = wrap_checkpoint(blocks[i], mode)
        if compile_blocks and not compile_inside_checkpoint:
            compile_in_place(blocks[i])
    log.info(
        "blocks: %d of %d checkpointed (%s), compile=%s (%s the checkpoint)",
        len(chosen),
        len(blocks),
        mode,
        compile_blocks,
        "inside" if compile_inside_checkpoint else "around",
    )


def shard_wan(
    model: nn.Module,
    blocks: Sequence[nn.Module],
    mesh: Any = None,
    param_dtype: torch.dtype | None = torch.bfloat16,
    reduce_dtype: torch.dtype | None = torch.float32,
    reshard_after_forward: bool = True,
    storage_dtype: torch.dtype | None = None,
) -> nn.Module:
    """FSDP2: each transformer block is a unit, the rest (patch/text/time embeddings, head, camera branch) the root.

    FSDP2 needs one storage dtype per unit: a model loaded in bf16 keeps diffusers' fp32 modules (norms, time
    embedder, modulation tables), so mixed parameters are cast to ``storage_dtype`` (default: the widest present)
    first. Inputs are not cast (``cast_forward_inputs=False``): training runs under bf16 autocast, and timesteps and
    rotary tables reach diffusers' fp32 code paths in fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) > 1:
        target = storage_dtype or (torch.float32 if torch.float32 in dtypes else next(iter(dtypes)))
        log.info("shard_wan: parameters in %s; casting to %s for FSDP2", sorted(map(str, dtypes)), target)
        model.to(target)
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype, cast_forward_inputs=False)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
    return model
