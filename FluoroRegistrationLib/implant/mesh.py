"""Implant meshes: read a CAD surface (STL, OBJ, PLY) through ``trimesh``, check that it bounds a
solid, and repair what can be repaired.

A mesh is drawn by summing signed ray-surface distances (``render/mesh.py``), which is the length
inside the solid only when the surface is closed (every edge shared by exactly two faces), its
faces consistently wound and pointing outwards, and it is one body. Each failure gets a one-line
error naming what is wrong and the fix (``--repair``, or a CAD export setting).

Units: millimetres in the mesh's own frame (``scale`` converts, e.g. 1000 for a mesh in metres).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import FluoroRegError

FORMATS = (".stl", ".obj", ".ply")


@dataclass(frozen=True)
class ImplantMesh:
    """A closed, outward-wound triangle surface in its own frame (mm).

    Attributes:
        vertices: (V, 3) float64 tensor, mm.
        faces: (F, 3) int64 tensor, counter-clockwise seen from outside (normals point out).
        name: the component's name (e.g. ``femoral``).
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    name: str = "implant"

    def corners(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each face's three vertices, three (F, 3) tensors in winding order."""
        return tuple(self.vertices[self.faces[:, k]] for k in range(3))

    @property
    def volume_mm3(self) -> float:
        """The enclosed volume (divergence theorem; positive for an outward-wound closed surface)."""
        a, b, c = self.corners()
        return float((a * torch.linalg.cross(b, c)).sum() / 6.0)

    @property
    def centroid(self) -> torch.Tensor:
        """(3,) the solid's centre of volume (mm), from signed tetrahedra to the origin."""
        a, b, c = self.corners()
        w = (a * torch.linalg.cross(b, c)).sum(-1) / 6.0
        return ((a + b + c) / 4.0 * w[:, None]).sum(0) / w.sum()


def mesh_problems(mesh) -> list[str]:
    """What keeps a ``trimesh.Trimesh`` from bounding one solid, as short phrases (empty: none)."""
    problems = []
    if len(mesh.faces) == 0:
        return ["it has no faces"]
    _, uses = np.unique(mesh.edges_sorted, axis=0, return_counts=True)
    if (uses == 1).any():
        problems.append(f"{int((uses == 1).sum())} open edge(s) (holes: edges used by one face)")
    if (uses > 2).any():
        problems.append(f"{int((uses > 2).sum())} non-manifold edge(s) (used by more than two faces)")
    if not mesh.is_winding_consistent:
        problems.append("inconsistently wound faces (some normals flipped against their neighbours)")
    bodies = mesh.body_count
    if bodies > 1:
        problems.append(f"{bodies} separate bodies (export one component per file)")
    if not problems and mesh.volume < 0:
        problems.append("faces wound inwards (normals point into the solid)")
    return problems


def repair_mesh(mesh):
    """Fix what can be fixed in place: merge duplicate vertices, drop degenerate and duplicate faces,
    make the winding consistent and outward, fill small holes. Returns the mesh."""
    import trimesh

    mesh.merge_vertices()
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.update_faces(mesh.unique_faces())
    mesh.remove_unreferenced_vertices()
    trimesh.repair.fill_holes(mesh)
    trimesh.repair.fix_winding(mesh)
    trimesh.repair.fix_inversion(mesh)
    return mesh


def load_mesh(path, name: str | None = None, scale: float = 1.0, repair: bool = False) -> ImplantMesh:
    """Read an implant's surface: STL, OBJ or PLY, in mm times ``scale``.

    Raises :class:`FluoroRegError` in one line for a missing, unreadable or empty file, a format
    that is not a mesh, and a surface that does not bound one solid (open edges, flipped faces,
    several bodies); ``repair`` first fixes what can be fixed and reports what is left.
    """
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise FluoroRegError(f"implant mesh not found: {path}; give an STL, OBJ or PLY file")
    if path.suffix.lower() not in FORMATS:
        raise FluoroRegError(f"implant mesh {path.name} is not STL, OBJ or PLY; export the component in one of these")
    if not (scale > 0 and np.isfinite(scale)):
        raise FluoroRegError(f"implant mesh scale {scale} must be a positive number (1 for mm, 1000 for metres)")
    try:
        mesh = trimesh.load_mesh(path, process=True)
    except Exception as err:  # noqa: BLE001 - trimesh raises many kinds on a corrupt file
        raise FluoroRegError(f"cannot read implant mesh {path.name}: {type(err).__name__}: {err}; "
                             "re-export it from the CAD program") from None
    if isinstance(mesh, trimesh.Scene):
        mesh = mesh.to_geometry() if hasattr(mesh, "to_geometry") else mesh.dump(concatenate=True)
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise FluoroRegError(f"implant mesh {path.name} holds no triangles; re-export it as a surface mesh")
    if not np.isfinite(mesh.vertices).all():
        raise FluoroRegError(f"implant mesh {path.name} has non-finite vertex coordinates; re-export it")
    if repair:
        repair_mesh(mesh)
    problems = mesh_problems(mesh)
    if problems:
        fix = "re-export a closed solid from the CAD program" if repair else "try --repair, or re-export a closed solid"
        raise FluoroRegError(f"implant mesh {path.name} does not bound one solid: {'; '.join(problems)}; {fix}")
    vertices = torch.as_tensor(np.asarray(mesh.vertices, np.float64) * scale)
    size = float((vertices.max(0).values - vertices.min(0).values).max())
    if not 5.0 <= size <= 500.0:
        raise FluoroRegError(f"implant mesh {path.name} is {size:g} mm across (expected 5-500 mm for a knee component); "
                             "give --scale (e.g. 1000 for a mesh in metres, 25.4 for inches)")
    return ImplantMesh(vertices, torch.as_tensor(np.asarray(mesh.faces, np.int64)), name or path.stem)


def from_trimesh(mesh, name: str = "implant") -> ImplantMesh:
    """An :class:`ImplantMesh` from an in-memory ``trimesh.Trimesh`` (checked like a file)."""
    problems = mesh_problems(mesh)
    if problems:
        raise FluoroRegError(f"implant mesh {name} does not bound one solid: {'; '.join(problems)}")
    return ImplantMesh(torch.as_tensor(np.asarray(mesh.vertices, np.float64)),
                       torch.as_tensor(np.asarray(mesh.faces, np.int64)), name)
