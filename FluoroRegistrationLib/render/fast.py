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
projects to, and empty space is skipped slab by slab: a slab of slices is cropped to the box of its
non-zero voxels and drawn only over the rectangle that box projects to (the samples left out are
zeros, so the image is the same; about half the samples of a bone).

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


def _cached(volume: RenderVolume, key: tuple, make):
    """``make()`` cached on the volume under ``key`` (+ the data's dtype, device and address)."""
    key = key + (volume.mu.dtype, volume.mu.device, volume.mu.data_ptr())
    value = volume._slices.get(key)
    if value is None:
        if len(volume._slices) >= 12:  # the volume's data changed since: drop stale entries
            volume._slices.clear()
        value = volume._slices[key] = make()
    return value


def _slice_stack(volume: RenderVolume, axis: int) -> torch.Tensor:
    """(S, 1, n_c, n_b) contiguous slices of the volume perpendicular to ``axis`` (cached)."""
    return _cached(volume, ("stack", axis), lambda: volume.mu.permute(*_PERMUTE[axis]).contiguous()[:, None])


_SLAB = 8  # slices per slab of empty-space skipping: 4 -> 8 -> 16 -> 32 drew 52 -> 56 -> 64 -> 78 % of the samples (phantom knee)


def _slabs(volume: RenderVolume, axis: int) -> list[tuple[int, int, int, int, int, int]]:
    """The non-empty slabs of ``_SLAB`` slices perpendicular to ``axis`` (cached), each as
    (s0, s1, c0, c1, b0, b1), end-exclusive: its slices and the box of its non-zero voxels grown by
    one voxel (the bilinear reach), clipped to the grid. Outside its box a slab's samples are zero."""
    def make():
        occupied = _slice_stack(volume, axis)[:, 0] != 0  # (S, n_c, n_b)
        rows, cols = occupied.any(2), occupied.any(1)  # (S, n_c), (S, n_b)
        S, n_c, n_b = occupied.shape
        out = []
        for s0 in range(0, S, _SLAB):
            s1 = min(S, s0 + _SLAB)
            r = rows[s0:s1].any(0).nonzero().squeeze(-1)
            c = cols[s0:s1].any(0).nonzero().squeeze(-1)
            if len(r):
                out.append((s0, s1, max(0, int(r[0]) - 1), min(n_c, int(r[-1]) + 2),
                            max(0, int(c[0]) - 1), min(n_b, int(c[-1]) + 2)))
        return out
    return _cached(volume, ("slabs", axis), make)


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


def _slab_windows(camera: Camera, camera_from_index: torch.Tensor, axis: int, slabs: list, window: tuple) -> list:
    """Per slab, the detector rectangle (r0, r1, c0, c1) inside ``window`` that its box projects to
    at all poses, or None when it misses the window (one projection for all slabs)."""
    b_axis, c_axis = _PLANE_AXES[axis]
    box = torch.tensor(slabs, dtype=torch.float64)  # (n, 6): s0, s1, c0, c1, b0, b1
    lo, hi = torch.zeros(len(slabs), 3, dtype=torch.float64), torch.zeros(len(slabs), 3, dtype=torch.float64)
    for dim, (first, last) in ((axis, (0, 1)), (c_axis, (2, 3)), (b_axis, (4, 5))):
        lo[:, dim], hi[:, dim] = box[:, first], box[:, last] - 1
    pick = torch.cartesian_prod(*[torch.tensor([0, 1])] * 3).to(torch.float64)  # (8, 3): lo or hi per axis
    corners = lo[:, None] + pick * (hi - lo)[:, None]  # (n, 8, 3) i, j, k
    corners = torch.cat([corners, torch.ones(*corners.shape[:2], 1, dtype=torch.float64)], -1)
    m = camera_from_index.detach().cpu()[:, :3]  # (B, 3, 4)
    cam = torch.einsum("brc,npc->bnpr", m, corners)  # (B, n, 8, 3)
    uv = camera.project(cam)  # (B, n, 8, 2)
    u, v = uv[..., 0], uv[..., 1]
    out = []
    for v0, v1, u0, u1 in zip(v.amin((0, 2)).floor().tolist(), (v.amax((0, 2)).ceil() + 1).tolist(),
                              u.amin((0, 2)).floor().tolist(), (u.amax((0, 2)).ceil() + 1).tolist()):
        r0, r1 = max(int(v0), window[0]), min(int(v1), window[1])
        c0, c1 = max(int(u0), window[2]), min(int(u1), window[3])
        out.append((r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None)
    return out


def _index_from_pixel(camera: Camera, camera_from_index: torch.Tensor, axis: int, slices: int) -> torch.Tensor:
    """(B, S, 3, 3) float64: for each slice ``s`` < ``slices`` perpendicular to ``axis``, the
    homography pixel (u, v, 1) -> the slice's voxel coordinates (b, c, 1), up to scale."""
    b_axis, c_axis = _PLANE_AXES[axis]
    m = camera_from_index[:, :3, :]  # (B, 3, 4), float64
    s = torch.arange(slices, dtype=torch.float64, device=m.device)
    third = s[None, :, None] * m[:, None, :, axis] + m[:, None, :, 3]  # (B, S, 3)
    pixel_from_index = camera.K(torch.float64, m.device) @ torch.stack(
        [m[:, None, :, b_axis].expand_as(third), m[:, None, :, c_axis].expand_as(third), third], -1)
    return torch.linalg.inv(pixel_from_index)


def _slab_homographies(index_from_pixel: torch.Tensor, slab: tuple, origin: tuple, dtype) -> torch.Tensor:
    """(B, S_slab, 3, 3): for each slice of the slab, pixel (u - origin col, v - origin row, 1) ->
    grid_sample coordinates on the slab's box, from ``index_from_pixel`` (B, S, 3, 3) float64 (pixel
    -> the slice's (b, c, 1) voxel coordinates). The pixels are counted from the slab's window so
    the float32 products stay small (a box far from the grid's centre would otherwise cancel digits)."""
    s0, s1, c0, c1, b0, b1 = slab
    device = index_from_pixel.device
    sb, sc = 2.0 / max(b1 - b0 - 1, 1), 2.0 / max(c1 - c0 - 1, 1)
    normalise = torch.tensor([[sb, 0.0, -1.0 - sb * b0], [0.0, sc, -1.0 - sc * c0], [0, 0, 1.0]],
                             dtype=torch.float64, device=device)
    shift = torch.tensor([[1.0, 0, origin[1]], [0, 1.0, origin[0]], [0, 0, 1.0]], dtype=torch.float64, device=device)
    return (normalise @ index_from_pixel[:, s0:s1] @ shift).to(dtype)


def _step_mm(camera: Camera, camera_from_index: torch.Tensor, axis: int, window: tuple, dtype) -> torch.Tensor:
    """(B, h, w) ray length between consecutive slices over ``window``: |d| / |(index_from_camera d)_axis|,
    d = K^-1 (u, v, 1)."""
    r0, r1, c0, c1 = window
    device = camera_from_index.device
    u = torch.arange(c0, c1, dtype=dtype, device=device)
    v = torch.arange(r0, r1, dtype=dtype, device=device)
    d = torch.stack([((u - camera.u0) / camera.fx).expand(len(v), -1),
                     ((v - camera.v0) / camera.fy)[:, None].expand(-1, len(u)),
                     torch.ones(len(v), len(u), dtype=dtype, device=device)], -1)  # (h, w, 3)
    row = torch.linalg.inv(camera_from_index[:, :3, :3])[:, axis, :].to(dtype)  # (B, 3)
    return d.norm(dim=-1) / (d @ row.T).abs().permute(2, 0, 1)


def _march_in_pieces(slices, H, u, v, ramp, recompute: bool, piece_samples: int) -> torch.Tensor:
    """:func:`_march` over pieces of poses and detector rows (each piece's temporaries fit in
    cache); ``recompute``: keep nothing for the backward pass, recompute each piece there."""
    S, B, h, w = slices.shape[0], H.shape[0], len(v), len(u)
    poses_per_piece = max(1, min(B, piece_samples // (S * h * w)))
    rows_per_piece = max(1, min(h, piece_samples // (S * poses_per_piece * w)))
    pieces = []
    for b0 in range(0, B, poses_per_piece):
        Hb = H[b0:b0 + poses_per_piece]
        rows = [checkpoint(_march, slices, Hb, u, v[r:r + rows_per_piece], ramp, use_reentrant=False) if recompute
                else _march(slices, Hb, u, v[r:r + rows_per_piece], ramp) for r in range(0, h, rows_per_piece)]
        pieces.append(torch.cat(rows, 1) if len(rows) > 1 else rows[0])
    return torch.cat(pieces, 0) if len(pieces) > 1 else pieces[0]


_SKIP_FROM = 1_000_000  # samples per pose over the whole window from which empty space is skipped
# (below, the slabs' bookkeeping cost about what it saved: at a 1.4 mm level 0.65-0.8x before it was
# vectorised, 1.0-1.15x after; at 0.35 mm 1.4-1.6x)


def _render_axis_group(volume, camera, camera_from_index, axis, window, max_samples, piece_samples, ramp=None,
                       skip_empty: bool = True):
    """Render poses that share a slice axis over a detector window -> (B, h, w).

    With ``skip_empty`` (and at least ``_SKIP_FROM`` samples per pose) the slices go slab by slab
    (:func:`_slabs`): each slab's slices cropped to its non-zero box and sampled only over the
    detector rectangle that box projects to. Every sample skipped is zero, so the image and its
    gradients are those of marching every slice over the whole window (``skip_empty=False``, the
    reference), in about half the samples for a bone.
    """
    dtype, device = volume.mu.dtype, volume.mu.device
    r0, r1, c0, c1 = window
    slices = _slice_stack(volume, axis)
    S, _, n_c, n_b = slices.shape
    B = camera_from_index.shape[0]
    skip = skip_empty and (ramp is None or ramp[0] >= 0) and S * (r1 - r0) * (c1 - c0) >= _SKIP_FROM
    if skip:  # (a ramp that lifts 0 would make the empty space non-zero)
        slabs = _slabs(volume, axis)
        work = [(slab, w) for slab, w in zip(slabs, _slab_windows(camera, camera_from_index, axis, slabs, window))
                if w is not None]
    else:
        work = [((0, S, 0, n_c, 0, n_b), window)]
    samples = B * sum((sl[1] - sl[0]) * (w[1] - w[0]) * (w[3] - w[2]) for sl, w in work)
    recompute = camera_from_index.requires_grad and samples > max_samples  # bound memory: recompute in backward
    index_from_pixel = _index_from_pixel(camera, camera_from_index, axis, S)
    total = None
    for slab, (w0, w1, q0, q1) in work:
        s0, s1, a0, a1, b0, b1 = slab
        origin = (w0, q0) if skip else (0, 0)  # unskipped, pixels count from the detector's corner
        H = _slab_homographies(index_from_pixel, slab, origin, dtype)
        u = torch.arange(q0 - origin[1], q1 - origin[1], dtype=dtype, device=device)
        v = torch.arange(w0 - origin[0], w1 - origin[0], dtype=dtype, device=device)
        part = _march_in_pieces(slices[s0:s1, :, a0:a1, b0:b1], H, u, v, ramp, recompute, piece_samples)
        if not skip:
            total = part
            break
        if total is None:
            total = torch.zeros(B, r1 - r0, c1 - c0, dtype=dtype, device=device)
        total[:, w0 - r0:w1 - r0, q0 - c0:q1 - c0] += part
    if total is None:  # no slab reaches the window
        total = torch.zeros(B, r1 - r0, c1 - c0, dtype=dtype, device=device) + 0 * camera_from_index.sum()
    return total * _step_mm(camera, camera_from_index, axis, window, dtype)


def render_fast(volume: RenderVolume, camera: Camera, camera_from_volume: torch.Tensor,
                max_samples: int = 16_000_000, piece_samples: int = 1_000_000,
                region: tuple[int, int, int, int] | None = None, occupancy_ramp: tuple | None = None,
                skip_empty: bool = True) -> torch.Tensor:
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
        skip_empty: skip the samples that are zero (slabs of slices outside their non-zero box;
            :func:`_render_axis_group`); False marches every slice over the whole rectangle, the
            reference the skipping is tested against (the same image and gradients).
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
                                   piece_samples, occupancy_ramp, skip_empty)
    else:
        crop = torch.zeros(B, r1 - r0, c1 - c0, dtype=dtype, device=device)
        for axis in groups.tolist():
            sel = (axes == axis).nonzero().squeeze(-1)
            part = _render_axis_group(volume, camera, camera_from_index[sel], axis, window, max_samples,
                                      piece_samples, occupancy_ramp, skip_empty)
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
