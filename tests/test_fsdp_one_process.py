"""``trainer=fsdp`` on a single process (one GPU, here one CPU process on gloo): the system is sharded all the same,
so its checkpoint is a distributed-checkpoint folder that the same command resumes from (an unsharded one-process
run would write one it could not load: Lightning restores such folders only into FSDP2 modules)."""

from __future__ import annotations

import subprocess

from tests.train_runs import ROOT, TINY_LRDM, train_cmd, train_env

ONE_CPU = [
    "trainer=fsdp",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.precision=32-true",
    "+trainer.strategy.process_group_backend=gloo",
    "data.batches_per_epoch=4",
]


def test_fsdp_on_one_process_resumes_from_its_sharded_last_ckpt(tmp_path):
    env = train_env(tmp_path, "one")
    for steps in (3, 4):  # the second run is the same command, one step longer
        cmd = [*train_cmd(), *TINY_LRDM, *ONE_CPU, f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}"]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
    ckpt = tmp_path / "smoke" / "runs" / "one" / "checkpoints" / "last.ckpt"
    assert (ckpt / ".metadata").is_file()  # a distributed checkpoint folder, not a plain file
    assert "Resumed at global step 3" in proc.stdout + proc.stderr
