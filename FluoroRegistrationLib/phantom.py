"""Procedural knee CT phantom (femur, tibia, patella, fibula) with ground-truth labels.

Frame (see docs/CONVENTIONS.md): LPS millimetres, identity direction. x = patient Left,
y = Posterior, z = Superior. Arrays are indexed ``[k, j, i]`` = (z, y, x), as
``SimpleITK.GetImageFromArray`` expects. The leg's long axis is z (femur superior), the joint line
lies near the volume centre, the patella is anterior (-y), and the fibula lateral-posterior
(for a right leg lateral is -x).

Bones are smooth implicit shapes (signed-distance-like functions, negative inside, in mm) built
from smooth unions of ellipsoids and tapered capsules. Materials follow the distance to the bone
surface: a cortical shell (1200-1800 HU; ~1.2 mm at the epiphyses, 2.5-3.5 mm at the shafts, never
thinner than ~1 voxel so the shell stays closed), textured trabecular bone (150-400 HU, a
band-passed random field of 2.5-5 mm wavelength), marrow in the shafts (~30 HU), 2 mm cartilage
(~100 HU) on the articular surfaces (the femur-tibia bone gap is 3.5-5 mm), then muscle (~50 HU)
with fat septa, fat pads and tendons, a subcutaneous fat layer (~-100 HU, 3-14 mm), skin (~25 HU,
2 mm; leg cross-section ~120 mm at the knee) and air (-1000 HU, noise-free).
Soft tissue and marrow carry Gaussian noise (std 15 HU).

Flexion: the tibia, fibula and the lower leg's soft tissue rotate rigidly by ``flexion_deg``
about the flexion axis ``flexion_axis = (1, 0, 0)`` through ``knee_centre_mm`` (the centre of the
femoral condyles), right-handed: ``p' = c + R_x(flexion) (p - c)`` with
``R_x(a) = [[1,0,0],[0,cos a,-sin a],[0,sin a,cos a]]``. Positive flexion swings the tibia's distal
end toward +y (posterior), as a flexing knee does. The patella rotates about the same axis by
0.65 x flexion and slides 12 (1 - cos(flexion)) mm toward the axis (along its own posterior
direction), so it stays ~5-7 mm in front of the trochlea/condyles; the femur never moves. The
femur-tibia gap stays ~4.5 mm for 0-90 deg (the model is meant for -10..100 deg).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .errors import FluoroRegError
from .limits import check_allocation, check_spacing

LABELS = {"femur": 1, "tibia": 2, "patella": 3, "fibula": 4}

# Knee centre (on the flexion axis) relative to the volume centre, mm (LPS). The femoral condyles
# reach 22 mm below it and the tibial plateau 25.5 mm below, so the joint line is at z ~ 0.
_KNEE_OFFSET = (0.0, 0.0, 24.0)
_PATELLA_RATIO = 0.65   # patella rotation / knee flexion
_PATELLA_SLIDE = 12.0   # mm; the patella also slides slide*(1-cos(flexion)) toward the axis
_HU = dict(air=-1000.0, skin=25.0, fat=-100.0, muscle=50.0, tendon=90.0, cartilage=100.0,
          marrow=30.0)


@dataclass(frozen=True, eq=False)
class Phantom:
    """A knee CT phantom. Arrays are (Z, Y, X) = [k, j, i]; all lengths in mm, LPS frame."""
    hu: np.ndarray          # (Z, Y, X) int16 Hounsfield units
    labels: np.ndarray      # (Z, Y, X) uint8, ids as LABELS, 0 = not bone
    spacing_mm: tuple       # (sx, sy, sz), x = i axis, y = j, z = k
    origin_mm: tuple        # LPS (x, y, z) of voxel [0, 0, 0]'s centre; identity direction
    label_names: dict       # {"femur": 1, ...}
    flexion_deg: float
    knee_centre_mm: tuple   # LPS point on the flexion axis (centre of the femoral condyles)
    flexion_axis: tuple     # unit LPS vector of the flexion axis, (1, 0, 0)
    side: str = "right"     # "right" (lateral = -x) or "left" (mirrored)


# ----------------------------------------------------------------------------- SDF primitives
# All take broadcastable float32 arrays x, y, z (mm, bone-local frame: origin at the knee
# centre, x medial, y posterior, z superior) and return a distance-like field (<0 inside).

def _len(*c):
    return np.sqrt(sum(ci * ci for ci in c))


def _smin(a, b, k):
    """Polynomial smooth union of two distance fields (blend radius k mm; 1-Lipschitz)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _smax(a, b, k):
    return -_smin(-a, -b, k)


def _ellipsoid(x, y, z, c, r):
    px, py, pz = (x - c[0]) / r[0], (y - c[1]) / r[1], (z - c[2]) / r[2]
    k0 = _len(px, py, pz)
    k1 = _len(px / r[0], py / r[1], pz / r[2])
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def _capsule(x, y, z, a, b, ra, rb, sx=1.0):
    """Tapered capsule from a (radius ra) to b (radius rb); x is shrunk by sx >= 1, giving an
    elliptic cross-section sx times wider in x (distances there are under-estimated)."""
    px, py, pz = (x - a[0]) / sx, y - a[1], z - a[2]
    bx, by, bz = (b[0] - a[0]) / sx, b[1] - a[1], b[2] - a[2]
    t = np.clip((px * bx + py * by + pz * bz) / (bx * bx + by * by + bz * bz), 0.0, 1.0)
    return _len(px - t * bx, py - t * by, pz - t * bz) - (ra + (rb - ra) * t)


def _ellipse2(u, v, a, b):
    """Elliptic cylinder (axis normal to u, v); Lipschitz <= 1."""
    return (_len(u / a, v / b) - 1.0) * min(a, b)


def _ss(v, a, b):
    """Smoothstep from 0 at v <= a to 1 at v >= b."""
    t = np.clip((v - a) / (b - a), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


# ----------------------------------------------------------------------------- bones

def _femur(x, y, z):
    d = _ellipsoid(x, y, z, (24, 0, 0), (15.5, 22, 22))                    # medial condyle
    d = _smin(d, _ellipsoid(x, y, z, (-23, 0, 0), (15, 22, 22)), 4)       # lateral condyle
    d = _smin(d, _ellipsoid(x, y, z, (0, -6, 6), (33, 21, 17)), 6)        # epiphysis body
    d = _smin(d, _ellipsoid(x, y, z, (-14, -20, 6), (16, 17, 20)), 4)     # lateral trochlear facet
    d = _smin(d, _ellipsoid(x, y, z, (14, -18, 4), (16, 15, 19)), 4)      # medial trochlear facet
    d = _smin(d, _ellipsoid(x, y, z, (33, -1, 6), (6, 11, 12)), 4)        # medial epicondyle
    d = _smin(d, _ellipsoid(x, y, z, (-32, 0, 7), (6, 10, 11)), 4)        # lateral epicondyle
    d = _smin(d, _ellipsoid(x, y, z, (0, -6, 22), (30, 17, 22)), 8)       # metaphyseal flare
    d = _smin(d, _capsule(x, y, z, (0, -5, 22), (0, -2, 85), 17, 14), 14)  # metaphysis
    d = _smin(d, _capsule(x, y, z, (0, -2, 70), (-30, 0, 420), 14, 13.5), 8)   # shaft
    roof = np.minimum(-22 + 1.08 * (y + 10), 5.0)                         # Blumensaat's line
    notch = _ellipse2(x, z - roof + 20, 10.5, 20) / 1.47                   # arched notch
    return _smax(d, -notch, 2)


def _tibia(x, y, z):
    wx = _ellipse2(x, y - 3, 38, 24) + 3.0                                 # plateau: rounded
    wz = np.abs(z + 35.75) - 10.25 + 3.0                                   # slab z in [-46, -25.5]
    d = np.minimum(np.maximum(wx, wz), 0) + _len(np.maximum(wx, 0), np.maximum(wz, 0)) - 3.0
    for s in (1.0, -1.0):                                                  # concave facets
        d = _smax(d, 60.0 - _len(x - 20 * s, y - 4, z - 33.0), 1.5)
        d = _smin(d, _ellipsoid(x, y, z, (5 * s, 3, -26), (4.5, 9, 6.5)), 2)  # eminence spines
    d = _smin(d, _ellipsoid(x, y, z, (0, -19, -54), (11, 7, 14)), 5)      # tuberosity
    d = _smin(d, _ellipsoid(x, y, z, (0, 4, -48), (34, 22, 18)), 10)      # condylar flare
    d = _smin(d, _capsule(x, y, z, (0, 4, -52), (0, 5, -125), 19, 13.5, 1.15), 14)  # metaphysis
    d = _smin(d, _capsule(x, y, z, (0, 5, -110), (0, 8, -340), 13, 12, 1.1), 6)    # shaft
    return _smin(d, _capsule(x, y, z, (0, -7, -75), (0, -4, -300), 6, 5), 6)       # ant. crest


def _patella(x, y, z):
    d = _ellipsoid(x, y, z, (0, -51, 9), (22, 10, 22.5))
    d = _smin(d, _ellipsoid(x, y, z, (0, -45, 11), (9, 5, 16)), 3)        # articular ridge
    return _smin(d, _ellipsoid(x, y, z, (0, -51, -7), (12, 7, 10)), 4)    # inferior apex


def _fibula(x, y, z):
    d = _ellipsoid(x, y, z, (-41, 22, -60), (10, 9.5, 11))               # head
    return _smin(d, _capsule(x, y, z, (-41, 22, -66), (-37, 19, -345), 7.5, 6.5), 6)


# name: (sdf, local AABB (min, max), frame ('femur' | 'tibia' | 'patella'),
#        (t_epiphysis, t_shaft, z_from, z_to) cortical thickness vs local z, cartilage region)
_BONES = {
    "femur": (_femur, ((-45, -41, -25), (50, 28, 455)), "femur", (1.2, 3.5, 35, 85),
              lambda x, y, z: (z < 25) & (np.abs(x) < 33)),
    "tibia": (_tibia, ((-45, -29, -355), (45, 33, -17)), "tibia", (1.2, 3.0, -60, -115),
              lambda x, y, z: (z > -30) & (np.abs(x) < 36)),
    "patella": (_patella, ((-24, -64, -19), (24, -36, 33)), "patella", (1.5, 1.5, 1e3, 2e3),
                lambda x, y, z: y > -48),
    "fibula": (_fibula, ((-52, 10, -355), (-29, 33, -48)), "tibia", (1.2, 2.5, -65, -90),
               lambda x, y, z: np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), bool)),
}


# ----------------------------------------------------------------------------- helpers

def _waves(rng, n, lam_lo, lam_hi):
    """Random plane waves (k vectors in rad/mm, phases) of a Gaussian-like random field."""
    v = rng.standard_normal((n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    k = v * (2 * np.pi / rng.uniform(lam_lo, lam_hi, (n, 1)))
    return k.astype(np.float32), rng.uniform(0, 2 * np.pi, n).astype(np.float32)


def _field(w, x, y, z):
    """Zero-mean, unit-variance random field sum_n cos(k_n . p + phi_n) * sqrt(2/N)."""
    k, ph = w
    g = 0.0
    for (kx, ky, kz), p in zip(k, ph):
        g = g + np.cos(kx * x + (ky * y + kz * z + p))
    return g * np.float32(np.sqrt(2.0 / len(ph)))


def _rot(angle_deg, Y, Z):
    """Bone-local (y, z) of world offsets (Y, Z) from the knee centre, for a frame rotated by
    angle_deg about +x (local = R_x(angle)^T world)."""
    a = np.deg2rad(angle_deg)
    ca, sa = np.float32(np.cos(a)), np.float32(np.sin(a))
    return ca * Y + sa * Z, ca * Z - sa * Y


def _leg(x, Y, Z, yl, zl):
    """Skin surface distance (mm, <0 inside) of the leg: thigh (femur frame, above the axis),
    lower leg (tibia frame; knee -> calf -> ankle taper) and a knee blob, smoothly united."""
    zp = np.maximum(Z, 0)
    ax, by = 60 + 0.08 * zp, 60 + 0.04 * zp
    d = (_len(x / ax, (Y + 8) / by) - 1.0) * np.minimum(ax, by)
    d = np.maximum(d, -Z)
    s = _ss(-zl, 30.0, 110.0)
    taper = 0.2 * np.clip(-zl - 200.0, 0, None)
    ax, by = 58 - 4 * s - taper, 58 - 6 * s - taper
    ds = (_len(x / ax, (yl + 8 - 34 * s) / by) - 1.0) * np.minimum(ax, by)
    d = _smin(d, np.maximum(ds, zl), 12)
    return _smin(d, _len(x, Y + 6, Z) - 60.0, 12)


# ----------------------------------------------------------------------------- builder

FLEXION_RANGE_DEG = (-20.0, 160.0)  # hyperextension to deep flexion


def check_flexion(flexion_deg, what: str = "flexion") -> float:
    """A knee flexion angle in degrees within :data:`FLEXION_RANGE_DEG`, else one line."""
    lo, hi = FLEXION_RANGE_DEG
    try:
        value = float(flexion_deg)
    except (TypeError, ValueError):
        raise FluoroRegError(f"{what} {flexion_deg!r} is not a number of degrees") from None
    if not lo <= value <= hi:
        raise FluoroRegError(f"{what} {value:g} deg is outside a knee's range {lo:g} to {hi:g} deg; give degrees")
    return value


def _phantom_grid(spacing_mm, size_mm, side):
    """Checked spacing (3,) and voxel counts (nx, ny, nz) of a phantom: a sane spacing,
    a positive size and a grid that fits the memory budget (raises FluoroRegError, one line)."""
    if side not in ("right", "left"):
        raise FluoroRegError(f"side must be 'right' or 'left', got {side!r}")
    try:
        h = np.broadcast_to(np.asarray(spacing_mm, float), (3,)).copy()
        size = np.broadcast_to(np.asarray(size_mm, float), (3,)).copy()
    except (TypeError, ValueError):
        raise FluoroRegError("phantom spacing_mm and size_mm must be a number or 3 numbers (mm)") from None
    check_spacing(h, "the phantom", "pass a spacing in that range (--spacing; 0.5-2 mm is typical)")
    if not (np.isfinite(size).all() and (size > 0).all()):
        raise FluoroRegError(f"phantom size ({', '.join(f'{v:g}' for v in size)}) mm must be positive and finite "
                             "(--size x,y,z)")
    n = np.maximum(1.0, np.rint(size / h))
    slab = min(np.prod(n), max(n[0] * n[1], 4e6))
    # measured peak: ~3 B/voxel of results (6 while writing) + ~40 B/voxel of one slab's float32 fields
    check_allocation(6.0 * np.prod(n) + 40.0 * slab,
                     f"a {'x'.join(f'{v:.0f}' for v in n)}-voxel knee phantom (spacing "
                     f"{', '.join(f'{v:g}' for v in h)} mm)",
                     "use a coarser spacing (--spacing) or a smaller size (--size)")
    return h, n.astype(np.int64)


def make_knee_phantom(spacing_mm=1.0, flexion_deg=0.0, seed=0, size_mm=(160.0, 160.0, 240.0),
                      side="right") -> Phantom:
    """Build a knee CT phantom.

    spacing_mm: float or (sx, sy, sz) voxel size in mm (0.5-2 mm is the intended range).
    flexion_deg: knee flexion in degrees; the tibia/fibula/lower leg rotate by +flexion_deg about
        +x through ``knee_centre_mm`` (distal tibia moves to +y, posterior), the patella by
        0.65 * flexion_deg; the femur is fixed.
    seed: seeds ``np.random.default_rng`` (trabecular texture, fat septa, noise): deterministic.
    size_mm: physical extent (x, y, z) in mm; the grid has round(size / spacing) voxels per axis
        and is centred on LPS (0, 0, 0); the knee centre is at (0, 0, 24) mm, joint line at z ~ 0.
    side: "right" (lateral = -x) or "left" (mirrored, lateral = +x).
    Returns a ``Phantom`` with (Z, Y, X) int16 HU and uint8 label arrays. Raises FluoroRegError
    (a ValueError) for a spacing outside volume.SANE_SPACING_MM or not finite, a size that is not
    positive, or a grid over the memory budget (volume.memory_budget), before allocating it.
    """
    flex = check_flexion(flexion_deg, "phantom flexion")
    h, n = _phantom_grid(spacing_mm, size_mm, side)                   # n = (nx, ny, nz)
    origin = -(n - 1) / 2.0 * h
    c = np.array(_KNEE_OFFSET)
    m = 1.0 if side == "right" else -1.0                                 # local x = m * world x
    slide = _PATELLA_SLIDE * (1.0 - np.cos(np.deg2rad(flex)))
    # bone frames: (rotation about +x through c in degrees, local posterior offset in mm)
    frames = {"femur": (0.0, 0.0), "tibia": (flex, 0.0), "patella": (_PATELLA_RATIO * flex, slide)}
    rng = np.random.default_rng(seed)
    trab_w = _waves(rng, 32, 2.5, 5.0)
    septa_w = _waves(rng, 6, 30.0, 60.0)
    # world axes relative to the knee centre (float32)
    ax_ = [(origin[a] + h[a] * np.arange(n[a]) - c[a]).astype(np.float32) for a in range(3)]
    hu = np.empty((n[2], n[1], n[0]), np.int16)
    labels = np.zeros((n[2], n[1], n[0]), np.uint8)
    tmin = 1.15 * h.max()                                               # keeps the shell closed

    # world index boxes of each bone (AABB of its rotated local box, padded for cartilage)
    boxes = {}
    for name, (_, (lo, hi), frame, _, _) in _BONES.items():
        corners = np.array([[a, b, cc] for a in (lo[0] - 4, hi[0] + 4)
                            for b in (lo[1] - 4, hi[1] + 4) for cc in (lo[2] - 4, hi[2] + 4)])
        a, off = np.deg2rad(frames[frame][0]), frames[frame][1]
        wy = np.cos(a) * (corners[:, 1] + off) - np.sin(a) * corners[:, 2]
        wz = np.sin(a) * (corners[:, 1] + off) + np.cos(a) * corners[:, 2]
        wx = m * corners[:, 0]
        rng_ = []
        for ax_i, w in zip(range(3), (wx, wy, wz)):
            i0 = int(np.floor((w.min() + c[ax_i] - origin[ax_i]) / h[ax_i]))
            i1 = int(np.ceil((w.max() + c[ax_i] - origin[ax_i]) / h[ax_i])) + 1
            rng_.append((max(i0, 0), min(i1, n[ax_i])))
        boxes[name] = rng_

    # tendons: world endpoints (patellar tendon: patella apex -> tibial tuberosity)
    def to_world(p, frame):
        ang, off = frames[frame]
        yl, zl = _rot(-ang, np.float32(p[1] + off), np.float32(p[2]))
        return (p[0], float(yl), float(zl))
    pt = (to_world((0, -53, -13), "patella"), to_world((0, -26, -56), "tibia"))
    qt = (to_world((0, -55, 29), "patella"), (0, -38, 110))

    slab = max(1, int(4_000_000 // (n[0] * n[1])))
    for k0 in range(0, n[2], slab):
        k1 = min(n[2], k0 + slab)
        x = ax_[0][None, None, :]
        Y, Z = ax_[1][None, :, None], ax_[2][k0:k1, None, None]
        yl, zl = _rot(flex, Y, Z)
        xl = m * x
        # --- soft tissue
        dleg = _leg(x, Y, Z, yl, zl)
        use_t = Z <= 0
        g = _field(septa_w, xl, np.where(use_t, yl, Y), np.where(use_t, zl, Z))
        hs = np.full(dleg.shape, _HU["muscle"], np.float32)
        hs[np.abs(g) < 0.12] = _HU["fat"]                                 # intermuscular septa
        hs[_ellipsoid(xl, Y, Z, (0, 36, -5), (22, 12, 35)) < 0] = _HU["fat"]   # popliteal fat
        hs[_ellipsoid(xl, yl, zl, (0, -31, -28), (20, 7, 10)) < 0] = _HU["fat"]  # Hoffa's pad
        for a, b in (pt, qt):
            hs[_capsule(xl, Y, Z, a, b, 4.5, 4.5, 3.0) < 0] = _HU["tendon"]
        fat_t = np.clip(8.0 + 2.5 * g, 3.0, 14.0)
        hs[dleg > -2.0 - fat_t] = _HU["fat"]
        hs[dleg > -2.0] = _HU["skin"]
        noise = rng.standard_normal(hs.shape, dtype=np.float32)
        hs += 15.0 * noise
        hs[dleg > 0] = _HU["air"]
        lab = labels[k0:k1]
        kept = []
        # --- bones (priority in LABELS order; disjoint)
        for name, (sdf, _, frame, (t0, t1, za, zb), cart) in _BONES.items():
            (i0, i1), (j0, j1), (bk0, bk1) = boxes[name]
            bk0, bk1 = max(bk0, k0) - k0, min(bk1, k1) - k0
            if bk0 >= bk1 or i0 >= i1 or j0 >= j1:
                continue
            bx = xl[:, :, i0:i1]
            by_, bz = _rot(frames[frame][0], Y[:, j0:j1], Z[bk0:bk1])
            by_ = by_ - np.float32(frames[frame][1])
            d = sdf(bx, by_, bz)
            sub = (slice(bk0, bk1), slice(j0, j1), slice(i0, i1))
            inside = (d <= 0) & (lab[sub] == 0)
            kept.append((name, sub, d, bx, by_, bz, cart))
            if not inside.any():
                continue
            dz = d[inside]
            pz = np.broadcast_to(bz, d.shape)[inside]
            w = _ss(pz, za, zb)
            t = np.maximum(t0 + (t1 - t0) * w, tmin)
            cort = dz > -t
            px = np.broadcast_to(bx, d.shape)[inside]
            py = np.broadcast_to(by_, d.shape)[inside]
            gt = _field(trab_w, px, py, pz)
            trab = (w <= 0) | (gt > 8.0 * w - 3.0)
            e = noise[sub][inside]
            val = np.where(trab, np.clip(275 + 125 * np.tanh(1.2 * gt) + 10 * e, 150, 400),
                           _HU["marrow"] + 15 * e)
            cval = np.clip(1350 + 250 * w + 20 * e, 1200, 1800)
            hsub = hs[sub]
            hsub[inside] = np.where(cort, cval, val)
            lab[sub][inside] = LABELS[name]
        # --- cartilage on articular surfaces (outside every bone, inside the leg)
        for name, sub, d, bx, by_, bz, cart in kept:
            cm = (d > 0) & (d < 2.0) & (lab[sub] == 0) & (dleg[sub] < -2) & cart(bx, by_, bz)
            hs[sub][cm] = _HU["cartilage"] + 15 * noise[sub][cm]
        hu[k0:k1] = np.rint(hs).astype(np.int16)

    # safety net: keep each bone's largest 6-connected component
    for name, lid in LABELS.items():
        sl = ndimage.find_objects((labels == lid).astype(np.uint8))
        if not sl or sl[0] is None:
            continue
        cc, nc = ndimage.label(labels[sl[0]] == lid)
        if nc > 1:
            big = np.argmax(np.bincount(cc.ravel())[1:]) + 1
            stray = (cc > 0) & (cc != big)
            labels[sl[0]][stray] = 0
            hu[sl[0]][stray] = int(_HU["muscle"])

    return Phantom(hu=hu, labels=labels, spacing_mm=tuple(float(v) for v in h),
                   origin_mm=tuple(float(v) for v in origin), label_names=dict(LABELS),
                   flexion_deg=flex, knee_centre_mm=tuple(float(v) for v in c),
                   flexion_axis=(1.0, 0.0, 0.0), side=side)


def write_phantom(phantom: Phantom, out_dir) -> dict:
    """Write ``ct.nii.gz`` (int16 HU), ``labels.nii.gz`` (uint8) and ``labels.json`` into out_dir
    (created if needed) with the phantom's spacing, origin (LPS centre of voxel 0) and identity
    direction. Returns {"ct": path, "labels": path, "labels_json": path} (str paths)."""
    import SimpleITK as sitk
    os.makedirs(out_dir, exist_ok=True)
    paths = {"ct": os.path.join(str(out_dir), "ct.nii.gz"),
             "labels": os.path.join(str(out_dir), "labels.nii.gz"),
             "labels_json": os.path.join(str(out_dir), "labels.json")}
    for key, arr in (("ct", phantom.hu), ("labels", phantom.labels)):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(tuple(float(v) for v in phantom.spacing_mm))
        img.SetOrigin(tuple(float(v) for v in phantom.origin_mm))
        img.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
        sitk.WriteImage(img, paths[key], True)
    with open(paths["labels_json"], "w") as f:
        json.dump({k: int(v) for k, v in phantom.label_names.items()}, f, indent=2)
    return paths
