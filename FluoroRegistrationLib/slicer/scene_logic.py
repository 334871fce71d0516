"""FluoroRegistrationLogic: the console API on any vtkMRMLScene (Slicer's, or slicer-core's under plain Python).

Nothing here touches Slicer's GUI (no ``slicer.app``, no ``slicer.mrmlScene``): the scene is passed
in. Conventions (docs/CONVENTIONS.md, "In a Slicer scene"): the scene's world is the C-arm's camera frame;
a frame volume is a single slice whose IJKToRAS puts pixel (i = col, j = row) at
``((i - u0) col_spacing, (j - v0) row_spacing, sdd)``; a bone's pose is a linear transform node whose
ToParent is ``camera_from_volume @ diag(-1, -1, 1, 1)`` (see :mod:`.geometry`, the only place RAS
meets LPS).

    logic = FluoroRegistrationLogic(scene)
    logic.placeFrame(frameNode, "calib.json")
    result = logic.register(ctNode, labelNode, frameNode, "calib.json", ["femur"], {"femur": init}, {"femur": out})

A rig of several views (biplane): the scene's world is the first view's camera frame (the rig's
reference); ``placeRigFrames([frameA, frameB], "rig.json")`` puts each frame on its own detector,
and ``register`` takes the frame nodes (and mask nodes) as lists in the rig's order.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch

from ..errors import FluoroRegError
from ..geometry import Camera, Rig, as_rig
from ..register import RegistrationResult
from ..render import project_label, render
from ..volume import RenderVolume, labels_on_ct, read_label_names, registration_volumes
from .geometry import (as_camera, calibration_text, frame_ijk_to_ras, pose_from_to_parent, source_and_principal_point,
                       to_parent_from_pose)
from .job import RegistrationJob
from .nodes import (check_node, get_or_add_referenced, ijk_to_ras, image_volume, label_names, node_name, numpy_to_matrix,
                    set_to_parent, set_volume, to_parent, volume_array)

CALIBRATION_ATTRIBUTE = "FluoroRegistration.Calibration"  # a frame node's calibration (JSON), saved with the scene


class FluoroRegistrationLogic:
    """Scene logic of FluoroRegistration; its methods are the console API (see the README)."""

    def __init__(self, scene):
        if scene is None or not hasattr(scene, "IsA") or not scene.IsA("vtkMRMLScene"):
            raise FluoroRegError(f"FluoroRegistrationLogic needs a vtkMRMLScene, got {type(scene).__name__}; "
                                 "pass slicer.mrmlScene (in Slicer) or slicer.vtkMRMLScene()")
        self.scene = scene
        self._bone_cache: dict = {}

    # ------------------------------------------------------------------------------------ frames
    def frameImage(self, frameNode, calibration) -> np.ndarray:
        """The frame's pixels (rows, cols) float64, after checking it is one slice of the calibration's size."""
        camera = as_camera(calibration)
        array = volume_array(frameNode, "frame")
        if array.shape[0] != 1:
            raise FluoroRegError(f"frame {node_name(frameNode)} has {array.shape[0]} slices; a frame is one slice: "
                                 "pick one with extractFrame(node, index, outputNode) or the module's frame index")
        camera.check_frame(array.shape[1], array.shape[2], f"frame {node_name(frameNode)}")
        return array[0].astype(np.float64)

    def extractFrame(self, stackNode, index: int, outputNode):
        """Copy slice ``index`` of a multi-frame volume (N, rows, cols) into ``outputNode`` (1, rows, cols)."""
        stack = volume_array(stackNode, "frame stack")
        if not 0 <= index < stack.shape[0]:
            raise FluoroRegError(f"frame index {index} is outside {node_name(stackNode)}'s {stack.shape[0]} frames; "
                                 f"use 0 to {stack.shape[0] - 1}")
        check_node(outputNode, "vtkMRMLScalarVolumeNode", "output frame")
        set_volume(outputNode, stack[index:index + 1], ijk_to_ras(stackNode))
        return outputNode

    def placeRigFrames(self, frameNodes, calibration) -> list:
        """Put each view's frame of a rig (``calibration``: Rig, dict or JSON path) on its own detector
        in the scene (the first view's camera frame); ``frameNodes`` in the rig's order. Returns each
        view's (source point node, principal ray line node)."""
        rig = as_rig(calibration)
        nodes = rig.per_view(frameNodes, "frame node")
        return [self.placeFrame(n, v.camera, v.camera_from_reference.numpy()) for n, v in zip(nodes, rig.views)]

    def placeFrame(self, frameNode, calibration, cameraFromReference=None):
        """Put the frame on the detector (IJKToRAS per docs/CONVENTIONS.md) and show the C-arm.

        Adds (or updates) a markup point at the X-ray source and a line along the principal ray, both
        referenced by the frame node; the calibration is stored on the frame as an attribute.
        ``cameraFromReference`` (4, 4): the view's pose in a rig (the scene is the rig's first view;
        None: this frame's C-arm is the scene's). Returns (source point node, principal ray line node).
        """
        import vtk

        camera = as_camera(calibration)
        scene_from_camera = _scene_from_view(cameraFromReference)
        self.frameImage(frameNode, camera)
        if frameNode.GetParentTransformNode() is not None:
            raise FluoroRegError(f"frame {node_name(frameNode)} is under transform "
                                 f"{node_name(frameNode.GetParentTransformNode())}; the frame stays in the C-arm "
                                 "frame: remove its transform")
        frameNode.SetIJKToRASMatrix(numpy_to_matrix(scene_from_camera @ frame_ijk_to_ras(camera)))
        frameNode.SetAttribute(CALIBRATION_ATTRIBUTE, calibration_text(camera))
        frameNode.Modified()
        source, principal = (scene_from_camera[:3, :3] @ p + scene_from_camera[:3, 3]
                             for p in source_and_principal_point(camera))
        name = node_name(frameNode)
        sourceNode = get_or_add_referenced(frameNode, "FluoroSource", "vtkMRMLMarkupsFiducialNode", f"{name} source")
        sourceNode.RemoveAllControlPoints()
        sourceNode.AddControlPoint(vtk.vtkVector3d(*source), "X-ray source")
        rayNode = get_or_add_referenced(frameNode, "FluoroPrincipalRay", "vtkMRMLMarkupsLineNode",
                                        f"{name} principal ray")
        rayNode.RemoveAllControlPoints()
        rayNode.AddControlPoint(vtk.vtkVector3d(*source), "source")
        rayNode.AddControlPoint(vtk.vtkVector3d(*principal), "principal point")
        return sourceNode, rayNode

    # ------------------------------------------------------------------------------------ bones
    def boneIds(self, labelNode, bones) -> dict[str, int]:
        """Bone name -> label id: ``bones`` as a dict, or names looked up in the label map's colour table."""
        check_node(labelNode, "vtkMRMLScalarVolumeNode", "bone label map")
        if isinstance(bones, str):
            bones = [b.strip() for b in bones.split(",") if b.strip()]
        if isinstance(bones, dict):
            return read_label_names(bones)
        if not bones:
            raise FluoroRegError("no bones given; pass names like ['femur', 'tibia'] or {'femur': 1}")
        names = label_names(labelNode)
        missing = [b for b in bones if b not in names]
        if missing:
            raise FluoroRegError(f"bone(s) {', '.join(missing)} not in label map {node_name(labelNode)} "
                                 f"(labels present: {', '.join(names) or 'none'}); pick one of those or fix the labels")
        return {b: names[b] for b in bones}

    def boneVolumes(self, ctNode, labelNode, bones, context_mm: float | None = None) -> dict[str, RenderVolume]:
        """The bones as registration draws them (``registration_volumes``; ``context_mm``: with the CT
        around them, the config's ``context``), each cached until the nodes change (a subset of the
        bones, e.g. the live preview's, reuses the others' work)."""
        ids = self.boneIds(labelNode, bones)
        nodes = (_volume_key(ctNode), _volume_key(labelNode))
        if self._bone_cache.get("nodes") != nodes:
            self._bone_cache = {"nodes": nodes}
        missing = {b: i for b, i in ids.items() if (b, i, context_mm) not in self._bone_cache}
        if missing:
            ct, labels = self.ctAndLabels(ctNode, labelNode)
            ct.array = ct.array.astype(np.float32)
            for bone, volume in registration_volumes(ct, labels, missing, list(missing), context_mm=context_mm).items():
                self._bone_cache[(bone, missing[bone], context_mm)] = volume
        return {b: self._bone_cache[(b, i, context_mm)] for b, i in ids.items()}

    @staticmethod
    def ctAndLabels(ctNode, labelNode):
        """The CT and its bone label map as ImageVolumes (LPS), the labels checked: on the CT's grid,
        integer ids, some non-zero."""
        ct = image_volume(ctNode, "CT")
        labels = labels_on_ct(image_volume(labelNode, "bone label map"), ct, node_name(labelNode),
                              " (Resample Scalar/Vector/DWI Volume)")
        return ct, labels

    def poses(self, bones, poseNodes) -> dict[str, torch.Tensor]:
        """Bone -> (4, 4) float64 ``camera_from_volume`` read from the transform nodes' ToParent."""
        nodes = per_bone(poseNodes, list(bones), "pose transform")
        return {b: torch.from_numpy(pose_from_to_parent(to_parent(n))) for b, n in nodes.items()}

    def writePoses(self, poses: dict, outputPoseNodes) -> None:
        """Set each bone's transform node to its (4, 4) ``camera_from_volume`` (ToParent = pose @ F)."""
        nodes = per_bone(outputPoseNodes, list(poses), "output pose transform")
        for bone, pose in poses.items():
            set_to_parent(nodes[bone], to_parent_from_pose(torch.as_tensor(pose).detach().cpu().numpy()))

    # ------------------------------------------------------------------------------------ images
    def renderDRR(self, ctNode, labelNode, calibration, bones, poseNodes, outputNode, longest: int | None = None,
                  cameraFromReference=None):
        """A DRR of the bones at their poses, as a volume on the frame's geometry.

        Draws what registration compares: each bone's label (with its partial-volume rim) in excess of
        soft tissue. ``longest``: render on a coarser grid over the same detector (live previews, e.g.
        128 while dragging a slider). ``cameraFromReference`` (4, 4): draw as a further view of a rig
        sees the bones (their poses are in the rig's first view; the output stands on this view's
        detector). Returns ``outputNode`` with array (1, rows, cols).
        """
        camera = _preview_camera(as_camera(calibration), longest)
        volumes = self.boneVolumes(ctNode, labelNode, bones)
        poses = self._view_poses(volumes, poseNodes, cameraFromReference)
        with torch.no_grad(), _torch_threads(1 if longest is not None else torch.get_num_threads()):
            drr = render(list(volumes.values()), camera, [poses[b].float() for b in volumes], "fast")
        check_node(outputNode, "vtkMRMLScalarVolumeNode", "DRR output")
        set_volume(outputNode, drr[0].numpy().astype(np.float32), _scene_from_view(cameraFromReference) @ frame_ijk_to_ras(camera))
        return outputNode

    def projectBones(self, ctNode, labelNode, calibration, bones, poseNodes, outputLabelNode, cameraFromReference=None):
        """Where each bone projects at its pose: a label map on the frame's geometry (each bone's label
        id, the thickest bone on top). For the bones' outlines over the frame, or masks for register.
        ``cameraFromReference``: as seen by a further view of a rig (see :meth:`renderDRR`)."""
        camera = as_camera(calibration)
        volumes = self.boneVolumes(ctNode, labelNode, bones)
        poses = self._view_poses(volumes, poseNodes, cameraFromReference)
        ids = self.boneIds(labelNode, bones)
        with torch.no_grad():
            chords = {b: project_label(v, camera, poses[b].float())[0, 0].numpy() for b, v in volumes.items()}
        return self.writeMasks(calibration, chords, ids, outputLabelNode, cameraFromReference)

    def _view_poses(self, volumes, poseNodes, cameraFromReference) -> dict[str, torch.Tensor]:
        """The poses of the nodes (in the rig's first view) as the view ``cameraFromReference`` sees them."""
        poses = self.poses(volumes, poseNodes)
        if cameraFromReference is None:
            return poses
        view = torch.as_tensor(np.asarray(cameraFromReference, np.float64))
        return {b: view @ p for b, p in poses.items()}

    def writeMasks(self, calibration, masks: dict, labelIds: dict, outputLabelNode, cameraFromReference=None):
        """Masks {bone: (rows, cols) weights, > 0 inside} as one label map on the frame's geometry
        (``cameraFromReference``: a further view's detector in a rig).

        Where masks overlap, the largest value wins (chord lengths: the thickest bone)."""
        camera = as_camera(calibration)
        check_node(outputLabelNode, "vtkMRMLLabelMapVolumeNode", "mask label map")
        labels = np.zeros(camera.shape, np.int16)
        best = np.zeros(camera.shape, np.float64)
        for bone, mask in masks.items():
            mask = np.asarray(mask, np.float64)
            if mask.shape != camera.shape:
                raise FluoroRegError(f"mask of {bone} is {mask.shape[0]}x{mask.shape[1]} but the frame is "
                                     f"{camera.rows}x{camera.cols}; pass masks on the frame's grid")
            wins = (mask > 0) & (mask > best)
            labels[wins], best[wins] = labelIds[bone], mask[wins]
        set_volume(outputLabelNode, labels[None], _scene_from_view(cameraFromReference) @ frame_ijk_to_ras(camera))
        return outputLabelNode

    def masksFromLabelMap(self, maskNode, calibration, labelIds: dict) -> dict[str, torch.Tensor]:
        """Bone -> (rows, cols) bool mask from a label map over the frame (each bone's label id; a bone
        absent from it gets none): the one path's label map rule."""
        from ..register.api import label_map_masks

        return label_map_masks(self.maskLabels(maskNode), labelIds, as_camera(calibration))

    @staticmethod
    def maskLabels(maskNode) -> np.ndarray:
        """The (rows, cols) label ids of a mask label map over the frame (one slice)."""
        check_node(maskNode, "vtkMRMLLabelMapVolumeNode", "mask label map")
        labels = volume_array(maskNode, "mask label map")
        if labels.shape[0] != 1:
            raise FluoroRegError(f"mask label map {node_name(maskNode)} has {labels.shape[0]} slices; make it on the "
                                 "frame's geometry (one slice)")
        return labels[0]

    def segmentFrame(self, frameNode, modelPath, outputLabelNode, labelIds: dict | None = None,
                     polarity: str = "auto"):
        """Bone masks predicted by a segmentation model, as one label map on the frame's geometry.

        Args:
            modelPath: the model folder from ``fluororeg segment train`` (or its model.json).
            labelIds: {bone: label id} to write (e.g. ``boneIds(labelNode, bones)``, so that
                register reads them back); default: the model's bones numbered from 1.
        Where two predicted bones overlap, the more certain one is written.
        """
        from ..segment import load_model, predict_probabilities

        calibration = self.frameCalibration(frameNode)
        raw = self.frameImage(frameNode, calibration)
        check_node(outputLabelNode, "vtkMRMLLabelMapVolumeNode", "mask output")
        path = Path(str(modelPath)) if modelPath else None
        if path is None or not path.exists():
            raise FluoroRegError(f"segmentation model not found: {modelPath}; pass the folder written by "
                                 "`fluororeg segment train`")
        model, info = load_model(path)
        ids = dict(labelIds) if labelIds else {b: i + 1 for i, b in enumerate(info.bones)}
        prob = predict_probabilities(model, info, raw, polarity, bones=list(ids))
        weights = {b: np.where(p > info.threshold, p, 0.0) for b, p in prob.items()}
        return self.writeMasks(calibration, weights, ids, outputLabelNode)

    def frameCalibration(self, frameNode) -> Camera:
        """The calibration placeFrame stored on the frame node."""
        text = frameNode.GetAttribute(CALIBRATION_ATTRIBUTE) if frameNode is not None else None
        if not text:
            raise FluoroRegError(f"frame {node_name(frameNode)} has no calibration; run placeFrame(frame, calibration) first")
        return Camera.from_dict(json.loads(text), source=f"calibration of frame {node_name(frameNode)}")

    # ------------------------------------------------------------------------------------ registration
    def prepareRegistration(self, ctNode, labelNode, frameNode, calibration, bones, initialPoseNodes, maskNode=None,
                            device=None, config=None, polarity: str = "auto", implants=None) -> RegistrationJob:
        """Read everything registration needs from the scene (main thread) into a job that touches no
        MRML; the frame, masks and configuration go through the one path's own preparation.
        ``implants``: {name: modelNode, (modelNode, material) or (modelNode, material, follows)},
        components registered beside the bones (``bones`` may then be empty and the CT and label
        nodes None)."""
        from ..register import Registration, prepare_frame
        from ..register.api import as_config
        from ..register.pipeline import followed
        from .implants import implant_bodies

        rig = as_rig(calibration)
        frameNodes = rig.per_view(frameNode, "frame node")
        maskNodes = [None] * len(rig) if maskNode is None else rig.per_view(maskNode, "mask node")
        frames = [prepare_frame(self.frameImage(n, v.camera), v.camera, polarity) for n, v in zip(frameNodes, rig.views)]
        with_bones = bool(bones) or not implants  # neither: boneIds says what to pass
        config = as_config(config)
        volumes = {**(self.boneVolumes(ctNode, labelNode, bones, config.context_mm) if with_bones else {}),
                   **implant_bodies(implants)}
        registration = Registration(volumes, config, self.boneIds(labelNode, bones) if with_bones else {})
        follower_of = followed(volumes)  # followers take their leaders' poses: no start of their own
        initial = self.poses([b for b in volumes if b not in follower_of], initialPoseNodes)
        masks = [None if m is None else self.masksFromLabelMap(m, v.camera, registration.label_ids)
                 for m, v in zip(maskNodes, rig.views)]
        if len(rig) == 1:
            return RegistrationJob(registration, frames[0], rig.cameras[0], initial, masks[0], device)
        return RegistrationJob(registration, frames, rig, initial, masks, device)

    def startRegistrationProcess(self, folder, ctNode, labelNode, frameNode, calibration, bones, initialPoseNodes,
                                 maskNode=None, config=None, polarity: str = "auto", python: str | None = None,
                                 implants=None):
        """Write the scene's inputs to ``folder`` and start ``fluororeg register`` on them in a child
        process (:class:`~.process.RegistrationProcess`): the GUI polls it, so Slicer's event loop never
        waits and Python threads are not needed. ``config``: a RegistrationConfig or nested dict."""
        from .process import RegistrationProcess

        argv = self.writeRegistrationInputs(folder, ctNode, labelNode, frameNode, calibration, bones,
                                            initialPoseNodes, maskNode, config, polarity, implants)
        return RegistrationProcess(folder, argv, python)

    def writeRegistrationInputs(self, folder, ctNode, labelNode, frameNode, calibration, bones, initialPoseNodes,
                                maskNode=None, config=None, polarity: str = "auto", implants=None) -> list:
        """The scene's inputs as files in ``folder``; returns the ``fluororeg register`` arguments that
        read them (without --out): what Register runs, for a script or a cluster to run as well.
        ``implants`` as in :meth:`register`: each written as ``folder/<name>.stl`` (LPS mm)."""
        from ..register import RegistrationConfig
        from ..register.pipeline import followed
        from .implants import implant_bodies, write_implant
        from .process import write_inputs

        rig = as_rig(calibration)
        frameNodes = rig.per_view(frameNode, "frame node")
        maskNodes = [None] * len(rig) if maskNode is None else rig.per_view(maskNode, "mask node")
        bodies = implant_bodies(implants)
        ids = self.boneIds(labelNode, bones) if bones or not bodies else {}
        ct, labels = self.ctAndLabels(ctNode, labelNode) if ids else (None, None)
        masks = [None if m is None else self.maskLabels(m) for m in maskNodes]
        settings = (config if isinstance(config, RegistrationConfig) else  # checked here, before the child starts
                    RegistrationConfig.from_dict(config or {})).to_dict()
        follower_of = followed(bodies)
        starting = list(ids) + [b for b in bodies if b not in follower_of]
        initial = {b: p.numpy() for b, p in self.poses(starting, initialPoseNodes).items()}
        frames = [self.frameImage(n, v.camera) for n, v in zip(frameNodes, rig.views)]
        Path(folder).mkdir(parents=True, exist_ok=True)
        extra = []
        for name, body in bodies.items():
            follows = f",follows={body.follows}" if body.follows else ""
            extra += ["--implant", f"{name}={write_implant(body, folder)},mu={body.mu_per_mm!r}{follows}"]
        if len(rig) == 1:
            return write_inputs(folder, ct, labels, ids, frames[0], rig.cameras[0].to_dict(), initial, masks[0],
                                settings, polarity) + extra
        return write_inputs(folder, ct, labels, ids, frames, rig.to_dict(), initial, masks, settings, polarity) + extra

    def finishRegistrationProcess(self, process, outputPoseNodes) -> dict:
        """Write a finished process's poses into the output transform nodes (with their status
        attributes); returns the result file's contents. Raises its one-line error or ``cancelled``."""
        result = process.result()
        nodes = per_bone(outputPoseNodes, list(result), "output pose transform")
        self.writePoses({b: np.asarray(r["camera_from_volume"]) for b, r in result.items()}, nodes)
        _write_status(nodes, {b: (r["status"], r["reason"]) for b, r in result.items()})
        return result

    def register(self, ctNode, labelNode, frameNode, calibration, bones, initialPoseNodes, outputPoseNodes,
                 maskNode=None, device=None, progress=None, cancel=None, config=None,
                 polarity: str = "auto", implants=None) -> RegistrationResult:
        """Register the bones to the frame and write each pose into its output transform node.

        Args:
            bones: names in the label map's colour table, or {name: label id}.
            initialPoseNodes, outputPoseNodes: {bone: vtkMRMLLinearTransformNode} or lists in the bones' order
                (an output may be the initial node itself).
            maskNode: optional label map over the frame (bone label ids), e.g. from segmentFrame.
            device: "cpu", "cuda" (None: CUDA when available).
            progress, cancel: passed to the core (``progress(stage, iteration, similarity, pose)``).
            config: a RegistrationConfig or nested dict (None: the defaults).
            polarity: the frame's, "auto", "bone-dark" or "bone-bright".
            implants: {name: modelNode, (modelNode, material) or (modelNode, material, follows)}:
                implant components (their CAD surfaces loaded as models) registered beside the bones,
                each with its initial and output transform node under its name (a component that
                follows another needs no initial node: it takes that one's pose and status);
                ``bones`` may be empty.
        Returns:
            The core's RegistrationResult.
        """
        job = self.prepareRegistration(ctNode, labelNode, frameNode, calibration, bones, initialPoseNodes, maskNode,
                                       device, config, polarity, implants)
        per_bone(outputPoseNodes, list(job.bones), "output pose transform")  # fail before the work, not after
        result = job.run(progress, cancel)
        self.writePoses(result.poses(), outputPoseNodes)
        _write_status(per_bone(outputPoseNodes, list(result.bones), "output pose transform"),
                      {b: (r.status.flag, r.status.reason) for b, r in result.bones.items()})
        return result


STATUS_ATTRIBUTE = "FluoroRegistration.status"  # on each output pose node: ok | check | failed (and ...Reason)


def _write_status(nodes: dict, statuses: dict) -> None:
    """Each bone's result status on its output pose node: {bone: node}, {bone: (flag, reason)}."""
    for bone, node in nodes.items():
        flag, reason = statuses[bone]
        node.SetAttribute(STATUS_ATTRIBUTE, flag)
        node.SetAttribute(STATUS_ATTRIBUTE + "Reason", reason)


def _scene_from_view(camera_from_reference) -> np.ndarray:
    """(4, 4): the scene (a rig's first view) from a view's camera frame; identity for None."""
    return np.eye(4) if camera_from_reference is None else np.linalg.inv(np.asarray(camera_from_reference, np.float64))


def per_bone(nodes, bones: list, what: str) -> dict:
    """{bone: node} from a dict or a list in the bones' order; raises naming a missing bone."""
    if isinstance(nodes, dict):
        missing = [b for b in bones if nodes.get(b) is None]
        if missing:
            raise FluoroRegError(f"no {what} for {', '.join(missing)}; give one transform node per bone")
        return {b: nodes[b] for b in bones}
    nodes = list(nodes or [])
    if len(nodes) != len(bones) or any(n is None for n in nodes):
        raise FluoroRegError(f"{len(bones)} bones ({', '.join(bones)}) need {len(bones)} {what} nodes, "
                             f"got {len(nodes)}; give one transform node per bone")
    return dict(zip(bones, nodes))


@contextlib.contextmanager
def _torch_threads(count: int):
    """Run the block with ``count`` torch threads. A live preview uses one: beside the browser or
    Slicer's own drawing on 2 cores, one thread drew the phantom's 128 px preview in 13 ms against
    25-40 ms with two (test_gui_browser's server statistics)."""
    before = torch.get_num_threads()
    if count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _preview_camera(camera: Camera, longest: int | None) -> Camera:
    if longest is None or longest >= max(camera.shape):
        return camera
    scale = longest / max(camera.shape)
    return camera.resized(max(1, round(camera.rows * scale)), max(1, round(camera.cols * scale)))


def _volume_key(node):
    image = node.GetImageData() if node is not None and hasattr(node, "GetImageData") else None
    if image is None:
        return (node_name(node), None)
    return (node.GetID(), image.GetMTime(), tuple(ijk_to_ras(node).ravel()))
