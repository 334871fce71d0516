"""Pose errors as docs/CONVENTIONS.md defines them (rotation, translation split in/out of plane, mTRE, mPD).

For an estimate ``T_est`` and ground truth ``T_gt`` (both ``camera_from_volume``) of one bone with
centroid ``c`` and sample points ``P`` (volume frame, mm):

- rotation error: angle of ``R_est R_gt^T`` (degrees);
- translation error: ``|T_est c - T_gt c|`` (mm), split into in-plane (camera x, y) and
  out-of-plane (camera z, along the principal ray) components;
- mTRE: mean over P of ``|T_est p - T_gt p|`` (mm);
- mPD: mean distance between the projections of ``T_est p`` and ``T_gt p``, on the detector (mm).
"""

from __future__ import annotations

import math

import torch

from ..geometry import Camera, rotation_angle, transform_points


def pose_errors(T_est: torch.Tensor, T_gt: torch.Tensor, centroid: torch.Tensor, points: torch.Tensor,
                camera: Camera | None = None) -> dict[str, float]:
    """Errors of one pose estimate; all (4, 4) float64 poses, centroid (3,), points (N, 3)."""
    T_est, T_gt = T_est.to(torch.float64), T_gt.to(torch.float64)
    c = centroid.to(torch.float64)[None]
    d = (transform_points(T_est, c) - transform_points(T_gt, c))[0]
    p_est = transform_points(T_est, points.to(torch.float64))
    p_gt = transform_points(T_gt, points.to(torch.float64))
    out = {
        "rotation_deg": math.degrees(float(rotation_angle(T_est[:3, :3] @ T_gt[:3, :3].T))),
        "translation_mm": float(d.norm()),
        "in_plane_mm": float(d[:2].norm()),
        "out_of_plane_mm": float(d[2].abs()),
        "mtre_mm": float((p_est - p_gt).norm(dim=-1).mean()),
    }
    if camera is not None:
        pixel = torch.tensor([camera.col_spacing_mm, camera.row_spacing_mm], dtype=torch.float64)
        out["mpd_mm"] = float(((camera.project(p_est) - camera.project(p_gt)) * pixel).norm(dim=-1).mean())
    return out


def calibration_floor(T_gt: torch.Tensor, centroid: torch.Tensor, points: torch.Tensor, true_camera: Camera,
                      nominal_camera: Camera) -> tuple[torch.Tensor, dict[str, float]]:
    """What calibration error alone costs: the pose a perfect registration would return.

    A frame taken by ``true_camera`` but registered with ``nominal_camera`` (the calibration a user
    has) is best explained by the rigid pose whose projections through the nominal camera match the
    true projections of the bone's points (least squares on the detector, pixels). Its errors
    against the truth are a floor no single-view registration with that calibration can beat: a
    source-to-detector distance off by d mm moves the bone along the beam by about d x depth / sdd.

    Args:
        T_gt: (4, 4) true ``camera_from_volume``; centroid (3,), points (N, 3) of the bone (volume mm).
    Returns:
        (the best pose (4, 4) under the nominal camera, its :func:`pose_errors` against ``T_gt``).
    """
    import numpy as np
    from scipy.optimize import least_squares

    from ..geometry import CentredParameterization

    T_gt = T_gt.to(torch.float64)
    pts = points.to(torch.float64)
    target = true_camera.project(transform_points(T_gt, pts))
    par = CentredParameterization(centroid.to(torch.float64), T_gt)

    def residual(x):
        T = par.pose(torch.from_numpy(x))
        return (nominal_camera.project(transform_points(T, pts)) - target).flatten().numpy()

    fit = least_squares(residual, np.zeros(6), x_scale=np.array([0.01] * 3 + [1.0] * 3), xtol=1e-12, ftol=1e-12)
    best = par.pose(torch.from_numpy(fit.x))
    return best, pose_errors(best, T_gt, centroid, pts, nominal_camera)
