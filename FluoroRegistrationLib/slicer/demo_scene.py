"""A ready-made scene from the built-in knee phantom: CT, bone label map (named), a rendered frame.

Shared by the tests, the module's self-test, the README's figure and console example:

    scene = slicer.mrmlScene            # or slicer.vtkMRMLScene() under plain Python (slicer-core)
    knee = phantom_scene(scene)
    logic = FluoroRegistrationLogic(scene)
    logic.placeFrame(knee.frameNode, knee.camera)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..geometry import Camera, lateral_view
from ..phantom import make_knee_phantom
from ..render import render
from ..volume import ImageVolume, RenderVolume, registration_volumes
from .nodes import set_image_volume, set_volume

DEMO_CAMERA = Camera(1000.0, 128, 128, 2.0, 2.0, u0=60.0, v0=66.5)  # principal point off centre on purpose
DEMO_DEPTH_MM = 700.0  # source to knee centre


@dataclass
class PhantomScene:
    """Nodes and ground truth of :func:`phantom_scene`.

    ctNode, labelNode: the CT (HU) and its bone label map (colour table names femur, tibia, ...).
    frameNode: the frame, array (1, rows, cols), bone dark (``1000 exp(-DRR)``), geometry not placed yet.
    camera: its calibration. truth: (4, 4) float64 femur ``camera_from_volume``. ct: the CT as the core's
    ImageVolume (LPS). femur: the femur's registration RenderVolume. labelNames: name -> label id.
    """

    ctNode: object
    labelNode: object
    frameNode: object
    camera: Camera
    truth: torch.Tensor
    ct: ImageVolume
    femur: RenderVolume
    labelNames: dict


def phantom_scene(scene, spacing_mm: float = 2.0, camera: Camera = DEMO_CAMERA, flexion_deg: float = 20.0) -> PhantomScene:
    """Add the phantom knee's CT, labels (with names) and a frame of its femur to ``scene``.

    The frame is the femur alone drawn by the exact renderer (trilinear model, not registration's fast
    renderer) at ``truth``, the phantom's lateral view with the knee ``DEMO_DEPTH_MM`` from the source.
    """
    ph = make_knee_phantom(spacing_mm=spacing_mm, flexion_deg=flexion_deg, seed=0)
    ct = ImageVolume.from_spacing(ph.hu.astype(np.float32), ph.spacing_mm, ph.origin_mm)
    labels = ImageVolume.from_spacing(ph.labels.astype(np.int16), ph.spacing_mm, ph.origin_mm)
    ct_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "knee CT")
    set_image_volume(ct_node, ct)
    label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "knee bones")
    set_image_volume(label_node, labels)
    colors = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "knee bone names")
    colors.SetTypeToUser()
    colors.SetNumberOfColors(1 + max(ph.label_names.values()))
    palette = [(0.9, 0.8, 0.6), (0.6, 0.8, 0.9), (0.9, 0.6, 0.6), (0.7, 0.9, 0.6)]
    for name, index in ph.label_names.items():
        colors.SetColor(index, name, *palette[(index - 1) % len(palette)], 1.0)
    display = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeDisplayNode")
    display.SetAndObserveColorNodeID(colors.GetID())
    label_node.SetAndObserveDisplayNodeID(display.GetID())
    truth = lateral_view(ph.knee_centre_mm, DEMO_DEPTH_MM)
    femur = registration_volumes(ct, labels, ph.label_names, ["femur"])["femur"]
    with torch.no_grad():
        drr = render(femur, camera, truth.float(), "exact", interpolation="linear")[0, 0].numpy()
    frame_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "frame")
    set_volume(frame_node, (1000.0 * np.exp(-drr))[None].astype(np.float32), np.eye(4))
    return PhantomScene(ct_node, label_node, frame_node, camera, truth, ct, femur, dict(ph.label_names))
