"""One scale convention, from the datasets through the camera model to the LRDM and the exported scene.

**Provenance.** Every clip records where the unit of its ``c2w`` translations and depth comes from
(``ClipMeta.scale_source``, `SCALE_SOURCES`):

- ``metric``: a sensor or a renderer gives metres (TartanAir, MatrixCity, DynamicReplica, PointOdyssey, VKITTI2,
  Spring, Stereo4D's calibrated rig, the procedural ``synthetic`` scenes); ``meta.metric_scale`` = stored units per
  metre.
- ``metric_estimated``: an arbitrary-scale source rescaled to metres by an estimator (e.g. metric monocular depth
  against the clip's SfM points); the estimator is named in ``meta.extra["scale_estimator"]``.
- ``arbitrary``: SfM / SLAM units of one reconstruction (RealEstate10K's ORB-SLAM, DL3DV's COLMAP): one unit differs
  from clip to clip. Such a clip is never labelled ``metric``, and ``metric_scale`` is 1 for it.

**The scene unit (one rule).** Both learned models see scenes in *scene units*: cameras canonical to the first
(input) camera and scaled so that the mean distance from that camera of the scene points seen by the input frames is 1
(the reference's ``norm_xyz``; `ClipSamplingConfig.scale_norm="mean_xyz"`). The same quantity is measured from what
a clip has, in this order (`SCALE_METHODS`):

1. ``depth``: the valid depth pixels of the input frames, unprojected (exact; `datamodules.scene_unit._depth_mean`);
2. ``points``: the clip's sparse SfM points (``points_world``) that project into an input frame (`visible_points`);
3. ``tracks``: the 3D track points visible in the input frames (`mean_point_distance`; tracks follow objects, not
   the whole view, hence after the points);
4. ``cameras``: no geometry at all (RealEstate10K): `CAMERA_DISTANCE_RATIO` times the mean distance of the other input
   cameras from the first (`camera_mean_estimate`), a heuristic calibrated on clips that have depth.

How far 2-4 land from 1 on clips that have both is measured by ``experiments/scale_fallback`` and reported in the
README (§One scale).

**The camera model** (CameraWan) trains and samples in the same scene units: ``encode_latents --pose-scale scene``
normalises each window's cameras by this rule at encode time (``--pose-scale metric`` keeps metres and refuses
arbitrary clips). Preset trajectories are written in scene units (``trajectory.look_at=1``: the point aimed at is one
mean scene depth away); a user trajectory in other units comes in through ``trajectory.scale`` (a factor, or ``auto``:
`auto_trajectory_scale`).

**Generation and reconstruction** (`diff4splat.pipelines.scale.rescaled_reconstruction`) take cameras in the user's units, divide them by a
scale-equivariant factor (`trajectory_extent`), let a first LRDM pass measure the scene's mean distance (the same
quantity as 1), rescale the cameras to make it 1, run the full pass and scale the Gaussians back
(`diff4splat.pipelines.scale.scale_gaussians`): the exported scene, ``meta.json`` and the viewer are in the user's units, and a trajectory ×10
gives the same renders and Gaussians ×10.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from torch import Tensor

ScaleSource = Literal["metric", "metric_estimated", "arbitrary"]
SCALE_SOURCES: tuple[str, ...] = ("metric", "metric_estimated", "arbitrary")
SCALE_METHODS: tuple[str, ...] = ("depth", "points", "tracks", "cameras", "none")

# Where each known dataset's scale comes from (reference §8.5, datasets.md); unknown datasets are "arbitrary".
DATASET_SCALE_SOURCE: dict[str, str] = {
    "re10k": "arbitrary",  # ORB-SLAM + bundle adjustment per clip
    "dl3dv": "arbitrary",  # COLMAP per scene
    "tartanair": "metric",
    "matrixcity": "metric",
    "dynamicreplica": "metric",
    "pointodyssey": "metric",
    "vkitti2": "metric",
    "spring": "metric",
    "stereo4d": "metric",  # calibrated stereo rig (SEA-RAFT depth from the baseline)
    "synthetic": "metric",  # rendered: exact by construction
}

# `camera_mean_estimate`: scene mean distance ≈ this × the other input cameras' mean distance from the first: the
# median ratio on the synthetic clips of experiments/scale_fallback (results.md: 16.7). It depends on how far cameras
# move relative to the scene, so it is a weak prior for a real source (RealEstate10K): measured error median 38 %.
CAMERA_DISTANCE_RATIO = 16.7

# The largest relative error |fallback / depth - 1| of each fallback on the windows of experiments/scale_fallback
# (160 windows of 40 synthetic clips through the stream's transform): what a depth-less copy of such a clip is allowed to differ by.
FALLBACK_ERROR: dict[str, float] = {"points": 0.157, "tracks": 0.398, "cameras": 2.741}

# `auto_trajectory_scale`: a trajectory is scaled so its largest camera distance from camera 0 is this many scene units,
# what the translation presets move at strength 1 (0.5 × the look-at distance, 1 scene unit).
AUTO_TRAJECTORY_EXTENT = 0.5


def infer_scale_source(dataset: str, depth_unit: str = "m") -> str:
    """The provenance of a clip whose meta does not record one (spec 1.0 shards): from the dataset name; a clip whose
    depth unit is ``arbitrary`` or whose dataset is unknown is ``arbitrary`` (never guessed metric)."""
    if depth_unit == "arbitrary":
        return "arbitrary"
    return DATASET_SCALE_SOURCE.get(dataset, "arbitrary")


# ------------------------------------------------------------------------------------------------ scene unit fallbacks


def mean_point_distance(points: np.ndarray) -> float | None:
    """Mean distance from the origin (the first input camera) of (P,3) canonical points; None when there are none."""
    if len(points) == 0:
        return None
    return float(np.linalg.norm(np.asarray(points, np.float64), axis=-1).mean())


def visible_points(
    points: np.ndarray,  # (P,3) canonical world points
    c2w: np.ndarray,  # (F,4,4) canonical input cameras
    fxfycxcy: np.ndarray,  # (F,4) normalised intrinsics of the (cropped) input frames
) -> np.ndarray:  # (M,3): one row per (frame, point) pair that the frame sees
    """The points in front of each input camera that project inside its frame, once per frame that sees them (the
    sparse counterpart of the depth pixels: a point seen by two frames counts twice, as its pixels would)."""
    pts = np.asarray(points, np.float64)
    out = []
    for P, k in zip(np.asarray(c2w, np.float64), np.asarray(fxfycxcy, np.float64), strict=True):
        R, t = P[:3, :3], P[:3, 3]
        cam = (pts - t) @ R  # Rᵀ (p - t)
        z = cam[:, 2]
        front = z > 1e-9
        u = np.where(front, k[0] * cam[:, 0] / np.where(front, z, 1.0) + k[2], -1.0)
        v = np.where(front, k[1] * cam[:, 1] / np.where(front, z, 1.0) + k[3], -1.0)
        inside = front & (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
        out.append(pts[inside])
    return np.concatenate(out) if out else np.zeros((0, 3))


def camera_mean_estimate(c2w: np.ndarray) -> float | None:
    """`CAMERA_DISTANCE_RATIO` × the mean distance of the input cameras 1.. from camera 0 ((F,4,4) canonical);
    None with one camera or no translation."""
    c = np.asarray(c2w, np.float64)
    if len(c) < 2:
        return None
    d = float(np.linalg.norm(c[1:, :3, 3], axis=-1).mean())
    return CAMERA_DISTANCE_RATIO * d if d > 1e-12 and math.isfinite(d) else None


def fallback_mean(
    c2w: np.ndarray,  # (F,4,4) canonical input cameras
    fxfycxcy: np.ndarray,  # (F,4) normalised intrinsics of the input frames
    tracks: np.ndarray | None = None,  # (F,N,3) canonical tracks of the input frames, NaN where not visible
    visible: np.ndarray | None = None,  # (F,N) bool
    points: np.ndarray | None = None,  # (P,3) canonical sparse points
) -> tuple[float | None, str]:
    """The scene's mean distance from the first camera without depth, and the method that gave it (`SCALE_METHODS`):
    sparse points, then tracks, then the camera heuristic; (None, "none") when nothing gives one."""
    if points is not None and len(points):
        seen = visible_points(points, c2w, fxfycxcy)
        if len(seen):
            return mean_point_distance(seen), "points"
    if tracks is not None and visible is not None and bool(np.asarray(visible).any()):
        return mean_point_distance(np.asarray(tracks)[np.asarray(visible)]), "tracks"
    m = camera_mean_estimate(c2w)
    return (m, "cameras") if m is not None else (None, "none")


def scale_from_mean(mean: float | None) -> float:
    """s (normalised = stored × s) = 1 / mean, or 1 when the mean is not a positive finite number."""
    return 1.0 / mean if mean is not None and math.isfinite(mean) and mean > 1e-8 else 1.0


# ------------------------------------------------------------------------------------------------ trajectories


def trajectory_extent(c2w: Tensor) -> float:  # [F, 4, 4] canonical (camera 0 = identity)
    """The largest distance of a camera from camera 0 (0 for a trajectory that only turns)."""
    if c2w.shape[0] < 2:
        return 0.0
    return float(c2w[:, :3, 3].double().norm(dim=-1).max())


def auto_trajectory_scale(c2w: Tensor) -> float:  # [F, 4, 4] canonical
    """``trajectory.scale=auto``: the factor that makes the trajectory's extent `AUTO_TRAJECTORY_EXTENT` scene units
    (as far as the translation presets move at strength 1). A trajectory that only turns keeps its units (1)."""
    e = trajectory_extent(c2w)
    return AUTO_TRAJECTORY_EXTENT / e if e > 1e-12 and math.isfinite(e) else 1.0


__all__ = [
    "AUTO_TRAJECTORY_EXTENT",
    "CAMERA_DISTANCE_RATIO",
    "DATASET_SCALE_SOURCE",
    "FALLBACK_ERROR",
    "SCALE_METHODS",
    "SCALE_SOURCES",
    "auto_trajectory_scale",
    "camera_mean_estimate",
    "fallback_mean",
    "infer_scale_source",
    "mean_point_distance",
    "points_from_depth",
    "scale_from_mean",
    "trajectory_extent",
    "visible_points",
]


def points_from_depth(
    depth: np.ndarray,  # (F,H,W) z-depth
    valid: np.ndarray,  # (F,H,W) bool
    c2w: np.ndarray,  # (F,4,4)
    fxfycxcy: np.ndarray,  # (F,4)
    count: int,
    rng: np.random.Generator,
) -> np.ndarray:  # (≤count,3) world points
    """``count`` world points unprojected from valid depth pixels drawn uniformly over all frames: an SfM-like sparse
    cloud of a clip that has depth (what `experiments/scale_fallback` and the tests compare the ``points`` fallback
    on)."""
    f, i, j = np.nonzero(valid)
    if len(f) == 0:
        return np.zeros((0, 3))
    pick = rng.choice(len(f), min(count, len(f)), replace=False)
    f, i, j = f[pick], i[pick], j[pick]
    H, W = depth.shape[1:]
    k = np.asarray(fxfycxcy, np.float64)[f]
    z = np.asarray(depth, np.float64)[f, i, j]
    cam = np.stack([((j + 0.5) / W - k[:, 2]) / k[:, 0] * z, ((i + 0.5) / H - k[:, 3]) / k[:, 1] * z, z], -1)
    P = np.asarray(c2w, np.float64)[f]
    return np.einsum("nij,nj->ni", P[:, :3, :3], cam) + P[:, :3, 3]
