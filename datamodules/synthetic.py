"""Procedural 4D scenes in the clip schema: exact cameras, depth, tracks and dynamic masks, rendered by our renderer.

A scene is a textured ground plane and back wall (dense grids of small flat Gaussians), deforming coloured Gaussian
blobs (moving along curved paths, pulsing anisotropically, spinning) and rigid objects (3×3×3 clusters that rotate
and translate as one body), filmed by a camera on a random preset trajectory
(`diff4splat.geometry.trajectories.make_trajectory`). Frames, expected depth and alpha come from
`diff4splat.rendering.render` (torch backend, CPU). Everything is deterministic per (config, seed).

- depth: the renderer's expected z-depth, valid where alpha > 0.98 (everything the camera sees is covered);
- tracks: blob centres, rigid-object Gaussian centres and a sample of ground/wall Gaussians, visible where they
  project inside the image in front of the rendered surface (NaN elsewhere);
- dynamic_mask: pixels whose front surface belongs to a moving Gaussian (a render of the moving ones alone, depth
  tested against the full render). Static scenes have no motion and an all-False mask.

In process (tests, smoke runs): `generate_clip(SyntheticConfig(...), seed)` → `Clip`; `SyntheticSource` feeds
`ClipStream`/`ClipDataModule` (its `synthetic` argument). Shards:

    python -m datamodules.synthetic --out $DATA_ROOT/shards/synthetic --clips 64 --frames 13 --size 64 --seed 0
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from datamodules.frame_codec import encode_frames
from datamodules.spec import Clip, ClipMeta, encode_clip
from diff4splat.gaussians.types import Gaussians
from diff4splat.geometry.cameras import project_points
from diff4splat.geometry.rotations import axis_angle_to_matrix, matrix_to_quat
from diff4splat.geometry.trajectories import PRESETS, make_trajectory
from diff4splat.rendering.api import render

TRAJECTORIES = (
    "arc_left",
    "arc_right",
    "dolly_in",
    "dolly_out",
    "pan_left",
    "pan_right",
    "truck_left",
    "truck_right",
    "pedestal_up",
    "pedestal_down",
    "spiral",
    "zoom_in",
    "zoom_out",
)


@dataclass
class SyntheticConfig:
    """Size and content of a procedural clip."""

    num_frames: int = 13
    height: int = 64
    width: int = 64
    dynamic: bool = True
    num_blobs: int = 6
    num_rigid: int = 2
    ground_grid: int = 20  # ground: ground_grid² flat Gaussians
    wall_grid: int = 16  # wall: wall_grid × (wall_grid * 3/4) flat Gaussians
    static_tracks: int = 32
    fps: float = 10.0
    frame_format: Literal["jpg", "png"] = "jpg"
    jpeg_quality: int = 95
    device: str = "cpu"  # where scenes are rendered: "cuda" renders with gsplat (the shard CLI on a GPU machine)
    # Content and camera options (the defaults are the original scenes; `smoke` uses smoother textures and wider
    # camera motion so that held-out views differ from the nearest input frame):
    texture: Literal["checker", "smooth"] = "checker"  # smooth: a bilinear field of texture_cells² random colours
    texture_cells: int = 3  # smooth: control colours per side of the ground (the wall gets as many per unit length)
    trajectories: tuple[str, ...] | None = None  # camera presets drawn from (None: TRAJECTORIES)
    strength_range: tuple[float, float] = (0.3, 1.0)  # camera motion strength, drawn uniformly

    def __post_init__(self) -> None:
        if self.texture not in ("checker", "smooth"):
            raise ValueError(f"SyntheticConfig.texture: expected 'checker' or 'smooth', got {self.texture!r}")
        if self.texture_cells < 2:
            raise ValueError(f"SyntheticConfig.texture_cells: expected an integer >= 2, got {self.texture_cells!r}")
        if self.trajectories is not None:
            if isinstance(self.trajectories, str) or not len(self.trajectories):
                raise ValueError(
                    "SyntheticConfig.trajectories: expected a non-empty list of preset names from "
                    f"{sorted(PRESETS)}, got {self.trajectories!r}"
                )
            self.trajectories = tuple(str(t) for t in self.trajectories)
            unknown = [t for t in self.trajectories if t.replace("-", "_").lower() not in PRESETS]
            if unknown:
                raise ValueError(
                    f"SyntheticConfig.trajectories: unknown preset(s) {unknown}; expected names from {sorted(PRESETS)}"
                )
        try:
            lo, hi = (float(x) for x in self.strength_range)
        except (TypeError, ValueError):
            raise ValueError(
                f"SyntheticConfig.strength_range: expected [low, high] numbers, got {self.strength_range!r}"
            ) from None
        if not 0 <= lo <= hi:
            raise ValueError(f"SyntheticConfig.strength_range: expected 0 <= low <= high, got {self.strength_range!r}")
        self.strength_range = (lo, hi)


def _grid_plane(n_u: int, n_v: int, origin, du, dv, normal_axis: int, colors: np.ndarray) -> dict[str, np.ndarray]:
    u, v = np.meshgrid(np.arange(n_u) + 0.5, np.arange(n_v) + 0.5, indexing="xy")
    means = origin + u.reshape(-1, 1) * du + v.reshape(-1, 1) * dv
    spacing = max(np.linalg.norm(du), np.linalg.norm(dv))
    scales = np.full((len(means), 3), 0.75 * spacing)
    scales[:, normal_axis] = 0.01 * spacing
    return {"means": means, "scales": scales, "colors": colors.reshape(-1, 3)}


def _texture(rng: np.random.Generator, n_u: int, n_v: int) -> np.ndarray:
    """(n_v, n_u, 3) colours: a checkerboard of two random colours with a smooth gradient and noise."""
    a, b = rng.uniform(0.15, 0.95, 3), rng.uniform(0.15, 0.95, 3)
    k = int(rng.integers(2, 5))
    u, v = np.meshgrid(np.arange(n_u), np.arange(n_v), indexing="xy")
    check = ((u // k + v // k) % 2)[..., None]
    grad = (u / max(n_u - 1, 1))[..., None] * rng.uniform(-0.2, 0.2, 3)
    return np.clip(np.where(check, a, b) + grad + rng.normal(0, 0.03, (n_v, n_u, 3)), 0, 1)


def _smooth_texture(rng: np.random.Generator, n_u: int, n_v: int, cells_u: int, cells_v: int) -> np.ndarray:
    """(n_v, n_u, 3) colours: a (cells_v × cells_u) grid of random colours, bilinearly interpolated (low frequency:
    a tiny model at low resolution can reconstruct it, yet a shifted view of it differs visibly)."""
    ctrl = rng.uniform(0.1, 0.95, (cells_v, cells_u, 3))
    fv = np.linspace(0, cells_v - 1, n_v)
    fu = np.linspace(0, cells_u - 1, n_u)
    v0, u0 = np.minimum(fv.astype(int), cells_v - 2), np.minimum(fu.astype(int), cells_u - 2)
    wv, wu = (fv - v0)[:, None, None], (fu - u0)[None, :, None]
    c = ctrl[v0][:, u0] * (1 - wv) * (1 - wu) + ctrl[v0 + 1][:, u0] * wv * (1 - wu)
    c = c + ctrl[v0][:, u0 + 1] * (1 - wv) * wu + ctrl[v0 + 1][:, u0 + 1] * wv * wu
    return np.clip(c + rng.normal(0, 0.01, (n_v, n_u, 3)), 0, 1)


class _Scene:
    """Static part + moving parts; `at(t)` gives all Gaussians at time t ∈ [0, 1]."""

    def __init__(self, cfg: SyntheticConfig, rng: np.random.Generator):
        g, w = cfg.ground_grid, cfg.wall_grid
        wh = max(2, w * 3 // 4)
        if cfg.texture == "smooth":  # ground 6 × 6 units, wall 7 × 4: the same colour frequency on both
            n = cfg.texture_cells
            ground_tex = _smooth_texture(rng, g, g, n, n)
            wall_tex = _smooth_texture(rng, w, wh, max(2, round(n * 7 / 6)), max(2, round(n * 4 / 6)))
        else:
            ground_tex, wall_tex = _texture(rng, g, g), _texture(rng, w, wh)
        ground = _grid_plane(
            g, g, np.array([-3.0, 1.0, 0.3]), np.array([6.0 / g, 0, 0]), np.array([0, 0, 6.0 / g]), 1, ground_tex
        )
        wall = _grid_plane(
            w, wh, np.array([-3.5, -3.0, 6.2]), np.array([7.0 / w, 0, 0]), np.array([0, 4.0 / wh, 0]), 2, wall_tex
        )
        self.static = {k: np.concatenate([ground[k], wall[k]]) for k in ground}
        nb = cfg.num_blobs
        self.blob_c0 = np.stack([rng.uniform(-1.2, 1.2, nb), rng.uniform(-0.2, 0.7, nb), rng.uniform(2.0, 4.5, nb)], 1)
        self.blob_v = rng.uniform(-0.6, 0.6, (nb, 3)) * [1, 0.3, 1]
        self.blob_amp = rng.uniform(0.05, 0.3, (nb, 3))
        self.blob_phase = rng.uniform(0, 2 * math.pi, (nb, 3))
        self.blob_s0 = rng.uniform(0.08, 0.2, (nb, 3))
        self.blob_axis = rng.normal(size=(nb, 3))
        self.blob_spin = rng.uniform(-3, 3, nb)
        self.blob_color = rng.uniform(0.1, 1.0, (nb, 3))
        nr = cfg.num_rigid
        off = np.stack(np.meshgrid(*[np.linspace(-1, 1, 3)] * 3, indexing="ij"), -1).reshape(-1, 3)
        self.rigid_off = off[None] * rng.uniform(0.1, 0.2, (nr, 1, 3))
        self.rigid_c0 = np.stack([rng.uniform(-1.0, 1.0, nr), rng.uniform(0.2, 0.7, nr), rng.uniform(2.0, 4.0, nr)], 1)
        self.rigid_v = rng.uniform(-0.5, 0.5, (nr, 3)) * [1, 0.2, 1]
        self.rigid_axis = rng.normal(size=(nr, 3))
        self.rigid_spin = rng.uniform(-2, 2, nr)
        self.rigid_color = np.clip(rng.uniform(0.2, 1.0, (nr, 1, 3)) + rng.normal(0, 0.08, (nr, 27, 3)), 0, 1)
        self.track_static = rng.choice(
            len(self.static["means"]), min(cfg.static_tracks, len(self.static["means"])), replace=False
        )
        self.dynamic = cfg.dynamic

    def moving_at(self, t: float) -> dict[str, np.ndarray]:
        """Moving Gaussians at time t: means, scales, quats, colours (blobs first, then rigid clusters)."""
        t = t if self.dynamic else 0.0
        c = self.blob_c0 + self.blob_v * t + self.blob_amp * np.sin(2 * math.pi * t + self.blob_phase)
        s = self.blob_s0 * (1 + 0.35 * np.sin(2 * math.pi * t + self.blob_phase[:, ::-1]))
        rot = axis_angle_to_matrix(torch.from_numpy(self.blob_axis), torch.from_numpy(self.blob_spin * t))
        q_blob = matrix_to_quat(rot).numpy()
        R = axis_angle_to_matrix(torch.from_numpy(self.rigid_axis), torch.from_numpy(self.rigid_spin * t)).numpy()
        rig = self.rigid_c0[:, None] + self.rigid_v[:, None] * t + np.einsum("rij,rkj->rki", R, self.rigid_off)
        q_rig = np.repeat(matrix_to_quat(torch.from_numpy(R)).numpy()[:, None], 27, 1)
        return {
            "means": np.concatenate([c, rig.reshape(-1, 3)]),
            "scales": np.concatenate([s, np.full((rig.size // 3, 3), 0.07)]),
            "quats": np.concatenate([q_blob, q_rig.reshape(-1, 4)]),
            "colors": np.concatenate([self.blob_color, self.rigid_color.reshape(-1, 3)]),
        }


def _gaussians(parts: list[dict[str, np.ndarray]]) -> Gaussians:
    """(F,) batch of Gaussians from per-frame dicts (means, scales, colors, optional quats)."""

    def cat(k: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([p[k] for p in parts])).float()

    means = cat("means")
    F, N = means.shape[:2]
    quats = cat("quats") if "quats" in parts[0] else torch.tensor([1.0, 0, 0, 0]).expand(F, N, 4).contiguous()
    return Gaussians(
        means=means, quats=quats, scales=cat("scales"), opacities=torch.full((F, N), 0.995), colors=cat("colors")
    )


def generate_arrays(
    cfg: SyntheticConfig, seed: int, trajectory: str | None = None, strength: float | None = None
) -> dict[str, Any]:
    """The raw clip: frames (F,H,W,3) uint8, c2w (F,4,4), fxfycxcy (F,4), timestamps (F,), depth (F,H,W),
    depth_valid, tracks_world (F,N,3), tracks_visible (F,N), dynamic_mask (F,H,W), trajectory name.

    ``trajectory`` / ``strength`` replace the seed's random camera path (same scene, same first view and
    intrinsics: every path starts at the identity pose), e.g. to film one scene along several paths."""
    rng = np.random.default_rng([seed, 4242])
    scene = _Scene(cfg, rng)
    F, H, W = cfg.num_frames, cfg.height, cfg.width
    name = str(rng.choice(TRAJECTORIES if cfg.trajectories is None else cfg.trajectories))
    fx = float(rng.uniform(0.8, 1.2))
    K = (fx, fx * W / H, 0.5, 0.5)
    drawn_strength = float(rng.uniform(*cfg.strength_range))
    name = name if trajectory is None else trajectory
    strength = drawn_strength if strength is None else float(strength)
    traj = make_trajectory(name, F, strength=strength, look_at=3.0, fxfycxcy=K)
    c2w, fxfycxcy = traj.c2w.float(), traj.fxfycxcy.float()
    times = np.linspace(0.0, 1.0, F) if F > 1 else np.zeros(1)

    moving = [scene.moving_at(float(t)) for t in times]
    static = scene.static
    full = [
        {
            "means": np.concatenate([static["means"], m["means"]]),
            "scales": np.concatenate([static["scales"], m["scales"]]),
            "colors": np.concatenate([static["colors"], m["colors"]]),
            "quats": np.concatenate([np.tile([1.0, 0, 0, 0], (len(static["means"]), 1)), m["quats"]]),
        }
        for m in moving
    ]
    dev = torch.device(cfg.device)

    def draw(parts: list[dict[str, np.ndarray]]):
        r = render(_gaussians(parts).to(dev), c2w[:, None].to(dev), fxfycxcy[:, None].to(dev), H, W, backend="auto")
        return r.rgb[:, 0].cpu(), r.depth[:, 0, 0].cpu(), r.alpha[:, 0, 0].cpu()

    with torch.no_grad():
        rgb, depth, alpha = draw(full)
        rgb = rgb.permute(0, 2, 3, 1).clamp(0, 1)
        if cfg.dynamic:
            _, d_dyn, a_dyn = draw(moving)
            dynamic_mask = (a_dyn > 0.5) & (d_dyn <= depth + 0.02 * depth)
        else:
            dynamic_mask = torch.zeros((F, H, W), dtype=torch.bool)

    # tracks: moving centres + sampled static Gaussians, visible when in front of the rendered surface
    pts = np.stack([np.concatenate([static["means"][scene.track_static], m["means"]]) for m in moving])
    radius = np.stack(
        [np.concatenate([static["scales"][scene.track_static].max(1), m["scales"].max(1)]) for m in moving]
    )
    proj = project_points(torch.from_numpy(pts).float(), c2w, fxfycxcy, H, W)
    uv = proj.uv.floor().long()
    u, v = uv[..., 0].clamp(0, W - 1), uv[..., 1].clamp(0, H - 1)
    surface = depth[torch.arange(F)[:, None], v, u]
    visible = proj.valid & (proj.depth <= surface + 2 * torch.from_numpy(radius).float() + 0.02 * proj.depth)
    visible = visible.numpy()
    tracks = pts.astype(np.float32)
    tracks[~visible] = np.nan
    valid = (alpha > 0.98) & (depth > 0) & torch.isfinite(depth)
    return {
        "frames": (rgb.numpy() * 255).round().astype(np.uint8),
        "c2w": c2w.double().numpy(),
        "fxfycxcy": fxfycxcy.double().numpy(),
        "timestamps": np.arange(F) / cfg.fps,
        "depth": torch.where(valid, depth, torch.zeros_like(depth)).numpy().astype(np.float32),
        "depth_valid": valid.numpy(),
        "tracks_world": tracks,
        "tracks_visible": visible,
        "dynamic_mask": dynamic_mask.numpy(),
        "trajectory": name,
    }


def generate_clip(cfg: SyntheticConfig, seed: int = 0, key: str | None = None) -> Clip:
    """One procedural clip in the schema (dataset "synthetic"), deterministic per (cfg, seed)."""
    a = generate_arrays(cfg, seed)
    key = key or f"synth{'dyn' if cfg.dynamic else 'static'}_{seed:08d}"
    meta = ClipMeta.for_dataset("synthetic", key, is_static=not cfg.dynamic, extra={"trajectory": a["trajectory"]})
    return Clip(
        key=key,
        frames=encode_frames(a["frames"], fmt=cfg.frame_format, quality=cfg.jpeg_quality),
        c2w=a["c2w"],
        fxfycxcy=a["fxfycxcy"],
        timestamps=a["timestamps"],
        meta=meta,
        depth=a["depth"],
        depth_valid=a["depth_valid"],
        tracks_world=a["tracks_world"],
        tracks_visible=a["tracks_visible"],
        dynamic_mask=a["dynamic_mask"],
    )


class SyntheticSource:
    """In-process source for `ClipStream(sample_sources=...)`: raw samples of freshly generated clips.

    Each call draws a scene seed from the stream's generator (so ranks/workers get different scenes); `pool` > 0
    keeps that many clips and reuses them (cheaper epochs for smoke runs).
    """

    def __init__(self, cfg: SyntheticConfig, seed: int = 0, pool: int = 0):
        self.cfg, self.seed, self.pool = cfg, seed, pool
        self._cache: dict[int, dict[str, Any]] = {}

    def __call__(self, rng: np.random.Generator) -> dict[str, Any]:
        s = int(rng.integers(0, self.pool if self.pool > 0 else 2**31 - 1))
        if s in self._cache:
            return self._cache[s]
        clip = generate_clip(self.cfg, seed=self.seed * 1_000_003 + s)
        sample = {"__key__": clip.key, "__url__": "synthetic", **encode_clip(clip)}
        if self.pool > 0:
            self._cache[s] = sample
        return sample


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder for the shards and manifest.json")
    p.add_argument("--clips", type=int, required=True)
    motion = p.add_mutually_exclusive_group()
    motion.add_argument("--dynamic", dest="dynamic", action="store_true", default=True)
    motion.add_argument("--static", dest="dynamic", action="store_false")
    p.add_argument("--frames", type=int, default=13)
    p.add_argument("--size", type=int, nargs="+", default=[64], help="S (square) or H W")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train")
    p.add_argument("--maxcount", type=int, default=64)
    p.add_argument("--format", choices=["jpg", "png"], default="jpg")
    p.add_argument("--device", default="cpu", help="render on this device (cuda: gsplat)")
    d = SyntheticConfig()  # the CLI's defaults are the config's
    p.add_argument("--texture", choices=["checker", "smooth"], default=d.texture)
    p.add_argument(
        "--texture-cells", type=int, default=d.texture_cells, help="smooth: control colours per side of the ground"
    )
    p.add_argument(
        "--strength",
        type=float,
        nargs=2,
        default=list(d.strength_range),
        metavar=("LOW", "HIGH"),
        help="camera motion strength range",
    )
    p.add_argument("--trajectories", nargs="+", default=None, help="camera presets to draw from (default: all)")
    args = p.parse_args(argv)
    from datamodules.write import ShardWriter

    torch.set_num_threads(max(1, torch.get_num_threads()))
    H, W = (args.size[0], args.size[0]) if len(args.size) == 1 else args.size[:2]
    try:
        cfg = SyntheticConfig(
            num_frames=args.frames,
            height=H,
            width=W,
            dynamic=args.dynamic,
            frame_format=args.format,
            device=args.device,
            texture=args.texture,
            texture_cells=args.texture_cells,
            strength_range=tuple(args.strength),
            trajectories=args.trajectories,
        )
    except ValueError as e:
        p.error(str(e))
    source = (
        f"datamodules.synthetic seed={args.seed} dynamic={args.dynamic} frames={args.frames} size={H}x{W} "
        f"texture={args.texture} strength={args.strength[0]:g}-{args.strength[1]:g}"
        + (f" trajectories={','.join(args.trajectories)}" if args.trajectories else "")
    )
    with ShardWriter(args.out, source=source, split=args.split, maxcount=args.maxcount) as writer:
        for i in range(args.clips):
            key = f"synth{'dyn' if args.dynamic else 'static'}_{args.seed:04d}_{i:06d}"
            if not writer.is_done(key):
                writer.write(generate_clip(cfg, seed=args.seed * 1_000_003 + i, key=key))
    print(f"wrote {writer.written} clips ({len(writer.written_shards)} shards) to {args.out}")


if __name__ == "__main__":
    main()
