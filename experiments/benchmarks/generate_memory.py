"""Peak memory of `python -m diff4splat.generate` (tiny random-weight models, CPU) per stage and in all, against the
estimate of `diff4splat.pipelines.memory`: the measurements its calibrated coefficients rest on.

    python experiments/benchmarks/generate_memory.py --sizes 13x96x160 97x96x160 193x96x160 --out results.json
    python experiments/benchmarks/generate_memory.py --one 97x96x160        # one size in this process (the worker)

Each size runs in a fresh process (so one size's freed memory does not hide the next one's): the whole generation
(`diff4splat.pipelines.jobs.generate` with ``tiny=true``, 2 sampling steps: memory does not grow with steps), its RSS
sampled every 2 ms; reported per stage (text, encode, sampling, decode, lrdm, render, write) as the peak above the
RSS after the models were built, and in all as the peak above the RSS before they were built (what the estimate
covers: the models and the activations).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(frames: int, height: int, width: int) -> dict:
    """Run one tiny generation in this process; peaks in MiB."""
    import numpy as np
    import torch
    from PIL import Image

    from diff4splat.generate import to_config
    from diff4splat.pipelines import generation, jobs, memory
    from diff4splat.pipelines import stages as stages_module

    torch.set_num_threads(1)
    peak = [rss()]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.002)

    threading.Thread(target=sample, daemon=True).start()
    per_stage: dict[str, float] = {}
    call = stages_module.Stages.__call__

    @contextlib.contextmanager
    def timed(self, name, total=1, unit="it"):
        peak[0] = rss()
        with call(self, name, total, unit) as bar:
            yield bar
        per_stage[name] = max(per_stage.get(name, 0.0), max(peak[0], rss()))

    built = [0]
    tiny = generation.Diff4SplatPipeline.tiny.__func__

    def tiny_measured(cls, *a, **kw):
        pipe = tiny(cls, *a, **kw)
        built[0] = rss()
        return pipe

    stages_module.Stages.__call__ = timed
    generation.Diff4SplatPipeline.tiny = classmethod(tiny_measured)
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "photo.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8)).save(image)
        from omegaconf import OmegaConf

        cfg = to_config(
            OmegaConf.create(
                {
                    "tiny": True,
                    "image": str(image),
                    "output_dir": str(Path(tmp) / "out"),
                    "trajectory": {"num_frames": frames},
                    "height": height,
                    "width": width,
                    "sampling": {"steps": 2},
                    "render": {"novel_frames": 2},
                    "progress": False,
                    "check_memory": False,
                }
            )
        )
        models = memory.describe_models(cfg, "cpu")
        latent = 1 + (frames - 1) // 4
        estimate = memory.estimate_bytes(memory.Size(frames, height, width, latent, 2), models)
        before = rss()
        jobs.generate(cfg)
    done.set()
    mib = 2**20
    return {
        "frames": frames,
        "height": height,
        "width": width,
        "models_mib": round((built[0] - before) / mib, 1),
        "stages_above_models_mib": {k: round((v - built[0]) / mib, 1) for k, v in per_stage.items()},
        "peak_mib": round((peak[0] - before) / mib, 1),
        "estimate_mib": round(estimate / mib, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--sizes", nargs="*", default=["13x96x160", "97x96x160", "193x96x160", "385x96x160", "49x192x320", "13x384x640"]
    )
    p.add_argument("--one", help="FxHxW: measure one size in this process and print its JSON")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(*map(int, args.one.split("x")))))
        return
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for size in args.sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--one", size], cwd=ROOT, env=env, capture_output=True, text=True, check=True
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
