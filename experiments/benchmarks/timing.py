"""What the benchmarks in this folder share (imported by them; run on its own it does nothing): the wall-clock timer
of GPU work and the provenance every results file starts with (command, device, torch, python, date, commit)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]


def git_commit(measured: Sequence[str] = ()) -> str:
    """``GIT_COMMIT`` when set (a copy without .git), else the checkout's short commit, with ``+dirty`` when any of
    the ``measured`` paths has uncommitted changes; ``unknown`` outside a checkout."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", *measured], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    if head.returncode:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if measured and dirty.stdout.strip() else "")


def device_name(device: torch.device | str) -> str:
    """The GPU's name, or ``CPU (<processor>)``."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()})"


def provenance_line(record: dict[str, Any]) -> str:
    """A results file's first line under its title: how and where the numbers were made."""
    return (
        f"`{record['command']}` on {record['device']}, {record['date']}, commit {record['commit']}, "
        f"torch {record['torch']}"
    )


def device_tag(name: str) -> str:
    """A results file's device suffix for a `device_name`: h100, h200, another gpu, or cpu."""
    if name.startswith("CPU"):
        return "cpu"
    return "h100" if "H100" in name else "h200" if "H200" in name else "gpu"


def provenance(script: str, argv: list[str] | None, device: str, measured: Sequence[str] = ()) -> dict[str, Any]:
    """The head of a results record: the command that reproduces it (``script`` in this folder with ``argv``, or this
    process's arguments), the device, the torch and python versions, the UTC date and the commit."""
    return {
        "command": " ".join(
            ["python", f"experiments/benchmarks/{script}", *(argv if argv is not None else sys.argv[1:])]
        ),
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(measured),
    }


def cuda_times(fn: Callable[[], object], repeats: int, warmup: int = 3) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones, every call ended by a CUDA
    synchronise so its kernels are counted; sorted, so ``[len // 2]`` is the median and ``[0]`` the best."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)
