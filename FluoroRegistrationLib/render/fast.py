"""The fast renderer: ray marching through slices, each slice warped to the detector by a homography.

For one pose, pick the grid axis ``a`` (i, j or k) most parallel to the viewing direction. Every
ray crosses every slice ``a = s`` once; the crossing point is where the slice plane maps to that
pixel, and a plane maps to the image by a 3x3 homography. So the DRR is

    I(u, v) = l(u, v) * sum_s  bilinear(slice_s, H_s (u, v, 1))

with ``H_s`` the pixel -> slice-coordinates homography and ``l`` the ray's length between two
consecutive slices (mm). On a slice plane trilinear interpolation *is* bilinear interpolation, so
this samples the trilinear interpolant of the volume at one point per slice (a step of one voxel
along the dominant axis): the same samples as trilinear ray marching, computed by 2D lookups that
stay in cache. Rays are clipped to the bone's box by rendering only the detector rectangle its box
projects to.

Gradients with respect to the pose flow through ``grid_sample`` (to the sample coordinates) and a
hand-written backward of the homography map (:class:`_HomographyGrid`), both exact derivatives of
the forward function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..errors import FluoroRegError
from ..geometry import Camera
from ..volume import RenderVolume
from .checks import check_in_front, check_poses

# (slice axis a) -> (in-plane column axis b, in-plane row axis c); axes numbered i=0, j=1, k=2
_PLANE_AXES = {2: (0, 1), 1: (0, 2), 0: (1, 2)}
# permutation of mu (D=k, H=j, W=i) giving [slice, row c, column b]
_PERMUTE = {2: (0, 1, 2), 1: (1, 0, 2), 0: (2, 0, 1)}


class _HomographyGrid(torch.autograd.Function):
    """grid[s, b, y, x] = dehomogenise(H[b, s] @ (u_x, v_y, 1)) over a pixel rectangle; exact backward.

    Shapes: H (B, S, 3, 3); u (w,), v (h,) pixel coordinates -> grid (S, B * h, w, 2) in
    grid_sample's layout. Coordinates are clamped to [-2, 2] (far outside the slice: the sample is
    zero there and so is its gradient), so rays nearly parallel to a slice give no inf or NaN.
    """

    @staticmethod
    def forward(ctx, H, u, v):
        Hs = H.transpose(0, 1)  # (S, B, 3, 3)
        S, B, h, w = Hs.shape[0], Hs.shape[1], v.shape[0], u.shape[0]

        def row(r, out=None):  # (S, B, h, w) = H[r,0] u + H[r,1] v + H[r,2], as an outer sum
            a = torch.addcmul(Hs[..., r, 2, None, None], Hs[..., r, 0, None, None], u)  # (S, B, 1, w)
            return torch.add(a, Hs[..., r, 1, None, None] * v[:, None], out=out)

        inv_c = row(2).reciprocal_()
        planes = torch.empty(2, S, B, h, w, dtype=H.dtype, device=H.device)  # (x, y) kept planar
        for r in (0, 1):
            row(r, out=planes[r]).mul_(inv_c)
        planes.nan_to_num_(nan=2.0).clamp_(-2.0, 2.0)
        ctx.save_for_backward(planes, inv_c, u, v)
        return planes.permute(1, 2, 3, 4, 0).reshape(S, B * h, w, 2)  # grid_sample's interleaved layout

    @staticmethod
    def backward(ctx, grad_grid):
        planes, inv_c, u, v = ctx.saved_tensors
        S, B, h, w = inv_c.shape
        # d grid_x / d H[0] = uv1 / c ; d grid_y / d H[1] = uv1 / c ; d grid / d H[2] = -(grid . g) uv1 / c
        coef = torch.empty(3, S, B, h, w, dtype=planes.dtype, device=planes.device)
        coef[:2].copy_(grad_grid.view(S, B, h, w, 2).permute(4, 0, 1, 2, 3))  # de-interleave once
        coef[:2].mul_(inv_c)
        torch.mul(coef[0], planes[0], out=coef[2])
        coef[2].addcmul_(coef[1], planes[1]).neg_()
        # sums over pixels of coef * (u, v, 1), one pass: (..., h, w) @ (w, 2) then over rows
        flat = coef.view(3 * S * B * h, w)
        row_u = (flat @ u).view(3, S, B, h)  # sum over columns of coef * u
        row_1 = flat.sum(-1).view(3, S, B, h)  # sum over columns of coef
        grad = torch.stack([row_u.sum(-1), row_1 @ v, row_1.sum(-1)], -1)
        return grad.permute(2, 1, 0, 3), None, None  # (B, S, 3 rows r, 3 columns)


def _slice_stack(volume: RenderVolume, axis: int) -> torch.Tensor:
    """(S, 1, n_c, n_b) contiguous slices of the volume perpendicular to ``axis`` (cached)."""
    key = (axis, volume.mu.dtype, volume.mu.device, volume.mu.data_ptr())
    stack = volume._slices.get(key)
    if stack is None:
        if len(volume._slices) >= 6:  # the volume's data changed since: drop stale stacks
            volume._slices.clear()
        stack = volume.mu.permute(*_PERMUTE[axis]).contiguous()[:, None]
        volume._slices[key] = stack
    return stack


def _slice_axis(camera_from_index: torch.Tensor, volume: RenderVolume) -> torch.Tensor:
    """(B,) the grid axis most parallel to the ray through the grid's centre, per pose."""
    D, H, W = volume.mu.shape
    centre = torch.tensor([(W - 1) / 2, (H - 1) / 2, (D - 1) / 2, 1.0], dtype=torch.float64,
                          device=camera_from_index.device)
    view = (camera_from_index @ centre)[:, :3]
    view = view / view.norm(dim=-1, keepdim=True)
    cols = camera_from_index[:, :3, :3]
    cosines = (view[:, :, None] * cols).sum(1).abs() / cols.norm(dim=1)
    return cosines.argmax(-1)


def _detector_window(corners_cam: torch.Tensor, camera: Camera) -> tuple[int, int, int, int] | None:
    """Pixel rectangle (r0, r1, c0, c1), end-exclusive, covering the projected box at all poses."""
    u = camera.u0 + camera.fx * corners_cam[..., 0] / corners_cam[..., 2]
    v = camera.v0 + camera.fy * corners_cam[..., 1] / corners_cam[..., 2]
    c0 = max(0, math.floor(float(u.min())))
    c1 = min(camera.cols, math.ceil(float(u.max())) + 1)
    r0 = max(0, math.floor(float(v.min())))
    r1 = min(camera.rows, math.ceil(float(v.max())) + 1)
    if c0 >= c1 or r0 >= r1:
        return None
    return r0, r1, c0, c1


def sharpened(occupancy: torch.Tensor, ramp: tuple) -> torch.Tensor:
    """Occupancy fractions (any shape) through ``ramp`` (lo, hi): 0 below lo, 1 above hi, linear between."""
    return ((occupancy - ramp[0]) / (ramp[1] - ramp[0])).clamp(0.0, 1.0)


def _march(slices: torch.Tensor, H: torch.Tensor, u: torch.Tensor, v: torch.Tensor, ramp=None) -> torch.Tensor:
    """Sum over slices of bilinear lookups: slices (S, 1, n_c, n_b), H (B, S, 3, 3), u (w,), v (h,) -> (B, h, w);
    with ``ramp`` (lo, hi), each sample ``o`` counts as ``clamp((o - lo) / (hi - lo), 0, 1)``."""
    grid = _HomographyGrid.apply(H, u, v)
    samples = F.grid_sample(slices, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    if ramp is not None:
        samples = sharpened(samples, ramp)
    B, h, w = H.shape[0], v.shape[0], u.shape[0]
    return samples.sum(0).view(B, h, w)


def _render_axis_group(volume, camera, camera_from_index, axis, window, max_samples, piece_samples, ramp=None):
    """Render poses that share a slice axis over a detector window -> (B, h, w)."""
    dtype, device = volume.mu.dtype, volume.mu.device
    r0, r1, c0, c1 = window
    b_axis, c_axis = _PLANE_AXES[axis]
    slices = _slice_stack(volume, axis)
    S, _, n_c, n_b = slices.shape
    K = camera.K(torch.float64, device)
    m = camera_from_index[:, :3, :]  # (B, 3, 4), float64
    s = torch.arange(S, dtype=torch.float64, device=device)
    third = s[None, :, None] * m[:, None, :, axis] + m[:, None, :, 3]  # (B, S, 3)
    G = K @ torch.stack([m[:, None, :, b_axis].expand_as(third), m[:, None, :, c_axis].expand_as(third), third], -1)
    normalise = torch.tensor([[2.0 / max(n_b - 1, 1), 0.0, -1.0], [0.0, 2.0 / max(n_c - 1, 1), -1.0], [0, 0, 1.0]],
                             dtype=torch.float64, device=device)
    H = (normalise @ torch.linalg.inv(G)).to(dtype)  # (B, S, 3, 3)

    u = torch.arange(c0, c1, dtype=dtype, device=device)
    v = torch.arange(r0, r1, dtype=dtype, device=device)

    # ray length between consecutive slices: |d| / |(index_from_camera_3x3 d)_axis|, d = K^-1 (u, v, 1)
    d = torch.stack([((u - camera.u0) / camera.fx).expand(len(v), -1),
                     ((v - camera.v0) / camera.fy)[:, None].expand(-1, len(u)),
                     torch.ones(len(v), len(u), dtype=dtype, device=device)], -1)  # (h, w, 3)
    row = torch.linalg.inv(camera_from_index[:, :3, :3])[:, axis, :].to(dtype)  # (B, 3)
    step_mm = d.norm(dim=-1) / (d @ row.T).abs().permute(2, 0, 1)  # (B, h, w)

    B, h, w = H.shape[0], len(v), len(u)
    recompute = H.requires_grad and S * B * h * w > max_samples  # bound memory: recompute in backward
    poses_per_piece = max(1, min(B, piece_samples // (S * h * w)))
    rows_per_piece = max(1, min(h, piece_samples // (S * poses_per_piece * w)))
    pieces = []
    for b0 in range(0, B, poses_per_piece):
        Hb = H[b0:b0 + poses_per_piece]
        rows = []
        for r0_ in range(0, h, rows_per_piece):
            vr = v[r0_:r0_ + rows_per_piece]
            rows.append(checkpoint(_march, slices, Hb, u, vr, ramp, use_reentrant=False) if recompute
                        else _march(slices, Hb, u, vr, ramp))
        pieces.append(torch.cat(rows, 1) if len(rows) > 1 else rows[0])
    total = torch.cat(pieces, 0) if len(pieces) > 1 else pieces[0]
    return total * step_mm


def render_fast(volume: RenderVolume, camera: Camera, camera_from_volume: torch.Tensor,
                max_samples: int = 16_000_000, piece_samples: int = 1_000_000,
                region: tuple[int, int, int, int] | None = None, occupancy_ramp: tuple | None = None) -> torch.Tensor:
    """Fast DRR of one render volume at B poses (trilinear samples, one per slice).

    Args:
        volume: the attenuation grid (D, H, W), zero on its border.
        camera: intrinsics; the detector is (rows, cols).
        camera_from_volume: (B, 4, 4) or (4, 4) poses, any float dtype; differentiable.
        max_samples: samples whose intermediate results may be kept for the backward pass; past
            that, pieces are recomputed in the backward pass, so memory stays bounded at any
            detector size and batch.
        piece_samples: samples computed at once (pieces of poses and detector rows), sized so
            that one piece's temporaries stay in cache.
        region: (r0, r1, c0, c1), end-exclusive: draw only these detector rows and columns (the
            pixels a similarity looks at); None: the whole detector.
        occupancy_ramp: (lo, hi) for a volume of occupancy fractions (an implant's voxelised mesh,
            :mod:`..implant.voxelize`): each trilinear sample ``o`` is drawn as
            ``clamp((o - lo) / (hi - lo), 0, 1)``, a surface sharper than the partial-volume blur;
            the image is then a path length (mm). None: samples drawn as they are.
    Returns:
        (B, 1, rows, cols) line integrals in the volume's dtype; (B, 1, r1 - r0, c1 - c0) with a region.
    """
    poses = check_poses(camera_from_volume)
    if volume.mu.dim() != 3:
        raise FluoroRegError(f"the fast renderer draws one (D, H, W) channel; got {tuple(volume.mu.shape)}, "
                             "use the exact renderer for several channels")
    corners = check_in_front(volume, camera, poses)
    B = poses.shape[0]
    dtype, device = volume.mu.dtype, volume.mu.device
    R0, R1, C0, C1 = _check_region(region, camera)
    window = _detector_window(corners, camera)
    if window is not None:
        window = (max(window[0], R0), min(window[1], R1), max(window[2], C0), min(window[3], C1))
    if window is None or window[0] >= window[1] or window[2] >= window[3]:
        return torch.zeros(B, 1, R1 - R0, C1 - C0, dtype=dtype, device=device) + 0 * poses.sum()
    r0, r1, c0, c1 = window
    camera_from_index = poses.to(torch.float64) @ volume.volume_from_index.to(device)
    axes = _slice_axis(camera_from_index.detach(), volume)
    groups = axes.unique()
    if len(groups) == 1:
        crop = _render_axis_group(volume, camera, camera_from_index, int(groups[0]), window, max_samples,
                                   piece_samples, occupancy_ramp)
    else:
        crop = torch.zeros(B, r1 - r0, c1 - c0, dtype=dtype, device=device)
        for axis in groups.tolist():
            sel = (axes == axis).nonzero().squeeze(-1)
            part = _render_axis_group(volume, camera, camera_from_index[sel], axis, window, max_samples,
                                      piece_samples, occupancy_ramp)
            crop = crop.index_put((sel,), part)
    image = F.pad(crop, (c0 - C0, C1 - c1, r0 - R0, R1 - r1))
    return image[:, None]


def _check_region(region, camera: Camera) -> tuple[int, int, int, int]:
    """(r0, r1, c0, c1) of the detector to draw: the whole detector for None."""
    if region is None:
        return 0, camera.rows, 0, camera.cols
    r0, r1, c0, c1 = (int(x) for x in region)
    if not (0 <= r0 < r1 <= camera.rows and 0 <= c0 < c1 <= camera.cols):
        raise FluoroRegError(f"render region {tuple(region)} (r0, r1, c0, c1) is not inside the "
                             f"{camera.rows}x{camera.cols} detector; give rows and columns within it")
    return r0, r1, c0, c1
