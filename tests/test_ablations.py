"""Ablations: a real two-job multirun of the abl_lrdm experiments (a few steps each) summarised by
experiments/ablations/summarize.py: the tables hold exactly the numbers of the jobs' summary.json files, the curves
are the CSV logs', the comparison is the difference of the arms, and bad input fails before anything is written."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("abl_lrdm_base", "abl_lrdm_motion_off")


def _summarize_module():
    spec = importlib.util.spec_from_file_location("abl_summarize", ROOT / "experiments" / "ablations" / "summarize.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """outputs/abl_lrdm/multiruns/<stamp> of `-m experiment=abl_lrdm_base,abl_lrdm_motion_off`, 4 steps a job."""
    out = tmp_path_factory.mktemp("outputs")
    env = dict(os.environ, OUTPUT_ROOT=str(out), WANDB_MODE="offline", DIFF4SPLAT_RUN_ID="")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "diff4splat.train",
            "-m",
            f"experiment={','.join(ARMS)}",
            "seed=3",
            "extras.print_config=false",
            "callbacks=none",
            "+trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
            "trainer.log_every_n_steps=1",
            "++data.synthetic.synthetic.num_frames=5",
            "data.sampling.num_input=2",
            "data.sampling.num_output=2",
            "++data.synthetic_pool=1",
            "++data.synthetic_val_pool=1",
            "data.val_batches=1",
            "model.dim=32",
            "model.depth=2",
            "model.num_heads=2",
            "model.decoder_channels=8",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    sweeps = list((out / "abl_lrdm" / "multiruns").iterdir())  # the experiments' task_name, one folder for the sweep
    assert len(sweeps) == 1
    return sweeps[0]


def test_summary_tables_match_the_jobs(sweep, tmp_path):
    s = _summarize_module()
    out = s.summarize(sweep, "tiny", tmp_path, reference="abl_lrdm_base")
    summaries = {}
    for n, arm in enumerate(ARMS):  # Hydra numbers the jobs in sweep order
        assert f"- experiment={arm}" in (sweep / str(n) / ".hydra" / "overrides.yaml").read_text()
        summaries[arm] = json.loads((sweep / str(n) / "summary.json").read_text())["metrics"]

    # results.csv: one row per job, every metric exactly as in summary.json
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["ablation"], r["seed"], r["job"]) for r in rows] == [
        ("abl_lrdm_base", "3", "0"),
        ("abl_lrdm_motion_off", "3", "1"),
    ]
    for row, arm in zip(rows, ARMS):
        metrics = summaries[arm]
        assert {k for k, v in row.items() if v} - {"ablation", "seed", "job", "wall_s"} == set(metrics)
        for k, v in metrics.items():
            assert float(row[k]) == v, (arm, k)
        assert 0 < float(row["wall_s"]) < 300
    assert "train/motion" in summaries["abl_lrdm_base"] and "train/motion" not in summaries["abl_lrdm_motion_off"]

    # results.md: the per-job table and the comparison hold the same numbers, formatted
    md = (out / "results.md").read_text()
    test_metrics = sorted(k for k in summaries["abl_lrdm_base"] if k.startswith("test/"))
    assert {"test/psnr", "test/motion_epe", "test/depth_abs_rel"} <= set(test_metrics)
    for n, arm in enumerate(ARMS):
        cells = [arm, "3", str(n), *(s.fmt(summaries[arm][m]) for m in test_metrics)]
        assert "| " + " | ".join(cells) + " |" in md
        cells = [arm, "3", *(f"{s.fmt(summaries[arm][m])} ± —" for m in test_metrics)]  # one seed: no std
        assert "| " + " | ".join(cells) + " |" in md
    diffs = [summaries["abl_lrdm_motion_off"][m] - summaries["abl_lrdm_base"][m] for m in test_metrics]
    assert "| abl_lrdm_motion_off | " + " | ".join(f"{s.fmt(d)} ({s.fmt(d)})" for d in diffs) + " |" in md
    assert "experiment=abl_lrdm_base,abl_lrdm_motion_off" in md  # the sweep command, from Hydra's multirun.yaml
    assert "- Commit: `" in md and "- Date: " in md

    # curves come from the CSV logs: the last validation point is the final val metric
    jobs = s.load_sweep(sweep)
    for job, arm in zip(jobs, ARMS):
        steps = [step for step, _ in job.curves["val/psnr"]]
        assert steps == [1, 3] and job.curves["val/psnr"][-1][1] == summaries[arm]["val/psnr"]
    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    # a derived metric (the camera ablation's gap) is the per-job difference; --commit records the jobs' commit
    out = s.summarize(sweep, "derived", tmp_path, derived=["gap=val/psnr-val/psnr_nearest_input"], commit="abc1234")
    with open(out / "results.csv", newline="") as f:
        for row, arm in zip(csv.DictReader(f), ARMS):
            assert float(row["gap"]) == summaries[arm]["val/psnr"] - summaries[arm]["val/psnr_nearest_input"]
    assert "- Commit: `abc1234`" in (out / "results.md").read_text()


def test_mean_and_std_over_seeds_and_the_noise_rule(sweep):
    """Aggregation on the real jobs read as two seeds of one arm, and the beyond-noise rule on the pair."""
    s = _summarize_module()
    jobs = s.load_sweep(sweep)
    a, b = jobs
    values = [a.metrics["test/psnr"], b.metrics["test/psnr"]]
    b.ablation, b.seed = a.ablation, 4
    (agg,) = s.aggregate(jobs, ["test/psnr"])
    assert agg.seeds == [3, 4]
    assert agg.mean["test/psnr"] == statistics.fmean(values) and agg.std["test/psnr"] == statistics.stdev(values)
    # two arms of two seeds each, the second arm 1 dB better on both seeds with a seed spread of 0.1: beyond noise
    twins = [
        s.Job(num=i, path=sweep, overrides={}, seed=seed, metrics={"m": base + d}, ablation=arm)
        for i, (arm, seed, base, d) in enumerate(
            [("r", 0, 10.0, 0), ("r", 1, 10.1, 0), ("x", 0, 10.0, 1), ("x", 1, 10.1, 1)]
        )
    ]
    (c,) = s.compare(twins, s.aggregate(twins, ["m"]), "r", ["m"])
    assert c.paired == [1.0, 1.0] and math.isclose(c.diff, 1.0) and c.beyond_noise
    twins[3].metrics["m"] = 9.9  # one seed disagrees in sign: within noise
    (c,) = s.compare(twins, s.aggregate(twins, ["m"]), "r", ["m"])
    assert not c.beyond_noise
    (c,) = s.compare(twins[:3], s.aggregate(twins[:3], ["m"]), "r", ["m"])  # x ran seed 0 only: Δ over seed 0
    assert c.paired == [1.0] and c.diff == 1.0 and not c.beyond_noise


def test_bad_input_fails_clearly_and_writes_nothing(sweep, tmp_path):
    s = _summarize_module()
    broken = tmp_path / "sweep"
    shutil.copytree(sweep, broken, ignore=shutil.ignore_patterns("checkpoints", "media"))
    (broken / "1" / "summary.json").unlink()
    with pytest.raises(s.SummaryError, match=r"1/summary.json: missing"):
        s.summarize(broken, "bad", tmp_path / "out")
    assert not (tmp_path / "out" / "bad").exists()
    shutil.copy(sweep / "1" / "summary.json", broken / "1" / "summary.json")
    (broken / "0" / ".hydra" / "overrides.yaml").write_text("experiment: abl_lrdm_base\n")
    with pytest.raises(s.SummaryError, match=r"0/.hydra/overrides.yaml: expected a YAML list"):
        s.summarize(broken, "bad", tmp_path / "out")
    shutil.copy(sweep / "0" / ".hydra" / "overrides.yaml", broken / "0" / ".hydra" / "overrides.yaml")
    (broken / "0" / "summary.json").write_text('{"metrics": {"test/psnr": "high"}}')
    with pytest.raises(s.SummaryError, match=r"field 'metrics.test/psnr' must be a number"):
        s.summarize(broken, "bad", tmp_path / "out")
    shutil.copy(sweep / "0" / "summary.json", broken / "0" / "summary.json")
    with pytest.raises(s.SummaryError, match="--reference 'abl_nope' is not an ablation"):
        s.summarize(broken, "bad", tmp_path / "out", reference="abl_nope")
    with pytest.raises(s.SummaryError, match="expected NAME=METRIC_A-METRIC_B"):
        s.summarize(broken, "bad", tmp_path / "out", derived=["gap"])
    assert not (tmp_path / "out" / "bad").exists()
    assert s.main([str(tmp_path / "nowhere"), "--name", "x", "--out", str(tmp_path / "out")]) == 2
