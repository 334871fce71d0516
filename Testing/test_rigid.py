"""Rigid poses: conversions, composition, inverse and the centred parameterisation."""

import math

import pytest
import torch

from FluoroRegistrationLib.geometry import (
    CentredParameterization, compose, euler_from_pose, invert, pose_from_euler, pose_from_rotvec,
    rotation_angle, rotation_from_euler, rotation_from_rotvec, rotvec_from_pose, rotvec_from_rotation,
    transform_points)

G = torch.Generator().manual_seed(0)


def random_rotvecs(n):
    axis = torch.randn(n, 3, generator=G, dtype=torch.float64)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    angle = torch.rand(n, 1, generator=G, dtype=torch.float64) * 3.1
    return axis * angle


def test_rotvec_roundtrip_including_small_and_near_pi_angles():
    w = torch.cat([random_rotvecs(200), torch.tensor([[0.0, 0, 0], [1e-9, 0, 0], [0, 0, 3.1415]], dtype=torch.float64)])
    R = rotation_from_rotvec(w)
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(R), atol=1e-12)
    assert torch.allclose(torch.det(R), torch.ones(len(w), dtype=torch.float64))
    assert torch.allclose(rotvec_from_rotation(R), w, atol=1e-9)


def test_rotvec_matches_known_rotation():
    R = rotation_from_rotvec(torch.tensor([0, 0, math.pi / 2], dtype=torch.float64))
    # +90 deg about z takes x to y
    assert (R @ torch.tensor([1.0, 0, 0], dtype=torch.float64)).tolist() == pytest.approx([0, 1, 0], abs=1e-12)


def test_euler_order_is_zyx_and_roundtrips():
    angles = torch.tensor([0.3, -0.4, 1.1], dtype=torch.float64)
    R = rotation_from_euler(angles)
    Rx = rotation_from_rotvec(torch.tensor([0.3, 0, 0], dtype=torch.float64))
    Ry = rotation_from_rotvec(torch.tensor([0, -0.4, 0], dtype=torch.float64))
    Rz = rotation_from_rotvec(torch.tensor([0, 0, 1.1], dtype=torch.float64))
    assert torch.allclose(R, Rz @ Ry @ Rx, atol=1e-12)
    many = (torch.rand(100, 3, generator=G, dtype=torch.float64) - 0.5) * torch.tensor([6.0, 3.0, 6.0], dtype=torch.float64)
    T = pose_from_euler(many, torch.zeros(100, 3, dtype=torch.float64))
    back, _ = euler_from_pose(T)
    assert torch.allclose(back, many, atol=1e-9)


def test_euler_gimbal_lock_reproduces_the_rotation():
    angles = torch.tensor([0.5, math.pi / 2, 0.2], dtype=torch.float64)
    R = rotation_from_euler(angles)
    back = euler_from_pose(pose_from_euler(angles, torch.zeros(3, dtype=torch.float64)))[0]
    assert torch.allclose(rotation_from_euler(back), R, atol=1e-9)


def test_compose_inverse_and_transform_points():
    A = pose_from_rotvec(random_rotvecs(5), torch.randn(5, 3, generator=G, dtype=torch.float64) * 50)
    B = pose_from_rotvec(random_rotvecs(5), torch.randn(5, 3, generator=G, dtype=torch.float64) * 50)
    eye = torch.eye(4, dtype=torch.float64).expand(5, 4, 4)
    assert torch.allclose(compose(A, invert(A)), eye, atol=1e-12)
    p = torch.randn(5, 7, 3, generator=G, dtype=torch.float64)
    assert torch.allclose(transform_points(compose(A, B), p), transform_points(A, transform_points(B, p)), atol=1e-10)
    w, t = rotvec_from_pose(A)
    assert torch.allclose(pose_from_rotvec(w, t), A, atol=1e-12)


def test_rotation_angle():
    w = random_rotvecs(50)
    assert torch.allclose(rotation_angle(rotation_from_rotvec(w)), w.norm(dim=-1), atol=1e-9)


def test_centred_parameterisation_rotates_about_the_centre_and_inverts():
    T0 = pose_from_rotvec(torch.tensor([0.2, -0.1, 0.3], dtype=torch.float64), torch.tensor([5.0, 3, 800], dtype=torch.float64))
    c = torch.tensor([10.0, -20.0, 30.0], dtype=torch.float64)
    par = CentredParameterization(c, T0)
    assert torch.allclose(par.pose(torch.zeros(6, dtype=torch.float64)), T0, atol=1e-12)
    x = torch.tensor([0.1, -0.2, 0.05, 0.0, 0.0, 0.0], dtype=torch.float64)
    T = par.pose(x)
    # a pure rotation leaves the centre where it was
    assert torch.allclose(transform_points(T, c[None]), transform_points(T0, c[None]), atol=1e-10)
    x = torch.tensor([0.0, 0.0, 0.0, 1.0, -2.0, 3.0], dtype=torch.float64)
    moved = transform_points(par.pose(x), c[None]) - transform_points(T0, c[None])
    assert moved[0].tolist() == pytest.approx([1.0, -2.0, 3.0])
    xs = torch.randn(20, 6, generator=G, dtype=torch.float64) * torch.tensor([0.3] * 3 + [10.0] * 3, dtype=torch.float64)
    assert torch.allclose(par.params(par.pose(xs)), xs, atol=1e-9)


def test_pose_functions_are_differentiable_at_identity():
    x = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    par = CentredParameterization(torch.tensor([1.0, 2, 3], dtype=torch.float64),
                                  pose_from_rotvec(torch.zeros(3, dtype=torch.float64), torch.tensor([0, 0, 700.0], dtype=torch.float64)))
    assert torch.autograd.gradcheck(par.pose, (x,))


def test_depth_along_the_ray_keeps_the_centre_on_its_projection_ray():
    T0 = pose_from_rotvec(torch.tensor([0.1, 0.2, -0.3], dtype=torch.float64), torch.tensor([40.0, -25, 700], dtype=torch.float64))
    c = torch.tensor([10.0, -20.0, 30.0], dtype=torch.float64)
    par = CentredParameterization(c, T0, depth_along_ray=True)
    c0 = transform_points(T0, c[None])[0]
    c1 = transform_points(par.pose(torch.tensor([0, 0, 0, 0, 0, 7.0], dtype=torch.float64)), c[None])[0]
    assert float(c1[2] - c0[2]) == pytest.approx(7.0)
    # same ray from the source: c1 is a multiple of c0
    assert torch.allclose(c1 / c1[2], c0 / c0[2], atol=1e-12)
    # in-plane translations stay plain camera-axis moves
    c2 = transform_points(par.pose(torch.tensor([0, 0, 0, 1.5, -2.0, 0], dtype=torch.float64)), c[None])[0]
    assert (c2 - c0).tolist() == pytest.approx([1.5, -2.0, 0.0])
    xs = torch.randn(20, 6, generator=G, dtype=torch.float64) * torch.tensor([0.3] * 3 + [10.0] * 3, dtype=torch.float64)
    assert torch.allclose(par.params(par.pose(xs)), xs, atol=1e-9)
