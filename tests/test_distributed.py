"""Distributed training on a CPU: DDP with two gloo processes (Lightning's launcher, and torchrun), FSDP2 with two
gloo processes (sharded checkpoints that consolidate into single-device weights and resume), the submitit launcher
through its local executor, and the multi-GPU trainer configs composing for all three systems.

Every run checks its ranks with `diff4splat.callbacks.distributed.RankConsistency`: bitwise-equal weights and EMA,
equal batch counts per epoch, different data per rank."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train_runs import TINY_LRDM, run_group, train_cmd, train_env

RANK_CHECK = "+callbacks.rank_check._target_=diff4splat.callbacks.distributed.RankConsistency"
CPU_2 = [
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.precision=32-true",
    "+trainer.strategy.process_group_backend=gloo",
]
# camctrl_tiny, smaller: one scene's worth of clips (pool 8 is a multiple of its trajectories per scene), one
# validation clip, 2-step sampling.
TINY_CAMCTRL = [
    "experiment=camctrl_tiny",
    "logger=csv",
    "extras.print_config=false",
    "~callbacks.progress_bar",
    "~callbacks.media",
    "+trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "test=false",
    "data.pool=8",
    "data.val_pool=1",
    "data.batch_size=1",
    "data.batches_per_epoch=2",
    "data.val_batches=1",
    "system.sampling.steps=2",
    "callbacks.ema.decay=0.5",
]
TINY_ALIGN = [
    "experiment=latent_align_tiny",
    "logger=csv",
    "extras.print_config=false",
    "~callbacks.progress_bar",
    "~callbacks.media",
    "+trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "test=false",
    "data.pool=4",
    "data.val_pool=2",
    "data.batch_size=1",
    "data.batches_per_epoch=2",
    "data.val_batches=1",
]


def _run(cmd: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    proc = run_group(cmd, env, timeout)  # a rank that hangs fails the test rather than hanging the suite
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-6000:])
    return proc


def _reports(run: Path) -> list[dict]:
    return [json.loads((run / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]


def _assert_ranks_agree(run: Path, steps: int, batches: dict[str, int]) -> None:
    r0, r1 = _reports(run)
    assert (r0["rank"], r1["rank"], r0["world_size"]) == (0, 1, 2)
    assert r0["global_step"] == r1["global_step"] == steps
    assert r0["params"] == r1["params"], "the ranks' weights differ after training"
    assert r0["ema"] == r1["ema"] and r0["ema"] is not None
    assert r0["batches_per_epoch"] == r1["batches_per_epoch"] == batches
    assert r0["first_batch"] != r1["first_batch"], "both ranks trained on the same batch"


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# --- DDP -------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ddp_lrdm(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The LRDM trained by two gloo processes (Lightning starts the second) past an epoch boundary: 3 batches per
    epoch, 5 steps, one validation at the end (with media)."""
    root = tmp_path_factory.mktemp("ddp")
    lrdm = [o for o in TINY_LRDM if o != "~callbacks.media"]
    cmd = train_cmd(
        *lrdm,
        "trainer=ddp_sim",
        "trainer.max_steps=5",
        "trainer.val_check_interval=5",
        "data.batches_per_epoch=3",
        RANK_CHECK,
    )
    proc = _run(cmd, train_env(root, "ddp"))
    return root, proc


def test_ddp_sim_lrdm_ranks_agree_and_only_rank0_writes(ddp_lrdm):
    """Equal weights, equal batch counts, different clips; one run folder, one config, one summary, the media of
    the one validation once, and rank 1's log apart."""
    root, proc = ddp_lrdm
    run = root / "smoke" / "runs" / "ddp"
    _assert_ranks_agree(run, 5, {"0": 3, "1": 2})
    assert "rank check: 2 ranks agree" in proc.stdout + proc.stderr
    assert [p.name for p in (root / "smoke" / "runs").iterdir()] == ["ddp"]
    files = _files(run)
    assert files.count("config.yaml") == 1 and files.count("summary.json") == 1
    assert [f for f in files if f.startswith(".hydra/")] == [
        ".hydra/config.yaml",
        ".hydra/hydra.yaml",
        ".hydra/overrides.yaml",
    ]
    assert [f for f in files if f.startswith("media/")] == ["media/val_0000005.mp4", "media/val_0000005.png"]
    assert {"train.log", "train_ddp_process_1_rank1.log"} <= set(files)
    assert {"checkpoints/last.ckpt", "checkpoints/last.safetensors"} <= set(files)
    assert json.loads((run / "summary.json").read_text())["metrics"]["train/loss"] > 0


def test_fsdp_trains_the_lrdm_like_ddp_and_consolidates_for_inference(ddp_lrdm, tmp_path):
    """``torchrun --nproc_per_node 2 ... trainer=fsdp``: the LRDM sharded from outside (a unit per transformer block,
    FSDP2) on two gloo processes. Both ranks find one run folder without being given a run id (torchrun without a
    rendezvous id: the agent's pid and port), the ranks agree, the checkpoint is a sharded folder, the trained
    weights equal DDP's to float rounding (a wrong or missing gradient reduction would be off by the size of an
    update, ~1e-2 here), the consolidated weights load into the single-device inference loader, and re-running the
    command resumes from the shards."""
    from diff4splat.checkpoints import consolidate, save
    from diff4splat.pipelines.reconstruction import load_lrdm

    cmd = [
        *_torchrun(),
        *TINY_LRDM,
        "trainer=fsdp",
        *CPU_2,
        "trainer.max_steps=5",
        "trainer.val_check_interval=5",
        "data.batches_per_epoch=3",
        RANK_CHECK,
    ]
    proc = _run(cmd, train_env(tmp_path))
    assert "FSDP2: 1 block units" in proc.stdout + proc.stderr
    runs = list((tmp_path / "smoke" / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("tr"), runs
    run = runs[0]
    files = _files(run)
    assert files.count("config.yaml") == 1 and ".hydra/config.yaml" in files
    assert {"train.log", "train_rank1.log"} <= set(files)
    _assert_ranks_agree(run, 5, {"0": 3, "1": 2})
    ckpt = run / "checkpoints" / "last.ckpt"
    assert (ckpt / ".metadata").is_file() and len(list(ckpt.glob("*.distcp"))) == 2

    fsdp, _ = consolidate(ckpt, use_ema=False)
    ddp, _ = consolidate(ddp_lrdm[0] / "smoke" / "runs" / "ddp" / "checkpoints" / "last.ckpt", use_ema=False)
    assert fsdp.keys() == ddp.keys()
    worst = max(float((fsdp[k] - ddp[k]).abs().max()) for k in fsdp)
    print(f"max |FSDP - DDP| after 5 steps: {worst:.2e}")
    assert worst < 1e-5

    ema, meta = consolidate(ckpt)
    exported = load_file(run / "checkpoints" / "last.safetensors")  # gathered during training
    assert meta["ema"] == "true" and ema.keys() == exported.keys()
    assert all(torch.equal(ema[k], exported[k]) for k in ema)
    model = load_lrdm(save(ema, meta, tmp_path / "lrdm.safetensors"))  # the reconstruct CLI's loader
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())

    # the same command one step longer, with the run id it got: resumes from the shards (model, optimiser and EMA
    # re-sharded); the next EMA is exactly one update (decay min(0.99, 1 - 6^-0.75) = 0.739) from the restored one
    proc = _run([*_torchrun(), *cmd[len(_torchrun()) :], "trainer.max_steps=6"], train_env(tmp_path, run.name))
    assert "Resumed at global step 5" in proc.stdout + proc.stderr
    ema6, meta6 = consolidate(ckpt)
    raw6, _ = consolidate(ckpt, use_ema=False)
    assert meta6["global_step"] == "6"  # (the weights stay: the cosine schedule's last step has lr 0)
    decay = min(0.99, 1 - 6**-0.75)
    for k in ema:
        torch.testing.assert_close(ema6[k], ema[k] + (1 - decay) * (raw6[k] - ema[k]), rtol=0, atol=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun() -> list[str]:
    """``torchrun --nproc_per_node 2 -m diff4splat.train`` (both processes start at once, unlike Lightning's launcher,
    which starts rank 1 only when rank 0 reaches ``fit``)."""
    torchrun = str(Path(train_cmd()[0]).with_name("torchrun"))
    return [torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "diff4splat.train"]


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["ddp_sim", "fsdp"])
@pytest.mark.parametrize("system", ["diffusion", "alignment"])
def test_diffusion_and_alignment_ranks_agree(tmp_path, system, trainer):
    overrides = TINY_CAMCTRL if system == "diffusion" else TINY_ALIGN
    extra = (
        [] if trainer == "ddp_sim" else CPU_2 + (["system.scale.param_dtype=float32"] if system == "diffusion" else [])
    )
    cmd = [
        *_torchrun(),
        *overrides,
        f"trainer={trainer}",
        *extra,
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        RANK_CHECK,
    ]
    _run(cmd, train_env(tmp_path, "run"))
    task = "camctrl_tiny" if system == "diffusion" else "latent_align_tiny"
    _assert_ranks_agree(tmp_path / task / "runs" / "run", 3, {"0": 2, "1": 1})  # the ranks draw different clips


# --- FSDP2 -----------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fsdp2_sharded_checkpoint_consolidates_to_single_device_weights_and_resumes(tmp_path):
    """CameraWan under ``trainer=fsdp2`` on two gloo processes (torchrun) writes a distributed checkpoint folder. Consolidated
    (`diff4splat.checkpoints`), it equals the gathered .safetensors export bitwise, loads strictly into a one-process
    CameraWan, and its camera weights load into a fresh one. Re-running the command one step longer resumes from the shards:
    the next EMA is exactly one update away from the restored one."""
    from diff4splat.checkpoints import consolidate, load_camera_wan, main
    from diff4splat.models.camera_wan import CameraWan

    cmd = [
        *_torchrun(),
        *TINY_CAMCTRL,
        "trainer=fsdp2",
        *CPU_2,
        "system.scale.param_dtype=float32",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        RANK_CHECK,
    ]
    env = train_env(tmp_path, "fsdp2")
    _run(cmd, env)
    run = tmp_path / "camctrl_tiny" / "runs" / "fsdp2"
    _assert_ranks_agree(run, 3, {"0": 2, "1": 1})
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_dir() and (ckpt / ".metadata").is_file() and len(list(ckpt.glob("*.distcp"))) == 2

    ema, meta = consolidate(ckpt)
    exported = load_file(run / "checkpoints" / "last.safetensors")
    assert meta["ema"] == "true" and meta["global_step"] == "3" and meta["export_prefix"] == "model."
    assert ema.keys() == exported.keys() and all(torch.equal(ema[k], exported[k]) for k in ema)
    raw, raw_meta = consolidate(ckpt, use_ema=False)
    assert raw_meta["ema"] == "false" and any(not torch.equal(raw[k], ema[k]) for k in raw)

    model = load_camera_wan(raw, raw_meta)  # strict: every key, every shape
    assert isinstance(model, CameraWan) and all(torch.equal(v, raw[k]) for k, v in model.state_dict().items())
    out, cam = tmp_path / "camctrl.safetensors", tmp_path / "camera.safetensors"
    assert main(["consolidate", str(ckpt), str(out), "--camera-weights", str(cam)]) == 0
    assert load_file(out).keys() == ema.keys()
    fresh = load_camera_wan(raw, raw_meta)
    fresh.load_camera_weights(cam)
    cams = {k: v for k, v in fresh.state_dict().items() if k.startswith("camera.")}
    assert cams and all(torch.equal(v, ema[k]) for k, v in cams.items())

    # the same command, one step longer: resumes at step 3 from the shards (model, optimiser, EMA re-sharded)
    proc = _run([*cmd, "trainer.max_steps=4"], env)
    assert "Resumed at global step 3" in proc.stdout + proc.stderr
    ema4, meta4 = consolidate(ckpt)
    raw4, _ = consolidate(ckpt, use_ema=False)
    assert meta4["global_step"] == "4" and any(not torch.equal(raw4[k], raw[k]) for k in raw)
    # one EMA step (decay 0.5 at update 4) from the restored average: exact when the shards were restored right
    for k in ema:
        torch.testing.assert_close(ema4[k], ema[k] + 0.5 * (raw4[k] - ema[k]), rtol=0, atol=2e-7)


def test_consolidate_refuses_what_is_not_a_checkpoint(tmp_path, capsys):
    from diff4splat.checkpoints import main

    (tmp_path / "folder").mkdir()
    assert main(["consolidate", str(tmp_path / "folder"), str(tmp_path / "o.safetensors")]) == 2
    assert "no meta.pt" in capsys.readouterr().err
    bad = tmp_path / "x.ckpt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["consolidate", str(bad), str(tmp_path / "o.safetensors")]) == 2
    assert "not a loadable Lightning checkpoint" in capsys.readouterr().err
    assert main(["consolidate", str(bad), str(tmp_path / "o.bin")]) == 2
    assert not (tmp_path / "o.safetensors").exists()


# --- launchers -------------------------------------------------------------------------------------------------------


def test_submitit_local_launcher_runs_the_job_in_its_own_process(tmp_path):
    """``-m hydra/launcher=submitit_local``: the sweep is submitted through submitit (the path ``launcher=slurm``
    takes), the job runs in a separate process, in the sweep folder the submitter made, and finishes."""
    cmd = train_cmd(
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        *TINY_LRDM,
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
    )
    proc = _run(cmd, train_env(tmp_path))
    sweeps = list((tmp_path / "smoke" / "multiruns").iterdir())
    assert len(sweeps) == 1, sweeps  # the job resolved the submitter's sweep folder (inherited run id)
    summary = json.loads((sweeps[0] / "0" / "summary.json").read_text())
    assert summary["task_name"] == "smoke" and summary["metrics"]["train/loss"] > 0
    logs = list((sweeps[0] / ".submitit").glob("*/*_0_log.out"))
    assert len(logs) == 1 and "Submitit 'local' sweep output dir" in proc.stdout + proc.stderr
    job_pid = int(logs[0].name.split("_")[0])  # the local executor's job id is the job process's pid
    assert job_pid != 0 and (sweeps[0] / "0" / "checkpoints" / "last.ckpt").is_file()


def test_sbatch_template_stops_the_step_and_requeues_on_the_time_limit_signal(tmp_path):
    """``experiments/slurm/train.sbatch`` run by bash with stand-ins for srun (runs its command) and scontrol
    (records calls) in a one-node, two-"GPU" SLURM environment: srun -> torchrun (c10d rendezvous on the job id) ->
    two workers in run folder slurm<job id>. USR2 to the script (``--signal=B:USR2@300``) makes it forward SIGTERM to
    the step; the workers stop after the same step, write last.ckpt and exit, and the script requeues the job."""
    import signal
    import time

    from tests.train_runs import exported_step, finish, start, wait_for_step

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [ "${1#-}" != "$1" ]; do shift; done\nexec "$@"\n')
    (bin_dir / "scontrol").write_text(
        f'#!/bin/bash\nif [ "$1" = show ]; then echo 127.0.0.1; else echo "$@" >> {calls}; fi\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    venv_bin = Path(train_cmd()[0]).parent
    env = train_env(
        tmp_path / "out",
        PATH=f"{bin_dir}:{venv_bin}:/usr/bin:/bin",
        SLURM_JOB_ID="777",
        SLURM_NNODES="1",
        SLURM_JOB_NODELIST="node1",
        SLURM_GPUS_ON_NODE="2",
        SLURM_JOB_NAME="train",
        TRAINER="ddp_sim",
        MASTER_PORT=str(_free_port()),
    )
    env.pop("DIFF4SPLAT_RUN_ID")  # the script sets it from the job id
    cmd = [
        "bash",
        "experiments/slurm/train.sbatch",
        *TINY_LRDM,
        "trainer.max_steps=500",
        "trainer.val_check_interval=500",
        "callbacks.last_checkpoint.every_n_train_steps=2",
    ]
    run = tmp_path / "out" / "smoke" / "runs" / "slurm777"
    proc = start(cmd, env, tmp_path / "job.log")
    try:
        wait_for_step(run / "checkpoints" / "last.safetensors", 2, proc)
    except AssertionError as e:  # the job's own log says why (seen once, under load, in a CI run)
        proc.kill()
        finish(proc)
        raise AssertionError(f"{e}\n--- job log ---\n{(tmp_path / 'job.log').read_text()[-4000:]}") from None
    time.sleep(0.2)
    proc.send_signal(signal.SIGUSR2)
    status = finish(proc)
    log = (tmp_path / "job.log").read_text()
    tail = f"status {status}\n--- job log ---\n{log[-4000:]}"
    assert status != 0 and "requeued job 777" in log, tail
    assert calls.read_text().split() == ["requeue", "777"], tail
    step = exported_step(run / "checkpoints" / "last.safetensors")
    assert step is not None and 2 <= step < 500 and f"stopped by a signal at global step {step}" in log, (step, tail)
    ckpt_step = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    assert ckpt_step == step, (ckpt_step, step, tail)
    assert not (run / "summary.json").exists()


def test_a_rank_whose_launcher_died_exits_instead_of_hanging(tmp_path):
    """`exit_with_launcher` (started by train()): a process launched as rank 1 ends with status 1 and one error line
    once its launcher (rank 0 / torchrun's agent) has been gone for the grace period; a process not launched as a
    rank (run from a shell) does not start the watch."""
    import os
    import sys
    import time

    from diff4splat.distributed import exit_with_launcher
    from tests.train_runs import ROOT

    assert exit_with_launcher(env={}) is None and exit_with_launcher(env={"LOCAL_RANK": "0"}) is None
    child = (
        "import time; from diff4splat.distributed import exit_with_launcher; "
        "exit_with_launcher(interval=0.05, grace=0.3); print('watching', flush=True); time.sleep(60)"
    )
    launcher = (
        "import os, subprocess, sys; "
        "p = subprocess.Popen([sys.executable, '-c', sys.argv[1]], stdout=open(sys.argv[2], 'w'), "
        "stderr=subprocess.STDOUT, env={**os.environ, 'LOCAL_RANK': '1', 'RANK': '1'}); "
        "print(p.pid, flush=True); "
        "[__import__('time').sleep(0.1) for _ in range(300) if 'watching' not in open(sys.argv[2]).read()]; "
        "os._exit(0)"
    )
    log = tmp_path / "rank1.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", launcher, child, str(log)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            state = "gone"
        if state in ("gone", "Z"):
            break
        time.sleep(0.1)
    text = log.read_text()
    assert state in ("gone", "Z"), (state, text)
    assert "error: rank 1: the process that launched this rank" in text and "exited 0.3 s ago" in text, text


@pytest.mark.gpu
def test_two_gpus_ddp_and_fsdp_train_the_same_lrdm(tmp_path):
    """On two CUDA GPUs (NCCL): the LRDM under trainer=ddp and trainer=fsdp (fp32, to compare) reaches the same
    weights, the ranks agree, and the FSDP checkpoint consolidates to the gathered export.
    Run: ``pytest -q -m gpu tests/test_distributed.py`` on a machine with at least two GPUs."""
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs")
    from diff4splat.checkpoints import consolidate

    common = [
        *TINY_LRDM,
        "trainer.devices=2",
        "trainer.precision=32-true",
        "trainer.max_steps=20",
        "trainer.val_check_interval=20",
        "data.batches_per_epoch=7",
        RANK_CHECK,
    ]
    weights = {}
    for trainer in ("ddp", "fsdp"):
        _run([*_torchrun(), *common, f"trainer={trainer}"], train_env(tmp_path, trainer))
        run = tmp_path / "smoke" / "runs" / trainer
        _assert_ranks_agree(run, 20, {"0": 7, "1": 7, "2": 6})
        weights[trainer], _ = consolidate(run / "checkpoints" / "last.ckpt", use_ema=False)
        ema, _ = consolidate(run / "checkpoints" / "last.ckpt")
        exported = load_file(run / "checkpoints" / "last.safetensors")
        assert all(torch.equal(ema[k], exported[k]) for k in ema)
    worst = max(float((weights["ddp"][k] - weights["fsdp"][k]).abs().max()) for k in weights["ddp"])
    print(f"max |FSDP - DDP| after 20 steps on 2 GPUs: {worst:.2e}")
    assert worst < 1e-3


# --- configs ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("experiment", ["smoke", "camctrl_tiny", "latent_align_tiny"])
@pytest.mark.parametrize("trainer", ["ddp", "fsdp", "fsdp2", "multinode"])
def test_multi_gpu_trainers_compose_for_every_system(make_cfg, experiment, trainer, monkeypatch):
    """Each multi-GPU trainer composes with each system and its strategy instantiates (the GPU accelerator itself
    needs a GPU, so the trainer is built with accelerator=cpu); multinode reads the node count from SLURM."""
    import hydra

    monkeypatch.setenv("SLURM_NNODES", "4")
    cfg = make_cfg(f"experiment={experiment}", f"trainer={trainer}", tiny=False)
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.use_distributed_sampler is False
    strategy = hydra.utils.instantiate(cfg.trainer.strategy)
    expected = {"ddp": "DDPStrategy", "multinode": "DDPStrategy", "fsdp": "FSDP2Strategy", "fsdp2": "FSDP2Strategy"}
    assert type(strategy).__name__ == expected[trainer]
    if trainer == "multinode":
        assert cfg.trainer.num_nodes == 4
    if trainer == "fsdp":
        assert {"Block", "WanTransformerBlock", "MemBlock"} <= set(strategy.shard_blocks)
