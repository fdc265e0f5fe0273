"""Run bookkeeping for the entry points: run ids, config printing and saving, instantiating callbacks and loggers,
and where a run resumes from.

The run id names output folders (``<task>/runs/<run id>``) and W&B runs. It must be the same in every process of one
run (Lightning's DDP launcher re-executes the script per rank; torchrun and srun start one process per GPU on every
node), and a restarted job should get the same one so that it lands in the same folder and continues from its
``last.ckpt`` (``ckpt_path=auto``). In order:

1. ``DIFF4SPLAT_RUN_ID`` (set it to make any run resumable by re-running the same command);
2. the SLURM job id (``slurm<job>[_<array task>]``; it survives requeueing) in a batch job; interactive allocations
   (job name ``bash`` / ``interactive``, as Lightning decides) are skipped;
3. the torchrun rendezvous id (``tr<rdzv id>``; with ``--rdzv-id`` fixed it is stable across restarts);
4. a new one, ``<date>_<time>_<8 hex>``; without a rendezvous id, torchrun's workers on one node share
   ``tr<agent pid>-<port>`` instead.

The first process to resolve the id exports it as ``DIFF4SPLAT_RUN_ID``, so processes it starts (Lightning's DDP
children, submitit jobs, which inherit the environment on SLURM too) agree with it.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from lightning import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

RUN_ID_ENV = "DIFF4SPLAT_RUN_ID"


def run_id() -> str:
    """The id shared by all processes of this run (see the module docstring)."""
    if os.environ.get(RUN_ID_ENV):
        return os.environ[RUN_ID_ENV]
    rid = stable_run_id()
    if rid is None:
        if os.environ.get("TORCHELASTIC_RUN_ID"):  # torchrun without --rdzv-id: the local workers share the agent
            rid = f"tr{os.getppid()}-{os.environ.get('MASTER_PORT', '0')}"
        else:
            rid = f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{uuid.uuid4().hex[:8]}"
    os.environ[RUN_ID_ENV] = rid  # inherited by the DDP child processes Lightning starts and by submitit jobs
    return rid


def stable_run_id() -> str | None:
    """The id a restart of the same job gets again (SLURM batch job, torchrun with a rendezvous id), else None."""
    job = os.environ.get("SLURM_JOB_ID")
    if job and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"slurm{job}" + (f"_{task}" if task else "")
    rdzv = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if rdzv not in ("", "none"):
        return f"tr{rdzv}"
    return None


def env_rank() -> int:
    """This process's global rank as the launcher announced it (before any process group exists): torchrun's RANK,
    srun's SLURM_PROCID, Lightning's LOCAL_RANK for the DDP children it starts; 0 otherwise."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(key)
        if value not in (None, ""):
            return int(value)
    return 0


def _rank_zero_value(value: Any = None) -> Any:
    """``${rank_zero_only:X}``: X on rank 0, null on the other ranks (e.g. Hydra's ``output_subdir``)."""
    return value if env_rank() == 0 else None


def _rank_suffix() -> str:
    """``${rank_suffix:}``: "" on rank 0, ``_rank<r>`` elsewhere (per-rank log files)."""
    rank = env_rank()
    return "" if rank == 0 else f"_rank{rank}"


def register_resolvers() -> None:
    """Register the OmegaConf resolvers our configs use (idempotent)."""
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", run_id, use_cache=True)
    if not OmegaConf.has_resolver("rank_zero_only"):
        OmegaConf.register_new_resolver("rank_zero_only", _rank_zero_value)
    if not OmegaConf.has_resolver("rank_suffix"):
        OmegaConf.register_new_resolver("rank_suffix", _rank_suffix)


def apply_extras(cfg: DictConfig) -> None:
    """Apply the ``extras`` group: warnings filter, tag check, config printing and saving (rank 0 only)."""
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("enforce_tags") and not cfg.get("tags"):
        raise ValueError("extras.enforce_tags is set but `tags` is empty: pass tags=[...] on the command line.")
    if extras.get("print_config"):
        print_config_tree(cfg, save_to=Path(cfg.paths.output_dir) / "config_tree.log")
    save_config(cfg, Path(cfg.paths.output_dir) / "config.yaml")


@rank_zero_only
def print_config_tree(
    cfg: DictConfig,
    order: Sequence[str] = ("data", "model", "system", "callbacks", "logger", "trainer", "paths", "extras"),
    resolve: bool = True,
    save_to: Path | None = None,
) -> None:
    """Print the composed config as a rich tree (groups in ``order`` first) and optionally save the text."""
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    fields = [f for f in order if f in cfg] + [f for f in cfg if f not in order and f != "hydra"]
    for field in fields:
        branch = tree.add(field, style="bold", guide_style="dim")
        node = cfg[field]
        text = OmegaConf.to_yaml(node, resolve=resolve) if isinstance(node, DictConfig) else str(node)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        with open(save_to, "w") as f:
            rich.print(tree, file=f)


@rank_zero_only
def save_config(cfg: DictConfig, path: Path) -> None:
    """Write the fully resolved config next to the run's outputs (atomically)."""
    from diff4splat.files import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(resolved_container(cfg)))


def resolved_container(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain containers with interpolations resolved, without Hydra's own node."""
    return {
        k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
        for k in cfg
        if k != "hydra"
    }


def _instantiate_group(cfg: DictConfig | None, what: str) -> list[Any]:
    objects = []
    for name, node in (cfg or {}).items():
        if isinstance(node, DictConfig) and "_target_" in node:
            log.info("Instantiating %s %s <%s>", what, name, node._target_)
            objects.append(hydra.utils.instantiate(node))
    return objects


def instantiate_callbacks(cfg: DictConfig | None) -> list[Callback]:
    """Instantiate every ``_target_`` entry of the ``callbacks`` group."""
    return _instantiate_group(cfg, "callback")


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    """Instantiate every ``_target_`` entry of the ``logger`` group."""
    return _instantiate_group(cfg, "logger")


LAST = "last.ckpt"


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """Where ``trainer.fit`` resumes from, by ``ckpt_path``:

    - ``auto`` (the default): this run folder's ``checkpoints/last.ckpt`` when it exists (a restarted job with a
      stable run id, see `run_id`), else a fresh start;
    - ``last``: the newest ``last.ckpt`` of any run of this task;
    - a path: that checkpoint (a file, or a distributed checkpoint's folder), which must exist;
    - null: a fresh start.
    """
    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, ""):
        return None
    if ckpt == "auto":
        last = Path(cfg.paths.output_dir) / "checkpoints" / LAST
        _recover_swapped(last)
        if last.exists():
            log.info("ckpt_path=auto: resuming this run from %s", last)
            return str(last)
        return None
    if ckpt == "last":
        root = Path(cfg.paths.output_root) / cfg.task_name
        candidates = list(root.glob("runs/*/checkpoints/last*.ckpt"))
        candidates += list(root.glob("multiruns/*/*/checkpoints/last*.ckpt"))
        if not candidates:
            raise FileNotFoundError(f"ckpt_path=last: no last.ckpt under {root}/runs/*/checkpoints/")
        newest = max(candidates, key=lambda p: p.stat().st_mtime)
        log.info("Resuming from %s", newest)
        return str(newest)
    if not Path(ckpt).exists():
        raise FileNotFoundError(
            f"ckpt_path: no checkpoint file at {ckpt!r} (expected a .ckpt file or folder, 'auto', 'last' or null)"
        )
    return str(ckpt)


def _recover_swapped(path: Path) -> None:
    """Finish a replacement of a checkpoint folder that was interrupted between its two renames (see
    `diff4splat.callbacks.checkpoint.atomic_save_checkpoint`): the previous version is put back."""
    from diff4splat.files import recover_interrupted_replace

    recover_interrupted_replace(path)


def log_hyperparameters(cfg: DictConfig, loggers: list[Logger], system: Any) -> None:
    """Send the full resolved config plus parameter counts to every logger."""
    if not loggers:
        return
    hparams = resolved_container(cfg)
    params = list(system.parameters())
    hparams["params/total"] = sum(p.numel() for p in params)
    hparams["params/trainable"] = sum(p.numel() for p in params if p.requires_grad)
    for logger in loggers:
        logger.log_hyperparams(hparams)


def metric_value(metrics: dict[str, Any], name: str | None) -> float | None:
    """The value of ``name`` in ``metrics`` for sweepers; a clear error if it was never logged."""
    if not name:
        return None
    if name not in metrics:
        raise KeyError(
            f"optimized_metric={name!r} was not logged; logged metrics: {sorted(metrics)}. "
            "Set optimized_metric to one of them."
        )
    return float(metrics[name])


def set_output_dir(cfg: DictConfig, path: str | os.PathLike) -> None:
    """Point ``paths.output_dir`` somewhere concrete (used when running outside a Hydra app, e.g. in tests)."""
    with open_dict(cfg):
        cfg.paths.output_dir = str(path)
