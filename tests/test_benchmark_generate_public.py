"""experiments/benchmarks/generate_public.py runs the public route end to end with --tiny on the CPU (so the GPU run is
only a launch) and writes its results file: command, device, date, per-stage seconds per size, decoder and memory
mode, seconds per sampling step and the extrapolation to the release's 50 steps."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"


def test_public_route_benchmark_runs_tiny_on_cpu(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the script imports its sibling benchmarks
    spec = importlib.util.spec_from_file_location("generate_public_benchmark", BENCH / "generate_public.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    args = ["--tiny", "--device", "cpu", "--configs", "64x96x9:2:0", "--decoders", "wan", "--out", str(tmp_path)]
    try:
        path = bench.main(args)
    finally:
        torch.set_num_threads(threads)
    record = json.loads(path.read_text())
    assert record["command"].endswith(" ".join(args)) and record["date"] and record["device"].startswith("CPU")
    assert [(r["size"], r["mode"], r["decoder"]) for r in record["results"]] == [
        ("64x96x9", "default", "wan"),
        ("64x96x9", "low_memory", "wan"),
    ]
    for r in record["results"]:
        m = r["median_s"]
        assert all(m[k] > 0 for k in bench.STAGES) and m["total"] == pytest.approx(sum(m[k] for k in bench.STAGES))
        assert r["sampling_s_per_step"] == pytest.approx(m["sampling"] / 2)
        assert r["total_at_50_steps_s"] == pytest.approx(m["total"] + 48 * r["sampling_s_per_step"])
        assert r["extrapolated"] and r["num_gaussians"] > 0
    assert "| 64x96x9 | 2 | wan | low_memory |" in path.with_suffix(".md").read_text()
