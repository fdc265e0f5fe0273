"""Quaternions (**wxyz**, as gsplat) and rotation matrices: batched, differentiable, no scipy.

A unit quaternion ``q = (w, x, y, z)`` acts on vectors as ``v' = q v q*``; ``q`` and ``-q`` are the same rotation.
``quat_multiply(a, b)`` is the Hamilton product ``a ⊗ b``: rotating by ``b`` first, then by ``a``
(``quat_to_matrix(a ⊗ b) = quat_to_matrix(a) @ quat_to_matrix(b)``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "axis_angle_to_matrix",
    "matrix_to_quat",
    "quat_conjugate",
    "quat_multiply",
    "quat_normalize",
    "quat_standardize",
    "quat_to_matrix",
    "quat_wxyz_to_xyzw",
    "quat_xyzw_to_wxyz",
]


def quat_normalize(q: Tensor, eps: float = 1e-12) -> Tensor:  # [..., 4] -> [..., 4]
    """Unit-length quaternion (a zero quaternion stays zero rather than becoming NaN)."""
    return q / q.norm(dim=-1, keepdim=True).clamp(min=eps)


def quat_standardize(q: Tensor) -> Tensor:  # [..., 4] wxyz -> [..., 4] wxyz
    """The sign representative with ``w >= 0`` (``q`` and ``-q`` are the same rotation)."""
    return torch.where(q[..., :1] < 0, -q, q)


def quat_conjugate(q: Tensor) -> Tensor:  # [..., 4] wxyz
    """Conjugate ``(w, -x, -y, -z)``: the inverse rotation of a unit quaternion."""
    return q * q.new_tensor([1.0, -1.0, -1.0, -1.0])


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:  # [..., 4] wxyz, [..., 4] wxyz -> [..., 4] (broadcast)
    """Hamilton product ``a ⊗ b`` (rotate by ``b``, then by ``a``)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def quat_to_matrix(q: Tensor) -> Tensor:  # [..., 4] wxyz (any norm) -> [..., 3, 3]
    """Rotation matrix of a quaternion; the input is normalised first (gsplat does the same)."""
    w, x, y, z = quat_normalize(q).unbind(-1)
    rows = [
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ]
    return torch.stack(rows, -2)


def matrix_to_quat(R: Tensor) -> Tensor:  # [..., 3, 3] -> [..., 4] wxyz, unit, w >= 0
    """Unit quaternion (``w >= 0``) of a rotation matrix.

    Computes the four candidate quaternions (each divided by its largest, well-conditioned component) and picks the
    best-conditioned one per matrix, so it is accurate and differentiable everywhere, including 180° rotations.
    """
    m00, m01, m02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    m10, m11, m12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    m20, m21, m22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    # 4*w^2, 4*x^2, 4*y^2, 4*z^2
    sq = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22],
        dim=-1,
    )
    root = sq.clamp(min=1e-12).sqrt()  # 2*|w|, 2*|x|, 2*|y|, 2*|z|
    candidates = torch.stack(
        [
            torch.stack([sq[..., 0], m21 - m12, m02 - m20, m10 - m01], -1),
            torch.stack([m21 - m12, sq[..., 1], m10 + m01, m02 + m20], -1),
            torch.stack([m02 - m20, m10 + m01, sq[..., 2], m12 + m21], -1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, sq[..., 3]], -1),
        ],
        dim=-2,
    ) / (2 * root[..., :, None])  # [..., 4 candidates, 4]
    best = sq.argmax(dim=-1)
    q = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    return quat_standardize(quat_normalize(q))


def quat_xyzw_to_wxyz(q: Tensor) -> Tensor:  # [..., 4] xyzw (scipy, ROS, TartanAir) -> [..., 4] wxyz
    """Reorder a scalar-last quaternion to scalar-first."""
    return torch.cat([q[..., 3:], q[..., :3]], dim=-1)


def quat_wxyz_to_xyzw(q: Tensor) -> Tensor:  # [..., 4] wxyz -> [..., 4] xyzw
    """Reorder a scalar-first quaternion to scalar-last."""
    return torch.cat([q[..., 1:], q[..., :1]], dim=-1)


def axis_angle_to_matrix(
    axis: Tensor,  # [..., 3] (normalised inside)
    angle: Tensor,  # [...] radians
) -> Tensor:  # [..., 3, 3]
    """Rotation by ``angle`` (right-hand rule) about ``axis``."""
    axis = torch.nn.functional.normalize(axis, dim=-1)
    half = 0.5 * angle
    q = torch.cat([torch.cos(half)[..., None], torch.sin(half)[..., None] * axis], dim=-1)
    return quat_to_matrix(q)
