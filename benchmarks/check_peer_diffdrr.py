"""Validate benchmarks/peer_diffdrr.py (DiffDRR 0.6.1 under our conventions) against analytic truth.

Run:  /work/main/.venv/bin/python benchmarks/check_peer_diffdrr.py [--bench]

Uses none of the project's own renderer code.  Phantoms (mu in 1/mm, LPS mm, identity direction):
  * a uniform ball (R = 30 mm, mu = 0.02/mm) in an 80^3, 1 mm volume, partial-volume voxelised
    (exact inside/outside, 6^3 supersampling of the voxels the surface crosses), placed off the
    volume centre so that a flipped axis would show;
  * an axis-aligned uniform box (faces on voxel boundaries, so exactly voxelised) placed off-centre
    in a non-cubic, anisotropic volume (X, Y, Z) = (96, 80, 64) voxels of (0.9, 1.0, 1.2) mm.
Truth, per pixel (row i, col j): the ray from the source (camera origin) along
d = ((j - u0)/fx, (i - v0)/fy, 1); the object is mapped into the camera frame with the pose
(ball) or the ray into the volume frame (box), and the chord length is computed in closed form;
the expected pixel is mu * chord.
Checks, per case and renderer:
  * relative error |drr - truth| / truth over rays well inside the object (ball: impact parameter
    < 0.7 R; box: entry and exit points >= 3 mm from any edge of the face they cross), mean / p95 /
    max, and the max absolute error over all pixels;
  * geometry: the DRR's centre of mass vs the analytic image's centre of mass (same pixels) and,
    for the ball, vs the projection of its centre (K @ (R c + t));
  * a gradient w.r.t. the input pose exists, is finite and is non-zero.
Also: a batch of two poses vs two single renders, and autograd vs central finite differences of a
weighted image sum w.r.t. the pose translation (trilinear).
Exit status 1 if a geometry offset exceeds 0.5 px, or the mean relative error over interior rays
exceeds 2 % (trilinear with n_points = 500 and 1000, and Siddon), or the p95 exceeds 4 %.

--bench additionally times DiffDRR forward and forward+backward (w.r.t. the pose) on a 128x128
detector for a 100x100x130 volume, both renderers, torch threads = 2, median of 5 after warm-up.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_diffdrr import diffdrr_available, make_diffdrr_renderer  # noqa: E402

MU = 0.02
GEOM_TOL_PX = 0.5
REL_MEAN_TOL = 0.02
REL_P95_TOL = 0.04


# ----------------------------------------------------------------------------- rotations / poses
def rot(axis: str, deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def pose_placing(R: np.ndarray, point_lps: np.ndarray, at_cam: np.ndarray) -> np.ndarray:
    """camera_from_volume with rotation R that puts LPS point `point_lps` at camera point `at_cam`."""
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(at_cam, float) - R @ np.asarray(point_lps, float)
    return T


# An AP-like C-arm view (right-handed): camera x = patient Left (LPS +x), camera y (down the
# image) = Inferior (LPS -z), camera z (source -> detector) = Posterior (LPS +y).
R_AP = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])


# ----------------------------------------------------------------------------- detector rays
class Detector:
    def __init__(self, sdd, rows, cols, row_sp, col_sp, pp_colrow=None):
        self.sdd, self.rows, self.cols = float(sdd), int(rows), int(cols)
        self.row_sp, self.col_sp = float(row_sp), float(col_sp)
        self.fx, self.fy = self.sdd / self.col_sp, self.sdd / self.row_sp
        if pp_colrow is None:
            pp_colrow = ((cols - 1) / 2.0, (rows - 1) / 2.0)
        self.u0, self.v0 = float(pp_colrow[0]), float(pp_colrow[1])

    def rays(self) -> np.ndarray:
        """(rows, cols, 3) camera-frame directions d = ((u-u0)/fx, (v-v0)/fy, 1)."""
        v, u = np.mgrid[0 : self.rows, 0 : self.cols].astype(np.float64)
        return np.stack([(u - self.u0) / self.fx, (v - self.v0) / self.fy, np.ones_like(u)], -1)

    def project(self, p_cam) -> np.ndarray:
        """(u, v) = (col, row) of a camera-frame point."""
        X, Y, Z = p_cam
        return np.array([self.u0 + self.fx * X / Z, self.v0 + self.fy * Y / Z])

    def kwargs(self) -> dict:
        return dict(sdd_mm=self.sdd, rows=self.rows, cols=self.cols, row_spacing_mm=self.row_sp,
                    col_spacing_mm=self.col_sp, principal_point_colrow=(self.u0, self.v0))


# ----------------------------------------------------------------------------- phantoms
def voxel_centres(shape_zyx, spacing_xyz, origin_lps):
    nz, ny, nx = shape_zyx
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    return np.stack([origin_lps[0] + i * spacing_xyz[0], origin_lps[1] + j * spacing_xyz[1],
                     origin_lps[2] + k * spacing_xyz[2]], -1)


def ball_volume(shape_zyx, spacing_xyz, origin_lps, centre_lps, radius, mu, ss=6):
    """Partial-volume voxelisation of a ball (fraction of each voxel inside it, times mu)."""
    sp = np.asarray(spacing_xyz, float)
    p = voxel_centres(shape_zyx, sp, origin_lps)
    d = np.linalg.norm(p - centre_lps, axis=-1)
    half_diag = 0.5 * np.linalg.norm(sp)
    frac = (d < radius).astype(np.float64)
    edge = np.abs(d - radius) < half_diag
    offs = (np.arange(ss) + 0.5) / ss - 0.5
    oz, oy, ox = np.meshgrid(offs, offs, offs, indexing="ij")
    sub = np.stack([ox.ravel() * sp[0], oy.ravel() * sp[1], oz.ravel() * sp[2]], -1)  # (ss^3, 3)
    pe = p[edge]  # (n, 3)
    inside = np.linalg.norm(pe[:, None, :] + sub[None] - centre_lps, axis=-1) < radius
    frac[edge] = inside.mean(axis=1)
    return (mu * frac).astype(np.float32)


def box_volume(shape_zyx, lo_ijk, hi_ijk, mu):
    """Box covering voxels lo..hi-1 along each axis: exact voxelisation; returns mu_zyx."""
    vol = np.zeros(shape_zyx, np.float32)
    vol[lo_ijk[2] : hi_ijk[2], lo_ijk[1] : hi_ijk[1], lo_ijk[0] : hi_ijk[0]] = mu
    return vol


# ----------------------------------------------------------------------------- analytic chords
def ball_truth(det: Detector, T: np.ndarray, centre_lps, radius):
    d = det.rays()
    dn = d / np.linalg.norm(d, axis=-1, keepdims=True)
    c = T[:3, :3] @ centre_lps + T[:3, 3]
    b = dn @ c
    dist2 = np.maximum(c @ c - b * b, 0.0)
    chord = 2.0 * np.sqrt(np.maximum(radius**2 - dist2, 0.0))
    interior = np.sqrt(dist2) < 0.7 * radius
    return chord, interior, det.project(c)


def box_truth(det: Detector, T: np.ndarray, lo_lps, hi_lps, margin=3.0):
    d = det.rays()
    R, t = T[:3, :3], T[:3, 3]
    o_v = R.T @ (-t)  # source in the volume frame
    d_v = d @ R  # = (R.T @ d) for each ray
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d_v
        t1 = (np.asarray(lo_lps) - o_v) * inv
        t2 = (np.asarray(hi_lps) - o_v) * inv
    tmin = np.where(np.isnan(t1), -np.inf, np.minimum(t1, t2))
    tmax = np.where(np.isnan(t1), np.inf, np.maximum(t1, t2))
    # rays parallel to a slab and outside it
    par = d_v == 0
    outside_par = par & ((o_v < np.asarray(lo_lps)) | (o_v > np.asarray(hi_lps)))
    t_in = tmin.max(-1)
    t_out = tmax.min(-1)
    hit = (t_out > t_in) & ~outside_par.any(-1)
    length = np.linalg.norm(d, axis=-1)
    chord = np.where(hit, (t_out - t_in) * length, 0.0)

    # interior: entry and exit points at least `margin` mm from the edges of their faces
    lo, hi = np.asarray(lo_lps, float), np.asarray(hi_lps, float)

    def face_margin(tt, face_axis):
        p = o_v + tt[..., None] * d_v
        m = np.full(tt.shape, np.inf)
        for a in range(3):
            da = np.minimum(p[..., a] - lo[a], hi[a] - p[..., a])
            m = np.where(face_axis == a, m, np.minimum(m, da))
        return m

    ax_in = tmin.argmax(-1)
    ax_out = tmax.argmin(-1)
    interior = hit & (face_margin(t_in, ax_in) >= margin) & (face_margin(t_out, ax_out) >= margin)
    return chord, interior


# ----------------------------------------------------------------------------- metrics
def com(img: np.ndarray) -> np.ndarray:
    v, u = np.mgrid[0 : img.shape[0], 0 : img.shape[1]].astype(np.float64)
    w = img.sum()
    return np.array([(img * u).sum() / w, (img * v).sum() / w])


def evaluate(name, renderer_name, img, truth, interior, proj_centre=None):
    """Print one line; return list of failure strings."""
    fails = []
    err = img - truth
    rel = np.abs(err[interior]) / truth[interior]
    c_drr, c_true = com(img), com(truth)
    dg = np.linalg.norm(c_drr - c_true)
    line = (f"{name:<34s} {renderer_name:<15s} n_int={interior.sum():5d} rel mean={100*rel.mean():6.3f}% "
            f"p95={100*np.percentile(rel, 95):6.3f}% max={100*rel.max():6.3f}%  "
            f"max|err|={np.abs(err).max():.4f} (peak {truth.max():.3f})  "
            f"CoM drr=({c_drr[0]:8.3f},{c_drr[1]:8.3f}) truth=({c_true[0]:8.3f},{c_true[1]:8.3f}) "
            f"d={dg:.3f}px")
    if proj_centre is not None:
        dp = np.linalg.norm(c_drr - proj_centre)
        line += f"  proj.centre=({proj_centre[0]:8.3f},{proj_centre[1]:8.3f}) d={dp:.3f}px"
        if dp > GEOM_TOL_PX:
            fails.append(f"{name}/{renderer_name}: CoM vs projected centre {dp:.3f} px")
    print(line, flush=True)
    if dg > GEOM_TOL_PX:
        fails.append(f"{name}/{renderer_name}: CoM vs analytic CoM {dg:.3f} px")
    if rel.mean() > REL_MEAN_TOL:
        fails.append(f"{name}/{renderer_name}: mean relative chord error {100*rel.mean():.2f}%")
    if np.percentile(rel, 95) > REL_P95_TOL:
        fails.append(f"{name}/{renderer_name}: p95 relative chord error "
                     f"{100*np.percentile(rel, 95):.2f}%")
    edge = truth[0].sum() + truth[-1].sum() + truth[:, 0].sum() + truth[:, -1].sum()
    if edge > 0:
        fails.append(f"{name}: object projection touches the detector border (bad test case)")
    return fails


RENDERERS = [("siddon", {}), ("trilinear", {"n_points": 500}), ("trilinear", {"n_points": 1000})]


def check_render(name, label, f, T, det, truth, interior, proj_centre=None):
    """Render ``f`` at pose ``T``, score the image against the analytic ``truth`` and check that a
    gradient reaches the pose; returns (failures, the image as float64 numpy)."""
    pose = torch.as_tensor(T, dtype=torch.float64)[None].clone().requires_grad_(True)
    out = f(pose)
    assert out.shape == (1, 1, det.rows, det.cols), out.shape
    img = out[0, 0].detach().double().numpy()
    fails = evaluate(name, label, img, truth, interior, proj_centre)
    (out[0, 0] * torch.as_tensor(truth, dtype=out.dtype)).sum().backward()  # gradient w.r.t. the input pose
    g = pose.grad
    if g is None or not torch.isfinite(g).all() or g[0, :3, 3].abs().max() == 0:
        fails.append(f"{name}/{label}: no usable gradient w.r.t. the pose")
    return fails, img


def run_case(name, mu_zyx, spacing, origin, det, T, truth, interior, proj_centre=None):
    fails = []
    for rname, extra in RENDERERS:
        label = rname if not extra else f"{rname}({extra['n_points']})"
        f = make_diffdrr_renderer(mu_zyx, spacing, origin, renderer=rname, **extra, **det.kwargs())
        fails += check_render(name, label, f, T, det, truth, interior, proj_centre)[0]
    return fails


def translation_gradient_check(make_renderer, label: str) -> list[str]:
    """Autograd vs central finite differences of L = sum(drr * w) w.r.t. the translation, for the
    renderer ``make_renderer(mu_zyx, spacing, origin, det)`` of a ball."""
    shape = (80, 80, 80)
    origin = np.array([-120.0, 35.0, 210.0])
    centre = origin + np.array([44.0, 37.0, 41.0])
    mu = ball_volume(shape, (1, 1, 1), origin, centre, 30.0, MU)
    det = Detector(1000, 64, 64, 2.0, 2.0)
    T = pose_placing(rot("y", 20) @ rot("x", 10), centre, [5.0, -3.0, 700.0])
    ramp = torch.linspace(-1, 1, 64, dtype=torch.float64)
    w = (ramp[None, :] + 0.5 * ramp[:, None]).float()
    print(f"finite-difference check, {label}, L = sum(drr * ramp), d/dt (per mm):")
    f = make_renderer(mu, (1, 1, 1), origin, det)
    pose = torch.as_tensor(T)[None].clone().requires_grad_(True)
    (f(pose)[0, 0] * w).sum().backward()
    ag = pose.grad[0, :3, 3].numpy()
    fd = []
    for a in range(3):
        h = 0.25
        Tp, Tm = T.copy(), T.copy()
        Tp[a, 3] += h
        Tm[a, 3] -= h
        with torch.no_grad():
            lp = (f(torch.as_tensor(Tp)[None])[0, 0] * w).sum().item()
            lm = (f(torch.as_tensor(Tm)[None])[0, 0] * w).sum().item()
        fd.append((lp - lm) / (2 * h))
    fd = np.array(fd)
    print(f"  autograd = {np.array2string(ag, precision=4)}   finite diff = "
          f"{np.array2string(fd, precision=4)}")
    rel = np.abs(ag - fd).max() / np.abs(fd).max()
    print(f"  max |autograd - fd| / max |fd| = {rel:.3f}")
    return [] if rel < 0.1 else [f"{label} gradient disagrees with finite differences ({rel:.3f})"]


def fd_gradient_check():
    """The finite-difference check of DiffDRR's trilinear renderer at 1000 points."""
    return translation_gradient_check(
        lambda mu, spacing, origin, det: make_diffdrr_renderer(mu, spacing, origin, renderer="trilinear",
                                                               n_points=1000, **det.kwargs()),
        "trilinear(1000)")


def validate() -> list[str]:
    fails = []
    hdr = "case                               renderer"
    print(hdr)

    # ---------------- ball in an 80^3, 1 mm volume, centre off the volume centre
    shape = (80, 80, 80)
    spacing = (1.0, 1.0, 1.0)
    origin = np.array([-120.0, 35.0, 210.0])
    centre = origin + np.array([44.0, 37.0, 41.0])  # volume centre is origin + 39.5
    R_ball = 30.0
    mu_ball = ball_volume(shape, spacing, origin, centre, R_ball, MU)

    det128 = Detector(1000.0, 128, 128, 1.0, 1.0)
    det_odd = Detector(1020.0, 151, 176, 1.1, 1.0, pp_colrow=(90.3, 70.6))
    ball_cases = [
        ("ball identity z=700", det128, pose_placing(np.eye(3), centre, [0, 0, 700])),
        ("ball rot(z25 y35 x-20) z=650", det128,
         pose_placing(rot("z", 25) @ rot("y", 35) @ rot("x", -20), centre, [0, 0, 650])),
        ("ball AP-view off-axis, odd det", det_odd,
         pose_placing(rot("y", 15) @ R_AP, centre, [18.0, -12.0, 760.0])),
    ]
    for name, det, T in ball_cases:
        truth_chord, interior, pc = ball_truth(det, T, centre, R_ball)
        fails += run_case(name, mu_ball, spacing, origin, det, T, MU * truth_chord, interior, pc)

    # ---------------- box in an anisotropic, non-cubic volume, off-centre
    shape_b = (64, 80, 96)  # (Z, Y, X)
    spacing_b = (0.9, 1.0, 1.2)
    origin_b = np.array([30.0, -60.0, -400.0])
    lo_ijk, hi_ijk = np.array([20, 12, 30]), np.array([62, 52, 52])  # voxels lo..hi-1
    sp = np.asarray(spacing_b)
    lo_lps = origin_b + (lo_ijk - 0.5) * sp
    hi_lps = origin_b + (hi_ijk - 0.5) * sp
    vol_centre = origin_b + (np.array(shape_b[::-1]) - 1) / 2 * sp
    mu_box = box_volume(shape_b, lo_ijk, hi_ijk, MU)
    box_cases = [
        ("box identity z=700", det128, pose_placing(np.eye(3), vol_centre, [0, 0, 700])),
        ("box rot(x20 y-30 z15) off-axis", det128,
         pose_placing(rot("x", 20) @ rot("y", -30) @ rot("z", 15), vol_centre, [8.0, -6.0, 720.0])),
        ("box lateral (y90) odd det", det_odd,
         pose_placing(rot("y", 90) @ R_AP, vol_centre, [-10.0, 12.0, 800.0])),
    ]
    for name, det, T in box_cases:
        truth_chord, interior = box_truth(det, T, lo_lps, hi_lps)
        fails += run_case(name, mu_box, spacing_b, origin_b, det, T, MU * truth_chord, interior)

    # ---------------- batch of two poses == two single renders.  Siddon must agree exactly;
    # Trilinear samples n_points over the union of the whole batch's volume crossings
    # (alphamin/alphamax are min/max over the batch), so a batched render differs slightly.
    Ts = torch.stack([torch.as_tensor(ball_cases[0][2]), torch.as_tensor(ball_cases[1][2])])
    for rname, tol in (("siddon", 1e-4), ("trilinear", 2e-3)):
        f = make_diffdrr_renderer(mu_ball, spacing, origin, renderer=rname, n_points=500,
                                  **det128.kwargs())
        with torch.no_grad():
            both = f(Ts)
            one = torch.cat([f(Ts[:1]), f(Ts[1:])])
        dmax = (both - one).abs().max().item() / one.abs().max().item()
        print(f"batch of 2 vs 2 single renders, {rname}: max |diff| / peak = {dmax:.2e}")
        if dmax > tol:
            fails.append(f"{rname}: batched render differs from single renders ({dmax:.2e})")

    fails += fd_gradient_check()
    return fails


# ----------------------------------------------------------------------------- timing
def bench():
    torch.set_num_threads(2)
    print(f"\ntiming: torch {torch.__version__}, threads = {torch.get_num_threads()}, "
          f"volume (Z,Y,X) = (130,100,100) at 1.5 mm, detector 128x128 at 1.5 mm, sdd 1000 mm")
    shape = (130, 100, 100)
    spacing = (1.5, 1.5, 1.5)
    origin = np.array([-75.0, -75.0, -97.5])
    rng = np.random.default_rng(0)
    centre = origin + (np.array(shape[::-1]) - 1) / 2 * np.asarray(spacing)
    p = voxel_centres(shape, spacing, origin)
    r = np.linalg.norm((p - centre) / np.array([70.0, 70.0, 90.0]), axis=-1)
    mu = np.where(r < 1.0, MU * (1 + 0.5 * rng.random(shape)), 0.0).astype(np.float32)
    det = Detector(1000.0, 128, 128, 1.5, 1.5)
    T = pose_placing(rot("y", 10) @ rot("x", 5) @ R_AP, centre, [2.0, -3.0, 700.0])
    Tt = torch.as_tensor(T)[None]
    for rname, extra in [("siddon", {}), ("trilinear", {"n_points": 500})]:
        f = make_diffdrr_renderer(mu, spacing, origin, renderer=rname, **extra, **det.kwargs())
        fw, fb = [], []
        for it in range(6):  # 1 warm-up + 5
            t0 = time.perf_counter()
            with torch.no_grad():
                f(Tt)
            t1 = time.perf_counter()
            pose = Tt.clone().requires_grad_(True)
            f(pose).mean().backward()
            t2 = time.perf_counter()
            if it:
                fw.append(t1 - t0)
                fb.append(t2 - t1)
        label = rname if not extra else f"{rname}({extra['n_points']})"
        print(f"  {label:<15s} forward {statistics.median(fw):.3f} s   forward+backward "
              f"{statistics.median(fb):.3f} s   (median of 5; runs fwd {['%.3f' % x for x in fw]}, "
              f"fwd+bwd {['%.3f' % x for x in fb]})", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", action="store_true", help="also time forward / forward+backward")
    args = ap.parse_args()
    if not diffdrr_available():
        print("diffdrr is not importable; install it as described in /work/shared/PEERS.md")
        return 2
    torch.set_num_threads(2)
    fails = validate()
    if args.bench:
        bench()
    if fails:
        print("\nFAILED:")
        for f in fails:
            print("  " + f)
        return 1
    print("\nOK: geometry within %.1f px, chord errors within tolerance" % GEOM_TOL_PX)
    return 0


if __name__ == "__main__":
    sys.exit(main())
