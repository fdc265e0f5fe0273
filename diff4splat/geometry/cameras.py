"""Pinhole cameras in the project convention, and conversions from other conventions.

Convention (one place, used everywhere):

- **OpenCV** camera axes: x right, y down, z forward. Poses are stored as camera-to-world (``c2w``) 4x4 float.
- Intrinsics are **normalised** ``fxfycxcy = (fx/W, fy/H, cx/W, cy/H)``; pixel ``(row i, column j)`` has its centre at
  continuous image coordinates ``(u, v) = (j + 0.5, i + 0.5)``, so the normalised centre is ``((j+0.5)/W, (i+0.5)/H)``.
  Resizing the whole image leaves normalised intrinsics unchanged; cropping changes them (``crop_intrinsics``).
- Depth is **z-depth** (distance along the optical axis), not ray length.

All functions take torch tensors with arbitrary leading batch dimensions and are differentiable where it makes sense.
"""

from __future__ import annotations

import functools
import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "Projection",
    "K_to_fxfycxcy",
    "c2w_to_w2c",
    "camera_rays",
    "canonicalize",
    "crop_intrinsics",
    "fov_to_focal",
    "fxfycxcy_to_K",
    "invert_c2w",
    "look_at",
    "ned_to_opencv",
    "normalize_scene_scale",
    "opencv_to_opengl",
    "opengl_to_opencv",
    "pixel_centers",
    "plucker_rays",
    "project_points",
    "pytorch3d_intrinsics_to_fxfycxcy",
    "pytorch3d_to_opencv",
    "resize_K",
    "transform_points",
    "unproject_depth",
    "w2c_to_c2w",
]


# ----------------------------------------------------------------------------------------------------------------------
# Intrinsics
# ----------------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _k_basis(height: int, width: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(A [4, 9], b [9])`` with ``K.flatten() = fxfycxcy @ A + b`` for a (height, width) image. Cached, so built
    as normal tensors even under torch.inference_mode (an inference tensor here would break later backward passes)."""
    with torch.inference_mode(False):
        A = torch.zeros(4, 9, dtype=dtype)
        A[0, 0] = A[2, 2] = width
        A[1, 4] = A[3, 5] = height
        b = torch.zeros(9, dtype=dtype)
        b[8] = 1.0
        return A.to(device), b.to(device)


def fxfycxcy_to_K(
    fxfycxcy: Tensor,  # [..., 4] normalised (fx/W, fy/H, cx/W, cy/H)
    height: int,
    width: int,
) -> Tensor:  # [..., 3, 3] pixel intrinsics
    """Normalised intrinsics -> pixel intrinsic matrix ``K = [[fx*W, 0, cx*W], [0, fy*H, cy*H], [0, 0, 1]]``."""
    # one fused multiply-add (this sits on the render path, where launch count matters)
    A, b = _k_basis(int(height), int(width), fxfycxcy.dtype, fxfycxcy.device)
    flat = torch.addmm(b, fxfycxcy.reshape(-1, 4), A)
    return flat.reshape(*fxfycxcy.shape[:-1], 3, 3)


def K_to_fxfycxcy(
    K: Tensor,  # [..., 3, 3] pixel intrinsics
    height: int,
    width: int,
) -> Tensor:  # [..., 4] normalised (fx/W, fy/H, cx/W, cy/H)
    """Pixel intrinsic matrix -> normalised intrinsics (skew is dropped)."""
    return torch.stack(
        [K[..., 0, 0] / width, K[..., 1, 1] / height, K[..., 0, 2] / width, K[..., 1, 2] / height], dim=-1
    )


def resize_K(
    K: Tensor,  # [..., 3, 3] pixel intrinsics of an image of size (height, width)
    height: int,
    width: int,
    new_height: int,
    new_width: int,
) -> Tensor:  # [..., 3, 3] pixel intrinsics of the resized image
    """Pixel intrinsics after resizing the whole image (corner-aligned: pixel edges map to pixel edges).

    Normalised intrinsics need no such function: resizing leaves ``fxfycxcy`` unchanged.
    """
    sx = new_width / width
    sy = new_height / height
    scale = K.new_tensor([[sx, sx, sx], [sy, sy, sy], [1.0, 1.0, 1.0]])
    return K * scale


def crop_intrinsics(
    fxfycxcy: Tensor,  # [..., 4] normalised for the full (height, width) image
    height: int,
    width: int,
    top: int | float,
    left: int | float,
    crop_h: int | float,
    crop_w: int | float,
) -> Tensor:  # [..., 4] normalised for the crop
    """Normalised intrinsics of the crop ``[top:top+crop_h, left:left+crop_w]`` of a (height, width) image.

    A crop followed by any resize of the crop has the same normalised intrinsics (resizing does not change them).
    """
    fx, fy, cx, cy = fxfycxcy.unbind(-1)
    return torch.stack(
        [
            fx * width / crop_w,
            fy * height / crop_h,
            (cx * width - left) / crop_w,
            (cy * height - top) / crop_h,
        ],
        dim=-1,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Poses
# ----------------------------------------------------------------------------------------------------------------------


def invert_c2w(c2w: Tensor) -> Tensor:  # [..., 4, 4] -> [..., 4, 4]
    """Inverse of a rigid pose, ``c2w -> w2c`` (and ``w2c -> c2w``), via ``[R^T | -R^T t]``.

    Exact for rotation + translation; the input's bottom row (0, 0, 0, 1) is reused as is.
    """
    Rt = c2w[..., :3, :3].transpose(-1, -2)
    top = torch.cat([Rt, Rt @ -c2w[..., :3, 3:]], dim=-1)
    return torch.cat([top, c2w[..., 3:, :]], dim=-2)


c2w_to_w2c = invert_c2w
w2c_to_c2w = invert_c2w


def transform_points(
    T: Tensor,  # [..., 4, 4]
    points: Tensor,  # [..., N, 3]
) -> Tensor:  # [..., N, 3]
    """Apply a 4x4 rigid/affine transform to points (``T @ [p; 1]``)."""
    return points @ T[..., :3, :3].transpose(-1, -2) + T[..., None, :3, 3]


def canonicalize(
    c2w: Tensor,  # [..., F, 4, 4]
    ref_index: int = 0,
) -> Tensor:  # [..., F, 4, 4]
    """Express all poses in the frame of camera ``ref_index``: ``c2w_i <- inv(c2w_ref) @ c2w_i`` (so it is identity).

    Points and tracks in the old world go to the new one with ``transform_points(invert_c2w(c2w[..., ref, :, :]), p)``.
    """
    w2c_ref = invert_c2w(c2w[..., ref_index : ref_index + 1, :, :])
    return w2c_ref @ c2w


def normalize_scene_scale(
    c2w: Tensor,  # [..., F, 4, 4]
    depth: Tensor | None = None,  # [..., F, H, W] z-depth
    fxfycxcy: Tensor | None = None,  # [..., F, 4]
    valid: Tensor | None = None,  # [..., F, H, W] bool
    scale: Tensor | float | None = None,  # [...] given factor; computed from depth when None
    eps: float = 1e-8,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Scale a scene so that the mean distance of the valid depth points to the world origin is 1 (the reference's
    ``norm_xyz``; call it after ``canonicalize`` so the origin is the first camera).

    Returns ``(c2w_scaled, depth_scaled, scale)`` with ``scale`` of shape ``[...]``: normalised = metric * scale, so
    the metric scene is recovered by dividing by ``scale`` (keep it as the sample's ``metric_scale``). Rotations are
    unchanged; translations and depth are multiplied by ``scale``. Frames without valid depth are ignored; a scene
    with no valid point gets ``scale = 1``.
    """
    batch_shape = c2w.shape[:-3]
    if scale is None:
        if depth is None or fxfycxcy is None:
            raise ValueError("normalize_scene_scale: pass `depth` and `fxfycxcy`, or an explicit `scale`")
        points = unproject_depth(depth, c2w, fxfycxcy)  # [..., F, H, W, 3]
        mask = (depth > 0) & torch.isfinite(depth)
        if valid is not None:
            mask = mask & valid.bool()
        dist = torch.where(mask, points.norm(dim=-1), torch.zeros_like(depth))
        dims = (-3, -2, -1)
        count = mask.sum(dims)
        mean = dist.sum(dims) / count.clamp(min=1)
        scale_t = torch.where(count > 0, 1.0 / mean.clamp(min=eps), torch.ones_like(mean))
    else:
        scale_t = torch.as_tensor(scale, dtype=c2w.dtype, device=c2w.device).expand(batch_shape)
    out = c2w.clone()
    out[..., :3, 3] = c2w[..., :3, 3] * scale_t[..., None, None]
    depth_out = None if depth is None else depth * scale_t[..., None, None, None]
    return out, depth_out, scale_t


def look_at(
    eye: Tensor,  # [..., 3] camera centre
    target: Tensor,  # [..., 3] point the camera looks at
    up: Tensor | None = None,  # [..., 3] world "up"; default -y (OpenCV worlds have y down)
) -> Tensor:  # [..., 4, 4] OpenCV c2w
    """OpenCV camera-to-world pose at ``eye`` whose +z axis points at ``target`` and whose -y axis leans to ``up``."""
    if up is None:
        up = eye.new_tensor([0.0, -1.0, 0.0]).expand_as(eye)
    z = torch.nn.functional.normalize(target - eye, dim=-1)
    x = torch.nn.functional.normalize(torch.cross(z, up, dim=-1), dim=-1)
    y = torch.cross(z, x, dim=-1)
    R = torch.stack([x, y, z], dim=-1)
    c2w = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[..., :3, :3] = R
    c2w[..., :3, 3] = eye
    c2w[..., 3, 3] = 1.0
    return c2w


# ----------------------------------------------------------------------------------------------------------------------
# Rays, unprojection and projection
# ----------------------------------------------------------------------------------------------------------------------


def pixel_centers(
    height: int,
    width: int,
    stride: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:  # [H/stride, W/stride, 2] normalised (u/W, v/H)
    """Normalised pixel-centre coordinates of the (height/stride, width/stride) grid.

    With a stride, these are the centres of the stride x stride blocks of the full image, i.e. the pixel centres of
    the downsampled image (whose normalised intrinsics are the same).
    """
    if height % stride or width % stride:
        raise ValueError(f"pixel_centers: height {height} and width {width} must be divisible by stride {stride}")
    h, w = height // stride, width // stride
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def camera_rays(
    fxfycxcy: Tensor,  # [..., 4]
    height: int,
    width: int,
    stride: int = 1,
) -> Tensor:  # [..., H', W', 3] camera-frame directions with z = 1
    """Camera-frame ray directions ``((u - cx)/fx, (v - cy)/fy, 1)`` through pixel centres (not unit length)."""
    uv = pixel_centers(height, width, stride, device=fxfycxcy.device, dtype=fxfycxcy.dtype)
    f = fxfycxcy[..., None, None, :]
    x = (uv[..., 0] - f[..., 2]) / f[..., 0]
    y = (uv[..., 1] - f[..., 3]) / f[..., 1]
    return torch.stack([x, y, torch.ones_like(x)], dim=-1)


def plucker_rays(
    c2w: Tensor,  # [..., 4, 4] e.g. [B, F, 4, 4]
    fxfycxcy: Tensor,  # [..., 4]
    height: int,
    width: int,
    stride: int = 1,
) -> Tensor:  # [..., 6, H/stride, W/stride]
    """Per-pixel Plücker ray maps, channels ``(o x d, d)`` (moment first, then direction: the reference's order).

    ``o`` is the camera centre and ``d`` the unit world-space direction of the ray through each pixel centre of the
    (height/stride, width/stride) grid.
    """
    d_cam = camera_rays(fxfycxcy, height, width, stride)  # [..., h, w, 3]
    # one [h*w, 3] x [3, 3] matmul per camera: a batch of per-pixel 3x3 @ 3x1 products runs as cuBLAS gemv, which
    # costs about 20 ms of a CameraWan training step at 352x640x49 on an H100
    d = d_cam.flatten(-3, -2) @ c2w[..., :3, :3].transpose(-1, -2)
    d = torch.nn.functional.normalize(d.unflatten(-2, d_cam.shape[-3:-1]), dim=-1)
    o = c2w[..., None, None, :3, 3].expand_as(d)
    m = torch.cross(o, d, dim=-1)
    return torch.cat([m, d], dim=-1).movedim(-1, -3)


def unproject_depth(
    depth: Tensor,  # [..., H, W] z-depth
    c2w: Tensor,  # [..., 4, 4]
    fxfycxcy: Tensor,  # [..., 4]
) -> Tensor:  # [..., H, W, 3] world points
    """Lift a z-depth map through the pixel centres to world points (``c2w @ [depth * K^-1 [u, v, 1]; 1]``)."""
    height, width = depth.shape[-2:]
    rays = camera_rays(fxfycxcy, height, width)  # [..., H, W, 3]
    p_cam = (rays * depth[..., None]).flatten(-3, -2)  # [..., H*W, 3]
    # one [H*W, 3] x [3, 3] matmul per camera (a batch of per-pixel 3x3 matmuls is several times slower)
    p_world = p_cam @ c2w[..., :3, :3].transpose(-1, -2)
    return p_world.unflatten(-2, (height, width)) + c2w[..., None, None, :3, 3]


class Projection(NamedTuple):
    """World points projected into a camera."""

    uv: Tensor  # [..., N, 2] continuous pixel coordinates (u right, v down; pixel (i, j) centre at (j+.5, i+.5))
    depth: Tensor  # [..., N] z-depth in the camera
    valid: Tensor  # [..., N] bool: in front of the camera (depth > eps) and inside the image


def project_points(
    points: Tensor,  # [..., N, 3] world points
    c2w: Tensor,  # [..., 4, 4]
    fxfycxcy: Tensor,  # [..., 4]
    height: int,
    width: int,
    eps: float = 1e-6,
) -> Projection:
    """Project world points to pixel coordinates; ``valid`` = depth > eps and 0 <= u < W and 0 <= v < H."""
    p_cam = transform_points(invert_c2w(c2w), points)
    z = p_cam[..., 2]
    z_safe = torch.where(z.abs() > eps, z, torch.full_like(z, eps))
    f = fxfycxcy[..., None, :]
    u = (p_cam[..., 0] / z_safe * f[..., 0] + f[..., 2]) * width
    v = (p_cam[..., 1] / z_safe * f[..., 1] + f[..., 3]) * height
    valid = (z > eps) & (u >= 0) & (u < width) & (v >= 0) & (v < height) & torch.isfinite(u) & torch.isfinite(v)
    return Projection(torch.stack([u, v], dim=-1), z, valid)


# ----------------------------------------------------------------------------------------------------------------------
# Conversions from other conventions
# ----------------------------------------------------------------------------------------------------------------------


def opengl_to_opencv(c2w: Tensor) -> Tensor:  # [..., 4, 4] -> [..., 4, 4]
    """OpenGL/Blender/nerfstudio c2w (x right, y up, z backward) -> OpenCV c2w: negate the camera's y and z axes.

    The world frame is kept. The map is its own inverse (``opencv_to_opengl`` is the same function).
    """
    out = c2w.clone()
    out[..., :3, 1:3] = -c2w[..., :3, 1:3]
    return out


opencv_to_opengl = opengl_to_opencv

# Columns = OpenCV camera axes (x right, y down, z forward) written in NED body axes (x forward, y right, z down).
_NED_FROM_CV = ((0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0))


def ned_to_opencv(
    c2w: Tensor,  # [..., 4, 4] NED body-to-world (TartanAir `pose_*.txt`)
    convert_world: bool = True,
) -> Tensor:  # [..., 4, 4] OpenCV c2w
    """NED (x forward, y right, z down; TartanAir) camera-to-world -> OpenCV camera-to-world.

    The camera axes are always re-labelled (``c2w @ M`` with M mapping OpenCV camera coordinates to NED body ones).
    With ``convert_world`` (default, as ``tartanair_tools``' ``ned2cam``) the world frame is re-labelled the same way
    (``M^T @ c2w @ M``), so a camera with identity NED pose gets identity OpenCV pose.
    """
    M = torch.eye(4, dtype=c2w.dtype, device=c2w.device)
    M[:3, :3] = torch.tensor(_NED_FROM_CV, dtype=c2w.dtype, device=c2w.device)
    out = c2w @ M
    if convert_world:
        out = M.transpose(0, 1) @ out
    return out


def pytorch3d_to_opencv(
    R: Tensor,  # [..., 3, 3] PyTorch3D rotation (row-vector convention: X_cam = X_world @ R + T)
    T: Tensor,  # [..., 3]
) -> Tensor:  # [..., 4, 4] OpenCV c2w
    """PyTorch3D camera (x left, y up, z forward; row vectors; e.g. DynamicReplica ``viewpoint.R,T``) -> OpenCV c2w.

    Negates the first two columns of R and the first two entries of T, then ``c2w = [[R, -R @ T], [0, 1]]``.
    """
    flip = R.new_tensor([-1.0, -1.0, 1.0])
    R_cv = R * flip  # columns 0 and 1
    T_cv = T * flip
    c2w = torch.zeros(*R.shape[:-2], 4, 4, dtype=R.dtype, device=R.device)
    c2w[..., :3, :3] = R_cv
    c2w[..., :3, 3] = -(R_cv @ T_cv[..., None])[..., 0]
    c2w[..., 3, 3] = 1.0
    return c2w


def pytorch3d_intrinsics_to_fxfycxcy(
    focal_length: Tensor,  # [..., 2] NDC focal length (fx, fy)
    principal_point: Tensor,  # [..., 2] NDC principal point (px, py)
    height: int,
    width: int,
    intrinsics_format: Literal["ndc_isotropic", "ndc_norm_image_bounds"] = "ndc_isotropic",
) -> Tensor:  # [..., 4] normalised fxfycxcy
    """PyTorch3D NDC intrinsics -> normalised intrinsics.

    ``ndc_isotropic``: ``s = min(W, H) / 2`` for both axes; ``ndc_norm_image_bounds``: ``s = (W/2, H/2)``. Then
    ``f_px = f_ndc * s`` and ``c_px = (W/2, H/2) - pp_ndc * s``.
    """
    if intrinsics_format == "ndc_isotropic":
        s = focal_length.new_tensor([min(width, height) / 2.0] * 2)
    elif intrinsics_format == "ndc_norm_image_bounds":
        s = focal_length.new_tensor([width / 2.0, height / 2.0])
    else:
        raise ValueError(
            f"pytorch3d_intrinsics_to_fxfycxcy: intrinsics_format {intrinsics_format!r}; expected 'ndc_isotropic' or "
            "'ndc_norm_image_bounds'"
        )
    size = focal_length.new_tensor([float(width), float(height)])
    f_px = focal_length * s
    c_px = size / 2 - principal_point * s
    return torch.cat([f_px / size, c_px / size], dim=-1)


def fov_to_focal(fov: float, size: int | float = 1.0) -> float:
    """Focal length (in the units of ``size``; normalised when size=1) of a field of view ``fov`` in radians."""
    return 0.5 * size / math.tan(0.5 * fov)
