"""The Gradio demo: the UI wiring, the callback end to end with the tiny random-weight generation pipeline (its
files, seeds and options), its errors, and the app serving its page. Skipped without gradio (the `viewer` extra)."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.spec import decode_video
from diff4splat.gaussians.io import load_4d, load_splat
from diff4splat.pipelines.evaluation import evaluate_scene
from diff4splat.pipelines.outputs import read_scene_output

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio")
from diff4splat import demo as demo_module  # noqa: E402 - only once gradio is known to be installed

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    cfg = demo_module.load_config(["tiny=true", "device=cpu"])
    return demo_module.DemoRunner(cfg, tmp_path_factory.mktemp("demo") / "outputs")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 150, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_build_demo_wires_the_callback():
    def callback(*args):
        raise AssertionError("not called while building")

    demo = demo_module.build_demo(callback)
    assert isinstance(demo, gr.Blocks)
    (fn,) = demo.fns.values() if isinstance(demo.fns, dict) else demo.fns  # a dict since gradio 5
    assert fn.fn is callback
    assert [c.label for c in fn.inputs] == [
        "Image (first frame)",
        "Trajectory",
        "Trajectory strength",
        "Prompt",
        "Seed",
    ]
    assert [type(c).__name__ for c in fn.outputs] == ["Video", "Video", "Model3D", "File", "Markdown"]
    presets = next(c for c in fn.inputs if c.label == "Trajectory")
    assert {"orbit", "spiral", "forward", "backward", "move_up", "move_down"} <= {v for v, _ in presets.choices}


def test_demo_callback_with_the_tiny_pipeline(runner, image):
    video, render, splat, downloads, status = runner(image, "spiral", 0.5, "a red boat", 3)
    folder = Path(video).parent
    assert Path(render).parent == folder and downloads == [splat, str(folder / "scene.safetensors")]
    assert "UNTRAINED" in status
    for path in (video, render):
        frames = decode_video(Path(path).read_bytes())
        assert frames.shape == (13, 96, 160, 3)  # tiny: 13 frames of 96 x 160
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["seed"] == 3 and meta["inputs"]["camera"] == "spiral" and meta["inputs"]["prompt"] == "a red boat"
    assert meta["inputs"]["trajectory_options"]["strength"] == 0.5
    scene = load_4d(folder / "scene.safetensors")
    s = load_splat(splat)  # the Gaussians at the first time, every one of them
    first = scene.at(float(scene.times[0]))
    assert s.num_gaussians == scene.num_gaussians
    np.testing.assert_allclose(np.sort(s.means[:, 0].numpy()), np.sort(first.means[:, 0].numpy()), atol=1e-6)

    again = Path(runner(image, "spiral", 0.5, "a red boat", 3)[0]).parent
    assert again != folder
    torch.testing.assert_close(load_4d(again / "scene.safetensors").canonical.means, scene.canonical.means)
    other = Path(runner(image, "spiral", 0.5, "a red boat", 4)[0]).parent
    assert not torch.equal(load_4d(other / "scene.safetensors").canonical.means, scene.canonical.means)

    # the folder is what the viewer and the evaluation read
    out = read_scene_output(folder)
    assert out.cameras is not None and len(out.cameras) == 13
    row, frames = evaluate_scene(out)
    assert row["frames"] == 13 and len(frames) == 13 and 0 < row["psnr"] < 100


def test_demo_callback_errors(runner, image):
    before = sorted(runner.outputs.iterdir()) if runner.outputs.exists() else []
    for args, message in [
        ((None, "orbit", 1.0, "", 0), "image: upload an image"),
        ((image, "sideways", 1.0, "", 0), "trajectory: 'sideways' is not a preset; expected one of arc_left"),
        ((image, "orbit", 1.0, "", -1), "seed: expected a non-negative integer"),
        ((image, "orbit", "fast", "", 0), "strength / seed: expected numbers"),
        ((image + ".missing", "orbit", 1.0, "", 0), "no such file"),
    ]:
        with pytest.raises(gr.Error, match=message):
            runner(*args)
    after = sorted(runner.outputs.iterdir()) if runner.outputs.exists() else []
    assert after == before  # nothing written


def test_demo_errors_reach_the_user(runner, image, tmp_path, monkeypatch):
    """What gradio would show as "upstream app raised an exception" is a gr.Error with the reason: a seed beyond 64
    bits, an upload that is not an image (refused by the image input before the callback runs), a failure inside."""
    from gradio.data_classes import FileData

    with pytest.raises(gr.Error, match=r"seed: expected an integer in \[0, 2\^63 - 1\], got 1180591620717411303424"):
        runner(image, "orbit", 1.0, "", 2**70)
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    (fn,) = demo_module.build_demo(runner).fns.values()
    upload = fn.inputs[0]
    with pytest.raises(gr.Error, match=r"image: notes\.png: not an image this demo can read \(cannot identify"):
        upload.preprocess(FileData(path=str(notes), orig_name="notes.png"))
    assert upload.preprocess(FileData(path=image, orig_name="photo.png")) == image  # an image passes, as uploaded
    monkeypatch.setattr(runner, "generate", lambda *a: (_ for _ in ()).throw(RuntimeError("CUDA error: launch")))
    with pytest.raises(gr.Error, match=r"generation failed: RuntimeError: CUDA error: launch"):
        runner(image, "orbit", 1.0, "", 0)
    assert not list(Path(demo_module.__file__).parent.glob("*.pyi"))  # gradio wrote no stub beside the module


def test_demo_app_serves_its_page(runner):
    demo = demo_module.build_demo(runner)
    demo.queue(default_concurrency_limit=1)
    _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200 and b"gradio" in r.read().lower()
    finally:
        demo.close()
