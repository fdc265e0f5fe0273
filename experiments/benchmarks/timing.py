"""The wall-clock timer of the GPU benchmarks in this folder (imported by them; run on its own it does nothing)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


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
