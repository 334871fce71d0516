"""What else the beam crosses on a real knee frame: the other leg, metal, a table or step edge.

Masks are meant to shield the similarity from these, so frames without them cannot show what a
mask is worth. A :class:`ClutterModel` says how often and how much; :func:`sample_clutter` draws one
frame's :class:`ClutterScene`; ``FrameSimulator.line_integrals(..., clutter=scene)`` adds it to the
frame. None of it enters the ground truth: masks and poses stay those of the leg being registered.

- The other leg: the same CT (every part), at a knee state of its own, moved towards the source by
  ``other_leg_depth_mm`` (in a lateral view the far leg is nearer the tube and magnified more;
  its mirror image through the sagittal plane projects almost as the leg itself, so it is not
  mirrored), across the leg by ``other_leg_shift_mm`` (one leg ahead of the other, either way;
  camera x, which runs across the leg in a lateral view) and along it by up to 40 mm. It is
  rendered on a grid twice as coarse: nearer the focal spot, its edges are blurrier anyway.
- Metal (:class:`Solid` cylinders and boxes of titanium): screws, plates and wires in the field
  around the knee, at any orientation.
- A table or step edge: a slab 150-400 mm long along the beam (a foam-core carbon table or a plastic
  step seen edge on: mean density 0.15-0.5 g/cm^3, adipose tissue standing in for the plastic), its
  edge or its whole width crossing the field.

Solids are exact: each ray's chord through a box (slabs) or a finite cylinder (a quadratic and a
slab) in mm, so they cost nothing next to a volume and need no grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import FluoroRegError
from ..geometry import Camera, make_pose, rotation_from_rotvec
from .scene import femur_pose, knee_poses, sample_knee_states


@dataclass(frozen=True)
class ClutterModel:
    """How often each kind of clutter appears in a frame, and its ranges (mm).

    ``other_leg``: probability that the other leg is in the frame; ``implants``: (min, max) number
    of metal pieces; ``table``: probability of a table or step edge.
    """

    other_leg: float = 0.6
    other_leg_depth_mm: tuple = (150.0, 230.0)
    other_leg_shift_mm: tuple = (50.0, 130.0)
    implants: tuple = (0, 2)
    table: float = 0.4

    def check(self) -> None:
        for name in ("other_leg", "table"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise FluoroRegError(f"clutter {name} is a probability in 0..1, got {getattr(self, name)}")
        for name in ("other_leg_depth_mm", "other_leg_shift_mm", "implants"):
            value = getattr(self, name)
            ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
            if not ok or not 0 <= value[0] <= value[1]:
                raise FluoroRegError(f"clutter {name} must be (min, max) with 0 <= min <= max, got {value!r}")
        if not all(isinstance(v, int) for v in self.implants):
            raise FluoroRegError(f"clutter implants must be whole numbers, got {self.implants!r}")


CLUTTER_PRESETS = {
    "none": None,
    "mixed": ClutterModel(),  # training: sometimes, so the network sees clean frames too
    "heavy": ClutterModel(other_leg=1.0, implants=(1, 3), table=1.0),
}


def get_clutter(name) -> ClutterModel | None:
    """A preset by name (``none``, ``mixed``, ``heavy``), or a ClutterModel as it is."""
    if name is None or isinstance(name, ClutterModel):
        return name
    if not isinstance(name, str):
        raise FluoroRegError(f"clutter must be a preset name ({', '.join(CLUTTER_PRESETS)}), got {name!r}")
    try:
        return CLUTTER_PRESETS[name]
    except KeyError:
        raise FluoroRegError(f"unknown clutter '{name}'; choose one of {', '.join(CLUTTER_PRESETS)}") from None


@dataclass(frozen=True)
class Solid:
    """A homogeneous solid in the camera frame.

    ``kind``: "box" (half-extents ``size`` along its own x, y, z) or "cylinder" (radius ``size[0]``,
    half-length ``size[2]`` along its own z). ``camera_from_solid``: (4, 4) rigid pose of its centre
    and axes. ``material``: a name of ``simulate/materials.py``; ``density``: g/cm^3.
    """

    kind: str
    size: tuple
    camera_from_solid: torch.Tensor
    material: str
    density: float

    def describe(self) -> dict:
        return {"kind": self.kind, "size_mm": [round(float(s), 2) for s in self.size], "material": self.material,
                "density": self.density, "centre_mm": [round(float(c), 1) for c in self.camera_from_solid[:3, 3]]}


@dataclass
class ClutterScene:
    """One frame's clutter: the other leg's poses ({bone: camera_from_volume (4, 4)}, or None) and solids."""

    other_leg: dict | None = None
    solids: list = field(default_factory=list)

    def seen_from(self, view_from_reference: torch.Tensor) -> "ClutterScene":
        """The same clutter in another view's camera frame (``view_from_reference`` (4, 4): that
        view's pose relative to the camera this scene was drawn in)."""
        from dataclasses import replace

        V = view_from_reference.to(torch.float64)
        leg = None if not self.other_leg else {b: V @ T.to(torch.float64) for b, T in self.other_leg.items()}
        return ClutterScene(leg, [replace(s, camera_from_solid=V @ s.camera_from_solid.to(torch.float64))
                                  for s in self.solids])

    def describe(self) -> dict:
        """A JSON-able record (frames.json)."""
        leg = None
        if self.other_leg:
            leg = {b: [round(float(v), 3) for v in T.flatten()] for b, T in self.other_leg.items()}
        return {"other_leg_camera_from_volume": leg, "solids": [s.describe() for s in self.solids]}


def chord_lengths(solid: Solid, camera: Camera) -> torch.Tensor:
    """(H, W) float64: length in mm of each pixel's ray (source to detector) inside ``solid``."""
    _, detector = camera.rays(torch.float64)
    length = detector.norm(dim=-1)  # the ray runs from the source (origin) over t in [0, length]
    d = detector / length[..., None]
    R, t = solid.camera_from_solid[:3, :3].double(), solid.camera_from_solid[:3, 3].double()
    o = -(R.T @ t)  # the source in the solid's frame
    dl = d @ R  # directions in the solid's frame, (H, W, 3)
    size = [float(s) for s in solid.size]
    with torch.no_grad():
        if solid.kind == "box":
            axes = range(3)
        elif solid.kind == "cylinder":
            axes = (2,)
        else:
            raise FluoroRegError(f"unknown solid kind '{solid.kind}'; use box or cylinder")
        t0 = torch.zeros_like(length)
        t1 = length.clone()
        for a in axes:  # slabs |o_a + t d_a| <= size_a
            da = dl[..., a]
            safe = torch.where(da.abs() < 1e-12, torch.full_like(da, 1e-12), da)
            near, far = (-size[a] - o[a]) / safe, (size[a] - o[a]) / safe
            lo, hi = torch.minimum(near, far), torch.maximum(near, far)
            parallel = da.abs() < 1e-12
            if bool(parallel.any()):  # parallel to the slab: all inside or none
                inside = bool(o[a].abs() <= size[a])
                lo = torch.where(parallel, -math.inf if inside else math.inf, lo)
                hi = torch.where(parallel, math.inf if inside else -math.inf, hi)
            t0, t1 = torch.maximum(t0, lo), torch.minimum(t1, hi)
        if solid.kind == "cylinder":  # (o_x + t d_x)^2 + (o_y + t d_y)^2 <= r^2
            a = dl[..., 0] ** 2 + dl[..., 1] ** 2
            b = 2 * (o[0] * dl[..., 0] + o[1] * dl[..., 1])
            c = o[0] ** 2 + o[1] ** 2 - size[0] ** 2
            disc = b * b - 4 * a * c
            ok = (disc > 0) & (a > 1e-12)
            root = torch.sqrt(disc.clamp(min=0))
            a2 = torch.where(ok, 2 * a, torch.ones_like(a))
            lo = torch.where(ok, (-b - root) / a2, torch.full_like(a, math.inf))
            hi = torch.where(ok, (-b + root) / a2, torch.full_like(a, -math.inf))
            along = (a <= 1e-12) & (c <= 0)  # a ray along the axis, inside the radius
            lo, hi = torch.where(along, -math.inf, lo), torch.where(along, math.inf, hi)
            t0, t1 = torch.maximum(t0, lo), torch.minimum(t1, hi)
        return (t1 - t0).clamp(min=0.0)


def solid_integrals(solids, camera: Camera, materials: tuple[str, ...], mono_energy_kev: float = 70.0) -> torch.Tensor:
    """(1, M, H, W) float64 line integrals of ``solids`` in the simulator's channels: partial density
    x mm (g/cm^3 x mm) of each solid's material, or, where ``materials`` is ``("mu",)`` (the
    monoenergetic model), attenuation (mu at ``mono_energy_kev``, 1/mm, x mm)."""
    import numpy as np

    from .materials import mass_attenuation

    out = torch.zeros(1, len(materials), camera.rows, camera.cols, dtype=torch.float64)
    for solid in solids:
        chord = chord_lengths(solid, camera)
        if materials == ("mu",):
            mu = float(mass_attenuation(solid.material, np.array([mono_energy_kev]))[0]) * solid.density / 10.0
            out[0, 0] += mu * chord
        elif solid.material in materials:
            out[0, materials.index(solid.material)] += solid.density * chord
        else:
            raise FluoroRegError(f"solid material '{solid.material}' is not a simulator channel "
                                 f"({', '.join(materials)})")
    return out


def _u(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def _random_rotation(g: torch.Generator) -> torch.Tensor:
    """A uniformly random rotation (3, 3) (a normalised Gaussian quaternion)."""
    q = torch.randn(4, generator=g, dtype=torch.float64)
    q = q / q.norm()
    angle = 2 * math.acos(min(1.0, abs(float(q[0]))))
    axis = q[1:] * (1 if q[0] >= 0 else -1)
    axis = axis / axis.norm().clamp(min=1e-12)
    return rotation_from_rotvec(axis * angle)


def _implant(g: torch.Generator, where: torch.Tensor) -> Solid:
    """A screw, a plate or a wire of titanium at ``where`` (camera frame, mm), turned at random."""
    kind = int(_u(g, 0, 2.999))
    R = _random_rotation(g)
    pose = make_pose(R, where)
    if kind == 0:  # a bone screw
        return Solid("cylinder", (_u(g, 2.0, 3.5), 0.0, _u(g, 15.0, 35.0)), pose, "titanium", 4.54)
    if kind == 1:  # a plate
        return Solid("box", (_u(g, 5.0, 8.0), _u(g, 1.5, 2.5), _u(g, 30.0, 60.0)), pose, "titanium", 4.54)
    return Solid("cylinder", (_u(g, 0.8, 1.2), 0.0, _u(g, 50.0, 110.0)), pose, "titanium", 4.54)  # a K-wire


def _table(g: torch.Generator, knee: torch.Tensor, camera: Camera) -> Solid:
    """A slab of plastic along the beam whose edge or width crosses the frame near the knee."""
    angle = _u(g, 0, 2 * math.pi)
    normal = torch.tensor([math.cos(angle), math.sin(angle), 0.0], dtype=torch.float64)  # in the image plane
    half_thick = _u(g, 5.0, 40.0)
    half_field = 0.5 * camera.cols * camera.col_spacing_mm * float(knee[2]) / camera.sdd_mm  # at the knee
    offset = _u(g, 0.2, 0.9) * half_field + half_thick
    centre = knee + normal * offset
    z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    y = torch.linalg.cross(z, normal)
    R = torch.stack([normal, y, z], 1)  # its own x across the slab, y along the edge, z along the beam
    size = (half_thick, 1000.0, _u(g, 75.0, 200.0))
    # mean density along the beam: a foam-core carbon table or a plastic step seen edge on
    return Solid("box", size, make_pose(R, centre), "adipose", _u(g, 0.15, 0.5))


def sample_clutter(model: ClutterModel | None, centre, femur: torch.Tensor, camera: Camera,
                   g: torch.Generator, bones=(), reference_flexion_deg: float = 0.0,
                   flexion_range=(0.0, 120.0)) -> ClutterScene:
    """Draw one frame's clutter around the knee at ``centre`` (volume frame, LPS mm) seen with the
    femur at ``femur`` (camera_from_volume, (4, 4)). ``bones``: the parts the other leg has (the
    simulator's, ``[p.bone for p in sim.parts]``).
    ``model`` None: an empty scene (and nothing drawn from ``g``)."""
    if model is None:
        return ClutterScene()
    model.check()
    c = torch.as_tensor(centre, dtype=torch.float64)
    knee = (femur[:3, :3] @ c + femur[:3, 3]).double()  # knee centre in the camera frame
    scene = ClutterScene()
    if _u(g, 0, 1) < model.other_leg:
        state = sample_knee_states(1, g, None, flexion_range)[0]
        depth = _u(g, *model.other_leg_depth_mm)
        shift = _u(g, *model.other_leg_shift_mm) * (1 if _u(g, 0, 1) < 0.5 else -1)  # ahead or behind
        other = femur_pose(centre, state, float(knee[2]))
        move = torch.eye(4, dtype=torch.float64)
        move[:3, 3] = torch.tensor([shift, _u(g, -40.0, 40.0), -depth], dtype=torch.float64)
        scene.other_leg = knee_poses(centre, move @ other, state.flexion_deg, state.adduction_deg,
                                     state.rotation_deg, reference_flexion_deg, bones=bones)
    lo, hi = model.implants
    half_field = 0.5 * camera.cols * camera.col_spacing_mm * float(knee[2]) / camera.sdd_mm
    for _ in range(lo + int(_u(g, 0, hi - lo + 1 - 1e-9))):
        where = knee + torch.tensor([_u(g, -0.7, 0.7) * half_field, _u(g, -0.7, 0.7) * half_field,
                                     _u(g, -60.0, 60.0)], dtype=torch.float64)
        scene.solids.append(_implant(g, where))
    if _u(g, 0, 1) < model.table:
        scene.solids.append(_table(g, knee, camera))
    return scene


__all__ = ["CLUTTER_PRESETS", "ClutterModel", "ClutterScene", "Solid", "chord_lengths", "get_clutter",
           "sample_clutter", "solid_integrals"]
