"""Stage timings and progress bars of a generation: wall-clock seconds per stage (``meta.json``'s ``timings``), one
progress bar per stage on stderr, and milestones (``mark``: seconds since the job started, e.g. ``time_to_scene``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch

STAGES = ("text", "encode", "sampling", "decode", "lrdm", "render", "write")


class Stages:
    """Wall-clock time per stage (CUDA-synchronised at both ends), one progress bar per stage on stderr, and milestones
    in seconds since this object was made (the job's start). Stages run on the calling thread; ``mark`` may be called
    from any thread (a file writer marks when its file is complete)."""

    def __init__(self, device: torch.device | str = "cpu", progress: bool = True) -> None:
        self.device = torch.device(device)
        self.progress = progress
        self.timings: dict[str, float] = {}
        self.marks: dict[str, float] = {}
        self.origin = time.perf_counter()

    def add(self, name: str, seconds: float) -> None:
        """Count ``seconds`` measured elsewhere (e.g. by file writers) under stage ``name``."""
        self.timings[name] = self.timings.get(name, 0.0) + seconds

    def mark(self, name: str) -> float:
        """Record (and return) the seconds from the job's start to now under ``name``."""
        self.marks[name] = time.perf_counter() - self.origin
        return self.marks[name]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, name: str, total: int = 1, unit: str = "it") -> Iterator[Any]:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"{name:<8}", unit=unit, disable=not self.progress, dynamic_ncols=True)
        self._sync()
        start = time.perf_counter()
        try:
            yield bar
            self._sync()
            bar.update(max(0, total - bar.n))
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
            bar.close()
