"""Interactive 4D viewer for a scene output folder, in the browser.

    python -m diff4splat.view OUTPUT_DIR [--port 8080] [--host 127.0.0.1]

A viser web app (open the printed URL): the scene's Gaussians drawn by viser's Gaussian-splat renderer, a time
slider, play/pause with a frame rate, and, when ``meta.json`` holds the generation trajectory, the trajectory's
camera frusta and a camera picker whose button (or a click on a frustum) puts your view in that camera at its time,
which is how the generated frame was seen. Folders of ``python -m diff4splat.reconstruct`` (no trajectory) get the
time slider and no frusta. The server binds to 127.0.0.1 unless ``--host`` says otherwise.

Conventions: viser's Python API uses OpenCV cameras, as we do, so a c2w maps to a viser pose directly (``wxyz`` =
the quaternion of its rotation, ``position`` = its translation) and the vertical field of view is
``2 atan(0.5 / (fy/H))``. Our worlds are the first camera's frame, whose "up" is -y: the scene's up direction is
set to -y so that orbiting feels natural. Scenes larger than ``--max-gaussians`` are shown through a fixed random
subset (browsers slow down beyond a few million splats).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diff4splat.cli import run_cli
from diff4splat.gaussians.sh import sh_dc_to_rgb
from diff4splat.gaussians.types import Gaussians
from diff4splat.geometry.rotations import matrix_to_quat, quat_to_matrix
from diff4splat.pipelines.outputs import SceneOutput, read_scene_output

log = logging.getLogger("diff4splat.view")

DEFAULT_MAX_GAUSSIANS = 2_000_000


def splat_arrays(g: Gaussians) -> dict[str, np.ndarray]:
    """viser's Gaussian-splat inputs of unbatched Gaussians: ``centers`` (N, 3), ``covariances`` (N, 3, 3) =
    R S² Rᵀ, ``rgbs`` (N, 3) in [0, 1] (the DC term of SH colours) and ``opacities`` (N, 1), float32."""
    R = quat_to_matrix(g.quats.float())
    M = R * g.scales.float()[:, None, :]
    rgb = g.colors if g.sh_degree is None else sh_dc_to_rgb(g.colors[:, 0, :])
    return {
        "centers": g.means.float().cpu().numpy(),
        "covariances": (M @ M.transpose(-1, -2)).cpu().numpy(),
        "rgbs": rgb.float().clamp(0, 1).cpu().numpy(),
        "opacities": g.opacities.float().clamp(0, 1)[:, None].cpu().numpy(),
    }


def camera_pose(c2w: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """A viser pose (wxyz (4,), position (3,)) of an OpenCV c2w [4, 4]: viser's cameras are OpenCV too."""
    return matrix_to_quat(c2w[:3, :3].double()).numpy(), c2w[:3, 3].double().numpy()


def vertical_fov(fxfycxcy: Tensor) -> float:
    """Vertical field of view in radians of normalised intrinsics [4]."""
    return 2.0 * math.atan(0.5 / float(fxfycxcy[1]))


class SceneViewer:
    """The GUI and scene of one output folder on a running ``viser.ViserServer``.

    ``time`` is the scene time in [0, 1] shown; ``set_time`` re-evaluates the Gaussians (`DeformableGaussians.at`)
    and sends them; ``advance(dt)`` moves playback on by ``dt`` seconds; ``view_from(camera, k)`` puts a client
    camera in trajectory camera k at its time.
    """

    def __init__(
        self, server: Any, scene: SceneOutput, max_gaussians: int = DEFAULT_MAX_GAUSSIANS, fps: float = 8.0
    ) -> None:
        self.server, self.scene = server, scene
        dg = scene.gaussians.to("cpu", torch.float32)
        if dg.num_gaussians > max_gaussians:
            keep = torch.randperm(dg.num_gaussians, generator=torch.Generator().manual_seed(0))[:max_gaussians]
            log.info("showing %d of %d Gaussians (--max-gaussians)", max_gaussians, dg.num_gaussians)
            dg = dg.index(keep.sort().values)
        self.gaussians = dg
        self.cameras = scene.cameras
        self.num_frames = len(self.cameras) if self.cameras is not None else dg.num_times
        self._lock = threading.Lock()
        self.time = -1.0
        self.playing = False

        # The panel first: the splats can be tens of MB to send, and the controls should not wait for them.
        self.splats: Any = None
        gui = server.gui
        self.notice = gui.add_markdown(scene_notice(scene))
        with gui.add_folder("Time"):
            step = 1.0 / max(1, 10 * (self.num_frames - 1))
            self.time_slider = gui.add_slider("t", min=0.0, max=1.0, step=step, initial_value=0.0)
            self.play_button = gui.add_button("Play", hint="play / pause the scene's motion")
            self.fps_slider = gui.add_slider("Frames / s", min=1.0, max=30.0, step=1.0, initial_value=float(fps))
        self.time_slider.on_update(lambda _: self.set_time(self.time_slider.value))
        self.play_button.on_click(lambda _: self.toggle_play())
        if self.cameras is not None:
            with gui.add_folder("Trajectory"):
                self.camera_slider = gui.add_slider("Camera", min=0, max=len(self.cameras) - 1, step=1, initial_value=0)
                self.snap_button = gui.add_button("View from camera", hint="look through the chosen camera")
                self.frusta_box = gui.add_checkbox("Show cameras", initial_value=True)
            self.snap_button.on_click(lambda event: self._snap_event(event.client, int(self.camera_slider.value)))
            self.frusta_box.on_update(lambda _: self._show_frusta(self.frusta_box.value))

        server.scene.set_up_direction("-y")
        splats = server.scene.add_gaussian_splats("/scene", **splat_arrays(dg.at(0.0)))
        with self._lock:
            self.splats, self.time = splats, 0.0
        self.frusta = self._add_frusta() if self.cameras is not None else []
        if self.cameras is not None:
            self._set_initial_camera()
        self.set_time(self.time_slider.value)

    # -- scene ---------------------------------------------------------------------------------------------------------
    def _add_frusta(self) -> list[Any]:
        cams = self.cameras
        assert cams is not None
        scale = 0.08 * self._scene_depth()
        handles = []
        for k in range(len(cams)):
            wxyz, pos = camera_pose(cams.c2w[k])
            shade = int(255 * k / max(1, len(cams) - 1))
            h = self.server.scene.add_camera_frustum(
                f"/trajectory/camera_{k:03d}",
                fov=vertical_fov(cams.fxfycxcy[k]),
                aspect=cams.width / cams.height,
                scale=scale,
                thickness=0.05 * scale,
                color=(shade, 80, 255 - shade),
                wxyz=wxyz,
                position=pos,
            )
            h.on_click(lambda event, k=k: self._snap_event(event.client, k))
            handles.append(h)
        return handles

    def _show_frusta(self, visible: bool) -> None:
        for h in self.frusta:
            h.visible = visible

    def _scene_depth(self) -> float:
        """Median distance of the Gaussians from the first camera (1 when that is degenerate): sets sizes."""
        origin = self.cameras.c2w[0, :3, 3] if self.cameras is not None else torch.zeros(3)
        d = float((self.gaussians.canonical.means - origin).norm(dim=-1).median())
        return d if math.isfinite(d) and d > 1e-6 else 1.0

    def _set_initial_camera(self) -> None:
        """New clients start in the first trajectory camera, looking at the scene's median depth."""
        cams = self.cameras
        assert cams is not None
        c2w = cams.c2w[0].double()
        ic = self.server.initial_camera
        ic.position = c2w[:3, 3].numpy()
        ic.look_at = (c2w[:3, 3] + self._scene_depth() * c2w[:3, 2]).numpy()
        ic.up = (-c2w[:3, 1]).numpy()
        ic.fov = vertical_fov(cams.fxfycxcy[0])

    def set_time(self, t: float) -> None:
        """Show the scene at time ``t`` (clamped to [0, 1]); the slider follows."""
        t = min(1.0, max(0.0, float(t)))
        with self._lock:
            if t == self.time or self.splats is None:  # None: the scene is still being sent
                return
            self.time = t
            self.splats.set_gaussians(**splat_arrays(self.gaussians.at(t)))
        if abs(self.time_slider.value - t) > 1e-9:
            self.time_slider.value = t

    # -- playback ------------------------------------------------------------------------------------------------------
    def toggle_play(self) -> None:
        self.playing = not self.playing
        self.play_button.label = "Pause" if self.playing else "Play"

    def advance(self, dt: float) -> float:
        """Move on by ``dt`` seconds at the chosen frame rate (one frame = 1 / (frames - 1) of the time range),
        wrapping from 1 back to 0; returns the new time."""
        step = dt * float(self.fps_slider.value) / max(1, self.num_frames - 1)
        t = self.time + step
        if t > 1.0 + 1e-9:
            t = 0.0
        self.set_time(t)
        return self.time

    # -- cameras -------------------------------------------------------------------------------------------------------
    def view_from(self, camera: Any, k: int) -> None:
        """Put a viser camera (``client.camera``) in trajectory camera ``k`` and show its time."""
        cams = self.cameras
        if cams is None:
            raise ValueError("view_from: this scene has no trajectory (meta.json without 'trajectory')")
        wxyz, pos = camera_pose(cams.c2w[k])
        camera.wxyz = wxyz
        camera.position = pos
        camera.fov = vertical_fov(cams.fxfycxcy[k])
        self.set_time(float(cams.times[k]))

    def _snap_event(self, client: Any, k: int) -> None:
        if client is None:
            return
        with client.atomic():
            self.view_from(client.camera, k)

    def run(self, stop: threading.Event | None = None, tick: float = 1 / 30) -> None:
        """Playback loop: advance while playing, until ``stop`` is set (forever without one)."""
        last = time.perf_counter()
        while stop is None or not stop.is_set():
            time.sleep(tick)
            now = time.perf_counter()
            if self.playing:
                self.advance(now - last)
            last = now


def scene_notice(scene: SceneOutput) -> str:
    """The panel's first line: where the scene came from, and a warning when it was made by untrained weights."""
    meta = scene.meta
    if meta.get("untrained"):
        label = meta.get("label") or "UNTRAINED: random-weight models; this scene is not a result"
        return f"**⚠ {label}**"
    source = meta.get("models") or meta.get("weights")
    name = scene.folder.name
    return f"**{name}**" + (f" — {source}" if isinstance(source, str) else "")


def serve(
    folder: str | Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    max_gaussians: int = DEFAULT_MAX_GAUSSIANS,
    verbose: bool = True,
) -> SceneViewer:
    """Start a viser server for an output folder (``port=0``: any free port, see ``viewer.server.get_port()``);
    stop it with ``viewer.server.stop()``."""
    import viser

    scene = read_scene_output(folder)
    server = viser.ViserServer(host=host, port=port, label=f"diff4splat: {Path(folder).name}", verbose=verbose)
    try:
        return SceneViewer(server, scene, max_gaussians)
    except BaseException:
        server.stop()
        raise


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output_dir", help="folder with scene.safetensors (and meta.json from the generation CLI)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (the next free one is taken when busy)")
    p.add_argument("--max-gaussians", type=int, default=DEFAULT_MAX_GAUSSIANS)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    viewer = serve(args.output_dir, args.host, args.port, args.max_gaussians)
    print(f"viewing {args.output_dir} at http://{args.host}:{viewer.server.get_port()} (Ctrl+C to stop)")
    try:
        viewer.run()
    except KeyboardInterrupt:
        pass
    finally:
        viewer.server.stop()


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, parse_args(argv), log=True)


if __name__ == "__main__":
    sys.exit(main())
