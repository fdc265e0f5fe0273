"""The viser viewer, headless: it serves its page on 127.0.0.1, shows the scene at the chosen time, plays, draws the
trajectory's frusta, puts a camera in a trajectory camera, and stops. Skipped without viser (the `viewer` extra)."""

from __future__ import annotations

import math
import threading
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diff4splat import view
from diff4splat.geometry.rotations import quat_to_matrix
from diff4splat.pipelines.outputs import read_scene_output
from tests.scene_outputs import write_scene_output

viser = pytest.importorskip("viser")
torch.set_num_threads(1)


@pytest.fixture
def viewer(tmp_path):
    folder, _ = write_scene_output(tmp_path / "scene")
    v = view.serve(folder, host="127.0.0.1", port=0, verbose=False)
    try:
        yield v
    finally:
        v.server.stop()


def test_viewer_serves_page_shows_time_and_stops(viewer):
    port = viewer.server.get_port()
    assert viewer.server.get_host() == "127.0.0.1" and port > 0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
        assert r.status == 200
        assert b"<html" in r.read(4096).lower()

    scene = read_scene_output(viewer.scene.folder)
    viewer.set_time(0.5)
    assert viewer.time_slider.value == 0.5
    at = scene.gaussians.at(0.5)
    np.testing.assert_allclose(viewer.splats.centers, at.means.numpy(), atol=1e-6)
    M = quat_to_matrix(at.quats) * at.scales[:, None, :]
    np.testing.assert_allclose(viewer.splats.covariances, (M @ M.transpose(1, 2)).numpy(), atol=2e-4)  # float16
    assert not np.allclose(viewer.splats.centers, scene.gaussians.at(0.0).means.numpy())  # the scene moves

    viewer.time_slider.value = 0.2  # the slider drives the scene
    assert viewer.time == 0.2
    np.testing.assert_allclose(viewer.splats.centers, scene.gaussians.at(0.2).means.numpy(), atol=1e-6)

    viewer.set_time(0.5)
    assert viewer.advance(0.25) == pytest.approx(0.5 + 0.25 * 8 / 5)  # 8 frames/s over 6 frames (5 intervals)
    assert viewer.advance(0.25) == 0.0  # past the end: back to the start
    viewer.toggle_play()
    assert viewer.playing and viewer.play_button.label == "Pause"
    stop = threading.Event()
    loop = threading.Thread(target=viewer.run, args=(stop, 0.01))
    loop.start()
    time.sleep(0.3)
    stop.set()
    loop.join(5)
    assert viewer.time > 0  # playback advanced on its own

    viewer.server.stop()
    time.sleep(0.2)
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)


def test_viewer_frusta_and_view_from_camera(viewer):
    cams = viewer.cameras
    assert len(viewer.frusta) == len(cams) == 6
    for k, h in enumerate(viewer.frusta):
        R = viser.transforms.SO3(np.asarray(h.wxyz)).as_matrix()  # viser's own conversion
        np.testing.assert_allclose(R, cams.c2w[k, :3, :3].numpy(), atol=1e-6)
        np.testing.assert_allclose(h.position, cams.c2w[k, :3, 3].numpy(), atol=1e-6)
        assert h.fov == pytest.approx(2 * math.atan(0.5 / float(cams.fxfycxcy[k, 1])))
        assert h.aspect == pytest.approx(40 / 32)
    camera = SimpleNamespace(wxyz=None, position=None, fov=None)
    viewer.view_from(camera, 3)
    np.testing.assert_allclose(viser.transforms.SO3(camera.wxyz).as_matrix(), cams.c2w[3, :3, :3].numpy(), atol=1e-6)
    np.testing.assert_allclose(camera.position, cams.c2w[3, :3, 3].numpy(), atol=1e-6)
    assert camera.fov == pytest.approx(2 * math.atan(0.5 / float(cams.fxfycxcy[3, 1])))
    assert viewer.time == pytest.approx(float(cams.times[3]))
    viewer.frusta_box.value = False
    assert not any(h.visible for h in viewer.frusta)
    ic = viewer.server.initial_camera  # new clients start in camera 0, looking along its +z
    np.testing.assert_allclose(ic.position, cams.c2w[0, :3, 3].numpy(), atol=1e-6)
    forward = (np.asarray(ic.look_at) - np.asarray(ic.position)) / np.linalg.norm(np.asarray(ic.look_at) - ic.position)
    np.testing.assert_allclose(forward, cams.c2w[0, :3, 2].numpy(), atol=1e-6)


def test_viewer_without_trajectory_and_subsampled(tmp_path, capsys):
    folder, _ = write_scene_output(tmp_path / "recon")
    (folder / "meta.json").unlink()  # as `python -m diff4splat.reconstruct` writes: no trajectory
    v = view.serve(folder, port=0, max_gaussians=100, verbose=False)
    try:
        assert v.cameras is None and v.frusta == [] and v.num_frames == 6
        assert v.splats.centers.shape == (100, 3)
        v.set_time(1.0)
        full = read_scene_output(folder).gaussians.at(1.0).means.numpy()
        rows = [int(np.argmin(np.abs(full - c).sum(1))) for c in v.splats.centers[:5]]
        np.testing.assert_allclose(v.splats.centers[:5], full[rows], atol=1e-6)  # a subset of the real Gaussians
        with pytest.raises(ValueError, match="no trajectory"):
            v.view_from(SimpleNamespace(), 0)
    finally:
        v.server.stop()
    assert view.main([str(tmp_path / "missing")]) == 2
    assert "missing/scene.safetensors: no scene file" in capsys.readouterr().err


def test_viewer_panel_comes_before_the_scene_and_flags_untrained_weights(tmp_path, monkeypatch):
    import json

    folder, _ = write_scene_output(tmp_path / "scene")
    meta = json.loads((folder / "meta.json").read_text())
    meta.update(untrained=True, label="UNTRAINED: random-weight models (a smoke test or a benchmark)")
    (folder / "meta.json").write_text(json.dumps(meta))
    seen_gui = []
    real = viser.SceneApi.add_gaussian_splats

    def spy(self, *args, **kwargs):
        seen_gui.append(hasattr(viewer_ref[0], "time_slider") if viewer_ref else False)
        return real(self, *args, **kwargs)

    viewer_ref: list = []
    monkeypatch.setattr(viser.SceneApi, "add_gaussian_splats", spy)
    monkeypatch.setattr(
        view.SceneViewer, "__new__", lambda cls, *a, **k: viewer_ref.append(object.__new__(cls)) or viewer_ref[-1]
    )
    v = view.serve(folder, port=0, verbose=False)
    try:
        assert seen_gui == [True]  # the controls existed when the splats were sent
        assert "UNTRAINED" in v.notice.content and v.notice.content.startswith("**⚠")
        assert v.time == 0.0
    finally:
        v.server.stop()
    (folder / "meta.json").unlink()
    v = view.serve(folder, port=0, verbose=False)
    try:
        assert "UNTRAINED" not in v.notice.content and "scene" in v.notice.content
    finally:
        v.server.stop()
