"""Adapter: make nanodrr 0.1.7 render a volume under FluoroRegistration's conventions.

Benchmark-only.  nanodrr is *not* a dependency of the project; ``make bench-peer-deps`` installs it
(``pip install --no-deps nanodrr==0.1.7`` plus ``torchio roma jaxtyping platformdirs``).  Its
package ``__init__`` exports nothing: the renderer is ``nanodrr.drr.DRR``.

Conventions matched (see docs/CONVENTIONS.md and benchmarks/peer_diffdrr.py for ours)
--------------------------------------------------------------------------------------
Ours:   volume frame LPS mm; ``camera_from_volume`` T (4x4), ``p_cam = R p_vol + t``; camera =
        OpenCV (source at origin, +z to detector, +x along columns, +y along rows); detector plane
        z = sdd; pixel (row i, col j) centre at ``((j - u0) * col_sp, (i - v0) * row_sp, sdd)``.
        DRR pixel = ``sum mu dl`` along the ray source -> pixel centre (mu in 1/mm).

nanodrr 0.1.7 (read from its source in site-packages):
  * ``data.Subject.from_images(ScalarImage)`` takes the image's affine *as is* as its
    ``voxel_to_world`` (no RAS/LPS flip, no centring, no reorientation): its world frame is
    whatever frame the affine maps to.  We pass the LPS affine, so its world frame is ours.
    ``convert_to_mu=False`` keeps the raw values (default: a HU -> mu map).  Data layout: torchio
    (1, X, Y, Z) -> its (1, 1, Z, Y, X), the same [k, j, i] order as our ``mu``.
    ``voxel_to_grid`` maps voxel centre i to grid_sample's ``align_corners=False`` coordinate
    ``(2 i + 1) / S - 1``: voxel centres at integer indices, as in our affine.
  * Intrinsics (``drr.renderer._make_tgt``): pixel (row r, col c) of the returned (B, C, H, W)
    image is cast to ``sdd * K^-1 (c + 0.5, r + 0.5, 1)`` with ``K = [[fx, 0, cx], [0, fy, cy],
    [0, 0, 1]]``, ``fx = sdd/delx``, ``cx = x0/delx + W/2`` (``camera.make_k_inv``).  Its camera
    frame is OpenCV's, like ours (no axis flip); with ``delx = col_sp, dely = row_sp,
    x0 = col_sp * (u0 - (W-1)/2), y0 = row_sp * (v0 - (H-1)/2)`` the pixel centres are ours
    exactly (its "+ 0.5" cancels the half pixel in ``cx``).  The source is at the camera origin.
  * Pose: ``DRR.forward(subject, rt_inv)`` takes ``rt_inv`` = camera -> world (its
    ``make_rt_inv`` builds it from Euler angles and an "AP" reorientation, which we bypass by
    passing the full matrix).  With world = our LPS volume frame, ``rt_inv = inv(T)``, computed
    in closed form with torch ops so gradients reach the input ``camera_from_volume``.

How it samples (``drr.backends.render_torch``, the CPU path; ``backend="auto"`` picks a fused
Triton kernel only on CUDA and Metal only on MPS):
  * each ray is clipped *on its own* to the box ``[-1, S]`` voxel indices per axis (the support of
    the zero-padded trilinear interpolant; slab method), then sampled at ``n_samples`` midpoints
    of equal parts of the clipped chord (midpoint rule);
  * samples are trilinear (``grid_sample`` on a 5-D input, ``mode="bilinear"``, zero padding);
  * ``pixel = step * sum(samples)`` with ``step = |tgt - src| / n_samples * (t1 - t0)`` in camera
    millimetres: already ``sum mu dl`` in mm, so no rescaling (SCALE = 1);
  * ``n_samples`` defaults to 500 (``DRR.forward`` and ``render``); it must be >= 2;
  * the sample grid (B, n, H*W, 3) is materialised, so memory grows as poses x pixels x samples
    (about 40 bytes per sample for forward+backward);
  * the pose gradient flows through the clipping, the sample positions and ``grid_sample``.
  * Rays are clipped per ray (unlike DiffDRR's Trilinear, whose sample range is the union over the
    whole batch), so a batched render equals single renders (checked by check_peer_nanodrr.py).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from peer_diffdrr import _lps_affine, volume_from_camera  # shared with the DiffDRR adapter

#: Factor applied to nanodrr's output to get ``sum mu dl`` (mm * 1/mm); its step is in mm already.
SCALE = 1.0
#: nanodrr's own default number of samples per ray (``DRR.forward(..., n_samples=500)``).
DEFAULT_N_SAMPLES = 500
#: The samples per ray benchmarks/render.py gives it: the smallest of check_peer_nanodrr.py's sweep
#: that keeps every benchmark case within 1 % (relative L2) of the exact integral of the same voxels.
BENCH_N_SAMPLES = 64


def nanodrr_available() -> bool:
    """True if ``nanodrr`` (and the packages its renderer needs: torchio, roma, jaxtyping) imports."""
    try:
        import nanodrr.data  # noqa: F401
        import nanodrr.drr  # noqa: F401
    except Exception:  # ImportError, or a missing transitive dependency
        return False
    return True


def make_nanodrr_renderer(
    mu_zyx,
    spacing_xyz_mm=None,
    origin_lps_mm=None,
    *,
    sdd_mm: float,
    rows: int,
    cols: int,
    row_spacing_mm: float,
    col_spacing_mm: float,
    principal_point_colrow=None,
    n_samples: int = DEFAULT_N_SAMPLES,
    volume_from_index=None,
    backend: str = "torch",
    device="cpu",
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Build a nanodrr renderer that follows our conventions.

    Args:
        mu_zyx: (Z, Y, X) linear attenuation in 1/mm; ``mu_zyx[k, j, i]`` is the voxel whose centre
            is at ``volume_from_index @ (i, j, k, 1)`` (LPS mm).
        spacing_xyz_mm, origin_lps_mm: (sx, sy, sz) and the LPS centre of voxel (0, 0, 0), for an
            identity direction; or pass ``volume_from_index`` (4x4, any direction) instead.
        sdd_mm, rows, cols, row_spacing_mm, col_spacing_mm: detector, as in a calibration file.
        principal_point_colrow: (u0, v0) in pixels; default the image centre
            ((cols-1)/2, (rows-1)/2).
        n_samples: samples per ray (over each ray's own chord through the volume box).
        backend: nanodrr's backend; "torch" is its plain PyTorch path (the one that runs on CPU).
        device: torch device.

    Returns:
        ``render(camera_from_volume)``: (B, 4, 4) (or (4, 4)) tensor -> (B, 1, rows, cols) float32
        DRR, pixel [b, 0, i, j] = ``sum mu dl`` along the ray to pixel (row i, col j).
        Differentiable w.r.t. the pose tensor.
    """
    from nanodrr.data import Subject
    from nanodrr.drr import DRR
    from torchio import ScalarImage

    device = torch.device(device)
    if isinstance(mu_zyx, torch.Tensor):
        mu = mu_zyx.detach().to("cpu", torch.float32)
    else:
        mu = torch.as_tensor(np.ascontiguousarray(mu_zyx), dtype=torch.float32)
    if mu.ndim != 3:
        raise ValueError(f"mu_zyx must be 3-D (Z, Y, X), got shape {tuple(mu.shape)}")
    if volume_from_index is not None:
        affine = np.asarray(torch.as_tensor(volume_from_index).detach().cpu(), dtype=np.float64)
    else:
        affine = _lps_affine(spacing_xyz_mm, origin_lps_mm)
    # torchio wants (C, W, H, D) = (1, X, Y, Z), indexed [0, i, j, k]
    mu_xyz = mu.permute(2, 1, 0).contiguous().unsqueeze(0)
    subject = Subject.from_images(ScalarImage(tensor=mu_xyz, affine=affine), convert_to_mu=False).to(device)
    assert subject.n_classes == 1 and torch.equal(subject.image[0, 0].cpu(), mu)
    np.testing.assert_allclose(subject.voxel_to_world.double().cpu().numpy(), affine, rtol=1e-6, atol=1e-4)

    if principal_point_colrow is None:
        u0, v0 = (cols - 1) / 2.0, (rows - 1) / 2.0
    else:
        u0, v0 = float(principal_point_colrow[0]), float(principal_point_colrow[1])
    drr = DRR.from_carm_intrinsics(
        sdd=float(sdd_mm), delx=float(col_spacing_mm), dely=float(row_spacing_mm),
        x0=float(col_spacing_mm) * (u0 - (cols - 1) / 2.0), y0=float(row_spacing_mm) * (v0 - (rows - 1) / 2.0),
        height=int(rows), width=int(cols), dtype=torch.float32, device=device,
    )
    drr.eval()
    n_samples = int(n_samples)

    def render(camera_from_volume: torch.Tensor) -> torch.Tensor:
        inv = volume_from_camera(camera_from_volume, device)  # its camera -> world
        img = drr(subject, inv.to(torch.float32), n_samples=n_samples, backend=backend)
        if SCALE != 1.0:
            img = img * SCALE
        return img

    render.drr = drr  # the underlying nanodrr module and subject, for inspection
    render.subject = subject
    return render
