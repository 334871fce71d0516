"""Several calibrated views of one scene: a biplane (or N-view) rig (docs/CONVENTIONS.md, "Rigs").

A :class:`Rig` is a list of :class:`View`: each a C-arm's calibration (:class:`Camera`) and its pose
``camera_from_reference`` (4, 4). The reference frame is the **first view's camera frame**: the
first view's pose is the identity, and every pose a registration reads or writes
(``camera_from_volume``) is in that frame, so a one-view rig is exactly a single-plane calibration
and every single-plane tool reads a rig's first view unchanged. A bone at ``camera_from_volume``
``T`` is seen by view ``k`` at ``views[k].camera_from_reference @ T``.

File (JSON)::

    {"views": [
      {"name": "A", "calibration": {"sdd_mm": 1000, "rows": 512, ...}},
      {"name": "B", "calibration": {...}, "camera_from_reference": [[...4x4...]]}]}

A file may give every view a pose in a lab frame of its own (``camera_from_reference`` on the first
view too): the rig re-expresses them in the first view's frame when read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import FluoroRegError
from .camera import Camera, as_camera, read_calibration_json
from .rigid import invert, make_pose, rotation_from_rotvec


@dataclass(frozen=True, eq=False)
class View:
    """One view of a rig: ``name``, its ``camera`` and ``camera_from_reference`` (4, 4) float64."""

    name: str
    camera: Camera
    camera_from_reference: torch.Tensor

    def to_dict(self) -> dict:
        return {"name": self.name, "calibration": self.camera.to_dict(),
                "camera_from_reference": self.camera_from_reference.tolist()}


@dataclass(frozen=True, eq=False)
class Rig:
    """The views of one scene; the first view's camera frame is the reference (its pose is I)."""

    views: tuple

    def __post_init__(self):
        views = tuple(self.views)
        if not views or not all(isinstance(v, View) for v in views):
            raise FluoroRegError("a rig needs at least one view (a calibration and its camera_from_reference)")
        names = [v.name for v in views]
        if len(set(names)) != len(names):
            raise FluoroRegError(f"rig: view names must differ, got {', '.join(names)}; name each view once")
        first_inverse = invert(views[0].camera_from_reference)
        views = tuple(View(v.name, v.camera, torch.eye(4, dtype=torch.float64) if k == 0 else
                           (v.camera_from_reference.to(torch.float64) @ first_inverse.to(torch.float64)))
                      for k, v in enumerate(views))
        object.__setattr__(self, "views", views)

    def __len__(self) -> int:
        return len(self.views)

    @property
    def cameras(self) -> list[Camera]:
        return [v.camera for v in self.views]

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.views]

    def view_poses(self, camera_from_volume: torch.Tensor) -> list[torch.Tensor]:
        """A pose in the reference frame as each view sees it: [(4, 4) per view]."""
        pose = camera_from_volume.to(torch.float64)
        return [v.camera_from_reference.to(pose.device) @ pose for v in self.views]

    def per_view(self, values, what: str) -> list:
        """``values`` as one entry per view: a single value (or a 1-list) for a one-view rig, else a
        list or tuple with one entry per view in the rig's order; raises naming ``what`` otherwise."""
        if len(self) == 1 and not (isinstance(values, (list, tuple)) and len(values) == 1):
            return [values]
        if not isinstance(values, (list, tuple)) or len(values) != len(self):
            got = len(values) if isinstance(values, (list, tuple)) else "one"
            raise FluoroRegError(f"the calibration is a rig of {len(self)} view(s) ({', '.join(self.names)}) but {got} "
                                 f"{what}(s) given; give one {what} per view, in the rig's order")
        return list(values)

    def source_angle_deg(self, k: int = 1) -> float:
        """Angle between the first view's principal ray and view ``k``'s (degrees)."""
        z0 = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        zk = self.views[k].camera_from_reference[:3, :3].T @ z0  # view k's axis in the reference frame
        return math.degrees(math.acos(max(-1.0, min(1.0, float(zk @ z0)))))

    def to_dict(self) -> dict:
        return {"views": [v.to_dict() for v in self.views]}

    def to_json(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def single(cls, camera: Camera, name: str = "A") -> "Rig":
        """A one-view rig: the single-plane case."""
        return cls((View(name, camera, torch.eye(4, dtype=torch.float64)),))

    @classmethod
    def from_dict(cls, data: dict, source: str = "rig") -> "Rig":
        """From the JSON object above (or a single-view calibration object: a one-view rig)."""
        from ..files import check_rigid

        if not isinstance(data, dict):
            raise FluoroRegError(f"{source} must be an object with a 'views' list (or a calibration object)")
        if "views" not in data:
            return cls.single(Camera.from_dict(data, source))
        entries = data["views"]
        if not isinstance(entries, list) or not entries:
            raise FluoroRegError(f"{source}: 'views' must be a non-empty list of "
                                 '{"name", "calibration", "camera_from_reference"} objects')
        views = []
        for k, entry in enumerate(entries):
            where = f"{source}, view {k + 1}"
            if not isinstance(entry, dict) or "calibration" not in entry:
                raise FluoroRegError(f"{where}: needs a 'calibration' object (and 'camera_from_reference' 4x4 "
                                     "after the first view)")
            name = str(entry.get("name", chr(ord("A") + k)))
            camera = Camera.from_dict(entry["calibration"], f"{where} ({name}) calibration")
            matrix = entry.get("camera_from_reference")
            if matrix is None and k > 0:
                raise FluoroRegError(f"{where} ({name}): missing camera_from_reference, the view's 4x4 pose relative "
                                     "to the first view's camera frame (mm); calibrate the rig first")
            pose = torch.eye(4, dtype=torch.float64) if matrix is None else \
                check_rigid(matrix, f"{where} ({name})", "camera_from_reference")
            views.append(View(name, camera, pose))
        rig = cls(tuple(views))
        rig.check_physical(source)
        return rig

    def check_physical(self, source: str = "rig") -> "Rig":
        """Raise unless every further view's source lies 100-5000 mm from the first's (a unit slip
        such as metres for millimetres, or two copies of one view). Returns self."""
        for v in self.views[1:]:
            source_k = invert(v.camera_from_reference)[:3, 3]  # view k's source in the reference frame
            d = float(source_k.norm())
            if not 100.0 <= d <= 5000.0:
                raise FluoroRegError(f"{source}: view {v.name}'s source is {d:.1f} mm from the first view's; a "
                                     "biplane rig's sources are 0.5-3 m apart: check the units (mm) of "
                                     "camera_from_reference")
        return self

    @classmethod
    def from_json(cls, path) -> "Rig":
        """Read a rig (or single calibration) JSON file."""
        return cls.from_dict(read_calibration_json(path), f"calibration {path}")


def as_rig(calibration) -> Rig:
    """A :class:`Rig` from a Rig, a Camera, a calibration or rig dict, or a JSON path (a single-view
    calibration is a one-view rig)."""
    if isinstance(calibration, Rig):
        return calibration
    if isinstance(calibration, Camera):
        return Rig.single(as_camera(calibration))
    if isinstance(calibration, dict):
        return Rig.from_dict(calibration)
    if isinstance(calibration, (str, Path)):
        return Rig.from_json(calibration)
    raise FluoroRegError(f"calibration must be a Camera, a Rig, a dict or a JSON file path, got "
                         f"{type(calibration).__name__}; pass one of those")


def turned_view(isocentre_depth_mm: float, angle_deg: float, depth_mm: float | None = None) -> torch.Tensor:
    """``camera_from_reference`` (4, 4) of a C-arm turned by ``angle_deg`` about the reference's
    vertical axis (camera y, the detector's rows) through the isocentre, the point on the first
    view's principal ray ``isocentre_depth_mm`` from its source; the new view's source lies
    ``depth_mm`` (default: the same distance) from the isocentre, on its own principal ray."""
    depth = isocentre_depth_mm if depth_mm is None else depth_mm
    turn = rotation_from_rotvec(torch.tensor([0.0, math.radians(angle_deg), 0.0], dtype=torch.float64))
    iso = torch.tensor([0.0, 0.0, float(isocentre_depth_mm)], dtype=torch.float64)
    return make_pose(turn, torch.tensor([0.0, 0.0, float(depth)], dtype=torch.float64) - turn @ iso)


def check_view_angle(angle_deg: float) -> float:
    """``angle_deg`` if two views that far apart pin the depth (10-170 deg either way), else one line."""
    if not 10.0 <= abs(angle_deg) <= 170.0:
        raise FluoroRegError(f"view angle {angle_deg:g} deg is outside 10-170 deg; two views that close "
                             "together (or opposite) do not pin the depth")
    return float(angle_deg)


def biplane_rig(camera_a: Camera, camera_b: Camera | None = None, angle_deg: float = 60.0,
                isocentre_depth_mm: float | None = None, depth_b_mm: float | None = None,
                names=("A", "B")) -> Rig:
    """Two views whose principal rays cross at an isocentre ``isocentre_depth_mm`` from the first
    source (default 0.7 x its sdd) at ``angle_deg``; the second C-arm is ``camera_b`` (default: a
    copy of the first) with its source ``depth_b_mm`` from the isocentre (default: the same)."""
    check_view_angle(angle_deg)
    iso = 0.7 * camera_a.sdd_mm if isocentre_depth_mm is None else isocentre_depth_mm
    b = camera_b or camera_a
    return Rig((View(names[0], camera_a, torch.eye(4, dtype=torch.float64)),
                View(names[1], b, turned_view(iso, angle_deg, depth_b_mm))))


def crossing_point(rig: Rig, k: int = 1) -> torch.Tensor:
    """Where the first view's principal ray and view ``k``'s come closest (the isocentre of a C-arm
    pair), in the reference frame, (3,): the midpoint of their common perpendicular."""
    o1, d1 = torch.zeros(3, dtype=torch.float64), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    ref_from_k = invert(rig.views[k].camera_from_reference)
    o2, d2 = ref_from_k[:3, 3], ref_from_k[:3, :3] @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    w, b = o1 - o2, float(d1 @ d2)
    denom = 1.0 - b * b
    if denom < 1e-9:
        raise FluoroRegError(f"rig: views {rig.views[0].name} and {rig.views[k].name} look along parallel rays; "
                             "they have no isocentre")
    s = (b * float(d2 @ w) - float(d1 @ w)) / denom
    t = (float(d2 @ w) - b * float(d1 @ w)) / denom
    return 0.5 * ((o1 + s * d1) + (o2 + t * d2))


def perturbed_rig(rig: Rig, rotation_deg: float, translation_mm: float, generator: torch.Generator) -> Rig:
    """``rig`` with each further view's pose wrong as a calibration gets it wrong: turned by
    ``rotation_deg`` about a random axis through the isocentre (:func:`crossing_point`, where a
    calibration object sits) and moved by ``translation_mm`` in a random direction. A rotation about
    the source instead would sweep the rays at the knee by ``depth x angle`` (0.2 deg: 2.4 mm)."""
    views = [rig.views[0]]
    for k, v in enumerate(rig.views[1:], start=1):
        axis = torch.randn(3, generator=generator, dtype=torch.float64)
        direction = torch.randn(3, generator=generator, dtype=torch.float64)
        turn = rotation_from_rotvec(axis / axis.norm() * math.radians(rotation_deg))
        centre = v.camera_from_reference[:3, :3] @ crossing_point(rig, k) + v.camera_from_reference[:3, 3]
        error = make_pose(turn, centre - turn @ centre + direction / direction.norm() * translation_mm)
        views.append(View(v.name, v.camera, error @ v.camera_from_reference))
    return Rig(tuple(views))
