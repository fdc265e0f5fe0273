"""Quaternion / rotation-matrix conversions: round trips, the product, and gradients."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diff4splat.geometry.rotations import (
    axis_angle_to_matrix,
    matrix_to_quat,
    quat_conjugate,
    quat_multiply,
    quat_normalize,
    quat_standardize,
    quat_to_matrix,
    quat_wxyz_to_xyzw,
    quat_xyzw_to_wxyz,
)

finite = st.floats(-10, 10, allow_nan=False, width=64)
quat4 = st.lists(finite, min_size=4, max_size=4).filter(lambda q: sum(x * x for x in q) > 1e-3)


@settings(max_examples=200, deadline=None)
@given(quat4)
def test_quat_matrix_round_trip(q):
    q = quat_standardize(quat_normalize(torch.tensor(q, dtype=torch.float64)))
    R = quat_to_matrix(q)
    torch.testing.assert_close(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-12, rtol=0)
    assert torch.linalg.det(R).item() > 0.999999
    back = matrix_to_quat(R)
    # q and -q are the same rotation; standardised both have w >= 0 (ties at w = 0 compare the matrices)
    assert torch.allclose(back, q, atol=1e-9) or torch.allclose(quat_to_matrix(back), R, atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(quat4, quat4)
def test_product_composes_rotations(a, b):
    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    ab = quat_multiply(quat_normalize(a), quat_normalize(b))
    torch.testing.assert_close(quat_to_matrix(ab), quat_to_matrix(a) @ quat_to_matrix(b), atol=1e-12, rtol=0)
    ident = quat_multiply(quat_normalize(a), quat_conjugate(quat_normalize(a)))
    torch.testing.assert_close(ident, torch.tensor([1.0, 0, 0, 0], dtype=torch.float64), atol=1e-12, rtol=0)


def test_batched_and_known_values():
    q = torch.randn(5, 7, 4, dtype=torch.float64)
    assert quat_to_matrix(q).shape == (5, 7, 3, 3)
    # 90° about z maps x to y
    R = axis_angle_to_matrix(torch.tensor([0.0, 0.0, 1.0]), torch.tensor(torch.pi / 2))
    torch.testing.assert_close(R @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0)
    # 180° rotations (trace -1) are recovered
    for axis in torch.eye(3, dtype=torch.float64):
        R = axis_angle_to_matrix(axis, torch.tensor(torch.pi, dtype=torch.float64))
        torch.testing.assert_close(quat_to_matrix(matrix_to_quat(R)), R, atol=1e-12, rtol=0)
    xyzw = torch.tensor([0.1, 0.2, 0.3, 0.9])
    assert torch.equal(quat_xyzw_to_wxyz(xyzw), torch.tensor([0.9, 0.1, 0.2, 0.3]))
    assert torch.equal(quat_wxyz_to_xyzw(quat_xyzw_to_wxyz(xyzw)), xyzw)


def test_gradients():
    q = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(quat_to_matrix, (q,))
    R = quat_to_matrix(torch.randn(6, 4, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(matrix_to_quat, (R,))
    b = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(quat_multiply, (q, b))
