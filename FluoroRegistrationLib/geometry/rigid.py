"""Rigid poses as 4x4 ``camera_from_volume`` matrices (docs/CONVENTIONS.md, "Poses").

``p_cam = R @ p_vol + t``; matrices act on column vectors; radians inside the code.
All functions are batched over leading dimensions and differentiable.

Euler angles: the order is named ``"ZYX"`` and means ``R = Rz(rz) @ Ry(ry) @ Rx(rx)`` with angles
``(rx, ry, rz)`` about the fixed axes of the frame the rotation maps into (rotate about x first,
then y, then z).
"""

from __future__ import annotations

import torch


def _skew(w: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) cross-product matrices."""
    zero = torch.zeros_like(w[..., 0])
    wx, wy, wz = w.unbind(-1)
    return torch.stack([
        torch.stack([zero, -wz, wy], -1),
        torch.stack([wz, zero, -wx], -1),
        torch.stack([-wy, wx, zero], -1),
    ], -2)


def rotation_from_rotvec(rotvec: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula: rotation vectors (..., 3) in radians -> rotation matrices (..., 3, 3).

    Smooth at zero (Taylor series there), so gradients at the identity are exact.
    """
    theta2 = (rotvec * rotvec).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    small = theta2 < 1e-8
    theta2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = theta2_safe.sqrt()
    a = torch.where(small, 1 - theta2 / 6 + theta2 * theta2 / 120, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24 + theta2 * theta2 / 720, (1 - torch.cos(theta)) / theta2_safe)
    k = _skew(rotvec)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def _quaternion_from_rotation(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> unit quaternions (..., 4) = (w, x, y, z) with w >= 0 (Shepperd's method)."""
    m = R
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cands = torch.stack([
        torch.stack([1 + trace, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2], m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], m[..., 1, 2] + m[..., 2, 1]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1),
    ], -2)  # (..., 4 candidates, 4)
    diag = torch.stack([trace, m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], -1)
    best = diag.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def rotvec_from_rotation(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) -> rotation vectors (..., 3), angle in [0, pi]."""
    q = _quaternion_from_rotation(R)
    w, v = q[..., :1], q[..., 1:]
    s2 = (v * v).sum(-1, keepdim=True)
    small = s2 < 1e-12
    s = torch.where(small, torch.ones_like(s2), s2).sqrt()
    angle = 2 * torch.atan2(s, w)
    scale = torch.where(small, 2 / w.clamp_min(1e-12) * (1 - s2 / (3 * w * w).clamp_min(1e-12)), angle / s)
    return v * scale


def rotation_angle(R: torch.Tensor) -> torch.Tensor:
    """Angle (radians, in [0, pi]) of rotation matrices (..., 3, 3)."""
    return rotvec_from_rotation(R).norm(dim=-1)


def _axis_rotation(angle: torch.Tensor, axis: int) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    if axis == 0:
        rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
    elif axis == 1:
        rows = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
    else:
        rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def rotation_from_euler(angles: torch.Tensor) -> torch.Tensor:
    """Euler angles (..., 3) = (rx, ry, rz) radians, order "ZYX": R = Rz @ Ry @ Rx."""
    return _axis_rotation(angles[..., 2], 2) @ _axis_rotation(angles[..., 1], 1) @ _axis_rotation(angles[..., 0], 0)


def euler_from_rotation(R: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rotation_from_euler`: (..., 3, 3) -> (rx, ry, rz), ry in [-pi/2, pi/2].

    At gimbal lock (|ry| = pi/2) only rx -/+ rz is defined; rz is then set to 0.
    """
    sy = (-R[..., 2, 0]).clamp(-1.0, 1.0)
    ry = torch.asin(sy)
    cos_ry = torch.sqrt(R[..., 0, 0] ** 2 + R[..., 1, 0] ** 2)
    locked = cos_ry < 1e-9
    rx = torch.where(locked, torch.atan2(-R[..., 1, 2], R[..., 1, 1]), torch.atan2(R[..., 2, 1], R[..., 2, 2]))
    rz = torch.where(locked, torch.zeros_like(ry), torch.atan2(R[..., 1, 0], R[..., 0, 0]))
    return torch.stack([rx, ry, rz], -1)


def make_pose(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation and (..., 3) translation -> (..., 4, 4) homogeneous matrix."""
    top = torch.cat([R, t[..., :, None]], -1)
    bottom = torch.zeros(*top.shape[:-2], 1, 4, dtype=R.dtype, device=R.device)
    bottom[..., 0, 3] = 1
    return torch.cat([top, bottom], -2)


def pose_from_rotvec(rotvec: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """(..., 3) rotation vector (rad) and (..., 3) translation (mm) -> (..., 4, 4)."""
    return make_pose(rotation_from_rotvec(rotvec), translation)


def rotvec_from_pose(T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 4, 4) -> rotation vector (..., 3) and translation (..., 3)."""
    return rotvec_from_rotation(T[..., :3, :3]), T[..., :3, 3]


def pose_from_euler(angles: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """(..., 3) Euler angles ("ZYX", rad) and (..., 3) translation -> (..., 4, 4)."""
    return make_pose(rotation_from_euler(angles), translation)


def euler_from_pose(T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 4, 4) -> Euler angles (..., 3) ("ZYX") and translation (..., 3)."""
    return euler_from_rotation(T[..., :3, :3]), T[..., :3, 3]


def compose(a_from_b: torch.Tensor, b_from_c: torch.Tensor) -> torch.Tensor:
    """a_from_c = a_from_b @ b_from_c for (..., 4, 4) rigid transforms."""
    return a_from_b @ b_from_c


def invert(a_from_b: torch.Tensor) -> torch.Tensor:
    """Exact rigid inverse (..., 4, 4): b_from_a = [R^T | -R^T t]."""
    Rt = a_from_b[..., :3, :3].transpose(-1, -2)
    return make_pose(Rt, -(Rt @ a_from_b[..., :3, 3:]).squeeze(-1))


def transform_points(a_from_b: torch.Tensor, points_b: torch.Tensor) -> torch.Tensor:
    """Apply (..., 4, 4) to points (..., N, 3) -> (..., N, 3)."""
    return points_b @ a_from_b[..., :3, :3].transpose(-1, -2) + a_from_b[..., None, :3, 3]


class CentredParameterization:
    """Six optimiser parameters about a bone's centre, decoupling rotation from translation.

    ``x = (wx, wy, wz, dx, dy, dz)`` (radians, mm). The pose is the reference pose ``T0`` rotated by
    ``exp([w])`` about the bone's centre as seen in the camera frame, then translated by ``d`` in the
    camera frame:

        R(x) = exp([w]) @ R0,      T(x) @ c = T0 @ c + d

    so ``x = 0`` gives ``T0``, ``w`` turns the bone about camera axes through its own centre (the centre
    does not move), and ``d`` moves the centre in mm along camera x (columns), y (rows), z (depth).

    With ``depth_along_ray=True`` the third translation moves the centre along the ray from the source
    through the reference centre ``c0`` instead of along camera z: ``d = (dx + dz c0x / c0z,
    dy + dz c0y / c0z, dz)``, so ``dz`` changes depth (by ``dz`` mm) without moving the centre's
    projection. In one view depth is the weakly seen parameter; this keeps it from trading off against
    the well-seen in-plane translation when the bone is off the principal ray.

    Args:
        centre_volume: (3,) bone centre in the volume frame (mm), e.g. its centroid.
        reference: (4, 4) or (B, 4, 4) reference pose ``camera_from_volume``.
        depth_along_ray: see above.
    """

    def __init__(self, centre_volume: torch.Tensor, reference: torch.Tensor, depth_along_ray: bool = False):
        self.centre_volume = centre_volume
        self.reference = reference
        c0 = (reference[..., :3, :3] @ centre_volume.to(reference)[:, None]).squeeze(-1) + reference[..., :3, 3]
        # translation map d = A @ x[3:], (..., 3, 3)
        A = torch.eye(3, dtype=reference.dtype, device=reference.device).expand(*c0.shape[:-1], 3, 3).clone()
        if depth_along_ray:
            A[..., 0, 2] = c0[..., 0] / c0[..., 2]
            A[..., 1, 2] = c0[..., 1] / c0[..., 2]
        self._A = A

    def pose(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 6) parameters -> (..., 4, 4) ``camera_from_volume``."""
        R0, t0 = self.reference[..., :3, :3], self.reference[..., :3, 3]
        c = self.centre_volume.to(x)
        R = rotation_from_rotvec(x[..., :3]) @ R0
        centre_cam = (R0 @ c) + t0 + (self._A.to(x) @ x[..., 3:, None]).squeeze(-1)
        t = centre_cam - (R @ c[:, None]).squeeze(-1)
        return make_pose(R, t)

    def params(self, T: torch.Tensor) -> torch.Tensor:
        """(..., 4, 4) pose -> (..., 6) parameters (the inverse of :meth:`pose`)."""
        R0, t0 = self.reference[..., :3, :3], self.reference[..., :3, 3]
        c = self.centre_volume.to(T)
        w = rotvec_from_rotation(T[..., :3, :3] @ R0.transpose(-1, -2))
        d = (T[..., :3, :3] @ c) + T[..., :3, 3] - ((R0 @ c) + t0)
        d = torch.linalg.solve(self._A.to(T).expand(*d.shape[:-1], 3, 3), d[..., None]).squeeze(-1)
        return torch.cat([w, d], -1)
