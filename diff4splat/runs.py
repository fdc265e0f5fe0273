"""Run bookkeeping for the entry points: run ids, config printing and saving, instantiating callbacks and loggers.

The run id names output folders and W&B runs. It must be the same in every process of one run (Lightning's DDP
launcher re-executes the script per rank; multi-node jobs start one process per GPU on every node), so it is taken,
in order, from ``DIFF4SPLAT_RUN_ID``, the SLURM job id, the torchrun rendezvous id, or made once per process tree
and handed to child processes through the environment.
"""

from __future__ import annotations

import logging
import os
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
    if os.environ.get("SLURM_JOB_ID"):
        job = os.environ["SLURM_JOB_ID"]
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        rid = f"slurm{job}" + (f"_{task}" if task else "")
    elif os.environ.get("TORCHELASTIC_RUN_ID", "none") not in ("", "none"):
        rid = "tr" + os.environ["TORCHELASTIC_RUN_ID"]
    else:
        rid = uuid.uuid4().hex[:8]
    os.environ[RUN_ID_ENV] = rid  # inherited by the DDP child processes Lightning starts
    return rid


def register_resolvers() -> None:
    """Register the OmegaConf resolvers our configs use (idempotent)."""
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", run_id, use_cache=True)


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(OmegaConf.to_yaml(resolved_container(cfg)))
    tmp.replace(path)


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


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """Turn ``ckpt_path=last`` into the newest ``last.ckpt`` of this task's runs; check explicit paths exist."""
    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, ""):
        return None
    if ckpt == "last":
        root = Path(cfg.paths.output_root) / cfg.task_name
        candidates = sorted(root.glob("runs/*/checkpoints/last*.ckpt"), key=lambda p: p.stat().st_mtime)
        candidates += sorted(root.glob("multiruns/*/*/checkpoints/last*.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise FileNotFoundError(f"ckpt_path=last: no last.ckpt under {root}/runs/*/checkpoints/")
        newest = max(candidates, key=lambda p: p.stat().st_mtime)
        log.info("Resuming from %s", newest)
        return str(newest)
    if not Path(ckpt).is_file():
        raise FileNotFoundError(f"ckpt_path: no checkpoint file at {ckpt!r}")
    return str(ckpt)


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
