"""Procedural lumbar spine CT phantom: vertebrae among neighbours, with ground-truth labels.

A second anatomy for the validation zoo (registration beyond the knee): each vertebra L1-L5 sits
between two others, with the floating ribs, the iliac wings, the kidneys, the liver, the great
vessels (calcified plaques in the aorta's wall) and gas in the bowel in front of it, so every
lateral frame of a vertebra has bone and gas edges around it that are not the vertebra.

Frame (docs/CONVENTIONS.md): LPS millimetres, identity direction (x Left, y Posterior, z Superior),
arrays (Z, Y, X). The spine runs along z with its lordosis in the y-z plane: body centres lie on
``y = LORDOSIS_PER_MM * (z - z_L3)^2`` (L3 the most anterior), each vertebra tilted to the curve.

A vertebra (local frame: origin at its body's centre, x left, y posterior, z along the spine) is a
smooth union of an hourglass body (end plates flat, posterior wall concave), two pedicles, the
laminae, a spinous process, two transverse processes and four articular processes. Materials
follow the distance to the bone surface as in the knee phantom (phantom.py): a cortical shell
(posterior elements thicker than the body's), trabecular bone 120-260 HU, with intervertebral
discs (~85 HU) between the bodies. Sizes grow from L1 to L5 (bodies 42-50 mm wide, 24-27 mm high).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .phantom import _HU, _capsule, _ellipse2, _ellipsoid, _field, _len, _phantom_grid, _smax, _smin, _ss, _waves

VERTEBRAE = ("L1", "L2", "L3", "L4", "L5")
SPINE_LABELS = {**{v: i + 1 for i, v in enumerate(VERTEBRAE)}, "ribs": 6, "pelvis": 7}
LORDOSIS_PER_MM = 0.0022  # y offset (mm) per mm^2 of z from L3: L1 and L5 ~10 mm behind L3
DISC_MM = 9.0
_ORGAN_HU = dict(kidney=32.0, liver=58.0, vessel=42.0, bowel=22.0, disc=85.0)


@dataclass(frozen=True, eq=False)
class SpinePhantom:
    """A lumbar spine CT phantom. Arrays are (Z, Y, X); lengths in mm, LPS (write with phantom.write_phantom)."""
    hu: np.ndarray          # (Z, Y, X) int16 Hounsfield units
    labels: np.ndarray      # (Z, Y, X) uint8, ids as SPINE_LABELS
    spacing_mm: tuple
    origin_mm: tuple
    label_names: dict
    body_centres_mm: dict   # {"L1": (x, y, z), ...} LPS centre of each vertebral body
    tilts_deg: dict         # {"L1": angle, ...} each vertebra's turn about +x


def _vertebra_sizes(k: int) -> tuple[float, float, float]:
    """(width, depth, height) mm of the body of vertebra k (0 = L1 ... 4 = L5)."""
    return 42.0 + 2.0 * k, 30.0 + 1.2 * k, 24.0 + 0.75 * k


def _vertebra(x, y, z, size):
    """Distance-like field (< 0 inside) of a lumbar vertebra in its local frame."""
    w, d, h = size
    a, b = w / 2, d / 2
    waist = 1.0 - 0.07 * (1.0 - np.clip((z / (h / 2)) ** 2, 0, 1))       # hourglass body
    body = (_len(x / a, y / b) - waist) * b                               # (the waist scales both axes)
    body = _smax(body, 7.0 - _len((x / 1.6), y - b - 5.0), 2.0)          # concave posterior wall
    body = _smax(body, np.abs(z) - h / 2, 1.5)                          # end plates
    p = a - 9.0                                                          # pedicles' x
    f = None
    for s in (1.0, -1.0):
        pedicle = _capsule(x, y, z, (s * p, b - 5, 3), (s * p, b + 11, 3), 4.5, 4.0)
        f = pedicle if f is None else _smin(f, pedicle, 2)
        f = _smin(f, _capsule(x, y, z, (s * p, b + 11, 3), (s * 2.0, b + 21, -3), 4.0, 4.0), 3)   # lamina
        f = _smin(f, _capsule(x, y, z, (s * p, b + 7, 4), (s * (a + 24), b + 10, 6), 4.0, 3.0), 3)  # transverse
        f = _smin(f, _capsule(x, y, z, (s * p, b + 9, 3), (s * (p + 4), b + 13, h / 2 + 5), 4.0, 3.5), 2)  # superior
        f = _smin(f, _capsule(x, y, z, (s * (p - 5), b + 17, -1), (s * (p - 6), b + 19, -h / 2 - 3), 4.0, 3.5), 2)  # inferior
    f = _smin(f, _capsule(x, y, z, (0, b + 19, -1), (0, b + 44, -9), 6.0, 5.0, 0.55), 3)      # spinous
    return _smin(body, f, 3.0)


def _ribs(x, y, z, z_l1):
    """The floating ribs (11th and 12th, both sides): curved tubes from beside L1 round the flank."""
    d = np.full(np.broadcast_shapes(x.shape, y.shape, z.shape), 1e3, np.float32)
    for s in (1.0, -1.0):
        for dz, reach in ((22.0, 1.0), (4.0, 0.75)):
            pts = [(s * 30, 28, z_l1 + dz), (s * 70, 38, z_l1 + dz - 14 * reach),
                   (s * 105, 15, z_l1 + dz - 34 * reach), (s * (105 + 15 * reach), -25 * reach, z_l1 + dz - 60 * reach)]
            for p0, p1 in zip(pts[:-1], pts[1:]):
                d = np.minimum(d, _capsule(x, y, z, p0, p1, 5.0, 4.5))
    return d


def _pelvis(x, y, z, z_l5):
    """The iliac wings beside L5: thin curved plates flaring out and forward."""
    d = np.full(np.broadcast_shapes(x.shape, y.shape, z.shape), 1e3, np.float32)
    for s in (1.0, -1.0):
        u = s * x - 75.0 - 0.35 * (z - z_l5 + 40.0)                       # the wing leans outward upward
        wing = _smax(_ellipse2(y + 5.0, z - z_l5 + 40.0, 62.0, 52.0), np.abs(u) - 5.0, 2.0)
        crest = _capsule(x, y, z, (s * 70, 45, z_l5 - 5), (s * 105, -45, z_l5 + 5), 7.0, 6.0)
        d = np.minimum(d, _smin(wing, _smax(crest, -(z - z_l5 + 60.0), 2.0), 4.0))
    return d


def _abdomen(x, y, z):
    """Skin surface distance (mm, < 0 inside) of the trunk's cross-section (wider than deep)."""
    return _ellipse2(x, y + 20.0, 150.0, 112.0)


def make_spine_phantom(spacing_mm=1.0, seed=0, size_mm=(300.0, 240.0, 200.0)) -> SpinePhantom:
    """Build a lumbar spine CT phantom (see the module docstring). ``spacing_mm``: float or
    (sx, sy, sz); ``seed``: the texture, the bowel gas and the noise; ``size_mm``: extent (x, y, z)
    centred on LPS (0, 0, 0), L3's body near the centre. Raises FluoroRegError for a bad grid."""
    h, n = _phantom_grid(spacing_mm, size_mm, "right")
    origin = -(n - 1) / 2.0 * h
    rng = np.random.default_rng(seed)
    pitch = [_vertebra_sizes(k)[2] + DISC_MM for k in range(5)]
    zc = {v: 0.0 for v in VERTEBRAE}
    for k in range(3, 5):
        zc[VERTEBRAE[k]] = zc[VERTEBRAE[k - 1]] - 0.5 * (pitch[k - 1] + pitch[k])
    for k in range(1, -1, -1):
        zc[VERTEBRAE[k]] = zc[VERTEBRAE[k + 1]] + 0.5 * (pitch[k] + pitch[k + 1])
    centres = {v: np.array([0.0, LORDOSIS_PER_MM * zc[v] ** 2, zc[v]]) for v in VERTEBRAE}
    tilts = {v: float(-np.degrees(np.arctan(2 * LORDOSIS_PER_MM * zc[v]))) for v in VERTEBRAE}
    trab_w, septa_w = _waves(rng, 32, 2.5, 5.0), _waves(rng, 6, 30.0, 60.0)
    gas = [(rng.uniform(-110, 110), rng.uniform(-115, -30), rng.uniform(-100, 100), rng.uniform(6, 18),
            rng.uniform(0.5, 1.0)) for _ in range(28)]
    plaques = [(rng.uniform(0, 2 * np.pi), rng.uniform(-100, 100)) for _ in range(10)]
    ax = [(origin[a] + h[a] * np.arange(n[a])).astype(np.float32) for a in range(3)]
    hu = np.empty((n[2], n[1], n[0]), np.int16)
    labels = np.zeros((n[2], n[1], n[0]), np.uint8)
    slab = max(1, int(3_000_000 // (n[0] * n[1])))
    for k0 in range(0, n[2], slab):
        k1 = min(n[2], k0 + slab)
        x, y, z = ax[0][None, None, :], ax[1][None, :, None], ax[2][k0:k1, None, None]
        noise = rng.standard_normal((k1 - k0, n[1], n[0]), dtype=np.float32)
        hs = _soft_tissue(x, y, z, septa_w, gas, plaques, centres)
        lab = labels[k0:k1]
        for name, d, cortex, local in _bones(x, y, z, centres, tilts):
            inside = (d <= 0) & (lab == 0)
            if not inside.any():
                continue
            e = noise[inside]
            gt = _field(trab_w, *(np.broadcast_to(c, d.shape)[inside] for c in local))
            cort = d[inside] > -np.maximum(cortex[inside], 1.15 * h.max())
            trab = np.clip(190 + 70 * np.tanh(1.2 * gt) + 10 * e, 120, 260)
            hs[inside] = np.where(cort, np.clip(1150 + 20 * e, 1000, 1400), trab)
            lab[inside] = SPINE_LABELS[name]
        for up, low in zip(VERTEBRAE[:-1], VERTEBRAE[1:]):                  # discs between the bodies
            disc = _disc(x, y, z, centres[up], centres[low], _vertebra_sizes(VERTEBRAE.index(low)))
            m = (disc < 0) & (lab == 0)
            hs[m] = _ORGAN_HU["disc"] + 10 * noise[m]
        outside = np.broadcast_to(_abdomen(x, y, z) > 0, hs.shape)
        hs += np.where(outside | (lab > 0), np.float32(0), 15.0 * noise)
        hs[outside] = _HU["air"]
        hu[k0:k1] = np.rint(hs).astype(np.int16)
    return SpinePhantom(hu=hu, labels=labels, spacing_mm=tuple(float(v) for v in h),
                        origin_mm=tuple(float(v) for v in origin), label_names=dict(SPINE_LABELS),
                        body_centres_mm={v: tuple(float(c) for c in centres[v]) for v in VERTEBRAE},
                        tilts_deg=tilts)


def _local(x, y, z, centre, tilt_deg):
    """A vertebra's local (x, y, z) of world points: R_x(tilt)^T (p - centre)."""
    a = np.deg2rad(tilt_deg)
    ca, sa = np.float32(np.cos(a)), np.float32(np.sin(a))
    yy, zz = y - np.float32(centre[1]), z - np.float32(centre[2])
    return x - np.float32(centre[0]), ca * yy + sa * zz, ca * zz - sa * yy


def _bones(x, y, z, centres, tilts):
    """(name, field, cortical thickness, local coordinates) of every bone near this slab; the
    fields and thicknesses are (k, Y, X), the vertebrae's in priority over ribs and pelvis."""
    out = []
    for k, v in enumerate(VERTEBRAE):
        lx, ly, lz = _local(x, y, z, centres[v], tilts[v])
        if np.abs(lz).min() > 45:
            continue
        size = _vertebra_sizes(k)
        d = _vertebra(lx, ly, lz, size)
        cortex = np.where(ly > size[1] / 2 - 2, np.float32(1.8), np.float32(0.8))  # posterior elements, body
        out.append((v, d, np.broadcast_to(cortex, d.shape), (lx, ly, lz)))
    for name, d in (("ribs", _ribs(x, y, z, centres["L1"][2])), ("pelvis", _pelvis(x, y, z, centres["L5"][2]))):
        out.append((name, d, np.full(d.shape, 1.5, np.float32), (x, y, z)))
    return out


def _disc(x, y, z, upper, lower, size):
    """Distance-like field of the disc between two bodies: an elliptic slab along the line joining them."""
    mid = 0.5 * (np.asarray(upper) + np.asarray(lower))
    axis = np.asarray(upper) - np.asarray(lower)
    tilt = -np.degrees(np.arctan2(axis[1], axis[2]))
    lx, ly, lz = _local(x, y, z, mid, tilt)
    return _smax(_ellipse2(lx, ly, size[0] / 2 - 1.0, size[1] / 2 - 1.0), np.abs(lz) - 0.5 * np.linalg.norm(axis) + 8.0, 1.0)


def _soft_tissue(x, y, z, septa_w, gas, plaques, centres):
    """(k, Y, X) float32 HU of everything but bone: fat and muscle of the trunk, psoas and back
    muscles, kidneys, the liver, aorta (calcified plaques) and vena cava, bowel with gas."""
    shape = np.broadcast_shapes(x.shape, y.shape, z.shape)
    hs = np.full(shape, _ORGAN_HU["bowel"], np.float32)                     # abdominal contents

    def put(inside, value):
        hs[np.broadcast_to(inside, shape)] = value

    trunk = _abdomen(x, y, z)
    spine_y = LORDOSIS_PER_MM * z ** 2
    z_l1, z_l5 = centres["L1"][2], centres["L5"][2]
    grow = _ss(z_l1 - z, 0.0, z_l1 - z_l5)                                  # the psoas grows downward
    for s in (1.0, -1.0):
        a, b = 9 + 14 * grow, 9 + 10 * grow
        put((_len((x - s * (32 + 8 * grow)) / a, (y - spine_y - 2) / b) < 1), _HU["muscle"])   # psoas
        put(_ellipse2(x - s * 35, y - spine_y - 62, 28, 22) < 0, _HU["muscle"])              # erector spinae
        kidney = _ellipsoid(x, y, z, (s * 68, 28, z_l1 - 30 - 10 * s), (28, 20, 55))
        put((kidney > 0) & (kidney < 12), _HU["fat"])                          # perirenal fat
        put(kidney < 0, _ORGAN_HU["kidney"])
    put(_ellipsoid(x, y, z, (-75, -25, z_l1 + 45), (95, 80, 75)) < 0, _ORGAN_HU["liver"])
    for cx, r in ((14.0, 11.0), (-22.0, 12.5)):                            # aorta, vena cava
        put(_len(x - cx, y - spine_y + 24) < r, _ORGAN_HU["vessel"])
    for angle, pz in plaques:                                               # calcified aortic wall
        px, py = 14 + 10 * np.cos(angle), -24 + 10 * np.sin(angle)
        put(_ellipsoid(x, y - spine_y, z, (px, py, pz), (2.0, 2.0, 4.0)) < 0, 500.0)
    for gx, gy, gz, r, fill in gas:                                         # bowel gas
        put(_ellipsoid(x, y, z, (gx, gy, gz), (r, 0.8 * r, 1.3 * r)) < 0, -1000.0 * fill + 20 * (1 - fill))
    g = _field(septa_w, x, y, z)
    put((trunk > -25 + 8 * g) & (trunk < -3), _HU["fat"])                   # subcutaneous fat
    put(trunk >= -3, _HU["skin"])
    return hs
