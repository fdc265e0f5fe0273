"""Write a tiny Stereo4D clip in its released layout from `tests.native.scene` ground truth.

``<root>/<split>/npz/<uid>.npz`` with the released keys (ragged world tracks: one entry per frame a track is visible
in, tracks concatenated in order; float32 poses and coordinates; µs timestamps) and the rectified left video
``<root>/<split>/processed/<uid>/<uid>-left_rectified.mp4`` (H.264, as ``rectify.py`` writes it). The scene must use
the Stereo4D camera (square frames, 60° horizontal FOV, centred principal point): `stereo4d_scene` picks a seed of
`make_scene` whose principal point is within 0.02 px of the centre.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.spec import encode_video
from tests.native.scene import GroundTruth, make_scene

CENTRED_SEED = 2182  # make_scene's principal point noise is (-1e-4, 3e-4) for this seed
BEHIND_TRACK = np.array([0.0, 0.0, -5.0])  # an extra track behind every camera: present in the npz, never visible


def stereo4d_scene(num_frames: int = 8, size: int = 64, num_tracks: int = 60) -> GroundTruth:
    return make_scene(
        num_frames=num_frames,
        height=size,
        width=size,
        fov_x_deg=60.0,
        num_tracks=num_tracks,
        seed=CENTRED_SEED,
        fps=30.0,
    )


def ragged_tracks(gt: GroundTruth) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The released ragged encoding of the visible ground-truth tracks plus `BEHIND_TRACK` in every frame."""
    F, N = gt.tracks_visible.shape
    lengths, indices, coords = [], [], []
    for n in range(N):
        frames = np.nonzero(gt.tracks_visible[:, n])[0]
        lengths.append(len(frames))
        indices.append(frames)
        coords.append(gt.tracks_world[frames, n])
    lengths.append(F)
    indices.append(np.arange(F))
    coords.append(np.repeat(BEHIND_TRACK[None], F, 0))
    return np.array(lengths, np.int32), np.concatenate(indices).astype(np.int32), np.concatenate(coords)


def write_stereo4d(
    root: Path,
    gt: GroundTruth,
    split: str = "train",
    uid: str = "abcDEF123_4004000",
    video_frames: np.ndarray | None = None,
) -> tuple[Path, Path]:
    """Write the npz and the rectified video of ``uid``; return (npz path, video path)."""
    F = gt.shape[0]
    lengths, indices, coords = ragged_tracks(gt)
    npz = Path(root) / split / "npz" / f"{uid}.npz"
    video = Path(root) / split / "processed" / uid / f"{uid}-left_rectified.mp4"
    npz.parent.mkdir(parents=True, exist_ok=True)
    video.parent.mkdir(parents=True, exist_ok=True)
    first = int(uid.split("_")[-1])
    np.savez(
        npz,
        name=np.array(uid),
        video_id=np.array(uid.split("_")[0]),
        timestamps=(first + np.round(np.arange(F) * 1e6 / 30)).astype(np.int64),
        camera2world=gt.c2w[:, :3, :].astype(np.float32),
        track_lengths=lengths,
        track_indices=indices,
        track_coordinates=coords.astype(np.float32),
        rectified2rig=np.tile(np.eye(3, dtype=np.float32), (2, 1, 1)),
        fov_bounds=np.array([-90.0, 90.0, -90.0, 90.0], np.float32),
    )
    video.write_bytes(encode_video(gt.rgb if video_frames is None else video_frames, fps=30.0, crf=12))
    return npz, video
