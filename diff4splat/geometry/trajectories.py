"""Camera trajectories: presets for generation, RealEstate10K ``.txt`` and JSON readers/writers, and a plot.

All poses are OpenCV c2w (x right, y down, z forward) with normalised intrinsics, the first camera canonical
(identity). Scene "up" is therefore -y and "forward" +z.

Presets (``make_trajectory(name, num_frames, strength=1.0, look_at=2.0)``) move linearly in the frame index from the
identity pose. ``look_at`` is the point the camera aims at / orbits about (a distance along +z, or an xyz point);
``strength`` scales the motion: translations cover ``0.5 * strength * d`` (d = distance to the look-at point),
pans and arcs ``30° * strength``, the orbit ``360° * strength``, zoom multiplies the focal length by
``1 + strength`` (in) or ``1 / (1 + strength)`` (out); the spiral makes one turn of radius ``0.1 * strength * d``
while moving ``0.5 * strength * d`` forward. The five of the paper's protocol are ``spiral``, ``forward``,
``backward``, ``move_up`` and ``move_down`` (hyphenated names are accepted too).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from diff4splat.files import atomic_file, atomic_write_text
from diff4splat.geometry.cameras import canonicalize
from diff4splat.geometry.cameras import look_at as look_at_pose
from diff4splat.geometry.rotations import axis_angle_to_matrix

__all__ = [
    "PRESETS",
    "PROTOCOL_TRAJECTORIES",
    "TRAJECTORY_JSON_FORMAT",
    "Trajectory",
    "make_trajectory",
    "plot_trajectory",
    "read_re10k_txt",
    "read_trajectory_json",
    "write_re10k_txt",
    "write_trajectory_json",
]

TRAJECTORY_JSON_FORMAT = "diff4splat-trajectory"
DEFAULT_FXFYCXCY = (1.0, 1.0, 0.5, 0.5)  # about 53° field of view on a square image


@dataclass
class Trajectory:
    """A camera path: OpenCV c2w, normalised intrinsics and optional timestamps (microseconds)."""

    c2w: Tensor  # [F, 4, 4] float64
    fxfycxcy: Tensor  # [F, 4] float64
    timestamps: Tensor | None = None  # [F] int64 microseconds
    image_size: tuple[int, int] | None = None  # (H, W)
    meta: dict = field(default_factory=dict)  # e.g. {"url": ...} for RealEstate10K

    def __post_init__(self) -> None:
        if self.c2w.dim() != 3 or self.c2w.shape[-2:] != (4, 4):
            raise ValueError(f"Trajectory.c2w: expected shape [F, 4, 4], got {tuple(self.c2w.shape)}")
        F = self.c2w.shape[0]
        if tuple(self.fxfycxcy.shape) != (F, 4):
            raise ValueError(f"Trajectory.fxfycxcy: expected shape [{F}, 4], got {tuple(self.fxfycxcy.shape)}")
        if self.timestamps is not None and tuple(self.timestamps.shape) != (F,):
            raise ValueError(f"Trajectory.timestamps: expected shape [{F}], got {tuple(self.timestamps.shape)}")

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def times(self) -> Tensor:  # [F] in [0, 1]
        """Normalised times: from the timestamps when present, else evenly spaced."""
        F = len(self)
        if self.timestamps is None or F < 2:
            return torch.linspace(0.0, 1.0, F, dtype=torch.float64) if F > 1 else torch.zeros(F, dtype=torch.float64)
        ts = self.timestamps.double()
        span = ts[-1] - ts[0]
        return (ts - ts[0]) / span if span != 0 else torch.zeros_like(ts)


# ----------------------------------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------------------------------


def _translation_path(direction: Sequence[float]) -> Callable[[Tensor, float, Tensor], Tensor]:
    def path(s: Tensor, strength: float, target: Tensor) -> Tensor:
        d = target.norm()
        c2w = torch.eye(4, dtype=torch.float64).repeat(s.numel(), 1, 1)
        c2w[:, :3, 3] = s[:, None] * (0.5 * strength * d) * torch.tensor(direction, dtype=torch.float64)
        return c2w

    return path


def _pan_path(sign: float) -> Callable[[Tensor, float, Tensor], Tensor]:
    def path(s: Tensor, strength: float, target: Tensor) -> Tensor:
        # a positive angle about the camera's y axis (down) turns the view to the right
        angle = sign * math.radians(30.0) * strength * s
        c2w = torch.eye(4, dtype=torch.float64).repeat(s.numel(), 1, 1)
        c2w[:, :3, :3] = axis_angle_to_matrix(
            torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand(s.numel(), 3), angle
        )
        return c2w

    return path


def _orbit_path(total_degrees: float, sign: float) -> Callable[[Tensor, float, Tensor], Tensor]:
    def path(s: Tensor, strength: float, target: Tensor) -> Tensor:
        # move on a circle about the world up axis (-y) through the look-at point, always aiming at it
        angle = sign * math.radians(total_degrees) * strength * s
        R = axis_angle_to_matrix(torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64).expand(s.numel(), 3), angle)
        eye = target + (R @ (-target)[:, None])[..., 0]
        return look_at_pose(eye, target.expand_as(eye))

    return path


def _spiral_path(s: Tensor, strength: float, target: Tensor) -> Tensor:
    d = target.norm()
    r = 0.1 * strength * d
    phi = 2 * math.pi * s
    eye = torch.stack([r * (torch.cos(phi) - 1), r * torch.sin(phi), 0.5 * strength * d * s], dim=-1)
    # aim at the look-at point, pushed ahead by the forward travel so the camera never reaches it
    aim = target + torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) * (0.5 * strength * d * s[:, None])
    return look_at_pose(eye, aim)


def _static_path(s: Tensor, strength: float, target: Tensor) -> Tensor:
    return torch.eye(4, dtype=torch.float64).repeat(s.numel(), 1, 1)


_FORWARD = (0.0, 0.0, 1.0)
_BACKWARD = (0.0, 0.0, -1.0)
_UP = (0.0, -1.0, 0.0)
_DOWN = (0.0, 1.0, 0.0)
_LEFT = (-1.0, 0.0, 0.0)
_RIGHT = (1.0, 0.0, 0.0)

# name -> (pose path, zoom exponent: focal length multiplied by (1 + strength * s) ** zoom)
PRESETS: dict[str, tuple[Callable[[Tensor, float, Tensor], Tensor], int]] = {
    "static": (_static_path, 0),
    "orbit": (_orbit_path(360.0, -1.0), 0),
    "orbit_left": (_orbit_path(360.0, -1.0), 0),
    "orbit_right": (_orbit_path(360.0, 1.0), 0),
    "arc_left": (_orbit_path(30.0, -1.0), 0),
    "arc_right": (_orbit_path(30.0, 1.0), 0),
    "dolly_in": (_translation_path(_FORWARD), 0),
    "dolly_out": (_translation_path(_BACKWARD), 0),
    "pan_left": (_pan_path(-1.0), 0),
    "pan_right": (_pan_path(1.0), 0),
    "truck_left": (_translation_path(_LEFT), 0),
    "truck_right": (_translation_path(_RIGHT), 0),
    "pedestal_up": (_translation_path(_UP), 0),
    "pedestal_down": (_translation_path(_DOWN), 0),
    "zoom_in": (_static_path, 1),
    "zoom_out": (_static_path, -1),
    "spiral": (_spiral_path, 0),
    "forward": (_translation_path(_FORWARD), 0),
    "backward": (_translation_path(_BACKWARD), 0),
    "move_up": (_translation_path(_UP), 0),
    "move_down": (_translation_path(_DOWN), 0),
}
PROTOCOL_TRAJECTORIES = ("spiral", "forward", "backward", "move_up", "move_down")


def make_trajectory(
    name: str,
    num_frames: int,
    strength: float = 1.0,
    look_at: float | Sequence[float] | Tensor = 2.0,
    fxfycxcy: Sequence[float] | Tensor = DEFAULT_FXFYCXCY,
    fps: float | None = None,
) -> Trajectory:
    """A preset camera path of ``num_frames`` poses (the first is identity); see the module docstring.

    ``fps`` sets timestamps (microseconds, from 0) when given.
    """
    key = name.replace("-", "_").lower()
    if key not in PRESETS:
        raise ValueError(f"make_trajectory: unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    if num_frames < 1:
        raise ValueError(f"make_trajectory: num_frames must be >= 1, got {num_frames}")
    target = torch.as_tensor(look_at, dtype=torch.float64)
    if target.dim() == 0:
        target = torch.stack([torch.zeros(()), torch.zeros(()), target]).double()
    if target.shape != (3,) or target.norm() <= 0:
        raise ValueError(f"make_trajectory: look_at must be a positive distance or a non-zero xyz point, got {look_at}")
    path, zoom = PRESETS[key]
    s = torch.linspace(0.0, 1.0, num_frames, dtype=torch.float64) if num_frames > 1 else torch.zeros(1).double()
    c2w = canonicalize(path(s, float(strength), target))
    K = torch.as_tensor(fxfycxcy, dtype=torch.float64).expand(num_frames, 4).clone()
    if zoom:
        K[:, :2] = K[:, :2] * ((1.0 + strength * s) ** zoom)[:, None]
    timestamps = None if fps is None else torch.round(torch.arange(num_frames) * (1e6 / fps)).long()
    return Trajectory(c2w, K, timestamps, meta={"preset": key, "strength": float(strength)})


# ----------------------------------------------------------------------------------------------------------------------
# RealEstate10K .txt
# ----------------------------------------------------------------------------------------------------------------------


def read_re10k_txt(path: str | os.PathLike) -> Trajectory:
    """Read a RealEstate10K camera file (line 1: URL; then per frame: timestamp µs, fx fy cx cy (normalised),
    two zeros, 3x4 world-to-camera row-major). Values are kept in float64 and c2w is the general matrix inverse (the
    files' rotations are orthonormal only to ~1e-6), so ``write_re10k_txt`` reproduces the text exactly."""
    path = Path(path)
    lines = path.read_text().splitlines()
    if not lines:
        raise ValueError(f"read_re10k_txt({path}): empty file; expected a URL line then 19-column frame lines")
    url = lines[0].strip()
    ts, K, w2c, linenos = [], [], [], []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cols = line.split()
        if len(cols) != 19:
            raise ValueError(f"read_re10k_txt({path}): line {lineno} has {len(cols)} columns; expected 19")
        try:
            ts.append(int(cols[0]))
            vals = [float(c) for c in cols[1:]]
        except ValueError as e:
            raise ValueError(
                f"read_re10k_txt({path}): line {lineno}: {e}; expected int timestamp then 18 floats"
            ) from e
        K.append(vals[:4])
        w2c.append(vals[6:])
        linenos.append(lineno)
    if not ts:
        raise ValueError(f"read_re10k_txt({path}): no frame lines")
    w2c_t = torch.eye(4, dtype=torch.float64).repeat(len(ts), 1, 1)
    w2c_t[:, :3, :] = torch.tensor(w2c, dtype=torch.float64).reshape(-1, 3, 4)
    det = torch.linalg.det(w2c_t[:, :3, :3])
    bad = ~(torch.isfinite(det) & (det.abs() > 1e-12))
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"read_re10k_txt({path}): line {linenos[i]}: the world-to-camera matrix is singular (det R = "
            f"{float(det[i]):.3g}); expected a rigid 3x4 [R t] with R a rotation"
        )
    return Trajectory(
        c2w=torch.linalg.inv(w2c_t),
        fxfycxcy=torch.tensor(K, dtype=torch.float64),
        timestamps=torch.tensor(ts, dtype=torch.int64),
        meta={"url": url},
    )


def _fmt9(x: float) -> str:
    return f"{x:.9f}"


def write_re10k_txt(trajectory: Trajectory, path: str | os.PathLike, url: str | None = None) -> Path:
    """Write a RealEstate10K camera file (9 decimals, as the dataset's files); ``url`` defaults to ``meta['url']``."""
    url = url if url is not None else trajectory.meta.get("url", "")
    F = len(trajectory)
    ts = trajectory.timestamps if trajectory.timestamps is not None else torch.zeros(F, dtype=torch.int64)
    w2c = torch.linalg.inv(trajectory.c2w.double())[:, :3, :].reshape(F, 12).tolist()
    K = trajectory.fxfycxcy.double().tolist()
    out = [url]
    for i in range(F):
        cols = [str(int(ts[i]))] + [_fmt9(v) for v in K[i]] + [_fmt9(0.0), _fmt9(0.0)] + [_fmt9(v) for v in w2c[i]]
        out.append(" ".join(cols))
    text = "\n".join(out) + "\n"
    return atomic_write_text(path, text)


# ----------------------------------------------------------------------------------------------------------------------
# JSON
# ----------------------------------------------------------------------------------------------------------------------


def write_trajectory_json(trajectory: Trajectory, path: str | os.PathLike) -> Path:
    """Write ``{"format", "version", "image_size", "meta", "frames": [{"c2w" 4x4, "fxfycxcy" 4, "timestamp_us"}]}``
    (floats in shortest round-trip form, so reading gives the same numbers bit for bit)."""
    frames = []
    for i in range(len(trajectory)):
        frame = {"c2w": trajectory.c2w[i].double().tolist(), "fxfycxcy": trajectory.fxfycxcy[i].double().tolist()}
        if trajectory.timestamps is not None:
            frame["timestamp_us"] = int(trajectory.timestamps[i])
        frames.append(frame)
    doc = {
        "format": TRAJECTORY_JSON_FORMAT,
        "version": 1,
        "convention": "opencv_c2w, normalised fxfycxcy",
        "image_size": list(trajectory.image_size) if trajectory.image_size else None,
        "meta": trajectory.meta,
        "frames": frames,
    }
    text = json.dumps(doc, indent=1)
    return atomic_write_text(path, text)


def read_trajectory_json(path: str | os.PathLike) -> Trajectory:
    """Read a file written by ``write_trajectory_json``."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"read_trajectory_json({path}): invalid JSON ({e})") from e
    if not isinstance(doc, dict) or doc.get("format") != TRAJECTORY_JSON_FORMAT:
        raise ValueError(f"read_trajectory_json({path}): field 'format' must be {TRAJECTORY_JSON_FORMAT!r}")
    frames = doc.get("frames")
    if not isinstance(frames, list) or not frames:
        raise ValueError(f"read_trajectory_json({path}): field 'frames' must be a non-empty list")
    try:
        c2w = torch.tensor([f["c2w"] for f in frames], dtype=torch.float64)
        K = torch.tensor([f["fxfycxcy"] for f in frames], dtype=torch.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"read_trajectory_json({path}): each frame needs 'c2w' (4x4) and 'fxfycxcy' (4): {e}") from e
    has_ts = all("timestamp_us" in f for f in frames)
    ts = torch.tensor([int(f["timestamp_us"]) for f in frames], dtype=torch.int64) if has_ts else None
    size = doc.get("image_size")
    return Trajectory(c2w, K, ts, tuple(size) if size else None, doc.get("meta") or {})


# ----------------------------------------------------------------------------------------------------------------------
# Plot
# ----------------------------------------------------------------------------------------------------------------------


def plot_trajectory(
    c2w: Tensor | Trajectory,  # [F, 4, 4] or a Trajectory
    path: str | os.PathLike,
    fxfycxcy: Tensor | None = None,  # [F, 4]; default from the Trajectory or DEFAULT_FXFYCXCY
    frustum_size: float | None = None,
    title: str | None = None,
) -> Path:
    """Save a PNG with the camera frusta seen from above (x-z) and from the side (z-up), coloured by frame.

    Drawn with matplotlib's object API (no pyplot state), so it may run on any thread; each view's frusta are two line
    collections rather than one artist per segment (49 cameras: ~0.1 s instead of ~1 s)."""
    from matplotlib import colormaps
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    if isinstance(c2w, Trajectory):
        fxfycxcy = c2w.fxfycxcy if fxfycxcy is None else fxfycxcy
        c2w = c2w.c2w
    c2w = c2w.detach().double().cpu()
    F = c2w.shape[0]
    K = (
        torch.tensor(DEFAULT_FXFYCXCY, dtype=torch.float64).expand(F, 4)
        if fxfycxcy is None
        else fxfycxcy.detach().double().cpu()
    )
    centres = c2w[:, :3, 3]
    extent = float((centres.max(0).values - centres.min(0).values).max())
    size = frustum_size if frustum_size is not None else max(0.1 * extent, 0.05)
    # image corners at depth 1 in camera coordinates, then scaled
    corners_uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    corners = (
        torch.stack(
            [
                (corners_uv[None, :, 0] - K[:, None, 2]) / K[:, None, 0],
                (corners_uv[None, :, 1] - K[:, None, 3]) / K[:, None, 1],
                torch.ones(F, 4, dtype=torch.float64),
            ],
            dim=-1,
        )
        * size
    )  # [F, 4, 3]
    world = torch.einsum("fij,fkj->fki", c2w[:, :3, :3], corners) + centres[:, None, :]
    rings = torch.stack([world, world.roll(-1, dims=1)], dim=2)  # [F, 4, 2, 3]: the image rectangle's edges
    rays = torch.stack([centres[:, None].expand(F, 4, 3), world], dim=2)  # [F, 4, 2, 3]: centre -> corner
    colours = colormaps["viridis"](torch.linspace(0, 1, F).numpy()).repeat(4, axis=0)  # one per segment

    fig = Figure(figsize=(10, 5))
    axes = fig.subplots(1, 2)
    views = [("top (x right, z forward)", 0, 2, 1.0), ("side (z forward, up = -y)", 2, 1, -1.0)]
    for ax, (label, a, b, sb) in zip(axes, views):
        for segments, lw in ((rings, 0.8), (rays, 0.5)):
            xy = torch.stack([segments[..., a], sb * segments[..., b]], dim=-1).reshape(F * 4, 2, 2)
            ax.add_collection(LineCollection(xy.numpy(), colors=colours, linewidths=lw))
        ax.plot(centres[:, a], sb * centres[:, b], "k-", lw=0.5)
        ax.scatter([centres[0, a]], [sb * centres[0, b]], c="red", s=20, zorder=3, label="frame 0")
        ax.autoscale_view()
        ax.set_title(label)
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(True, lw=0.3)
        ax.legend(loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)
