"""A closed mesh as an anti-aliased occupancy grid: the fraction of each voxel inside the solid.

Registration draws a component with the volume renderer from this grid: trilinear samples of a
partial-volume occupancy move smoothly with the pose, so the silhouette's edge (what a frame shows of
metal) carries a gradient, while the exact ray-mesh renderer's silhouette is a step at pixel centres
(its gradient flows through crossing depths only). The exact renderer stays the reference
(:mod:`..render.mesh`), and the simulator's.

How: rays along +z through ``supersample`` x ``supersample`` sub-columns of every voxel column cross
the faces (orthographic rasterisation, the inside test by 2D edge functions); each crossing adds
+1 (entering, the face's normal against the ray) or -1 (leaving) to the occupancy from its depth on,
exactly within the voxel it falls in; a cumulative sum along z turns the crossings into each voxel's
inside fraction, averaged over the sub-columns. Exact along z, sampled in x and y.
"""

from __future__ import annotations

import math

import torch

from ..errors import FluoroRegError
from .mesh import ImplantMesh

_JITTER = 1e-3 * math.sqrt(2)  # sub-column offset (voxels): keeps rays off mesh vertices and edges on round grids
MAX_PAIRS = 4_000_000  # face-column pairs tested at once


def occupancy_grid(mesh: ImplantMesh, voxel_mm: float, supersample: int = 4, border: int = 2):
    """(occupancy, volume_from_index): the fraction of each voxel inside ``mesh``.

    Args:
        mesh: closed, outward-wound surface (mm).
        voxel_mm: the grid's spacing (mm), the same on every axis.
        supersample: sub-columns per voxel side in x and y (z is exact).
        border: empty voxels around the solid's bounding box.
    Returns:
        occupancy (D, H, W) float32 in [0, 1], indexed ``[k, j, i]``; volume_from_index (4, 4)
        float64, index (i, j, k) -> mesh frame (mm).
    """
    if not voxel_mm > 0 or supersample < 1:
        raise FluoroRegError(f"occupancy grid needs voxel_mm > 0 and supersample >= 1 (got {voxel_mm}, {supersample})")
    v = mesh.vertices.to(torch.float64).cpu()
    lo = v.min(0).values - border * voxel_mm
    W, H, D = (torch.ceil((v.max(0).values - lo) / voxel_mm).long() + border + 1).tolist()
    if W * H * D > 200_000_000:
        raise FluoroRegError(f"an occupancy grid of {W}x{H}x{D} voxels for {mesh.name} is too large; use a coarser voxel_mm")
    grid = v - lo  # vertices in grid mm (voxel i's centre at i * voxel_mm)
    steps = torch.zeros(H, W, D + 1, dtype=torch.float64)  # +-1 per crossing, spread over two voxels
    s = supersample
    faces = mesh.faces.cpu()
    for start in range(0, len(faces), max(1, MAX_PAIRS // (4 * s * s))):
        _add_crossings(steps, grid[faces[start:start + MAX_PAIRS // (4 * s * s)]], voxel_mm, s)
    occupancy = torch.cumsum(steps, dim=2)[..., :D] / (s * s)
    occupancy = occupancy.clamp(0.0, 1.0).permute(2, 0, 1).contiguous().to(torch.float32)  # (D, H, W)
    volume_from_index = torch.eye(4, dtype=torch.float64)
    volume_from_index[:3, :3] *= voxel_mm
    volume_from_index[:3, 3] = lo
    return occupancy, volume_from_index


def _add_crossings(steps: torch.Tensor, tri: torch.Tensor, h: float, s: int) -> None:
    """Add the crossings of the sub-column rays with faces ``tri`` (F, 3, 3) (grid mm) to ``steps``
    (H, W, D + 1): a crossing at depth z adds ``sign * (1 - t)`` to voxel m and ``sign * t`` to
    voxel m + 1, where z lies a fraction t into voxel m (so the cumulative sum is the inside length)."""
    H, W = steps.shape[:2]
    # sub-column a of voxel column i sits at x = (i - 0.5 + (a + 0.5) / s + jitter) h: index q = i s + a
    to_q = lambda x: x / h * s + 0.5 * s - 0.5 - _JITTER * s  # noqa: E731 - grid mm -> sub-column index
    xy = tri[..., :2]
    q_lo = torch.ceil(to_q(xy.min(1).values)).long().clamp(min=0)
    q_hi = torch.floor(to_q(xy.max(1).values)).long()
    q_hi[:, 0].clamp_(max=W * s - 1)
    q_hi[:, 1].clamp_(max=H * s - 1)
    width = (q_hi[:, 0] - q_lo[:, 0] + 1).clamp(min=0)
    count = width * (q_hi[:, 1] - q_lo[:, 1] + 1).clamp(min=0)
    face = torch.repeat_interleave(torch.arange(len(tri)), count)
    local = torch.arange(int(count.sum())) - torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
    qx = q_lo[face, 0] + local % width[face]
    qy = q_lo[face, 1] + torch.div(local, width[face], rounding_mode="floor")
    px = (qx.to(torch.float64) + 0.5 - 0.5 * s + _JITTER * s) * h / s
    py = (qy.to(torch.float64) + 0.5 - 0.5 * s + _JITTER * s) * h / s
    a, b, c = tri[face, 0], tri[face, 1], tri[face, 2]

    def edge(p, q):  # 2D cross (q - p) x (pixel - p): > 0 left of p -> q
        return (q[:, 0] - p[:, 0]) * (py - p[:, 1]) - (q[:, 1] - p[:, 1]) * (px - p[:, 0])

    wa, wb, wc = edge(b, c), edge(c, a), edge(a, b)
    area = wa + wb + wc  # twice the projected signed area: > 0 when the face's normal points along +z
    inside = ((wa > 0) & (wb > 0) & (wc > 0)) | ((wa < 0) & (wb < 0) & (wc < 0))
    wa, wb, wc, area, face = wa[inside], wb[inside], wc[inside], area[inside], face[inside]
    qx, qy = qx[inside], qy[inside]
    z = (wa * a[inside, 2] + wb * b[inside, 2] + wc * c[inside, 2]) / area
    sign = torch.where(area > 0, -1.0, 1.0).to(torch.float64)  # normal along +z: the ray leaves
    depth = z / h + 0.5  # voxel k spans [k - 0.5, k + 0.5) h: depth in voxel units from voxel 0's start
    m = torch.floor(depth).long().clamp(0, steps.shape[2] - 2)
    t = (depth - m).clamp(0.0, 1.0)
    flat = steps.view(-1)
    base = (qy // s * W + qx // s) * steps.shape[2] + m
    flat.index_add_(0, base, sign * (1 - t))
    flat.index_add_(0, base + 1, sign * t)
