"""Analytic phantoms for renderer tests: volumes whose line integrals can be written down.

All in float64. Volume frame: index (i, j, k) -> LPS mm by ``volume_from_index``; arrays (Z, Y, X).
"""

from __future__ import annotations

import numpy as np
import torch

from FluoroRegistrationLib.geometry import Camera
from FluoroRegistrationLib.volume import RenderVolume


def centred_affine(shape_zyx, spacing=1.0) -> torch.Tensor:
    """(4, 4) affine putting the grid's centre at the volume-frame origin."""
    D, H, W = shape_zyx
    A = torch.eye(4, dtype=torch.float64)
    A[:3, :3] *= spacing
    A[:3, 3] = -spacing * torch.tensor([(W - 1) / 2, (H - 1) / 2, (D - 1) / 2], dtype=torch.float64)
    return A


def ball_volume(n: int, radius_vox: float, mu: float = 0.02, gl_points: int = 12) -> RenderVolume:
    """A uniform ball at the grid centre with exact partial-volume voxel values.

    Boundary voxels hold the fraction of the voxel inside the ball, integrated with Gauss-Legendre
    quadrature over (x, y) of the z-extent inside the ball (error ~1e-5 of a voxel).
    """
    c = (n - 1) / 2
    g = np.arange(n) - c
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    near = np.sqrt(np.maximum(np.abs(x) - 0.5, 0) ** 2 + np.maximum(np.abs(y) - 0.5, 0) ** 2
                   + np.maximum(np.abs(z) - 0.5, 0) ** 2)
    far = np.sqrt((np.abs(x) + 0.5) ** 2 + (np.abs(y) + 0.5) ** 2 + (np.abs(z) + 0.5) ** 2)
    frac = (far <= radius_vox).astype(np.float64)
    edge = (near < radius_vox) & (far > radius_vox)
    nodes, weights = np.polynomial.legendre.leggauss(gl_points)
    nodes, weights = nodes / 2, weights / 2  # on [-1/2, 1/2]
    ex, ey, ez = x[edge], y[edge], z[edge]
    px = ex[:, None, None] + nodes[None, :, None]
    py = ey[:, None, None] + nodes[None, None, :]
    half = np.sqrt(np.maximum(radius_vox ** 2 - px ** 2 - py ** 2, 0.0))
    z0, z1 = (ez - 0.5)[:, None, None], (ez + 0.5)[:, None, None]
    length = np.clip(np.minimum(z1, half) - np.maximum(z0, -half), 0.0, None)
    frac[edge] = (length * weights[None, :, None] * weights[None, None, :]).sum((1, 2))
    grid = torch.from_numpy(np.pad(frac * mu, 1))
    return RenderVolume(grid, centred_affine(grid.shape), "ball")


def ball_chords(camera: Camera, centre_camera: torch.Tensor, radius_mm: float, mu: float = 0.02):
    """(H, W) analytic integrals mu * chord and (H, W) impact parameters (mm) of each pixel ray."""
    uv = camera.pixel_uv(torch.float64)
    d = camera.directions(uv)
    d = d / d.norm(dim=-1, keepdim=True)
    along = d @ centre_camera
    b2 = (centre_camera @ centre_camera) - along ** 2
    chord = 2 * torch.sqrt((radius_mm ** 2 - b2).clamp_min(0))
    return mu * chord, b2.clamp_min(0).sqrt()


def box_chords(camera: Camera, camera_from_volume: torch.Tensor, lo, hi, mu: float, margin: float,
               ramp: float = 0.0):
    """Analytic integrals through an axis-aligned box [lo, hi] (volume frame, mm) at one pose.

    Returns (H, W) integrals and an (H, W) mask of rays "away from the edges": their entry and exit
    points lie at least ``margin`` mm from every edge of the box, and also of the boxes grown and
    shrunk by ``ramp`` mm (the zone where an interpolated volume ramps from inside to outside).
    """
    if ramp > 0:
        chord, clean = box_chords(camera, camera_from_volume, lo, hi, mu, margin)
        for delta in (-ramp, ramp):
            lo_d = torch.as_tensor(lo, dtype=torch.float64) - delta
            hi_d = torch.as_tensor(hi, dtype=torch.float64) + delta
            clean &= box_chords(camera, camera_from_volume, lo_d, hi_d, mu, margin)[1]
        return chord, clean
    lo = torch.as_tensor(lo, dtype=torch.float64)
    hi = torch.as_tensor(hi, dtype=torch.float64)
    R, t = camera_from_volume[:3, :3], camera_from_volume[:3, 3]
    d = camera.directions(camera.pixel_uv(torch.float64))  # (H, W, 3), camera frame
    source = R.T @ (-t)
    dv = d @ R  # directions in the volume frame
    with np.errstate(divide="ignore"):
        t1, t2 = (lo - source) / dv, (hi - source) / dv
    t_near = torch.minimum(t1, t2).amax(-1)
    t_far = torch.maximum(t1, t2).amin(-1)
    hit = t_far > t_near
    chord = (t_far - t_near).clamp_min(0) * d.norm(dim=-1)
    clean = hit.clone()
    for tt in (t_near, t_far):
        p = source + tt[..., None] * dv
        # distance of the point from the box's edges: along each face, the two other coordinates
        inside = torch.minimum(p - lo, hi - p)  # (H, W, 3), ~0 along the face's own axis
        two_smallest = inside.sort(-1).values[..., 1]  # the smallest distance within the face
        clean &= two_smallest >= margin
    return mu * chord, clean


def blob_volume(n: int, centre_index, sigma_vox: float = 0.8, mu: float = 1.0) -> RenderVolume:
    """A small dense Gaussian blob at a given (i, j, k) index position."""
    g = torch.arange(n, dtype=torch.float64)
    z, y, x = torch.meshgrid(g, g, g, indexing="ij")
    ci, cj, ck = centre_index
    r2 = (x - ci) ** 2 + (y - cj) ** 2 + (z - ck) ** 2
    grid = mu * torch.exp(-r2 / (2 * sigma_vox ** 2))
    grid = torch.nn.functional.pad(grid, (1, 1, 1, 1, 1, 1))
    A = centred_affine(grid.shape)
    return RenderVolume(grid, A, "blob")
