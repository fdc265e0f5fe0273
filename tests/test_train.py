"""The training entry point end to end on CPU: the CLI, a falling loss, checkpoints with safetensors exports,
resuming, W&B offline, and the metric returned to sweepers."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from diff4splat.runs import metric_value
from diff4splat.train import train

ROOT = Path(__file__).resolve().parents[1]


def _csv_metrics(run_dir: Path) -> list[dict[str, str]]:
    files = sorted(run_dir.glob("csv/**/metrics.csv"))
    assert files, f"no metrics.csv under {run_dir}"
    with open(files[-1]) as f:
        return list(csv.DictReader(f))


def test_cli_fast_dev_run(tmp_path):
    env = dict(os.environ, OUTPUT_ROOT=str(tmp_path), WANDB_MODE="offline", DIFF4SPLAT_RUN_ID="")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "diff4splat.train",
            "experiment=fit_synthetic",
            "debug=fdr",
            "logger=csv",
            "data.height=32",
            "data.width=32",
            "model.num_gaussians=500",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = list((tmp_path / "debug" / "runs").iterdir())  # debug configs set task_name=debug
    assert len(runs) == 1
    run = runs[0]
    # run folder = timestamp + unique id, and the resolved config is saved there
    assert len(run.name.split("_")[-1]) == 8
    assert (run / "config.yaml").is_file() and "scene_fit" in (run / "config.yaml").read_text()
    assert "CONFIG" in proc.stdout  # the rich config tree printed on rank 0


def test_loss_falls_checkpoint_exports_and_metric(make_cfg):
    cfg = make_cfg(
        "experiment=fit_synthetic",
        "trainer.max_steps=60",
        "trainer.val_check_interval=30",
        "data.height=32",
        "data.width=32",
        "model.num_gaussians=2000",
        "callbacks.ema.decay=0.9",
    )
    metrics, objects = train(cfg)
    run = Path(cfg.paths.output_dir)
    rows = [r for r in _csv_metrics(run) if r.get("train/loss")]
    first, last = float(rows[0]["train/loss"]), float(rows[-1]["train/loss"])
    assert last < 0.6 * first, (first, last)
    assert metrics["val/psnr"] > 18.0
    assert metric_value(metrics, "val/psnr") == metrics["val/psnr"]
    with pytest.raises(KeyError, match="not logged"):
        metric_value(metrics, "val/nonexistent")
    # last.ckpt has its safetensors sidecar: the field's EMA weights, keys without the "field." prefix
    ckpt_dir = run / "checkpoints"
    assert (ckpt_dir / "last.ckpt").is_file() and (ckpt_dir / "last.safetensors").is_file()
    exported = load_file(ckpt_dir / "last.safetensors")
    system = objects["system"]
    assert set(exported) == {k for k, _ in system.field.named_parameters()}
    ema = next(c for c in objects["callbacks"] if type(c).__name__ == "EMA")
    torch.testing.assert_close(exported["means"], ema.shadow["field.means"])
    assert not torch.allclose(exported["means"], system.field.means.detach())  # EMA, not the raw weights
    with safe_open(ckpt_dir / "last.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["system"].endswith("SceneFitSystem") and meta["ema"] == "true" and int(meta["global_step"]) == 60
    # top-k checkpoints carry sidecars too, and only existing ones
    for ckpt in ckpt_dir.glob("step_*.ckpt"):
        assert ckpt.with_suffix(".safetensors").is_file()
    assert len(list(ckpt_dir.glob("step_*.safetensors"))) == len(list(ckpt_dir.glob("step_*.ckpt")))


def test_resume_from_last_continues(make_cfg, tmp_path):
    common = [
        "experiment=fit_synthetic",
        "data.height=32",
        "data.width=32",
        "model.num_gaussians=500",
        "trainer.val_check_interval=3",
    ]
    cfg = make_cfg("trainer.max_steps=6", *common)
    train(cfg)
    cfg2 = make_cfg("trainer.max_steps=9", "ckpt_path=last", *common)
    _, objects = train(cfg2)
    trainer = objects["trainer"]
    assert trainer.global_step == 9
    ema = next(c for c in objects["callbacks"] if type(c).__name__ == "EMA")
    assert ema.num_updates == 9  # the EMA state was restored, not restarted


def test_resume_missing_checkpoint_is_clear(make_cfg):
    cfg = make_cfg("experiment=fit_synthetic", "ckpt_path=/nonexistent/last.ckpt")
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        train(cfg)


def test_wandb_offline_writes_under_run_dir(make_cfg, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = make_cfg(
        "experiment=fit_synthetic",
        "logger=wandb",
        "trainer.max_steps=2",
        "data.height=32",
        "data.width=32",
        "model.num_gaussians=300",
        "callbacks=none",
        tiny=True,
    )
    try:
        train(cfg)
    finally:
        import wandb

        wandb.finish()
    run = Path(cfg.paths.output_dir)
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, list(run.rglob("*"))[:20]
    records = list(offline[0].glob("*.wandb"))
    assert len(records) == 1, "the offline run file is written"
    data = records[0].read_bytes()
    for _ in range(100):  # wandb-core may still be flushing the offline file after finish() on a loaded machine
        if b"train/loss" in data and b"num_gaussians" in data:
            break
        time.sleep(0.1)
        data = records[0].read_bytes()
    assert b"num_gaussians" in data and b"optimized_metric" in data  # the full config is logged
    assert b"train/loss" in data  # and the metrics


def test_cli_multirun_sweep_writes_one_summary_per_job(tmp_path):
    env = dict(os.environ, OUTPUT_ROOT=str(tmp_path), WANDB_MODE="offline", DIFF4SPLAT_RUN_ID="")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "diff4splat.train",
            "-m",
            "experiment=fit_synthetic",
            "logger=csv",
            "extras.print_config=false",
            "~callbacks.progress_bar",
            "+trainer.enable_progress_bar=false",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
            "test=false",
            "data.height=32",
            "data.width=32",
            "model.num_gaussians=300,600",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    sweeps = list((tmp_path / "fit_synthetic" / "multiruns").iterdir())
    assert len(sweeps) == 1
    summaries = sorted(sweeps[0].glob("*/summary.json"))
    assert [p.parent.name for p in summaries] == ["0", "1"]
    for p, n in zip(summaries, (300, 600)):
        assert json.loads(p.read_text())["metrics"]["train/num_gaussians"] == n
