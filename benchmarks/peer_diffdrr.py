"""Adapter: make DiffDRR 0.6.1 render a volume under FluoroRegistration's conventions.

Benchmark-only.  DiffDRR is *not* a dependency of the project; install it with
``pip install --no-deps diffdrr==0.6.1`` plus ``nibabel torchio pandas roma kornia einops
fastcore timm matplotlib scipy imageio tqdm seaborn`` (see /work/shared/PEERS.md).

Conventions matched (see docs/CONVENTIONS.md)
------------------------------------------------------
Ours:   volume frame LPS mm; ``camera_from_volume`` T (4x4), ``p_cam = R p_vol + t``; camera =
        OpenCV (source at origin, +z to detector, +x along columns, +y along rows); detector plane
        z = sdd; pixel (row i, col j) centre at ``((j - u0) * col_sp, (i - v0) * row_sp, sdd)``.
        DRR pixel = ``sum mu dl`` along the ray source -> pixel centre (mu in 1/mm).

DiffDRR 0.6.1 (read from its source):
  * ``diffdrr.data.read`` turns the image's (RAS) affine ``A_ras`` into its *world* frame by
    moving the image centre to the origin (``canonicalize``):  ``A_w = Tc @ A_ras``; it also
    replaces intensities by a normalised HU->density map (we overwrite that with raw mu).
  * ``Detector``: in its *detector frame* the source is at 0 and the pixel (r, c) of the
    returned (h, w) image sits, with ``reverse_x_axis=True`` (its default), at
    ``(delx * ((w-1)/2 - c) + x0,  dely * ((h-1)/2 - r) + y0,  sdd)``   (pixel centres, for
    even and odd sizes alike).  So its detector frame is ours turned 180 deg about z:
    ``p_det = F p_cam`` with ``F = diag(-1, -1, 1)`` (a proper rotation), provided
    ``delx = col_sp, dely = row_sp, x0 = col_sp * (u0 - (w-1)/2), y0 = row_sp * (v0 - (h-1)/2)``.
  * A pose P (``RigidTransform``) maps detector points to the world after the fixed
    ``reorient`` of the subject: ``p_world = P @ reorient @ p_det``
    (``drr.detector.reorient.compose(P)`` = ``P.matrix @ reorient.matrix``).
  * The renderer maps world -> voxel index with ``inverse(A_w)``; ``voxel_shift = 0.5`` puts voxel
    centres at integer indices, which is the NIfTI / ITK affine convention we use.
  * Its ``perspective_projection`` (not used here) places pixel centres at ``u + 0.5`` (it uses
    ``u0 = x0/delx + w/2``); the rendered image itself has centres where stated above.

  Hence, with ``W = A_w @ inv(A_lps)`` (LPS mm -> its world mm: the LPS->RAS flip and the
  centring) the pose we pass is the full 4x4 matrix

        P = W @ inv(T) @ F4 @ inv(reorient),      F4 = diag(-1, -1, 1, 1)

  computed with differentiable torch ops, so gradients reach the input ``camera_from_volume``.

Intensity scale (read from renderers.py, checked numerically by check_peer_diffdrr.py):
  * Siddon: ``img = |target - source|`` (world mm) times ``sum_k mu(mid_k) * (alpha_{k+1} -
    alpha_k)`` with alpha the ray parameter in [0, 1]: already ``sum mu dl`` in mm.
  * Trilinear: ``|target - source| * sum_k mu(alpha_k) * (alpha_max - alpha_min)/(n_points-1)``,
    a rectangle rule over n_points samples spanning the union of all rays' volume crossings:
    also ``sum mu dl`` in mm.  No rescaling is needed (SCALE = 1.0 below) as long as the density
    holds raw mu in 1/mm and the affine is in mm.

Other behaviour worth knowing when benchmarking:
  * Trilinear's alpha range is the min/max over *all rays of the batch*, so a batched render
    differs slightly (~3e-4 of the peak) from rendering the poses one at a time; Siddon does not.
  * Siddon samples voxels with nearest-neighbour ``grid_sample`` (no gradient through the
    lookup); its pose gradient flows only through the ray lengths / plane crossings.  Trilinear's
    gradient also flows through the interpolation (checked against finite differences).
  * Trilinear reconstructs a tent-filtered volume: sharp faces are blurred over one voxel, so
    pixels whose rays graze a face differ from the sharp object's chord (geometry is unaffected).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

#: Factor applied to DiffDRR's output to get ``sum mu dl`` (mm * 1/mm). Both renderers already
#: integrate in world millimetres, so it is 1.
SCALE = 1.0

_F4 = np.diag([-1.0, -1.0, 1.0, 1.0])  # our camera frame <-> DiffDRR detector frame (180 deg about z)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def diffdrr_available() -> bool:
    """True if ``diffdrr`` (and the packages its renderer needs) can be imported."""
    try:
        import diffdrr.data  # noqa: F401
        import diffdrr.drr  # noqa: F401
        import diffdrr.pose  # noqa: F401
    except Exception:  # ImportError, or a missing transitive dependency
        return False
    return True


def _lps_affine(spacing_xyz_mm, origin_lps_mm) -> np.ndarray:
    """Index (i, j, k) -> LPS mm, identity direction, voxel centres at integer indices."""
    a = np.eye(4)
    a[:3, :3] = np.diag(np.asarray(spacing_xyz_mm, dtype=np.float64))
    a[:3, 3] = np.asarray(origin_lps_mm, dtype=np.float64)
    return a


def volume_from_camera(camera_from_volume, device) -> torch.Tensor:
    """The rigid inverse of (B, 4, 4) or (4, 4) ``camera_from_volume`` poses, in closed form so that
    gradients reach them: (B, 4, 4) float64 on ``device``."""
    T = torch.as_tensor(camera_from_volume, device=device)
    if T.ndim == 2:
        T = T.unsqueeze(0)
    if T.shape[-2:] != (4, 4):
        raise ValueError(f"camera_from_volume must be (B, 4, 4), got {tuple(T.shape)}")
    T64 = T.to(torch.float64)
    R = T64[:, :3, :3]
    t = T64[:, :3, 3:]
    inv = torch.zeros_like(T64)
    inv[:, :3, :3] = R.transpose(-1, -2)
    inv[:, :3, 3:] = -R.transpose(-1, -2) @ t
    inv[:, 3, 3] = 1.0
    return inv


def make_diffdrr_renderer(
    mu_zyx,
    spacing_xyz_mm,
    origin_lps_mm,
    *,
    sdd_mm: float,
    rows: int,
    cols: int,
    row_spacing_mm: float,
    col_spacing_mm: float,
    principal_point_colrow=None,
    renderer: str = "trilinear",
    n_points: int = 500,
    device="cpu",
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Build a DiffDRR renderer that follows our conventions.

    Args:
        mu_zyx: (Z, Y, X) linear attenuation in 1/mm; ``mu_zyx[k, j, i]`` is the voxel whose centre
            is at LPS ``origin + (i*sx, j*sy, k*sz)``.
        spacing_xyz_mm: (sx, sy, sz).
        origin_lps_mm: LPS position of voxel (0, 0, 0)'s centre.
        sdd_mm, rows, cols, row_spacing_mm, col_spacing_mm: detector, as in a calibration file.
        principal_point_colrow: (u0, v0) in pixels; default the image centre
            ((cols-1)/2, (rows-1)/2).
        renderer: "trilinear" or "siddon".
        n_points: samples per ray for "trilinear".
        device: torch device.

    Returns:
        ``render(camera_from_volume)``: (B, 4, 4) (or (4, 4)) tensor -> (B, 1, rows, cols) float32
        DRR, pixel [b, 0, i, j] = ``sum mu dl`` along the ray to pixel (row i, col j).
        Differentiable w.r.t. the pose tensor.
    """
    from torchio import ScalarImage

    from diffdrr.data import read
    from diffdrr.drr import DRR
    from diffdrr.pose import RigidTransform

    if renderer not in ("trilinear", "siddon"):
        raise ValueError(f"renderer must be 'trilinear' or 'siddon', not {renderer!r}")
    device = torch.device(device)

    if isinstance(mu_zyx, torch.Tensor):
        mu = mu_zyx.detach().to("cpu", torch.float32)
    else:
        mu = torch.as_tensor(np.ascontiguousarray(mu_zyx), dtype=torch.float32)
    if mu.ndim != 3:
        raise ValueError(f"mu_zyx must be 3-D (Z, Y, X), got shape {tuple(mu.shape)}")
    # torchio wants (C, W, H, D) = (1, X, Y, Z), indexed [0, i, j, k]
    mu_xyz = mu.permute(2, 1, 0).contiguous().unsqueeze(0)

    a_lps = _lps_affine(spacing_xyz_mm, origin_lps_mm)
    a_ras = _LPS_TO_RAS @ a_lps  # as a NIfTI of this volume would store it

    # Go through DiffDRR's own reader (RAS world, centring, "AP" reorient) ...
    subject = read(ScalarImage(tensor=mu_xyz.clone(), affine=a_ras), orientation="AP",
                   center_volume=True)
    # ... then replace its normalised HU->density map by the raw attenuation.
    subject.density.set_data(mu_xyz.clone())

    a_world = np.asarray(subject.volume.affine, dtype=np.float64)  # index -> its world (mm)
    np.testing.assert_allclose(np.asarray(subject.density.affine), a_world, atol=1e-9)
    world_from_lps = a_world @ np.linalg.inv(a_lps)
    reorient = subject.reorient.detach().cpu().numpy().astype(np.float64)
    right = _F4 @ np.linalg.inv(reorient)  # applied after inv(T)

    if principal_point_colrow is None:
        u0, v0 = (cols - 1) / 2.0, (rows - 1) / 2.0
    else:
        u0, v0 = float(principal_point_colrow[0]), float(principal_point_colrow[1])
    x0 = col_spacing_mm * (u0 - (cols - 1) / 2.0)
    y0 = row_spacing_mm * (v0 - (rows - 1) / 2.0)

    drr = DRR(
        subject,
        sdd=float(sdd_mm),
        height=int(rows),
        delx=float(col_spacing_mm),
        width=int(cols),
        dely=float(row_spacing_mm),
        x0=float(x0),
        y0=float(y0),
        reverse_x_axis=True,
        renderer=renderer,
    ).to(device)
    drr.eval()

    left_t = torch.as_tensor(world_from_lps, dtype=torch.float64, device=device)
    right_t = torch.as_tensor(right, dtype=torch.float64, device=device)
    kwargs = {"n_points": int(n_points)} if renderer == "trilinear" else {}

    def render(camera_from_volume: torch.Tensor) -> torch.Tensor:
        P = left_t @ volume_from_camera(camera_from_volume, device) @ right_t
        img = drr(RigidTransform(P.to(torch.float32)), **kwargs)
        if SCALE != 1.0:
            img = img * SCALE
        return img

    render.drr = drr  # the underlying DiffDRR module, for inspection
    render.world_from_lps = world_from_lps
    return render
