"""Implant components from CAD meshes: reading and checking surfaces (``mesh``)."""

from .mesh import FORMATS, ImplantMesh, from_trimesh, load_mesh, mesh_problems, repair_mesh

__all__ = ["FORMATS", "ImplantMesh", "from_trimesh", "load_mesh", "mesh_problems", "repair_mesh"]
