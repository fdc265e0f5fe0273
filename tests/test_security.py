"""Security checks: weights load only through safetensors or ``torch.load(weights_only=True)`` (a static scan of the
source tree, and a pickle that would run code refused by every checkpoint and weight loader without running it); the
viewer and the demo bind to 127.0.0.1 unless told otherwise; a W&B API key in the environment ends up in none of the
files a training run writes."""

from __future__ import annotations

import ast
import os
import pickle
import socket
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("diff4splat", "datamodules", "experiments")


# ---------------------------------------------------------------------------------------------------- static scan


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` of a Name/Attribute chain ('' for anything else)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _is_true(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)


def _has_kw(call: ast.Call, name: str) -> bool:
    return any(k.arg == name for k in call.keywords)


UNPICKLERS = {
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "cPickle.load",
    "cPickle.loads",
    "dill.load",
    "dill.loads",
    "cloudpickle.load",
    "cloudpickle.loads",
    "joblib.load",
    "marshal.load",
    "marshal.loads",
    "shelve.open",
    "yaml.unsafe_load",
    "yaml.full_load",
    "torch.serialization.add_safe_globals",
    "torch.jit.load",
}


def unsafe_loads(source: str, filename: str = "<source>") -> list[str]:
    """Every call in ``source`` that could unpickle untrusted data, as ``file:line: what``:

    - ``torch.load(...)`` without ``weights_only=True`` (and any call passing ``weights_only=False``);
    - unpicklers (pickle, dill, cloudpickle, joblib, marshal, shelve, TorchScript), ``yaml.load`` without a safe loader,
      ``yaml.unsafe_load`` / ``full_load``, and widening torch's safe globals for the whole process;
    - ``np.load(..., allow_pickle=<anything but False>)``;
    - Lightning ``fit/validate/test/predict(..., ckpt_path=...)`` without ``weights_only=True``.
    """
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        where = f"{filename}:{node.lineno}"
        if any(
            k.arg == "weights_only" and not (isinstance(k.value, ast.Constant) and k.value.value is True)
            for k in node.keywords
        ):
            found.append(f"{where}: {name or 'call'}(weights_only=<not True>)")
        if name == "torch.load" and not _is_true(node, "weights_only"):
            found.append(f"{where}: torch.load without weights_only=True")
        elif name in UNPICKLERS:
            found.append(f"{where}: {name}")
        elif name == "yaml.load":
            loader = next(
                (k.value for k in node.keywords if k.arg == "Loader"), node.args[1] if len(node.args) > 1 else None
            )
            if loader is None or not _dotted(loader).endswith(("SafeLoader", "CSafeLoader")):
                found.append(f"{where}: yaml.load without a SafeLoader")
        elif name in ("np.load", "numpy.load") and _has_kw(node, "allow_pickle"):
            value = next(k.value for k in node.keywords if k.arg == "allow_pickle")
            if not (isinstance(value, ast.Constant) and value.value is False):
                found.append(f"{where}: np.load(allow_pickle=<not False>)")
        elif (
            isinstance(node.func, ast.Attribute)
            and node.func.attr in ("fit", "validate", "test", "predict")
            and _has_kw(node, "ckpt_path")
            and not _is_true(node, "weights_only")
        ):
            found.append(f"{where}: .{node.func.attr}(ckpt_path=...) without weights_only=True")
    return found


def _source_files() -> list[Path]:
    files = [p for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py")]
    return sorted(files + list(ROOT.glob("*.py")))


def test_source_tree_loads_weights_only_safely():
    files = _source_files()
    assert len(files) > 50, files  # the scan sees the tree
    problems = [p for f in files for p in unsafe_loads(f.read_text(), str(f.relative_to(ROOT)))]
    assert problems == [], "\n".join(problems)
    # the scan looks at the calls that matter: every torch.load of the source tree is among them
    loads = sum(f.read_text().count("torch.load(") for f in files)
    assert loads >= 5


def test_the_scan_flags_each_unsafe_form():
    bad = """
import pickle, torch, yaml, numpy as np
torch.load(p)
torch.load(p, weights_only=False)
torch.load(p, map_location="cpu", weights_only=flag)
pickle.loads(b)
yaml.load(text)
yaml.load(text, Loader=yaml.Loader)
np.load(p, allow_pickle=True)
trainer.fit(model, datamodule=dm, ckpt_path=path)
torch.serialization.add_safe_globals([Thing])
"""
    good = """
torch.load(p, map_location="cpu", weights_only=True)
yaml.load(text, Loader=yaml.SafeLoader)
yaml.safe_load(text)
np.load(p, allow_pickle=False)
np.load(p)
trainer.fit(model, datamodule=dm, ckpt_path=path, weights_only=True)
trainer.fit(model, datamodule=dm)
"""
    flagged = unsafe_loads(bad)
    assert [int(f.split(":")[1]) for f in flagged] == [3, 4, 4, 5, 5, 6, 7, 8, 9, 10, 11]
    assert unsafe_loads(good) == []


# ---------------------------------------------------------------------------------------------------- malicious pickles


class Payload:
    """Unpickling this creates ``marker`` (``open(marker, "w")``): what a malicious checkpoint would do, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil(tmp_path) -> dict[str, Path]:
    """Checkpoint-shaped files whose unpickling would create ``marker``: torch.save's zip format under several
    names, and a raw pickle. The control at the end proves the payload is live."""
    marker = tmp_path / "PWNED"
    ckpt = {
        "state_dict": {"model.pose_token": torch.zeros(48), "model.hook": Payload(marker)},
        "hyper_parameters": {"model": {"dim": 48}},
        "payload": Payload(marker),
    }
    files = {"marker": marker}
    for name in ("evil.ckpt", "evil.pth", "evil.pt"):
        torch.save(ckpt, tmp_path / name)
        files[name] = tmp_path / name
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps(ckpt, protocol=2))
    files["raw.pkl"] = tmp_path / "raw.pkl"
    (tmp_path / "evil.safetensors").write_bytes((tmp_path / "evil.ckpt").read_bytes())
    files["evil.safetensors"] = tmp_path / "evil.safetensors"
    # control: an unsafe load does run it
    pickle.loads(files["raw.pkl"].read_bytes())
    assert marker.exists()
    marker.unlink()
    torch.load(files["evil.pth"], weights_only=False)  # noqa: S614 - the control of this test, on its own file
    assert marker.exists()
    marker.unlink()
    return files


def _refused(evil: dict[str, Path], load, *errors: type[BaseException], match: str | None = None) -> BaseException:
    with pytest.raises(errors or (ValueError,), match=match) as info:
        load()
    assert not evil["marker"].exists(), "the pickle ran"
    return info.value


@pytest.mark.parametrize("name", ["evil.ckpt", "raw.pkl"])
def test_lrdm_loader_refuses_a_malicious_pickle(evil, name):
    from diff4splat.pipelines.reconstruction import load_lrdm
    from diff4splat.weights import WeightsError

    err = _refused(evil, lambda: load_lrdm(evil[name]), WeightsError)
    assert str(err).startswith(f"LRDM weights: {evil[name]}: refused to load: the pickle holds Python objects")
    assert "GLOBAL" in str(err) and "never unpickled" in str(err)


def test_reconstruct_and_evaluate_clis_refuse_a_malicious_pickle(evil, tmp_path, capsys):
    import numpy as np
    from PIL import Image
    from test_stream import tiny_clip

    from datamodules.write import ShardWriter
    from diff4splat import evaluate, reconstruct
    from diff4splat.geometry.trajectories import make_trajectory, write_trajectory_json

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(frames / f"{i}.png")
    write_trajectory_json(make_trajectory("orbit", 3), tmp_path / "cams.json")
    argv = [
        "--weights",
        str(evil["evil.ckpt"]),
        "--input",
        str(frames),
        "--cameras",
        str(tmp_path / "cams.json"),
        "--out",
        str(tmp_path / "out"),
    ]
    assert reconstruct.main(argv) == 2
    assert f"error: LRDM weights: {evil['evil.ckpt']}: refused to load" in capsys.readouterr().err
    with ShardWriter(tmp_path / "shards", source="security", split="val") as w:
        w.write(tiny_clip("c0"))
    argv = [
        "clips",
        "--weights",
        str(evil["evil.ckpt"]),
        "--shards",
        str(tmp_path / "shards"),
        "--no-lpips",
        "--out",
        str(tmp_path / "results"),
        "--device",
        "cpu",
    ]
    assert evaluate.main(argv) == 2
    assert "refused to load" in capsys.readouterr().err
    assert not evil["marker"].exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "results").exists()


def test_other_weight_loaders_refuse_a_malicious_pickle(evil, tmp_path):
    from diff4splat.losses.lpips import LPIPS
    from diff4splat.models.tiny_vae import TinyVAE
    from diff4splat.models.wan_convert import main as wan_convert_main
    from diff4splat.models.wan_convert import read_original_vae
    from diff4splat.weights import WeightsError

    _refused(
        evil,
        lambda: LPIPS(vgg_path=evil["evil.pth"], lin_path=evil["evil.pth"]),
        WeightsError,
        match=r"LPIPS weights: .*evil\.pth: refused to load",
    )
    _refused(
        evil,
        lambda: TinyVAE.from_taehv(evil["evil.pth"]),
        WeightsError,
        match=r"TinyVAE weights: .*evil\.pth: refused to load",
    )
    _refused(
        evil,
        lambda: read_original_vae(evil["evil.pth"]),
        WeightsError,
        match=r"Wan VAE weights: .*evil\.pth: refused to load",
    )
    assert wan_convert_main(["--kind", "vae", "--src", str(evil["evil.pth"]), "--out", str(tmp_path / "vae")]) == 2
    assert not (tmp_path / "vae").exists() and not evil["marker"].exists()


def test_training_loaders_refuse_a_malicious_pickle(evil):
    """``init_from`` of the reconstruction system (owned elsewhere: it raises torch's own error, without the file
    name) and the dynamic-replica annotations reader."""
    from datamodules.sources.base import SourceError
    from datamodules.sources.dynamicreplica import read_trajectory
    from diff4splat.models.lrdm import LRDM, lrdm_preset
    from diff4splat.systems.reconstruction import load_lrdm_weights

    model = LRDM(lrdm_preset("tiny", dim=48, depth=1, num_heads=4, decoder_channels=8))
    _refused(evil, lambda: load_lrdm_weights(model, evil["evil.ckpt"]), pickle.UnpicklingError, ValueError)
    _refused(
        evil,
        lambda: read_trajectory(evil["evil.pth"], "seq"),
        SourceError,
        match=r"not loadable with weights_only=True",
    )


def test_safetensors_loaders_refuse_a_pickle_named_safetensors(evil):
    from diff4splat.gaussians.io import load_4d
    from diff4splat.models.alignment import LatentAligner
    from diff4splat.pipelines.reconstruction import load_lrdm

    path = evil["evil.safetensors"]
    _refused(evil, lambda: load_lrdm(path), match=rf"LRDM weights: {path}: not a readable \.safetensors file")
    _refused(evil, lambda: LatentAligner.load(path), match=rf"LatentAligner weights: {path}: not a readable")
    _refused(evil, lambda: load_4d(path), match=rf"load_4d\({path}\): not a readable safetensors file")


def test_diffusers_folder_with_a_malicious_bin_is_refused(evil, tmp_path):
    """Wan VAE folders load through diffusers, whose ``.bin`` reader uses ``torch.load(weights_only=True)``."""
    from diffusers import AutoencoderKLWan

    from diff4splat.models.wan_vae import WanVAE

    folder = tmp_path / "vae"
    AutoencoderKLWan(
        base_dim=3, z_dim=4, dim_mult=[1, 1], num_res_blocks=1, temperal_downsample=[False]
    ).save_pretrained(folder, safe_serialization=False)
    (folder / "diffusion_pytorch_model.bin").write_bytes(evil["evil.pth"].read_bytes())
    err = _refused(
        evil,
        lambda: WanVAE.from_pretrained(folder, torch_dtype=torch.float32),
        OSError,
        match="Unable to load weights from checkpoint file",
    )
    causes = []
    while err is not None:
        causes.append(err)
        err = err.__cause__ or err.__context__
    assert any(isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e) for e in causes)


def test_resuming_from_a_malicious_checkpoint_is_refused(evil, make_cfg):
    from diff4splat.train import train

    cfg = make_cfg(
        "experiment=fit_synthetic",
        f"ckpt_path={evil['evil.ckpt']}",
        "data.height=16",
        "data.width=16",
        "model.num_gaussians=50",
        "callbacks=none",
        "test=false",
    )
    from diff4splat.weights import WeightsError

    _refused(evil, lambda: train(cfg), WeightsError, match=r"ckpt_path=.*evil\.ckpt: refused to load.*GLOBAL")


# ---------------------------------------------------------------------------------------------------- bind addresses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_viewer_binds_to_localhost_by_default(tmp_path, monkeypatch):
    pytest.importorskip("viser")
    from scene_outputs import write_scene_output

    from diff4splat import view

    folder, _ = write_scene_output(tmp_path / "scene", frames=2, height=16, width=16)
    args = view.parse_args([str(folder), "--port", "0"])
    assert args.host == "127.0.0.1"
    seen = {}

    def run_once(self, stop=None, tick=1 / 30):  # the serving loop, left at once; the server is real
        seen["host"], seen["port"] = self.server.get_host(), self.server.get_port()
        with socket.create_connection(("127.0.0.1", seen["port"]), timeout=5):
            pass

    monkeypatch.setattr(view.SceneViewer, "run", run_once)
    view.run(args)
    assert seen["host"] == "127.0.0.1" and seen["port"] > 0


def test_demo_binds_to_localhost_by_default(tmp_path, monkeypatch):
    gr = pytest.importorskip("gradio")
    from diff4splat import demo

    assert demo.parse_args([]).host == "127.0.0.1"
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")  # the explicit default wins over Gradio's environment
    real_launch = gr.Blocks.launch
    seen = {}

    def launch_and_stop(self, *args, **kwargs):  # Gradio's real server, started without blocking, then closed
        kwargs.update(prevent_thread_lock=True, quiet=True)
        try:
            real_launch(self, *args, **kwargs)
            seen["server_name"], seen["url"] = self.server_name, self.local_url
        finally:
            self.close()

    monkeypatch.setattr(gr.Blocks, "launch", launch_and_stop)
    port = _free_port()
    assert demo.main(["tiny=true", "--port", str(port), "--outputs", str(tmp_path / "demo")]) == 0
    assert seen["server_name"] == "127.0.0.1" and seen["url"] == f"http://127.0.0.1:{port}/"


# ---------------------------------------------------------------------------------------------------- secrets


def test_wandb_key_is_in_no_file_of_the_run(make_cfg, monkeypatch, capfd):
    from diff4splat.runs import apply_extras
    from diff4splat.train import train

    secret = "d4s" + os.urandom(18).hex()  # 39 characters, like a W&B key
    canary = "canary" + os.urandom(6).hex()  # a config value: it must reach the files the secret must not
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = make_cfg(
        "experiment=fit_synthetic",
        "logger=wandb",
        "logger.wandb.mode=offline",
        "trainer.max_steps=2",
        "data.height=16",
        "data.width=16",
        "model.num_gaussians=50",
        "callbacks=none",
        "test=false",
        "extras.print_config=true",
        f"tags=[{canary}]",
    )
    try:
        apply_extras(cfg)  # as the CLI does: prints the config tree, saves config.yaml and config_tree.log
        train(cfg)
    finally:
        import wandb

        wandb.finish()
    run = Path(cfg.paths.output_dir)
    records = list(run.glob("wandb/offline-run-*/*.wandb"))
    assert len(records) == 1
    for _ in range(100):  # wandb-core may still be flushing the offline run after finish()
        if canary.encode() in records[0].read_bytes():
            break
        time.sleep(0.1)
    files = [p for p in run.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"config.yaml", "config_tree.log", "debug-internal.log", "output.log"} <= names, names  # configs, logs
    assert any(p.suffix == ".ckpt" for p in files), names  # and the checkpoint with its hyper-parameters
    with_canary = {p.name for p in files if canary.encode() in p.read_bytes()}
    assert {"config.yaml", "config_tree.log", records[0].name} <= with_canary, with_canary
    leaked = [str(p) for p in files if secret.encode() in p.read_bytes()]
    assert leaked == []
    out, err = capfd.readouterr()
    assert secret not in out and secret not in err
