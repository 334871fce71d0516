"""Implant components in a Slicer scene: a model node's surface as registration's
:class:`~..implant.body.ImplantBody`, and back to a mesh file for the worker process.

Slicer keeps a model's points in RAS (it converts an STL or OBJ read as LPS, the default for these
files since Slicer 4.11, on load); components, like CT volumes, are posed in LPS mm
(docs/CONVENTIONS.md), so x and y are negated here. That is a turn of 180 degrees about z, so the
faces keep their outward winding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import FluoroRegError
from ..implant.body import ImplantBody, component_body
from ..implant.mesh import ImplantMesh, from_trimesh
from .nodes import node_name

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])


def mesh_from_model(modelNode, name: str | None = None) -> ImplantMesh:
    """The model node's surface in LPS mm, triangulated and checked (one closed, outward solid)."""
    import trimesh
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    if modelNode is None or not modelNode.IsA("vtkMRMLModelNode"):
        raise FluoroRegError(f"{node_name(modelNode)} is not a model node; load the component's STL/OBJ/PLY as a model")
    polydata = modelNode.GetPolyData()
    label = name or node_name(modelNode)
    if polydata is None or polydata.GetNumberOfPolys() == 0:
        raise FluoroRegError(f"model {label} has no surface triangles; load the component's mesh file again")
    triangles = vtk.vtkTriangleFilter()
    triangles.SetInputData(polydata)
    triangles.Update()
    surface = triangles.GetOutput()
    points = vtk_to_numpy(surface.GetPoints().GetData()).astype(np.float64) @ RAS_FROM_LPS.T
    faces = vtk_to_numpy(surface.GetPolys().GetConnectivityArray()).reshape(-1, 3).astype(np.int64)
    return from_trimesh(trimesh.Trimesh(points, faces, process=True), label)


def implant_bodies(implants) -> dict[str, ImplantBody]:
    """{name: ImplantBody} from {name: modelNode}, {name: (modelNode, material)} or {name:
    (modelNode, material, follows)} (material: a name such as cobalt_chrome or ``mu=<1/mm>``,
    default cobalt_chrome; follows: another component whose pose this one takes, e.g. a
    polyethylene insert locked in its tray, as ``--implant ...,follows=tray``)."""
    from dataclasses import replace

    from ..register.pipeline import followed

    bodies = {}
    for name, spec in dict(implants or {}).items():
        parts = tuple(spec) if isinstance(spec, (tuple, list)) else (spec,)
        if not 1 <= len(parts) <= 3:
            raise FluoroRegError(f"implant {name}: give a model node, (model, material) or (model, material, "
                                 f"follows), got {len(parts)} items")
        node, material, follows = parts + (None,) * (3 - len(parts))
        body = component_body(mesh_from_model(node, name), material or "cobalt_chrome")
        bodies[name] = replace(body, follows=follows) if follows else body
    followed(bodies)  # a leader that is not among the components, or itself: one line now, not in the worker
    return bodies


def write_implant(body: ImplantBody, folder) -> Path:
    """The component's mesh as ``folder/<name>.stl`` (LPS mm), for ``fluororeg register --implant``."""
    import trimesh

    path = Path(folder) / f"{body.name}.stl"
    trimesh.Trimesh(body.mesh.vertices.cpu().numpy(), body.mesh.faces.cpu().numpy(), process=False).export(path)
    return path


def model_from_mesh(scene, mesh: ImplantMesh, name: str | None = None):
    """A new model node showing ``mesh`` (LPS mm) in the scene (RAS): what loading its STL gives."""
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray

    points = vtk.vtkPoints()
    points.SetData(numpy_to_vtk(np.ascontiguousarray(mesh.vertices.numpy() @ RAS_FROM_LPS.T), deep=True))
    faces = mesh.faces.numpy()
    cells = np.hstack([np.full((len(faces), 1), 3, dtype=np.int64), faces]).ravel()
    polys = vtk.vtkCellArray()
    polys.ImportLegacyFormat(numpy_to_vtkIdTypeArray(cells, deep=True))
    polydata = vtk.vtkPolyData()
    polydata.SetPoints(points)
    polydata.SetPolys(polys)
    node = scene.AddNewNodeByClass("vtkMRMLModelNode", name or mesh.name)
    node.SetAndObservePolyData(polydata)
    return node


__all__ = ["implant_bodies", "mesh_from_model", "model_from_mesh", "write_implant"]
