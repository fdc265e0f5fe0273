"""Cameras for frames that come without them: VGGT's camera head (``facebook/VGGT-1B``'s ``model.pt``).

VGGT predicts, per frame, the W2C pose relative to the first frame and the fields of view (its pose encoding: W2C
translation, quaternion xyzw, FoV h, FoV w), which `diff4splat.models.movies.pose_decoding` turns into OpenCV c2w and
normalised intrinsics (principal point at the centre). The frames are read at VGGT's size (long side 518, sides
rounded to whole 14-pixel patches: a stretch that leaves normalised intrinsics exact, as VGGT's own preprocessing),
so the intrinsics apply to the frames as given. The cameras are then canonicalised like every other input: camera 0
is the identity and the scene is scaled so the mean distance of VGGT's depth points (all frames, in camera 0's frame)
is 1, MoVieS's normalisation (``norm_xyz``), which is the scale the reconstructor was trained at.

MoVieS's checkpoint has no camera head (MoVieS trained without one; its aggregator also expects the cameras as
input), so camera estimation needs VGGT's weights.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from diff4splat.cli import InputError
from diff4splat.geometry.cameras import canonicalize, normalize_scene_scale
from diff4splat.models.movies import pose_decoding
from diff4splat.models.vggt import VGGT, read_state_dict

log = logging.getLogger(__name__)

VGGT_FILE = "facebook/VGGT-1B's model.pt (or model.safetensors)"


def load_camera_estimator(path: str | os.PathLike, flag: str = "--weights") -> VGGT:
    """VGGT with its camera head from a local checkpoint; any other file is an error naming ``flag``, the file and
    the one to provide."""
    from diff4splat.models.released import released_kind

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{flag} {path}: no such file; camera estimation needs {VGGT_FILE}")
    state = read_state_dict(path, "camera estimator")
    if released_kind(state) != "vggt" or "camera_head.token_norm.weight" not in state:
        what = "a MoVieS / LRDM checkpoint, which has no camera head" if released_kind(state) else "not VGGT weights"
        raise InputError(f"{flag} {path}: {what}; camera estimation needs {VGGT_FILE}")
    model = VGGT.from_state_dict(state, str(path))
    if model.config.depth_head is None:
        raise InputError(f"{flag} {path}: VGGT weights without a depth head; camera estimation needs {VGGT_FILE}")
    return model.eval()


def vggt_size(model: VGGT, height: int, width: int) -> tuple[int, int]:
    """VGGT's input size for frames of ``height`` x ``width``: long side = its position grid x patch (518 for
    VGGT-1B), the other side scaled alike, each rounded to whole patches."""
    patch = model.config.encoder.patch_size
    scale = model.config.encoder.pos_grid * patch / max(height, width)
    return tuple(max(1, round(side * scale / patch)) * patch for side in (height, width))


@torch.no_grad()
def estimate_cameras(
    model: VGGT,
    images: Tensor,  # [F, 3, H, W] in [0, 1]
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor]:  # c2w [F, 4, 4] OpenCV, canonical and scale-normalised; fxfycxcy [F, 4]
    """Cameras and normalised intrinsics of ``images`` from VGGT's camera head (see the module docstring)."""
    device = torch.device(device)
    model = model.to(device)
    size = vggt_size(model, *images.shape[-2:])
    frames = F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False, antialias=True)
    frames = frames.clamp(0, 1).to(device)
    with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        out = model(frames[None])
    c2w, fxfycxcy = pose_decoding(out["pose_enc"][0].float())
    if not (torch.isfinite(c2w).all() and torch.isfinite(fxfycxcy).all()):
        raise InputError("camera estimation: VGGT predicted a degenerate camera (a zero field of view)")
    c2w = canonicalize(c2w.double()).float()
    depth = out["depth"][0, ..., 0].float()  # [F, h, w]
    if not (torch.isfinite(depth) & (depth > 0)).any():
        raise InputError("camera estimation: VGGT's depth has no finite positive value; cannot normalise the scale")
    c2w, _, scale = normalize_scene_scale(c2w, depth, fxfycxcy)
    log.info("VGGT cameras for %d frames at %dx%d (scene scale x%.4g)", images.shape[0], *size, float(scale))
    return c2w.cpu(), fxfycxcy.cpu()


__all__ = ["VGGT_FILE", "estimate_cameras", "load_camera_estimator", "vggt_size"]
