"""A plausible cemented total knee fitted to the built-in phantom, for tests and demos.

Three components, each an implicit shape (signed distance, negative inside, mm) in its bone's
local frame of :mod:`..phantom` (origin at the knee centre, x medial for a right knee, y
posterior, z superior), turned into a closed surface by marching cubes:

- **femoral** (cobalt-chrome): the distal femur resected by five planar cuts (distal 9 mm above
  the condyles, posterior 9 mm in front of them, anterior, and two chamfers); the component fills
  what the cuts removed, out to 1.5 mm beyond the bone (where the cartilage was), with two pegs
  into the distal cut. Two condylar runners and an anterior flange, like a cruciate-retaining design.
- **tray** (titanium alloy): a 3 mm plate on the tibial cut (7.5 mm below the plateau) following
  the plateau's outline, with a tapered stem.
- **insert** (polyethylene): on the tray, up to 1 mm below the femoral component.

Meshes are written in the phantom CT's frame (LPS mm) at the phantom's flexion, so each
component's pose in a frame is its bone's pose; :func:`resect` removes the bone the components
replace from the phantom's CT and labels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..phantom import _BONES, _capsule, _ellipse2, _len, _rot, Phantom

SQRT2 = np.sqrt(2.0)


def _femoral_removed(x, y, z):
    """> 0 where the five cuts remove bone (outside the retained polytope)."""
    cuts = [-13.0 - z,                                  # distal: keep z >= -13
            y - 13.0,                                   # posterior: keep y <= 13
            -28.0 - y,                                  # anterior: keep y >= -28
            ((y - 5.0) - (z + 13.0)) / SQRT2,           # posterior chamfer
            (-(y + 18.0) - (z + 13.0)) / SQRT2]         # anterior chamfer
    return np.maximum.reduce(cuts)


def femoral_sdf(x, y, z):
    """The femoral component (femur frame): the removed bone out to 1.5 mm beyond the surface, and pegs."""
    femur = _BONES["femur"][0]
    shell = np.maximum(femur(x, y, z) - 1.5, -_femoral_removed(x, y, z))
    pegs = [np.maximum(_len(x - s, y + 2.0) - 3.5, np.abs(z + 7.0) - 6.5) for s in (20.0, -20.0)]
    return np.minimum.reduce([shell, *pegs])


_TIBIAL_CUT = -33.0  # tibia frame: 7.5 mm below the plateau (z = -25.5)


def tray_sdf(x, y, z):
    """The tibial tray (tibia frame): a 3 mm plate following the plateau's outline, and a stem."""
    plate = np.maximum(_ellipse2(x, y - 3.0, 36.0, 22.0), np.abs(z - (_TIBIAL_CUT + 1.5)) - 1.5)
    stem = _capsule(x, y, z, (0.0, 4.0, _TIBIAL_CUT), (0.0, 5.0, _TIBIAL_CUT - 40.0), 7.0, 4.5)
    return np.minimum(plate, stem)


def insert_sdf(x, y, z):
    """The polyethylene insert (tibia frame): on the tray, its top 1 mm below the femoral component."""
    bottom, top = _TIBIAL_CUT + 3.0, -24.5
    return np.maximum(_ellipse2(x, y - 3.0, 35.0, 21.0), np.abs(z - (bottom + top) / 2) - (top - bottom) / 2)


@dataclass(frozen=True)
class Component:
    """One procedural component: its shape, its bone (whose frame it lives in and whose pose it
    shares), its material (simulate.materials), and a box (local mm) that holds it."""

    name: str
    sdf: object
    bone: str
    material: str
    bounds: tuple


COMPONENTS = (
    Component("femoral", femoral_sdf, "femur", "cobalt_chrome", ((-48, -45, -27), (48, 28, 26))),
    Component("tray", tray_sdf, "tibia", "titanium_alloy", ((-40, -22, -80), (40, 28, -28))),
    Component("insert", insert_sdf, "tibia", "polyethylene", ((-38, -21, -32), (38, 27, -22))),
)


def _bone_angle(phantom: Phantom, bone: str) -> float:
    return phantom.flexion_deg if bone == "tibia" else 0.0


def _side(phantom: Phantom) -> float:
    """+1 for a right knee (local x = world x), -1 for a left one."""
    return 1.0 if phantom.side == "right" else -1.0


def component_mesh(component: Component, phantom: Phantom, spacing_mm: float = 0.5):
    """The component's closed surface (``trimesh.Trimesh``) in the phantom CT's frame (LPS mm)."""
    import trimesh
    from skimage.measure import marching_cubes

    lo, hi = (np.asarray(b, float) for b in component.bounds)
    # the grid is offset from whole millimetres so the cut planes never pass exactly through its nodes
    # (zeros on nodes leave degenerate slivers)
    axes = [np.arange(lo[a] - 1.63 * spacing_mm, hi[a] + 2 * spacing_mm, spacing_mm) for a in range(3)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    d = component.sdf(x, y, z)
    d[[0, -1]], d[:, [0, -1]], d[:, :, [0, -1]] = 1.0, 1.0, 1.0  # closed at the box's faces
    verts, faces, _, _ = marching_cubes(d.astype(np.float32), level=0.0, spacing=(spacing_mm,) * 3,
                                        allow_degenerate=False)  # faces the grid meets exactly at zero
    local = verts + np.array([a[0] for a in axes])
    mesh = trimesh.Trimesh(_to_world(local, phantom, component.bone), faces, process=False)
    trimesh.repair.fix_winding(mesh)
    trimesh.repair.fix_inversion(mesh)
    return mesh


def _to_world(local: np.ndarray, phantom: Phantom, bone: str) -> np.ndarray:
    """(N, 3) bone-local mm -> phantom CT LPS mm (the inverse of the phantom's bone frames)."""
    a = np.deg2rad(_bone_angle(phantom, bone))
    y, z = local[:, 1], local[:, 2]
    world = np.stack([_side(phantom) * local[:, 0], np.cos(a) * y - np.sin(a) * z, np.sin(a) * y + np.cos(a) * z], 1)
    return world + np.asarray(phantom.knee_centre_mm)


def resect(phantom: Phantom) -> Phantom:
    """The phantom with the bone the components replace removed from its CT (soft tissue there,
    label 0): the femur outside the cuts, the tibia above its cut and where the stem goes."""
    hu, labels = phantom.hu.copy(), phantom.labels.copy()
    c = np.asarray(phantom.knee_centre_mm)
    n = labels.shape
    grid = [phantom.origin_mm[a] + phantom.spacing_mm[a] * np.arange(n[2 - a]) - c[a] for a in range(3)]
    X, Y, Z = grid[0][None, None, :], grid[1][None, :, None], grid[2][:, None, None]
    for bone, removed in (("femur", lambda x, y, z: _femoral_removed(x, y, z) > 0),
                          ("tibia", lambda x, y, z: (z > _TIBIAL_CUT) | (tray_sdf(x, y, z) < 0))):
        yl, zl = _rot(_bone_angle(phantom, bone), Y, Z)
        xl = _side(phantom) * X
        gone = (labels == phantom.label_names[bone]) & removed(xl, yl, zl)
        labels[gone] = 0
        hu[gone] = 50
    return replace(phantom, hu=hu, labels=labels)


def write_implants(phantom: Phantom, out_dir, spacing_mm: float = 0.5) -> dict:
    """Write each component as ``<name>.stl`` (the phantom CT's frame, mm) and ``implants.json``
    ({name: {file, bone, material}}) into ``out_dir``. Returns that dict."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = {}
    for component in COMPONENTS:
        component_mesh(component, phantom, spacing_mm).export(out / f"{component.name}.stl")
        index[component.name] = {"file": f"{component.name}.stl", "bone": component.bone, "material": component.material}
    (out / "implants.json").write_text(json.dumps(index, indent=1))
    return index
