"""experiments/benchmarks/vggsplat.py runs end to end with --tiny on the CPU (so the GPU run is only a launch) and
writes its results file: command, device, date, the inference and training measurements with their FLOPs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "vggsplat.py"


def test_vggsplat_benchmark_runs_tiny_on_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("vggsplat_benchmark", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
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
    assert set(result["queries_per_pass_medians_s"]) == {"1", "all"} and result["queries_per_pass"] in (1, "all")
    assert [r["frames"] for r in result["inference"]] == [3, 5]
    assert all(r["median_s"] > 0 and r["gaussians"] == r["frames"] * 28 * 56 for r in result["inference"])
    assert [r["checkpointing"] for r in result["training"]] == [True, False]
    for r in result["training"]:
        assert r["median_s"] > 0 and r["model_tflops_per_step"] > 0
        assert r["mfu"] == r["model_tflops_per_step"] * 1e12 / r["median_s"] / (bench.PEAK_TFLOPS * 1e12)
    # the same network FLOPs with and without checkpointing (recomputation is not model FLOPs)
    assert result["training"][0]["model_tflops_per_step"] == result["training"][1]["model_tflops_per_step"]
    assert "| inference 3x28x56 + 2 renders |" in path.with_suffix(".md").read_text()
