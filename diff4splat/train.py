"""Training entry point: ``python -m diff4splat.train [experiment=NAME] [group=option] [key=value ...]``.

Linear wiring, in this order: seed -> datamodule -> system -> callbacks -> loggers -> trainer -> fit -> test.
Returns the value of ``optimized_metric`` so Hydra sweepers (multirun ablations, Optuna) can optimise it.

Resuming: with ``ckpt_path=auto`` (the default) a run whose folder already holds ``checkpoints/last.ckpt`` continues
from it, so re-running the same command with the same run id (``DIFF4SPLAT_RUN_ID``, or the SLURM job id of a
requeued job; see `diff4splat.runs`) continues the run. A run stopped by SIGTERM or the requeue signal saves
``last.ckpt`` first and exits with status 143 (`diff4splat.callbacks.preemption`).
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import Any

import hydra
import lightning as L
from hydra.errors import InstantiationException
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from diff4splat.callbacks.preemption import PREEMPTED_EXIT_CODE
from diff4splat.configs import ConfigError
from diff4splat.files import remove_path
from diff4splat.runs import (
    RUN_ID_ENV,
    apply_extras,
    instantiate_callbacks,
    instantiate_loggers,
    log_hyperparameters,
    metric_value,
    register_resolvers,
    resolve_ckpt_path,
)

log = logging.getLogger(__name__)

register_resolvers()


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train (and optionally test) the system described by ``cfg``.

    Returns ``(metrics, objects)``: every metric logged by the trainer (fit and test, as floats) and the instantiated
    ``datamodule``, ``system``, ``trainer``, ``callbacks`` and ``loggers``.
    """
    from diff4splat.configs import check_top_level_keys
    from diff4splat.distributed import exit_with_launcher

    check_top_level_keys(cfg)  # a misspelt key in an experiment file is merged silently by Hydra
    exit_with_launcher()  # a rank whose launcher (rank 0, torchrun's agent) died exits instead of hanging
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    log.info("Instantiating datamodule <%s>", cfg.data._target_)
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data, _recursive_=False)

    log.info("Instantiating system <%s>", cfg.system._target_)
    system: L.LightningModule = hydra.utils.instantiate(cfg.system, _recursive_=False)

    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"))

    log.info("Instantiating trainer <%s>", cfg.trainer._target_)
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    objects = {
        "datamodule": datamodule,
        "system": system,
        "trainer": trainer,
        "callbacks": callbacks,
        "loggers": loggers,
    }
    log_hyperparameters(cfg, loggers, system)

    metrics: dict[str, Any] = {}
    if cfg.get("train", True):
        ckpt_path = resolve_ckpt_path(cfg)
        try:
            trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except pickle.UnpicklingError as e:  # weights_only refused an object in the checkpoint: name the file
            from diff4splat.weights import WeightsError, refused_global

            raise WeightsError(
                f"ckpt_path={ckpt_path}: refused to load: the checkpoint holds Python objects other "
                f"than tensors and plain containers ({refused_global(str(e))}); expected a "
                "checkpoint written by this project's training"
            ) from e
        metrics.update(_floats(trainer.callback_metrics))
        if _needs_final_validation(cfg, metrics, trainer):
            log.info(
                "%s was not logged during fit (validation every %s steps): validating at the end of training.",
                cfg.optimized_metric,
                cfg.trainer.get("val_check_interval"),
            )
            trainer.validate(system, datamodule=datamodule, weights_only=True)
            metrics.update(_floats(trainer.callback_metrics))
        if ckpt_path is not None:  # a resumed run keeps the metrics of its earlier parts that it did not recompute
            metrics = {**read_summary(cfg), **metrics}

    if cfg.get("test", False):
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
        if not best:
            log.info("No best checkpoint: testing the current weights.")
        trainer.test(system, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics.update(_floats(trainer.callback_metrics))

    write_summary(cfg, metrics)
    return metrics, objects


def write_summary(cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """Write the run's final metrics to ``<output_dir>/summary.json`` (rank 0, atomically)."""
    import json
    from pathlib import Path

    from lightning.pytorch.utilities import rank_zero_only

    from diff4splat.files import atomic_write_text

    if rank_zero_only.rank != 0:
        return
    path = Path(cfg.paths.output_dir) / "summary.json"
    atomic_write_text(path, json.dumps({"task_name": cfg.task_name, "metrics": metrics}, indent=2, sort_keys=True))


def read_summary(cfg: DictConfig) -> dict[str, float]:
    """The metrics of this run folder's ``summary.json`` (a run that finished before), or {}."""
    import json
    from pathlib import Path

    path = Path(cfg.paths.output_dir) / "summary.json"
    try:
        return dict(json.loads(path.read_text()).get("metrics", {}))
    except (OSError, ValueError, AttributeError):
        return {}


def _needs_final_validation(cfg: DictConfig, metrics: dict[str, Any], trainer: L.Trainer) -> bool:
    """A run whose ``optimized_metric`` is a validation metric that fit did not log (it stopped before the first
    validation) validates once at its end, so the metric always exists."""
    name = cfg.get("optimized_metric")
    return (
        bool(name)
        and str(name).startswith("val/")
        and name not in metrics
        and not trainer.interrupted
        and trainer.limit_val_batches != 0
    )


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


@hydra.main(version_base="1.3", config_path="../conf", config_name="train.yaml")
def _hydra_main(cfg: DictConfig) -> float | None:
    apply_extras(cfg)
    try:
        metrics, _ = train(cfg)
    except (ConfigError, InstantiationException) as e:
        error = e if isinstance(e, ConfigError) else e.__cause__
        if not isinstance(error, ConfigError):
            raise
        import sys

        print(f"error: {error}", file=sys.stderr)
        _remove_fresh_run_dir(cfg)
        raise SystemExit(2) from None
    except SIGTERMException:
        log.warning(
            "Stopped by a signal; last.ckpt is saved in %s/checkpoints: re-run the same command (same run id) "
            "to continue.",
            cfg.paths.output_dir,
        )
        raise SystemExit(PREEMPTED_EXIT_CODE) from None
    finally:
        _finish_wandb()
    try:
        return metric_value(metrics, cfg.get("optimized_metric"))
    except KeyError as e:
        import sys

        print(f"error: {e.args[0]}", file=sys.stderr)
        raise SystemExit(2) from None


_RUN_ID_AT_START = os.environ.get(RUN_ID_ENV)


def _remove_fresh_run_dir(cfg: DictConfig) -> None:
    """Remove the run folder Hydra made for a run that stopped on a config error: only when this process chose its
    run id (not a resumed run) and it holds nothing but the config copies and logs."""
    from pathlib import Path

    from lightning.pytorch.utilities import rank_zero_only

    if _RUN_ID_AT_START or rank_zero_only.rank != 0:
        return
    folder = Path(cfg.paths.output_dir)
    if not folder.is_dir():
        return
    entries = list(folder.iterdir())
    if all(p.name in (".hydra", "config.yaml") or (p.is_file() and p.suffix == ".log") for p in entries):
        remove_path(folder)


def _finish_wandb() -> None:
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def main() -> None:
    """Command-line entry point (see the module docstring): a config error (a misspelt key, a value of the wrong
    type) is one ``error:`` line and exit status 2, before any run folder is made."""
    import sys
    from pathlib import Path

    from diff4splat.configs import check_overrides

    if not any(a in ("-h", "--help", "--hydra-help", "--info", "--shell-completion") for a in sys.argv[1:]):
        error = check_overrides(Path(__file__).resolve().parents[1] / "conf", "train.yaml", sys.argv[1:])
        if error is not None:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
