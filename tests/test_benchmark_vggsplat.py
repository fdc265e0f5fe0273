"""experiments/benchmarks/vggsplat.py runs end to end with --tiny on the CPU (so the GPU run is only a launch) and
writes its results file: command, device, date, the variants' per-stage breakdown with FLOPs, the inference and
training measurements."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "vggsplat.py"


def test_vggsplat_benchmark_runs_tiny_on_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("vggsplat_benchmark", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # the script's dataclasses look their module up
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = bench.main(["--tiny", "--repeats", "1", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    result = json.loads(path.read_text())
    assert result["command"].endswith(f"--tiny --repeats 1 --out {tmp_path}") and result["date"]
    assert result["device"].startswith("CPU") and result["model"] == "lrdm_vggt_tiny"
    assert [r["variant"]["name"] for r in result["profile"]] == list(bench.TINY_VARIANTS)
    assert result["chosen_variant"]["name"] in bench.TINY_VARIANTS
    flops = result["stage_tflops"]["3"]
    # the stages partition the forward's FLOPs: encoder, aggregator, the heads, and the rest
    parts = sum(flops[k] for k in (*bench.MODULE_STAGES, "forward_rest"))
    assert flops["motion_head"] > 0 and abs(parts - flops["total"]) <= 1e-9 * max(flops["total"], 1e-12)
    # the automatic rescale's measuring pass: the static stages' FLOPs, none of the time-conditioned heads'
    measuring = result["measuring_pass_tflops"]["3"]
    assert measuring.get("motion_head", 0.0) == measuring.get("motion_splat_head", 0.0) == 0.0
    assert all(measuring[k] == flops[k] for k in ("encoder", "aggregator", "depth_head", "splat_head"))
    assert measuring["total"] < flops["total"] - flops["motion_head"]
    for r in result["profile"]:
        stages = r["stages_ms"]
        assert set(bench.MODULE_STAGES) <= set(stages) and stages["render"] > 0
        assert sum(stages.values()) <= r["median_s"] * 1e3 * 3  # the stages are parts of one call
    assert [r["frames"] for r in result["inference"]] == [3, 5]
    assert all(r["median_s"] > 0 and r["gaussians"] == r["frames"] * 28 * 56 for r in result["inference"])
    assert [r["checkpointing"] for r in result["training"]] == [True, False]
    for r in result["training"]:
        assert r["median_s"] > 0 and r["model_tflops_per_step"] > 0
        assert r["mfu"] == r["model_tflops_per_step"] * 1e12 / r["median_s"] / (bench.PEAK_TFLOPS * 1e12)
    # the same network FLOPs with and without checkpointing (recomputation is not model FLOPs)
    assert result["training"][0]["model_tflops_per_step"] == result["training"][1]["model_tflops_per_step"]
    text = path.with_suffix(".md").read_text()
    assert "| inference 3x28x56 + 2 renders |" in text and "| default (3 fr) |" in text
