"""``python -m diff4splat.train experiment=lrdm_vggt_tiny`` (the released reconstructor at the tiny size, MoVieS's
recipe) trains on a CPU under ``trainer=fsdp`` (one FSDP unit per VGGT transformer block), and its safetensors export
is a ``--weights`` file: it loads back as the same vggt LRDM, in the MoVieS checkpoint's layout."""

from __future__ import annotations

import subprocess

from safetensors import safe_open

from diff4splat.pipelines.reconstruction import load_lrdm
from tests.train_runs import ROOT, train_cmd, train_env

TINY_VGGT = [
    "experiment=lrdm_vggt_tiny",
    "logger=csv",
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
    "data.batch_size=1",
    "data.sampling.num_input=2",
    "data.sampling.num_output=2",
    "trainer=fsdp",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.precision=32-true",
    "+trainer.strategy.process_group_backend=gloo",
    "data.batches_per_epoch=2",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
]


def test_lrdm_vggt_tiny_trains_under_fsdp_and_exports_weights(tmp_path):
    proc = subprocess.run(
        [*train_cmd(), *TINY_VGGT],
        cwd=ROOT,
        env=train_env(tmp_path, "vggt"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    export = tmp_path / "lrdm_vggt_tiny" / "runs" / "vggt" / "checkpoints" / "last.safetensors"
    with safe_open(str(export), "pt") as f:
        keys = set(f.keys())  # noqa: SIM118 - safe_open has no __iter__
    assert all(k.startswith("backbone.") for k in keys) and "backbone.encoder.cls_token" in keys
    model = load_lrdm(export)
    assert model.config.encoder == "vggt" and model.dynamic and set(model.state_dict()) == keys
