"""Wan2.2-Fun-5B-Control-Camera's camera conditioning: RealEstate10K pose rows -> intrinsics and relative cameras ->
Plücker maps [F, 6, H, W], as VideoX-Fun computes them (``process_pose_file`` / ``process_pose_params`` in
``videox_fun/data/utils.py``). The adapter that reads the maps is ``diff4splat.models.fun_camera``.

``fun_plucker``: RealEstate10K rows (normalised fx fy cx cy, 3×4 world-to-camera); every pose file is assumed to come
from a 1280×720 video, and for another aspect ratio the focal length across the cropped axis is rescaled (fx when the
target is narrower than 16:9, fy when wider; cx, cy unchanged); cameras relative to the first (w2c₀ · c2wᵢ in float64,
the first exactly the identity); rays through pixel centres (+0.5) in pixel units, directions normalised before the
rotation; channels (o × d, d), o the camera centre: not normalised in scale. VideoX-Fun's ``ray_condition`` calls
``torch.cross`` without ``dim``, which takes the first axis of size 3 of [1, F, H·W, 3]: for every pose file with F ≠ 3
frames (its assets have 81, RealEstate10K clips more) that is the last axis, o × d, which is what is computed here; with
exactly three frames it would cross along the frame axis, which is not reproduced. Frames: pose row i is video frame i
at inference (the first ``num_frames`` rows); in training, the rows are linearly interpolated over the video's frames
and the sampled frames' rows are used (``fun_pose_rows_for_frames``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

FUN_POSE_SIZE = (720, 1280)  # (H, W) every pose file is assumed to come from (process_pose_file's defaults)


def fun_intrinsics(
    fxfycxcy: Tensor,  # [F, 4] normalised (a pose file's columns 1-4)
    height: int,
    width: int,
    pose_size: tuple[int, int] = FUN_POSE_SIZE,
) -> Tensor:  # [F, 4] fx fy cx cy in pixels, float32
    """The pose file's intrinsics at ``height`` x ``width``, as VideoX-Fun rescales them (module docstring)."""
    k = fxfycxcy.to(torch.float64).clone()
    pose_ratio = pose_size[1] / pose_size[0]
    if pose_ratio > width / height:
        k[:, 0] = height * pose_ratio * k[:, 0] / width
    else:
        k[:, 1] = width / pose_ratio * k[:, 1] / height
    return (k * torch.tensor([width, height, width, height], dtype=torch.float64, device=k.device)).float()


def fun_relative_c2w(c2w: Tensor) -> Tensor:  # [F, 4, 4] (float64 preferred) -> [F, 4, 4] float32
    """Cameras relative to the first: the identity, then w2c₀ · c2wᵢ (computed in float64)."""
    c2w = c2w.to(torch.float64)
    rel = torch.linalg.inv(c2w[0]) @ c2w
    rel[0] = torch.eye(4, dtype=torch.float64, device=c2w.device)
    return rel.float()


def fun_plucker(
    c2w: Tensor,  # [F, 4, 4] OpenCV camera-to-world (e.g. ``read_re10k_txt(...).c2w``)
    fxfycxcy: Tensor,  # [F, 4] normalised intrinsics of the pose file
    height: int,
    width: int,
    pose_size: tuple[int, int] = FUN_POSE_SIZE,
) -> Tensor:  # [F, 6, H, W] float32: (o × d, d)
    """The Fun release's camera conditioning for a pose sequence (VideoX-Fun's ``process_pose_file`` / ``_params``)."""
    if c2w.ndim != 3 or c2w.shape[-2:] != (4, 4) or fxfycxcy.shape != (c2w.shape[0], 4):
        raise ValueError(
            f"fun_plucker: expected c2w [F, 4, 4] and fxfycxcy [F, 4], got {tuple(c2w.shape)} and "
            f"{tuple(fxfycxcy.shape)}"
        )
    k = fun_intrinsics(fxfycxcy, height, width, pose_size)  # [F, 4]
    rel = fun_relative_c2w(c2w)  # [F, 4, 4]
    j, i = torch.meshgrid(
        torch.linspace(0, height - 1, height, dtype=torch.float32, device=c2w.device),
        torch.linspace(0, width - 1, width, dtype=torch.float32, device=c2w.device),
        indexing="ij",
    )
    i, j = i.reshape(1, -1) + 0.5, j.reshape(1, -1) + 0.5  # [1, H·W]
    fx, fy, cx, cy = k.unsqueeze(-1).unbind(1)  # [F, 1] each
    xs, ys = (i - cx) / fx, (j - cy) / fy  # [F, H·W]
    d = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1)
    d = d / d.norm(dim=-1, keepdim=True)
    d = d @ rel[:, :3, :3].transpose(-1, -2)  # [F, H·W, 3]
    o = rel[:, None, :3, 3].expand_as(d)
    rays = torch.cat([torch.linalg.cross(o, d, dim=-1), d], dim=-1)  # [F, H·W, 6]
    return rays.reshape(-1, height, width, 6).permute(0, 3, 1, 2).contiguous()


def fun_pose_rows_for_frames(rows: Tensor, num_video_frames: int, frame_indices: Sequence[int] | Tensor) -> Tensor:
    """Training-time frame alignment (VideoX-Fun's ``ImageVideoControlDataset``): the pose rows [N, 19] (timestamp,
    fx fy cx cy, 2 zeros, 3×4 w2c) linearly interpolated to one row per video frame (end points aligned), then the rows
    of the sampled ``frame_indices``. Returns [len(frame_indices), 19] float64."""
    rows = rows.to(torch.float64)
    per_frame = F.interpolate(
        rows[None, None], size=(num_video_frames, rows.shape[1]), mode="bilinear", align_corners=True
    )[0, 0]
    return per_frame[torch.as_tensor(frame_indices, dtype=torch.long)]


def fun_rows_to_cameras(rows: Tensor) -> tuple[Tensor, Tensor]:  # [F, 19] -> (c2w [F, 4, 4], fxfycxcy [F, 4])
    """RealEstate10K rows -> (c2w = inverse of the row's w2c, float64; normalised intrinsics)."""
    rows = rows.to(torch.float64)
    w2c = torch.eye(4, dtype=torch.float64).repeat(rows.shape[0], 1, 1)
    w2c[:, :3, :] = rows[:, 7:19].reshape(-1, 3, 4)
    return torch.linalg.inv(w2c), rows[:, 1:5]
