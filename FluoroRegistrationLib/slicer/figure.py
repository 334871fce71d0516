"""The README's scene figure, rendered offscreen with VTK from the test scene (no Slicer application).

    python -m FluoroRegistrationLib.slicer.figure Resources/slicer_scene.png

Builds :func:`phantom_scene` in a slicer-core scene, places the frame, registers the femur from a
perturbed start through :class:`FluoroRegistrationLogic` and draws what Slicer's 3D view shows: the
source and principal ray (markups), the frame on the detector plane, the femur's surface at its start
(red) and registered (bone colour) poses, both through their transform nodes' ToParent matrices.
"""

from __future__ import annotations

import math
import sys

import numpy as np


def _actor(poly_source, colour, opacity=1.0, matrix=None):
    import vtk

    port = poly_source.GetOutputPort()
    if matrix is not None:
        transform = vtk.vtkTransform()
        transform.SetMatrix(matrix.ravel().tolist())
        moved = vtk.vtkTransformPolyDataFilter()
        moved.SetTransform(transform)
        moved.SetInputConnection(port)
        port = moved.GetOutputPort()
    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputConnection(port)
    mapper.ScalarVisibilityOff()
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetColor(*colour)
    actor.GetProperty().SetOpacity(opacity)
    return actor


def _bone_surface(label_node, label_id):
    """Surface of one label in the label node's IJK coordinates (a VTK algorithm)."""
    import vtk

    image = vtk.vtkImageData()
    image.DeepCopy(label_node.GetImageData())
    surface = vtk.vtkDiscreteFlyingEdges3D()
    surface.SetInputData(image)
    surface.SetValue(0, label_id)
    smooth = vtk.vtkWindowedSincPolyDataFilter()
    smooth.SetInputConnection(surface.GetOutputPort())
    smooth.SetNumberOfIterations(15)
    smooth.SetPassBand(0.1)
    return smooth


def _frame_plane(frame_node, frame):
    """The frame as a textured rectangle over its pixels' extent on the detector plane."""
    import vtk
    from vtk.util import numpy_support

    from .nodes import ijk_to_ras

    m = ijk_to_ras(frame_node)
    rows, cols = frame.shape
    corner = lambda i, j: (m @ [i, j, 0, 1])[:3]  # noqa: E731
    plane = vtk.vtkPlaneSource()
    plane.SetOrigin(*corner(-0.5, -0.5))
    plane.SetPoint1(*corner(cols - 0.5, -0.5))
    plane.SetPoint2(*corner(-0.5, rows - 0.5))
    grey = (255 * (frame - frame.min()) / max(np.ptp(frame), 1e-9)).astype(np.uint8)
    image = vtk.vtkImageData()
    image.SetDimensions(cols, rows, 1)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(grey.ravel(), deep=True))
    texture = vtk.vtkTexture()
    texture.SetInputData(image)
    texture.InterpolateOn()
    actor = _actor(plane, (1, 1, 1))
    actor.SetTexture(texture)
    actor.GetProperty().LightingOff()
    return actor, [corner(i, j) for i, j in ((-0.5, -0.5), (cols - 0.5, -0.5), (cols - 0.5, rows - 0.5), (-0.5, rows - 0.5))]


def _line(a, b, colour, width=2.0):
    import vtk

    line = vtk.vtkLineSource()
    line.SetPoint1(*a)
    line.SetPoint2(*b)
    actor = _actor(line, colour)
    actor.GetProperty().SetLineWidth(width)
    return actor


def render_scene_figure(path, size=(1400, 800)) -> dict:
    """Build, register and draw the phantom scene into a PNG at ``path``; returns the femur's errors."""
    import slicer
    import torch
    import vtk

    from ..geometry import CentredParameterization
    from ..register import pose_errors
    from ..register.config import QUICK
    from .demo_scene import phantom_scene
    from .geometry import to_parent_from_pose
    from .nodes import ijk_to_ras, numpy_to_matrix, to_parent, volume_array
    from .scene_logic import FluoroRegistrationLogic

    scene = slicer.vtkMRMLScene()
    knee = phantom_scene(scene)
    logic = FluoroRegistrationLogic(scene)
    source_node, ray_node = logic.placeFrame(knee.frameNode, knee.camera)
    start = CentredParameterization(knee.femur.centroid, knee.truth).pose(
        torch.tensor([math.radians(3), math.radians(-2), math.radians(4), 4.0, -3.0, 5.0], dtype=torch.float64))
    initial = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "femur initial pose")
    initial.SetMatrixTransformToParent(numpy_to_matrix(to_parent_from_pose(start.numpy())))
    output = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "femur pose")
    result = logic.register(knee.ctNode, knee.labelNode, knee.frameNode, knee.camera, ["femur"], [initial], [output],
                            device="cpu", polarity="bone-dark",
                            config=QUICK)
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0.12, 0.13, 0.16)
    femur_ijk = _bone_surface(knee.labelNode, knee.labelNames["femur"])
    tibia_ijk = _bone_surface(knee.labelNode, knee.labelNames["tibia"])
    labels_ijk_to_ras = ijk_to_ras(knee.labelNode)
    renderer.AddActor(_actor(femur_ijk, (0.85, 0.25, 0.2), 0.35, to_parent(initial) @ labels_ijk_to_ras))
    renderer.AddActor(_actor(femur_ijk, (0.93, 0.87, 0.72), 1.0, to_parent(output) @ labels_ijk_to_ras))
    renderer.AddActor(_actor(tibia_ijk, (0.6, 0.75, 0.9), 0.25, to_parent_from_pose(knee.truth.numpy()) @ labels_ijk_to_ras))
    frame = volume_array(knee.frameNode, "frame")[0]
    plane, corners = _frame_plane(knee.frameNode, frame)
    renderer.AddActor(plane)
    source, principal = [0.0] * 3, [0.0] * 3
    source_node.GetNthControlPointPosition(0, source)
    ray_node.GetNthControlPointPosition(1, principal)
    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(*source)
    sphere.SetRadius(12.0)
    renderer.AddActor(_actor(sphere, (1.0, 0.85, 0.2)))
    renderer.AddActor(_line(source, principal, (1.0, 0.85, 0.2), 3.0))
    for corner in corners:
        renderer.AddActor(_line(source, corner, (0.55, 0.6, 0.7), 1.0))
    camera = renderer.GetActiveCamera()
    camera.SetFocalPoint(0.0, 0.0, 470.0)
    camera.SetPosition(-1250.0, -520.0, -80.0)
    camera.SetViewUp(0.0, -1.0, 0.0)
    renderer.ResetCameraClippingRange()
    camera.Zoom(1.1)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    window.AddRenderer(renderer)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputConnection(grab.GetOutputPort())
    writer.Write()
    femur = result.bones["femur"]
    return pose_errors(femur.camera_from_volume, knee.truth, knee.femur.centroid, knee.femur.points)


if __name__ == "__main__":
    errors = render_scene_figure(sys.argv[1] if len(sys.argv) > 1 else "slicer_scene.png")
    print(f"femur registered: mTRE {errors['mtre_mm']:.2f} mm, rotation {errors['rotation_deg']:.2f} deg")
