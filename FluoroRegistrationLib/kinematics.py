"""Knee kinematics from bone poses: anatomical frames from landmarks and the Grood & Suntay joint
coordinate system (J Biomech Eng 1983), as knee studies report it.

Anatomical frames (built in the CT's frame from named landmarks, LPS mm; see docs/CONVENTIONS.md):

- axes for either knee: **X** to the patient's right, **Y** anterior, **Z** proximal (right-handed);
- femur: origin at the midpoint of the epicondyles, Z from it towards ``femoral_head`` (or
  ``shaft_proximal``), X along the epicondyles (made orthogonal to Z);
- tibia: origin at ``plateau_centre`` (default: midpoint of ``medial_plateau`` and
  ``lateral_plateau``), Z from ``ankle_centre`` (default: midpoint of the malleoli) to the origin, X
  along the plateau points (or the malleoli), made orthogonal to Z.

Joint coordinate system: ``e1`` = the femur's X (flexion axis, fixed in the femur), ``e3`` = the
tibia's Z (long axis, fixed in the tibia), ``e2 = e3 x e1 / |e3 x e1|`` (floating, anterior).

- flexion (deg): rotation about e1, + = knee flexion (the tibia's distal end goes posterior);
- adduction (deg): the angle between e1 and e3 minus 90 deg, + = adduction (varus) for either knee;
- internal rotation (deg): rotation about e3, + = tibia internally rotated for either knee;
- translations (mm): the tibia's origin minus the femur's, written ``q1 e1 + q2 e2 + q3 e3`` in
  the (non-orthogonal) joint axes, as Grood and Suntay define them: ``lateral_mm`` (q1, + = the
  tibia shifted laterally, either knee), ``anterior_mm`` (q2, + = tibia anterior: drawer),
  ``distraction_mm`` (-q3, + = the tibia further from the femur along its axis).

These equal an X-Y'-Z'' Cardan decomposition of the tibia's frame in the femur's (tested against
SciPy's), with the signs above.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import FluoroRegError

SIDES = ("right", "left")
FEMUR_LANDMARKS = ("medial_epicondyle", "lateral_epicondyle")  # and femoral_head or shaft_proximal
TIBIA_LANDMARKS = ("plateau_centre", "medial_plateau", "lateral_plateau", "ankle_centre", "medial_malleolus",
                   "lateral_malleolus")


def _unit(v, what: str) -> np.ndarray:
    v = np.asarray(v, np.float64)
    n = np.linalg.norm(v)
    if not np.isfinite(n) or n < 1e-9:
        raise FluoroRegError(f"{what} has no direction (points coincide); check the landmarks")
    return v / n


def _frame(origin, z_axis, right_hint) -> np.ndarray:
    """(4, 4) frame: Z along ``z_axis``, X along ``right_hint`` made orthogonal to Z, Y = Z x X."""
    z = _unit(z_axis, "the long axis")
    x = _unit(np.asarray(right_hint) - np.dot(right_hint, z) * z, "the medial-lateral axis")
    y = np.cross(z, x)
    out = np.eye(4)
    out[:3, 0], out[:3, 1], out[:3, 2], out[:3, 3] = x, y, z, origin
    return out


def _point(points: dict, name: str, bone: str) -> np.ndarray:
    if name not in points:
        raise FluoroRegError(f"landmark {bone}.{name} missing; add it to the landmarks JSON (LPS mm, CT frame)")
    p = np.asarray(points[name], np.float64)
    if p.shape != (3,) or not np.isfinite(p).all():
        raise FluoroRegError(f"landmark {bone}.{name} = {points[name]!r} is not a point; give [x, y, z] in mm")
    return p


def _right(lateral, medial, side: str) -> np.ndarray:
    """The patient's right from a lateral and a medial point of one knee."""
    return (lateral - medial) if side == "right" else (medial - lateral)


def femur_frame(points: dict, side: str) -> np.ndarray:
    """(4, 4) the femur's anatomical frame in the CT's frame (see the module docstring)."""
    medial, lateral = (_point(points, n, "femur") for n in FEMUR_LANDMARKS)
    origin = 0.5 * (medial + lateral)
    top = "femoral_head" if "femoral_head" in points else "shaft_proximal"
    return _frame(origin, _point(points, top, "femur") - origin, _right(lateral, medial, side))


def tibia_frame(points: dict, side: str) -> np.ndarray:
    """(4, 4) the tibia's anatomical frame in the CT's frame (see the module docstring)."""
    has_plateau = "medial_plateau" in points and "lateral_plateau" in points
    has_malleoli = "medial_malleolus" in points and "lateral_malleolus" in points
    origin = _named_or_middle(points, "plateau_centre", "plateau")
    ankle = _named_or_middle(points, "ankle_centre", "malleolus")
    if has_plateau:
        right = _right(_point(points, "lateral_plateau", "tibia"), _point(points, "medial_plateau", "tibia"), side)
    elif has_malleoli:
        right = _right(_point(points, "lateral_malleolus", "tibia"), _point(points, "medial_malleolus", "tibia"), side)
    else:
        raise FluoroRegError("the tibia needs medial_plateau and lateral_plateau (or both malleoli) for its "
                             "medial-lateral axis; add them")
    return _frame(origin, origin - ankle, right)


def _named_or_middle(points: dict, name: str, pair: str) -> np.ndarray:
    """Tibia landmark ``name``, else the midpoint of ``medial_<pair>`` and ``lateral_<pair>``."""
    if name in points:
        return _point(points, name, "tibia")
    if f"medial_{pair}" in points and f"lateral_{pair}" in points:
        return 0.5 * (_point(points, f"medial_{pair}", "tibia") + _point(points, f"lateral_{pair}", "tibia"))
    raise FluoroRegError(f"landmark tibia.{name} missing (or medial_{pair} and lateral_{pair}); add it")


@dataclass(frozen=True)
class KneeAngles:
    """One frame's Grood-Suntay kinematics (deg, mm; signs in the module docstring)."""

    flexion_deg: float
    adduction_deg: float
    internal_rotation_deg: float
    lateral_mm: float
    anterior_mm: float
    distraction_mm: float

    NAMES = ("flexion_deg", "adduction_deg", "internal_rotation_deg", "lateral_mm", "anterior_mm", "distraction_mm")

    def as_tuple(self) -> tuple:
        return tuple(getattr(self, n) for n in self.NAMES)


def grood_suntay(femur_world: np.ndarray, tibia_world: np.ndarray, side: str) -> KneeAngles:
    """Kinematics of one frame from the femur's and tibia's anatomical frames in any common frame
    (4, 4) each (e.g. ``camera_from_volume @ femur_frame(...)``)."""
    if side not in SIDES:
        raise FluoroRegError(f"side {side!r}: give right or left")
    F, T = np.asarray(femur_world, np.float64), np.asarray(tibia_world, np.float64)
    e1, e3 = F[:3, 0], T[:3, 2]
    e2 = _unit(np.cross(e3, e1), "the floating axis (femur X parallel to tibia Z)")
    # flexion: the femur's Z turned to e3's plane, about e1; + when the tibia's distal end goes posterior
    flexion = np.degrees(np.arctan2(np.dot(np.cross(F[:3, 1], e2), e1), np.dot(F[:3, 1], e2)))
    beta = np.degrees(np.arcsin(np.clip(np.dot(e1, e3), -1, 1)))  # e1.e3 = cos(90 - beta) = sin(beta)
    gamma = np.degrees(np.arctan2(np.dot(np.cross(e2, T[:3, 1]), e3), np.dot(e2, T[:3, 1])))
    mirror = 1.0 if side == "right" else -1.0
    h = T[:3, 3] - F[:3, 3]
    q = np.linalg.solve(np.stack([e1, e2, e3], axis=1), h)
    return KneeAngles(float(-flexion), float(mirror * beta), float(mirror * gamma),
                      float(mirror * q[0]), float(q[1]), float(-q[2]))


def read_landmarks(path, bodies: tuple = ("femur", "tibia")) -> dict[str, dict[str, np.ndarray]]:
    """{body: {name: [x, y, z]}} from a JSON file (LPS mm in each body's own frame: the CT's for
    bones, a component's mesh frame for it), every object entry kept; ``bodies`` must be there."""
    from .files import read_yaml

    data = read_yaml(path, "landmarks file", "give a JSON of femur and tibia points (LPS mm)")
    if not isinstance(data, dict) or not all(isinstance(data.get(b), dict) for b in bodies):
        raise FluoroRegError(f"landmarks file {path} needs objects {' and '.join(repr(b) for b in bodies)} of named points")
    return {b: dict(v) for b, v in data.items() if isinstance(v, dict)}


def landmarks_from_labels(labels, names: dict[str, int], side: str) -> dict[str, dict[str, list]]:
    """Approximate landmarks from the femur and tibia labels of a CT taken with the knee extended, in
    LPS (z proximal): femur epicondyles = the medial-most and lateral-most points of its distal 25 mm,
    shaft_proximal = the centroid of its top 20 mm; tibia plateau points = the medial and lateral
    halves of its top 10 mm, ankle_centre = the centroid of its lowest 20 mm (the distal end of what
    the CT holds). For the built-in phantom (and a first look); give measured landmarks for studies.

    labels: an ImageVolume (array (Z, Y, X)) of the bone labels."""
    if side not in SIDES:
        raise FluoroRegError(f"side {side!r}: give right or left")
    out = {}
    for bone in ("femur", "tibia"):
        if bone not in names:
            raise FluoroRegError(f"no {bone} label (labels: {', '.join(names)}); kinematics needs femur and tibia")
        kji = np.argwhere(np.asarray(labels.array) == names[bone])
        if len(kji) == 0:
            raise FluoroRegError(f"label {bone} ({names[bone]}) is empty in the label map; fix the labels")
        ijk = kji[:, ::-1].astype(np.float64)
        pts = ijk @ labels.volume_from_index[:3, :3].T + labels.volume_from_index[:3, 3]  # LPS mm
        out[bone] = _bone_landmarks(bone, pts, side)
    return out


def _bone_landmarks(bone: str, pts: np.ndarray, side: str) -> dict[str, list]:
    z = pts[:, 2]
    lateral_sign = -1.0 if side == "right" else 1.0  # LPS x: the patient's left; a right knee's lateral is -x
    if bone == "femur":
        distal = pts[z < z.min() + 25.0]
        s = lateral_sign * distal[:, 0]
        lat = distal[s >= np.quantile(s, 0.98)].mean(0)
        med = distal[s <= np.quantile(s, 0.02)].mean(0)
        return {"lateral_epicondyle": lat.tolist(), "medial_epicondyle": med.tolist(),
                "shaft_proximal": pts[z > z.max() - 20.0].mean(0).tolist()}
    top = pts[z > z.max() - 10.0]
    split = top[:, 0].mean()
    halves = {"lateral": top[lateral_sign * (top[:, 0] - split) > 0], "medial": top[lateral_sign * (top[:, 0] - split) <= 0]}
    return {"lateral_plateau": halves["lateral"].mean(0).tolist(), "medial_plateau": halves["medial"].mean(0).tolist(),
            "ankle_centre": pts[z < z.min() + 20.0].mean(0).tolist()}


def condyle_lowest_points(femur_points: np.ndarray, femur_pose: np.ndarray, tibia_pose: np.ndarray,
                          tibia_anatomy: np.ndarray, side: str, band_mm: float = 1.0) -> tuple[float, float]:
    """AP positions (mm, + anterior, in the tibia's frame from its origin) of the lowest points of the
    medial and lateral femoral condyles over the tibial plateau.

    femur_points: (N, 3) femur surface points in the CT's frame; femur_pose, tibia_pose: (4, 4)
    ``camera_from_volume``; tibia_anatomy: (4, 4) the tibia's frame in the CT (:func:`tibia_frame`).
    The lowest point of a condyle is the mean of its points within ``band_mm`` of its lowest, so a
    flat spot gives its middle."""
    to_tibia = np.linalg.inv(np.asarray(tibia_pose) @ np.asarray(tibia_anatomy)) @ np.asarray(femur_pose)
    p = np.asarray(femur_points, np.float64) @ to_tibia[:3, :3].T + to_tibia[:3, 3]
    lateral = p[:, 0] > 0 if side == "right" else p[:, 0] < 0  # X is the patient's right
    out = []
    for part in (~lateral, lateral):
        q = p[part]
        if len(q) == 0:
            out.append(float("nan"))
            continue
        low = q[q[:, 2] <= q[:, 2].min() + band_mm]
        out.append(float(low[:, 1].mean()))
    return out[0], out[1]


def lowpass(values: np.ndarray, fps: float, cutoff_hz: float) -> np.ndarray:
    """Zero-lag 4th-order Butterworth low-pass (scipy filtfilt of a 2nd-order design, run forward and
    back) of (N, ...) per-frame values along axis 0; NaN frames are filled linearly first and stay NaN."""
    from scipy.signal import butter, filtfilt

    values = np.asarray(values, np.float64)
    if not 0 < cutoff_hz < fps / 2:
        raise FluoroRegError(f"low-pass cut-off {cutoff_hz} Hz must lie between 0 and half the frame rate ({fps / 2:g} Hz)")
    if len(values) < 10:
        return values.copy()
    nan = ~np.isfinite(values)
    filled = values.copy()
    t = np.arange(len(values))
    for idx in np.ndindex(values.shape[1:]):
        col = filled[(slice(None), *idx)]
        ok = np.isfinite(col)
        if ok.sum() >= 2:
            col[~ok] = np.interp(t[~ok], t[ok], col[ok])
    b, a = butter(2, cutoff_hz / (fps / 2))
    out = filtfilt(b, a, filled, axis=0)
    out[nan] = np.nan
    return out
