"""Shared fixtures: composing the Hydra config in-process with tiny overrides, and the real sample files."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# Real sample files (RealEstate10K, TartanAir, NeRF lego), committed with their sources in FIXTURES / "README.md".
FIXTURES = ROOT / "tests" / "fixtures"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("MPLBACKEND", "Agg")

# Overrides that make any experiment tiny enough for a CPU test (applied after the experiment's own).
TINY = [
    "trainer=cpu",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=false",
    "logger=csv",
    "extras.print_config=false",
]


def compose_cfg(overrides: list[str], output_root: Path, run_name: str = "run") -> DictConfig:
    """Compose ``conf/train.yaml`` with ``overrides`` as Hydra would; the run folder is
    ``output_root/<task_name>/runs/<run_name>`` (the layout ``ckpt_path=last`` searches).

    Hydra is imported here, not at module level, so GPU tests run on machines without it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from diff4splat.runs import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train.yaml", overrides=overrides, return_hydra_config=True)
    output_dir = output_root / cfg.task_name / "runs" / run_name
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(ROOT)
        cfg.hydra.job.name = "test"
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.output_root = str(output_root)
        cfg.paths.output_dir = str(output_dir)
    HydraConfig().set_config(cfg)
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    count = [0]

    def _make(*overrides: str, tiny: bool = True) -> DictConfig:
        keys = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
        extra = [t for t in TINY if t.split("=", 1)[0] not in keys] if tiny else []
        count[0] += 1
        return compose_cfg(list(overrides) + extra, tmp_path / "outputs", f"run{count[0]}")

    yield _make
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()


@pytest.fixture
def real_fixtures() -> Path:
    """The folder of real sample files (committed, so never skipped)."""
    return FIXTURES
