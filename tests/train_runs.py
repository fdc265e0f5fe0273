"""Helpers for tests that run ``python -m diff4splat.train`` as a subprocess: a tiny LRDM configuration (16x16 clips,
a 1-block model), the environment, polling a run's ``last.safetensors`` step, and reading its CSV metrics."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The smoke experiment shrunk to ~0.3 s per step on a CPU: 2+2 frames at 16x16, a 1-block LRDM, a 2-scene pool.
TINY_LRDM = [
    "experiment=smoke",
    "logger=csv",
    "+logger.csv.flush_logs_every_n_steps=1",  # a SIGKILLed run keeps its metrics
    "extras.print_config=false",
    "~callbacks.progress_bar",
    "~callbacks.media",
    "+trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "test=false",
    "data.synthetic_pool=2",
    "data.synthetic_val_pool=1",
    "data.val_batches=1",
    "data.synthetic.synthetic.height=16",
    "data.synthetic.synthetic.width=16",
    "data.sampling.resolution=16",
    "data.sampling.num_input=2",
    "data.sampling.num_output=2",
    "data.sampling.size_divisor=8",
    "model.dim=32",
    "model.depth=1",
    "model.num_heads=2",
    "model.decoder_channels=8",
    "model.patch_size=4",
    "system.optim.lr=1e-2",
    "system.optim.warmup_steps=3",
]


# set by a launcher, or by an in-process test's process group (test_camera_wan's gloo mesh): a child that inherited
# MASTER_PORT would try to bind the port that pytest's own group still holds
LAUNCHER_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def train_env(output_root: Path, run_id: str = "", **extra: str) -> dict[str, str]:
    """The environment of a CLI run: outputs under ``output_root``, W&B offline, the given run id ("" = a new one),
    and none of the launcher variables of the pytest process leaking in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "TORCHELASTIC_")) and k not in LAUNCHER_VARIABLES
    }
    env.update(
        OUTPUT_ROOT=str(output_root),
        WANDB_MODE="offline",
        DIFF4SPLAT_RUN_ID=run_id,
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
    )  # one thread per process: spinning OpenMP threads cost 10x on a shared CPU
    env.update(extra)
    return env


def train_cmd(*overrides: str, module: str = "diff4splat.train") -> list[str]:
    return [sys.executable, "-m", module, *overrides]


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    f = open(log, "w")  # noqa: SIM115 - closed by the caller through `finish`
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, timeout: float = 300) -> int:
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stdout is not None:
            proc.stdout.close()


def exported_step(path: Path) -> int | None:
    """``global_step`` in a ``.safetensors`` export's metadata (None while it does not exist)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            return int(f.metadata()["global_step"])
    except Exception:  # replaced while being opened: try again
        return None


def wait_for_step(path: Path, step: int, proc: subprocess.Popen, timeout: float = 240) -> int:
    """Poll until the export at ``path`` reaches ``step``; the step seen. Fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = exported_step(path)
        if seen is not None and seen >= step:
            return seen
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (status {proc.returncode}) before {path.name} reached step {step}")
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach step {step} in {timeout} s")


def csv_losses(run_dir: Path) -> list[dict[int, float]]:
    """``train/loss`` by step, one dict per CSV version (one per process that trained in this run folder)."""
    out = []
    for f in sorted(run_dir.glob("csv/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])):
        with open(f) as fh:
            out.append({int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")})
    return out


def run_group(
    cmd: list[str], env: dict[str, str], timeout: float = 600, grace: float = 60
) -> subprocess.CompletedProcess:
    """Run a (possibly multi-process) training command in its own process group, output into files (not pipes, which
    a rank left behind would hold open): wait for the main process up to ``timeout``, give the other processes of the
    group ``grace`` seconds to finish, then kill whatever is left. A hung rank fails the test instead of hanging it."""
    import signal
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = -9
        deadline = time.monotonic() + (grace if rc != -9 else 0)
        while True:
            try:
                os.killpg(proc.pid, 0)  # any process of the group still there?
            except ProcessLookupError:
                break
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.5)
        proc.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(
            cmd, rc, out.read().decode(errors="replace"), err.read().decode(errors="replace")
        )
