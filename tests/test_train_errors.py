"""The training CLI on bad configs and short runs: a misspelt key or a wrong value is one ``error:`` line, exit
status 2 and no run folder; a run that stops before its first validation still validates once, so the
``optimized_metric`` exists; the progress bar counts steps when a run is bounded by steps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from diff4splat.callbacks.progress import ProgressBar
from diff4splat.configs import check_overrides
from diff4splat.train import train

ROOT = Path(__file__).resolve().parents[1]


def _train_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OUTPUT_ROOT=str(tmp_path / "outputs"), WANDB_MODE="offline", DIFF4SPLAT_RUN_ID="")
    return subprocess.run(
        [sys.executable, "-m", "diff4splat.train", "experiment=smoke", "extras.print_config=false", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _run_folders(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "outputs").rglob("*") if p.is_dir() and p.parent.name in ("runs", "multiruns")]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.max_stepz=20", "trainer.max_stepz: no such key in the config; valid keys under trainer: "),
        ("system.optim.lrr=1", "system.optim.lrr: no such key in the config; valid keys under system.optim: "),
        ("trainer.max_steps=abc", "trainer.max_steps: expected int, got 'abc'"),
        ("+typo=1", "unknown top-level key(s) ['typo']"),
        ("experiment=smok", "Could not find 'experiment/smok'"),
        ("model.dim=abc", "system.model.dim: expected an integer, got 'abc'"),
    ],
)
def test_config_errors_are_one_line_exit_2_and_leave_no_run_folder(tmp_path, override, expected):
    proc = _train_cli(tmp_path, override)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and expected in lines[-1], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert _run_folders(tmp_path) == []


def test_misspelt_key_lists_the_valid_ones():
    error = check_overrides(ROOT / "conf", "train.yaml", ["experiment=smoke", "trainer.max_stepz=20"])
    assert error is not None and "max_steps" in error.split("valid keys under trainer:")[1]
    # a sweep is checked value by value
    error = check_overrides(ROOT / "conf", "train.yaml", ["-m", "experiment=smoke", "trainer.max_steps=5,abc"])
    assert error == "trainer.max_steps: expected int, got 'abc'"
    assert check_overrides(ROOT / "conf", "train.yaml", ["experiment=smoke", "trainer.max_steps=5,6", "-m"]) is None


def test_run_shorter_than_the_validation_interval_validates_at_its_end(make_cfg):
    cfg = make_cfg(
        "experiment=smoke",
        "trainer.max_steps=3",
        "trainer.val_check_interval=200",
        "data.synthetic_pool=4",
        "data.synthetic_val_pool=2",
        "data.val_batches=1",
        "test=false",
    )
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 3
    assert cfg.optimized_metric == "val/psnr" and metrics["val/psnr"] > 0.0


def test_progress_bar_counts_steps_without_an_epoch_bound():
    bar = ProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=-1, max_steps=1200, global_step=120)
    assert bar._get_train_description(3).strip() == "Epoch 3 · step 120/1200"
    bar._trainer = SimpleNamespace(max_epochs=10, max_steps=-1, global_step=5)
    assert bar._get_train_description(3).strip() == "Epoch 3/9"
