"""Stopping and restarting training: a run stopped by SIGTERM (a cluster pre-emption) saves ``last.ckpt`` and exits
143, a SIGKILLed run loses only the steps after its last periodic ``last.ckpt``, and re-running the identical command
continues the run (same folder through the run id, ``ckpt_path=auto``) with the optimiser, EMA and step restored, data
reseeded, and a loss curve without a jump. Checkpoint writes are atomic."""

from __future__ import annotations

import os
import signal
import statistics
import time
from pathlib import Path

import pytest
import torch

from tests.train_runs import TINY_LRDM, csv_losses, exported_step, finish, start, train_cmd, train_env, wait_for_step

N = 24  # steps of the whole run
EVERY = 4  # last.ckpt period


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The identical command run four times: a reference run to the end; in another run folder (a fixed run id), a
    run stopped by SIGTERM after step 8, the same command again killed (SIGKILL) after its next-but-one periodic
    save, and the same command once more to the end. The reference runs at the same time."""
    root = tmp_path_factory.mktemp("resume")
    cmd = train_cmd(
        *TINY_LRDM,
        f"trainer.max_steps={N}",
        f"trainer.val_check_interval={N}",
        f"callbacks.last_checkpoint.every_n_train_steps={EVERY}",
    )
    reference = start(cmd, train_env(root / "ref", "reference"), root / "ref.log")
    env = train_env(root / "out", "preempted")
    run = root / "out" / "smoke" / "runs" / "preempted"
    export = run / "checkpoints" / "last.safetensors"
    out: dict = {"root": root, "run": run, "reference": root / "ref" / "smoke" / "runs" / "reference"}

    first = start(cmd, env, root / "1.log")
    wait_for_step(export, 8, first)
    first.send_signal(signal.SIGTERM)
    out["rc1"] = finish(first)
    out["step1"] = exported_step(export)
    out["ckpt1"] = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    out["files1"] = sorted(p.name for p in (run / "checkpoints").iterdir())
    out["summary1"] = (run / "summary.json").exists()

    second = start(cmd, env, root / "2.log")
    target = (out["step1"] // EVERY + 2) * EVERY
    wait_for_step(export, target, second)
    second.send_signal(signal.SIGKILL)
    out["rc2"] = finish(second)
    out["target"] = target
    out["step2"] = exported_step(export)
    out["ckpt2"] = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)

    third = start(cmd, env, root / "3.log")
    out["rc3"] = finish(third)
    out["rc_ref"] = finish(reference)
    out["final"] = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    out["logs"] = [(root / f"{i}.log").read_text() for i in (1, 2, 3)]
    return out


def _ema(ckpt: dict) -> dict:
    return next(v for k, v in ckpt["callbacks"].items() if k.startswith("EMA"))


def test_sigterm_saves_last_exits_143_and_the_same_command_continues(runs):
    assert runs["rc1"] == 143, runs["logs"][0][-3000:]
    step1 = runs["step1"]
    assert step1 >= 8 and runs["ckpt1"]["global_step"] == step1  # the checkpoint and its export agree
    assert f"stopped by a signal at global step {step1}" in runs["logs"][0]
    assert not runs["summary1"], "a stopped run is not finished"
    assert not [f for f in runs["files1"] if f.startswith(".")], runs["files1"]  # no temporary files left
    assert f"Resumed at global step {step1}" in runs["logs"][1]
    assert runs["rc3"] == 0 and runs["rc_ref"] == 0, runs["logs"][2][-3000:]
    # the finished run: the full step count, and optimiser and EMA states that counted every step (a fresh
    # optimiser or EMA on restart would have counted only the steps after it)
    final = runs["final"]
    assert final["global_step"] == N
    adam_steps = {float(s["step"]) for s in final["optimizer_states"][0]["state"].values()}
    assert adam_steps == {float(N)}
    assert _ema(final)["num_updates"] == N
    assert (runs["run"] / "summary.json").is_file()


def test_sigkill_loses_only_the_steps_after_the_periodic_last_ckpt(runs):
    assert runs["rc2"] == -signal.SIGKILL
    step2 = runs["step2"]
    assert step2 == runs["target"] and runs["ckpt2"]["global_step"] == step2  # intact, at the periodic step
    assert _ema(runs["ckpt2"])["num_updates"] == step2
    assert f"Resumed at global step {step2}" in runs["logs"][2]
    versions = csv_losses(runs["run"])
    assert len(versions) == 3
    assert min(versions[2]) == step2 and max(versions[2]) == N - 1  # continues from the saved step to the end


def test_loss_continues_without_a_jump(runs):
    reference = csv_losses(runs["reference"])[0]
    before, after = csv_losses(runs["run"])[:2]
    step1 = runs["step1"]
    assert sorted(before) == list(range(step1)) and min(after) == step1
    # up to the stop, the run is the reference run (same seed, same data)
    for s in before:
        assert before[s] == pytest.approx(reference[s], rel=1e-4), s
    # after the restart the data are reseeded (other clips) but the model is the trained one: the loss goes on at
    # the reference's level, far below the loss of the untrained model it would restart from without the checkpoint
    window = range(step1, step1 + 6)
    resumed, ref_level = statistics.mean(after[s] for s in window), statistics.mean(reference[s] for s in window)
    initial = statistics.mean(reference[s] for s in range(3))
    print(f"initial {initial:.3f}, reference at {step1}..{step1 + 5}: {ref_level:.3f}, resumed {resumed:.3f}")
    assert [after[s] for s in window] != [reference[s] for s in window], "the restarted run replayed the same data"
    assert abs(resumed - ref_level) < 0.3 * (initial - ref_level), (initial, ref_level, resumed)


def test_requeue_signal_saves_stops_and_requeues_the_slurm_job(tmp_path):
    """SIGUSR2 (what submitit and ``#SBATCH --signal=USR2@120`` send before the time limit) in a SLURM job: stop
    after the step, save last.ckpt, then ``scontrol requeue <job id>`` (a stand-in scontrol records the call)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    env = train_env(
        tmp_path / "out",
        "requeued",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="train",
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    )
    cmd = train_cmd(
        *TINY_LRDM,
        "trainer.max_steps=200",
        "trainer.val_check_interval=200",
        "callbacks.last_checkpoint.every_n_train_steps=2",
    )
    run = tmp_path / "out" / "smoke" / "runs" / "requeued"
    proc = start(cmd, env, tmp_path / "run.log")
    wait_for_step(run / "checkpoints" / "last.safetensors", 2, proc)
    proc.send_signal(signal.SIGUSR2)
    assert finish(proc) == 143, (tmp_path / "run.log").read_text()[-3000:]
    step = exported_step(run / "checkpoints" / "last.safetensors")
    assert 2 <= step < 200
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == step
    assert calls.read_text().split() == ["requeue", "4242"]


def test_sigterm_to_one_ddp_rank_stops_every_rank_after_the_same_step(tmp_path):
    """``trainer=ddp_sim``: SIGTERM to rank 0 only (Lightning's launcher process); rank 1 never sees it. The ranks
    agree at the end of the step, both stop after the same step, last.ckpt holds it, and the run exits 143 (a rank
    stopping alone would leave the other blocked in its next collective)."""
    cmd = train_cmd(
        *TINY_LRDM,
        "trainer=ddp_sim",
        "trainer.max_steps=500",
        "trainer.val_check_interval=500",
        "callbacks.last_checkpoint.every_n_train_steps=2",
    )
    run = tmp_path / "smoke" / "runs" / "ddp"
    proc = start(cmd, train_env(tmp_path, "ddp"), tmp_path / "run.log")
    wait_for_step(run / "checkpoints" / "last.safetensors", 2, proc)
    proc.send_signal(signal.SIGTERM)
    status = finish(proc, timeout=180)
    step = exported_step(run / "checkpoints" / "last.safetensors")
    stopped = f"stopped by a signal at global step {step}"
    for _ in range(300):  # rank 1 (a child of rank 0) may finish writing its log line a moment later
        log = (tmp_path / "run.log").read_text()
        if log.count(stopped) >= 2:
            break
        time.sleep(0.1)
    assert status == 143, log[-3000:]
    assert log.count(stopped) == 2, log[-3000:]  # rank 0 and rank 1
    assert log.count("received SIGTERM") == 1
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == step


# --- in process: what a resume restores, atomic checkpoint writes, reseeded data ---------------------------------------


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cfg(tmp_path: Path, *overrides: str):
    from tests.conftest import compose_cfg

    tiny = [o for o in TINY_LRDM if not o.startswith("~")] + [
        "callbacks=default",
        "~callbacks.media",
        "~callbacks.progress_bar",
    ]
    return compose_cfg(
        [
            *tiny,
            "trainer=cpu",
            "trainer.val_check_interval=4",
            "callbacks.last_checkpoint.every_n_train_steps=2",
            *overrides,
        ],
        tmp_path,
        "run",
    )


def test_resume_restores_step_optimizer_ema_and_data_position(tmp_path, one_thread):
    from diff4splat.train import train

    train(_cfg(tmp_path, "trainer.max_steps=4"))
    ckpt_path = tmp_path / "smoke" / "runs" / "run" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 4
    # the same run folder with ckpt_path=auto (the default) and nothing left to train: only the restore happens
    _, objects = train(_cfg(tmp_path, "trainer.max_steps=4"))
    trainer = objects["trainer"]
    assert trainer.global_step == 4
    ema = next(c for c in objects["callbacks"] if type(c).__name__ == "EMA")
    assert ema.num_updates == 4 and ema.shadow.keys() == _ema(saved)["shadow"].keys()
    for name, value in _ema(saved)["shadow"].items():
        assert torch.equal(ema.shadow[name], value), name
    state = trainer.optimizers[0].state_dict()["state"]
    for i, entry in saved["optimizer_states"][0]["state"].items():
        for key, value in entry.items():
            assert torch.equal(torch.as_tensor(state[i][key]), torch.as_tensor(value)), (i, key)
    assert objects["datamodule"]._resume_step == 4


def test_interrupted_checkpoint_write_leaves_the_previous_last_ckpt_intact(tmp_path, one_thread, monkeypatch):
    """A write that dies half-way (here: the bytes of the new checkpoint are half on disk when the I/O layer
    fails) leaves last.ckpt and last.safetensors as they were and no partial file; training reports the error."""
    import lightning.fabric.plugins.io.torch_io as torch_io

    from diff4splat.train import train

    train(_cfg(tmp_path, "trainer.max_steps=2"))
    ckpt_dir = tmp_path / "smoke" / "runs" / "run" / "checkpoints"
    before = {p.name: p.read_bytes() for p in ckpt_dir.iterdir()}
    assert {"last.ckpt", "last.safetensors"} <= set(before)
    real_save = torch_io._atomic_save

    def dies_half_way(checkpoint, path):
        real_save(checkpoint, path)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch_io, "_atomic_save", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        train(_cfg(tmp_path, "trainer.max_steps=6"))  # resumes at 2, fails writing last.ckpt at step 4
    after = {p.name: p.read_bytes() for p in ckpt_dir.iterdir()}
    assert after.keys() == before.keys(), sorted(after)  # no temporary or partial file
    assert after["last.ckpt"] == before["last.ckpt"] and after["last.safetensors"] == before["last.safetensors"]
    assert torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 2


def test_resumed_data_stream_is_reseeded_by_step_and_rank(tmp_path, one_thread):
    """(seed, step, rank) pick the training clips: a resume at step S draws other clips than the start of the run,
    the same ones for the same S, and other ranks draw others again."""
    import hydra

    cfg = _cfg(tmp_path, "data.synthetic.synthetic.num_frames=5")

    def first_images(step: int | None = None, rank: int = 0) -> torch.Tensor:
        dm = hydra.utils.instantiate(cfg.data, _recursive_=False)
        if step is not None:
            dm.load_state_dict({"next_epoch": 0, "global_step": step})
        dm._rank = lambda: (rank, 2)
        return dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)["images"]

    fresh = first_images()
    assert torch.equal(first_images(step=0), fresh)
    resumed = first_images(step=10)
    assert not torch.equal(resumed, fresh)
    assert torch.equal(first_images(step=10), resumed)
    assert not torch.equal(first_images(step=10, rank=1), resumed)
