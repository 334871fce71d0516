"""The reference renderer: exact line integrals through the voxel grid, for two voxel models.

- ``interpolation="nearest"`` (Siddon 1985): each voxel is a box of constant attenuation; a ray's
  integral is the sum over the voxels it crosses of (length inside the voxel) x (attenuation).
- ``interpolation="linear"``: attenuation is the trilinear interpolant of the voxel values (the
  model the fast renderer samples). Between the planes through voxel centres the interpolant,
  restricted to a ray, is a cubic polynomial in the ray parameter, so Simpson's rule on each
  crossing segment integrates it exactly.

Both traverse the planes a ray crosses (Siddon's merged plane crossings), vectorised over rays and
poses in plain PyTorch, differentiable with respect to the pose. Slow and exact: the yardstick the
fast renderer and the tests are measured against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import FluoroRegError
from ..geometry import Camera, invert, transform_points
from ..volume import RenderVolume
from .checks import check_in_front, check_poses


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den with den == 0 giving +inf or -inf by the sign of num (no NaN, no NaN gradients)."""
    zero = den == 0
    safe = torch.where(zero, torch.ones_like(den), den)
    big = torch.where(num >= 0, torch.full_like(num, float("inf")), torch.full_like(num, -float("inf")))
    return torch.where(zero, big, num / safe)


def _integrate_chunk(mu, dims, source, end, ray_len, linear):
    """Exact integrals on one chunk of rays.

    Args:
        mu: (C, D, H, W) channels (attenuation, or material densities), [c, k, j, i].
        dims: (W, H, D) grid size along (i, j, k).
        source: (B, 1, 3) source in index coordinates; end: (B, P, 3) detector points in index coords.
        ray_len: (P,) source-to-detector length of each ray in mm.
    Returns:
        (B, C, P) line integrals.
    """
    direction = end - source  # (B, P, 3)
    alphas, lo, hi = [], [], []
    for a, n in enumerate(dims):
        # voxel faces (nearest) or the planes through voxel centres (linear: cells of the interpolant)
        planes = torch.arange(n, dtype=source.dtype, device=source.device) if linear else (
            torch.arange(n + 1, dtype=source.dtype, device=source.device) - 0.5)
        al = _safe_div(planes - source[..., a:a + 1], direction[..., a:a + 1])  # (B, P, n+1)
        first, last = al[..., 0], al[..., -1]
        lo.append(torch.minimum(first, last))
        hi.append(torch.maximum(first, last))
        alphas.append(al)
    # a ray parallel to a slab has (-inf, +inf) inside it and (+inf, +inf) / (-inf, -inf) outside
    a_min = torch.stack(lo, -1).amax(-1).clamp_min(0.0)
    a_max = torch.stack(hi, -1).amin(-1).clamp_max(1.0)
    a_max = torch.maximum(a_max, a_min)
    allal = torch.cat(alphas + [a_min[..., None], a_max[..., None]], -1)
    allal = torch.minimum(torch.maximum(allal, a_min[..., None]), a_max[..., None])
    allal, _ = torch.sort(allal, dim=-1)
    seg = allal[..., 1:] - allal[..., :-1]
    mid = 0.5 * (allal[..., 1:] + allal[..., :-1])
    W, H, D = dims
    if linear:
        # Simpson on each segment: (b - a) / 6 * (f(a) + 4 f(mid) + f(b)), exact for cubics
        ends = _trilinear(mu, source[..., None, :] + allal[..., None] * direction[..., None, :], dims)
        mids = _trilinear(mu, source[..., None, :] + mid[..., None] * direction[..., None, :], dims)
        return (seg[:, None] * (ends[..., :-1] + 4 * mids + ends[..., 1:])).sum(-1) * ray_len / 6
    pos = source[..., None, :] + mid[..., None] * direction[..., None, :]  # (B, P, N, 3)
    idx = torch.floor(pos.detach() + 0.5).long()
    for a, n in enumerate(dims):
        idx[..., a].clamp_(0, n - 1)
    flat = (idx[..., 2] * H + idx[..., 1]) * W + idx[..., 0]
    values = mu.reshape(mu.shape[0], -1)[:, flat]  # (C, B, P, N)
    return (seg[None] * values.to(seg.dtype)).sum(-1).transpose(0, 1) * ray_len


def _trilinear(mu, points_index, dims):
    """Trilinear interpolant of mu (C, D, H, W) at index points (B, P, N, 3) = (i, j, k) -> (B, C, P, N)."""
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in dims], dtype=points_index.dtype, device=points_index.device)
    grid = (points_index * scale - 1).to(mu.dtype)
    B, P, N, _ = grid.shape
    out = F.grid_sample(mu[None].expand(B, *mu.shape), grid.view(B, P, N, 1, 3), mode="bilinear",
                        padding_mode="zeros", align_corners=True)
    return out.view(B, mu.shape[0], P, N).to(points_index.dtype)


def render_exact(volume: RenderVolume, camera: Camera, camera_from_volume: torch.Tensor,
                 interpolation: str = "linear", max_elements: int = 2_000_000) -> torch.Tensor:
    """Exact DRR of one render volume at B poses.

    Args:
        volume: the attenuation grid (D, H, W), or (C, D, H, W) channels rendered together (for
            example the partial densities of several materials).
        interpolation: "linear" (the trilinear interpolant, as the fast renderer) or "nearest"
            (voxels as constant boxes, Siddon).
        camera: the C-arm intrinsics, detector (rows, cols) = (H_img, W_img).
        camera_from_volume: (B, 4, 4) poses (or (4, 4)).
        max_elements: rays x crossings processed at once (bounds memory).
    Returns:
        (B, C, H_img, W_img) line integrals (C = 1 for a (D, H, W) grid), in the volume's dtype.
        Geometry is computed in float64.
    """
    poses = check_poses(camera_from_volume)
    check_in_front(volume, camera, poses)
    dtype = volume.mu.dtype
    device = volume.mu.device
    poses64 = poses.to(torch.float64)
    index_from_camera = torch.linalg.inv(volume.volume_from_index.to(device)) @ invert(poses64)
    _, detector = camera.rays(torch.float64, device)
    detector = detector.reshape(-1, 3)
    ray_len = detector.norm(dim=-1)
    source = index_from_camera[:, None, :3, 3]  # (B, 1, 3)
    mu = volume.mu if volume.mu.dim() == 4 else volume.mu[None]
    C, D, H, W = mu.shape
    dims = (W, H, D)
    if interpolation not in ("linear", "nearest"):
        raise FluoroRegError(f"unknown interpolation '{interpolation}'; choose linear or nearest")
    linear = interpolation == "linear"
    B, P = poses.shape[0], detector.shape[0]
    per_ray = (sum(dims) + 5) * (6 if linear else 1) * C
    chunk = max(1, max_elements // (per_ray * B))
    out = []
    for start in range(0, P, chunk):
        end = transform_points(index_from_camera, detector[start:start + chunk])
        out.append(_integrate_chunk(mu, dims, source, end, ray_len[start:start + chunk], linear))
    image = torch.cat(out, -1).reshape(B, C, camera.rows, camera.cols)
    return image.to(dtype)
