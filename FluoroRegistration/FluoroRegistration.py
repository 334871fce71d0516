"""FluoroRegistration: the 3D Slicer scripted module (Extension Wizard template conventions).

The work is done by FluoroRegistrationLib.slicer.FluoroRegistrationLogic(scene) (the console API, which
imports nothing from Slicer's GUI); this file holds the GUI: a parameter node (saved with the scene),
the widget, a thin logic adapting Slicer's singletons to the core, and a self-test. torch is installed
on first use after asking (PyTorch extension), never at start-up; SimpleITK is Slicer's own.
"""

import json
import logging
import re
import sys
from pathlib import Path
from typing import Annotated, Union

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.parameterNodeWrapper import Choice, Minimum, WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin

from slicer import (vtkMRMLLabelMapVolumeNode, vtkMRMLLinearTransformNode, vtkMRMLScalarVolumeNode,
                    vtkMRMLSegmentationNode)

POSE_ROLES = {"initial": "FluoroInitialPose", "output": "FluoroOutputPose"}
# the versions of the core's dependencies this module installs into Slicer's Python when missing
TORCH_REQUIREMENT = ">=2.1,<2.15"
CORE_PACKAGES = {"scipy": "scipy>=1.9", "safetensors": "safetensors>=0.4", "yaml": "PyYAML>=6", "tqdm": "tqdm>=4.60",
                 "pydicom": "pydicom>=3.0"}


def pose_role(kind: str, bone: str) -> str:
    """The parameter node's reference role of a bone's pose transform, e.g. FluoroInitialPose_femur:
    letters, digits and underscores only (MRML splits saved references at ':' and ';')."""
    return POSE_ROLES[kind] + "_" + re.sub(r"[^A-Za-z0-9]", "_", bone)


def core_search_path(module_file: str):
    """The folder to add to sys.path for ``import FluoroRegistrationLib`` when the module runs from a
    source checkout (the repository's FluoroRegistration folder given to Slicer as a module path):
    the checkout's root, holding FluoroRegistrationLib beside FluoroRegistration; None in a built
    extension, where the core is installed beside the module (already importable)."""
    root = Path(module_file).resolve().parent.parent
    return root if (root / "FluoroRegistrationLib" / "__init__.py").is_file() else None


_ROOT = core_search_path(__file__)
if _ROOT is not None and str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))
PREVIEW_NAME, OUTLINE_NAME = "FluoroRegistration DRR", "FluoroRegistration bone outlines"
EXPORTED_ATTRIBUTE = "FluoroRegistration.exportedFrom"  # on a label map exported from a segmentation


class FluoroRegistration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "FluoroRegistration"
        self.parent.categories = ["Registration"]
        self.parent.dependencies = []
        self.parent.contributors = ["FluoroRegistration developers"]
        self.parent.helpText = (
            "Differentiable 2D/3D registration of bones in a CT to a single-plane fluoroscopy frame. The scene is "
            "the C-arm (source at the origin, detector at z = sdd); each bone's pose is a linear transform node. "
            "See the extension's README (section \"In 3D Slicer\").")
        self.parent.acknowledgementText = "Built on PyTorch, SimpleITK and 3D Slicer."


@parameterNodeWrapper
class FluoroRegistrationParameterNode:
    """The GUI state, saved with the scene. Per-bone pose transforms are node references (see POSE_ROLES)."""

    ctVolume: vtkMRMLScalarVolumeNode
    boneLabels: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, None]  # node unions need None
    frameVolume: vtkMRMLScalarVolumeNode
    frameIndex: Annotated[int, Minimum(0)] = 0
    bones: str = "femur,tibia"
    # the calibration, within Camera.check_physical's ranges (the spin boxes take them from here)
    sddMm: Annotated[float, WithinRange(300.0, 3000.0)] = 1000.0
    rows: Annotated[int, WithinRange(8, 16384)] = 512
    cols: Annotated[int, WithinRange(8, 16384)] = 512
    rowSpacingMm: Annotated[float, WithinRange(0.05, 5.0)] = 0.3
    colSpacingMm: Annotated[float, WithinRange(0.05, 5.0)] = 0.3
    principalCol: Annotated[float, WithinRange(-1.0, 16384.0)] = -1.0  # -1: the image centre
    principalRow: Annotated[float, WithinRange(-1.0, 16384.0)] = -1.0
    distortionK: Annotated[float, WithinRange(-0.5, 0.5)] = 0.0  # image-intensifier pincushion; 0 for flat panels
    showHandles: bool = True
    livePreview: bool = True
    previewSize: Annotated[int, WithinRange(16, 1024)] = 128
    modelPath: Path  # Path() ('.') until chosen: a plain Path, which ctkPathLineEdit can show (see modelFolder)
    maskVolume: vtkMRMLLabelMapVolumeNode
    useMasks: bool = True
    device: Annotated[str, Choice(["auto", "cuda", "cpu"])] = "auto"
    polarity: Annotated[str, Choice(["auto", "bone-dark", "bone-bright"])] = "auto"


class FluoroRegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._observedPose = None
        self._process = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/FluoroRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = FluoroRegistrationLogic()
        self._coarseTimer = _singleShotTimer(0, lambda: self.updatePreview(coarse=True))
        self._restTimer = _singleShotTimer(400, lambda: self.updatePreview(coarse=False))
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(100)
        self._pollTimer.timeout.connect(self.pollRegistration)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.loadCalibrationButton.connect("clicked(bool)", self.onLoadCalibration)
        self.ui.saveCalibrationButton.connect("clicked(bool)", self.onSaveCalibration)
        self.ui.placeFrameButton.connect("clicked(bool)", lambda: self.run(self.logic.placeFrame, self._parameterNode))
        self.ui.bonesLineEdit.connect("editingFinished()", self.updateBoneList)
        self.ui.boneComboBox.connect("currentTextChanged(QString)", self.onBoneChanged)
        self.ui.initialPoseSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInitialPoseSelected)
        self.ui.handlesCheckBox.connect("toggled(bool)", lambda on: self.onBoneChanged(self.ui.boneComboBox.currentText))
        self.ui.previewButton.connect("clicked(bool)", lambda: self.updatePreview(coarse=False))
        self.ui.segmentButton.connect("clicked(bool)", lambda: self.run(self.logic.segment, self._parameterNode))
        self.ui.registerButton.connect("clicked(bool)", self.onRegister)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.loadTrackButton.connect("clicked(bool)", self.onLoadTrack)
        self.initializeParameterNode()

    def cleanup(self):
        self.onCancel()
        for timer in (self._pollTimer, self._coarseTimer, self._restTimer):
            timer.stop()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event):
        self.onCancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.ctVolume:
            self._parameterNode.ctVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.updateBoneList()

    # ------------------------------------------------------------------------------------ helpers
    def run(self, function, *args):
        """Call a logic step; errors go to the status line (and the log), never a traceback dialog."""
        try:
            with slicer.util.WaitCursor():
                return function(*args)
        except Exception as err:  # noqa: BLE001 - every failure is shown to the user, one line
            if not isinstance(err, ValueError):  # FluoroRegError is a ValueError: bad input, no traceback needed
                logging.exception("FluoroRegistration")
            self.ui.statusLabel.text = f"Error: {err}"
            return None

    def onLoadCalibration(self):
        path = qt.QFileDialog.getOpenFileName(self.parent, "Calibration JSON", "", "JSON (*.json)")
        if path:
            self.run(self.logic.loadCalibration, self._parameterNode, path)

    def onSaveCalibration(self):
        path = qt.QFileDialog.getSaveFileName(self.parent, "Calibration JSON", "calib.json", "JSON (*.json)")
        if path:
            self.run(lambda: Path(path).write_text(json.dumps(self.logic.calibration(self._parameterNode), indent=2)))

    def updateBoneList(self):
        bones = self.logic.boneNames(self._parameterNode)
        current = self.ui.boneComboBox.currentText
        with _blocked(self.ui.boneComboBox):
            self.ui.boneComboBox.clear()
            self.ui.boneComboBox.addItems(bones)
        self.ui.boneComboBox.setCurrentText(current if current in bones else (bones[0] if bones else ""))
        self.onBoneChanged(self.ui.boneComboBox.currentText)

    def onBoneChanged(self, bone):
        """Show the bone's initial pose in the selector, sliders and 3D handles; follow its changes."""
        if self._observedPose is not None:
            self.removeObserver(self._observedPose, vtkMRMLLinearTransformNode.TransformModifiedEvent, self.onPoseModified)
            self._observedPose = None
        # look only: entering the module or picking a bone makes no node (the selector's "Create new", the
        # preview and Register make them)
        node = self.logic.poseNode(self._parameterNode, "initial", bone, create=False) \
            if bone and self._parameterNode else None
        with _blocked(self.ui.initialPoseSelector):
            self.ui.initialPoseSelector.setCurrentNode(node)
        self.ui.translationSliders.setMRMLTransformNode(node)
        self.ui.rotationSliders.setMRMLTransformNode(node)
        if node is not None:
            self.run(self.logic.centreOnBone, self._parameterNode, bone, node)
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetEditorVisibility(bool(self._parameterNode.showHandles))
            self.addObserver(node, vtkMRMLLinearTransformNode.TransformModifiedEvent, self.onPoseModified)
            self._observedPose = node

    def onInitialPoseSelected(self, node):
        bone = self.ui.boneComboBox.currentText
        if bone and self._parameterNode:
            self._parameterNode.parameterNode.SetNodeReferenceID(pose_role("initial", bone),
                                                                 node.GetID() if node else None)
            self.onBoneChanged(bone)

    # ------------------------------------------------------------------------------------ live DRR
    def onPoseModified(self, caller=None, event=None):
        if self._parameterNode and self._parameterNode.livePreview and self._process is None:
            if not self._coarseTimer.isActive():
                self._coarseTimer.start()  # coalesces the slider's many events into one coarse render
            self._restTimer.start()  # full resolution once the pose rests

    def updatePreview(self, coarse):
        if not self.logic.ensureDependencies(ask=not coarse):
            return
        longest = self._parameterNode.previewSize if coarse else None
        self.run(self.logic.renderPreview, self._parameterNode, longest)

    # ------------------------------------------------------------------------------------ register
    def onRegister(self):
        """Start the registration in a child process (Slicer's Qt loop does not give Python threads the
        GIL) and follow it from a timer: the GUI never waits."""
        if self._process is not None or not self.logic.ensureDependencies(ask=True):
            return
        started = self.run(self.logic.startRegistration, self._parameterNode)
        if started is None:
            return
        self._process, self._outputs, self._expected = started
        self._done = 0
        self.ui.registerButton.enabled, self.ui.cancelButton.enabled = False, True
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = f"Registering {', '.join(self._outputs)}..."
        self._pollTimer.start()

    def pollRegistration(self):
        """Main thread, every 100 ms: the child's latest poses and progress into the scene and the GUI."""
        latest = {}
        for event in self._process.poll():
            latest[event["stage"].split(":")[0]] = event["pose"]
            self._done += 1
            self.ui.statusLabel.text = f"{event['stage']}: similarity {event['similarity']:.4f}"
        if latest:
            self.logic.core().writePoses(latest, {b: self._outputs[b] for b in latest})
            self.ui.progressBar.value = min(99, int(100 * self._done / self._expected))
        if self._process.running:
            return
        self._pollTimer.stop()
        process, self._process = self._process, None
        self.ui.registerButton.enabled, self.ui.cancelButton.enabled = True, False
        summary = self.run(self.logic.finishRegistration, self._parameterNode, process, self._outputs)
        if summary is not None:
            self.ui.progressBar.value = 100
            self.ui.statusLabel.text = summary

    def onLoadTrack(self):
        folder = qt.QFileDialog.getExistingDirectory(self.parent, "fluororeg track output folder")
        if folder:
            summary = self.run(self.logic.loadTrack, self._parameterNode, folder)
            if summary:
                self.ui.statusLabel.text = summary

    def onCancel(self):
        if self._process is not None:
            self._process.cancel()
            self.ui.statusLabel.text = "Cancelled"


class _blocked:
    """Block a Qt widget's signals inside a with-block."""

    def __init__(self, widget):
        self.widget = widget

    def __enter__(self):
        self.previous = self.widget.blockSignals(True)

    def __exit__(self, *exc):
        self.widget.blockSignals(self.previous)


def _singleShotTimer(msec, slot):
    timer = qt.QTimer()
    timer.setSingleShot(True)
    timer.setInterval(msec)
    timer.timeout.connect(slot)
    return timer


class FluoroRegistrationLogic(ScriptedLoadableModuleLogic):
    """Thin logic: Slicer's singletons (slicer.mrmlScene, the parameter node, the views) adapted to
    FluoroRegistrationLib.slicer.FluoroRegistrationLogic, which does the work and is the console API."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._core = None

    def getParameterNode(self):
        return FluoroRegistrationParameterNode(super().getParameterNode())

    def ensureDependencies(self, ask=True):
        """True when torch and the core's packages import; else offer to install them (torch through the
        PyTorch extension's installTorch, within TORCH_REQUIREMENT; CORE_PACKAGES with pip). Never at
        start-up: :meth:`core` calls it, so every step that needs the core checks first."""
        import importlib.util

        missing = [pip for name, pip in CORE_PACKAGES.items() if importlib.util.find_spec(name) is None]
        if importlib.util.find_spec("torch") is not None and not missing:
            return True
        if not ask:
            return False
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            slicer.util.errorDisplay("FluoroRegistration needs the PyTorch extension: install it from the Extensions "
                                     "Manager and restart Slicer.")
            return False
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            if not slicer.util.confirmOkCancelDisplay("FluoroRegistration needs PyTorch, which is not installed yet. "
                                                      "Install it now? This downloads several GB and may take minutes."):
                return False
            if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT) is None:
                slicer.util.errorDisplay("PyTorch could not be installed; see the Python console.")
                return False
        for requirement in missing:  # SimpleITK is Slicer's own and never reinstalled
            slicer.util.pip_install(requirement)
        return True

    def core(self):
        """The scene logic of FluoroRegistrationLib on slicer.mrmlScene (imports torch: ensureDependencies first)."""
        if self._core is None or self._core.scene is not slicer.mrmlScene:
            if not self.ensureDependencies():
                raise RuntimeError("FluoroRegistration needs PyTorch and " + ", ".join(CORE_PACKAGES.values())
                                   + "; install them when asked (or from the PyTorch extension) and try again")
            from FluoroRegistrationLib.slicer import FluoroRegistrationLogic as SceneLogic

            self._core = SceneLogic(slicer.mrmlScene)
        return self._core

    # ------------------------------------------------------------------------------------ parameters
    def calibration(self, p):
        """The calibration fields as docs/CONVENTIONS.md's JSON object."""
        out = {"sdd_mm": p.sddMm, "rows": p.rows, "cols": p.cols, "row_spacing_mm": p.rowSpacingMm,
               "col_spacing_mm": p.colSpacingMm}
        if p.principalCol >= 0 and p.principalRow >= 0:
            out["principal_point"] = {"col": p.principalCol, "row": p.principalRow}
        if p.distortionK:
            out["distortion"] = {"model": "radial", "k": p.distortionK}
        return out

    def loadCalibration(self, p, path):
        from FluoroRegistrationLib.geometry import Camera

        camera = Camera.from_json(path)
        with slicer.util.NodeModify(p.parameterNode):
            p.sddMm, p.rows, p.cols = camera.sdd_mm, camera.rows, camera.cols
            p.rowSpacingMm, p.colSpacingMm = camera.row_spacing_mm, camera.col_spacing_mm
            p.principalCol, p.principalRow = camera.u0, camera.v0
            p.distortionK = camera.distortion_k

    def boneNames(self, p):
        return [b.strip() for b in (p.bones or "").split(",") if b.strip()]

    def poseNode(self, p, kind, bone, create=True):
        """The bone's initial or output pose transform (a node reference of the parameter node)."""
        role = pose_role(kind, bone)
        node = p.parameterNode.GetNodeReference(role)
        if node is None and create:
            name = f"{bone} initial pose" if kind == "initial" else f"{bone} pose"
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
            p.parameterNode.SetNodeReferenceID(role, node.GetID())
        return node

    def labelNode(self, p):
        """The bone label map; a segmentation is exported to one (segment names become label names)."""
        if p.boneLabels is None:
            raise ValueError("no bone labels selected; select a label map or segmentation of the bones")
        if p.boneLabels.IsA("vtkMRMLLabelMapVolumeNode"):
            return p.boneLabels
        name = f"{p.boneLabels.GetName()} labels"
        node = slicer.mrmlScene.GetFirstNodeByName(name) or slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLLabelMapVolumeNode", name)
        # exported again only when the segmentation or the CT changed (not on every slider event)
        version = f"{p.boneLabels.GetID()}:{p.boneLabels.GetMTime()}:{p.ctVolume.GetID() if p.ctVolume else ''}"
        if node.GetAttribute(EXPORTED_ATTRIBUTE) != version:
            slicer.modules.segmentations.logic().ExportVisibleSegmentsToLabelmapNode(p.boneLabels, node, p.ctVolume)
            node.SetAttribute(EXPORTED_ATTRIBUTE, version)
        return node

    def centreOnBone(self, p, bone, poseNode):
        """Rotations (sliders and handles) turn the bone about its own centre: the transform's centre of
        transformation at the centroid of the bone's label, in the CT's RAS (Slicer 5.8 and later)."""
        import numpy as np

        if not hasattr(poseNode, "SetCenterOfTransformation") or p.boneLabels is None or p.ctVolume is None:
            return
        labels = self.labelNode(p)
        ids = self.core().boneIds(labels, [bone]) if self.ensureDependencies(ask=False) else None
        if not ids:
            return
        kji = np.argwhere(slicer.util.arrayFromVolume(labels) == ids[bone])
        if len(kji):
            ijk = np.append(kji.mean(axis=0)[::-1], 1.0)
            matrix = vtk.vtkMatrix4x4()
            labels.GetIJKToRASMatrix(matrix)
            poseNode.SetCenterOfTransformation(*(slicer.util.arrayFromVTKMatrix(matrix) @ ijk)[:3])

    @staticmethod
    def modelFolder(p):
        """The segmentation model folder; one line when none has been chosen (Path() shows as '.')."""
        if p.modelPath is None or str(p.modelPath) in ("", "."):
            raise ValueError("no segmentation model chosen; pick the folder written by `fluororeg segment train`")
        return p.modelPath

    def frameNode(self, p):
        """The frame to register: the selected volume, or its slice ``frameIndex`` when it holds several."""
        frame = p.frameVolume
        if frame is None:
            raise ValueError("no fluoroscopy frame selected; select the frame volume")
        dims = frame.GetImageData().GetDimensions() if frame.GetImageData() else (0, 0, 0)
        if dims[2] <= 1:
            return frame
        name = f"{frame.GetName()} frame {p.frameIndex}"
        single = slicer.mrmlScene.GetFirstNodeByName(name) or slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLScalarVolumeNode", name)
        return self.core().extractFrame(frame, p.frameIndex, single)

    def poseNodes(self, p, kind):
        return {b: self.poseNode(p, kind, b) for b in self.boneNames(p)}

    # ------------------------------------------------------------------------------------ steps
    def placeFrame(self, p):
        frame = self.frameNode(p)
        self.core().placeFrame(frame, self.calibration(p))
        self.showOnDetector(background=frame)
        return frame

    def renderPreview(self, p, longest=None):
        """DRR of the bones at their initial poses over the frame (``longest``: coarse, while dragging)."""
        drr = slicer.mrmlScene.GetFirstNodeByName(PREVIEW_NAME) or slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLScalarVolumeNode", PREVIEW_NAME)
        self.core().renderDRR(p.ctVolume, self.labelNode(p), self.calibration(p), self.boneNames(p),
                              self.poseNodes(p, "initial"), drr, longest=longest)
        self.showOnDetector(foreground=drr)
        return drr

    def segment(self, p):
        model = self.modelFolder(p)
        masks = p.maskVolume or slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "bone masks")
        self.core().segmentFrame(self.placeFrame(p), model, masks,
                                 self.core().boneIds(self.labelNode(p), self.boneNames(p)))
        p.maskVolume = masks
        self.showOnDetector(label=masks)

    def startRegistration(self, p):
        """Main thread: write the scene's inputs to a temporary folder and start ``fluororeg register``
        on them in a child Python (PythonSlicer); returns (process, output pose nodes, expected reports)."""
        import shutil
        import tempfile

        from FluoroRegistrationLib.geometry import Camera
        from FluoroRegistrationLib.register import RegistrationConfig, expected_reports

        frame = self.placeFrame(p)
        config = RegistrationConfig(device=None if p.device == "auto" else p.device)
        folder = tempfile.mkdtemp(prefix="FluoroRegistration-")
        bones = self.boneNames(p)
        process = self.core().startRegistrationProcess(
            folder, p.ctVolume, self.labelNode(p), frame, self.calibration(p), bones, self.poseNodes(p, "initial"),
            p.maskVolume if p.useMasks else None, config, p.polarity, shutil.which("PythonSlicer"))
        camera = Camera.from_dict(self.calibration(p))
        starts = {b: slicer.util.arrayFromTransformMatrix(n) for b, n in self.poseNodes(p, "initial").items()}
        # about how many progress reports (the bar); depth of each start pose's origin, about the bone's
        expected = sum(expected_reports(config, camera, max(float(m[2, 3]), 1.0)) for m in starts.values())
        return process, self.poseNodes(p, "output"), expected

    def finishRegistration(self, p, process, outputs):
        """Poses written (with their status), bones shown at their poses in 3D, outlines over the frame;
        returns the summary line. A refused input or a cancel raises its one line."""
        core = self.core()
        try:
            result = core.finishRegistrationProcess(process, outputs)
        finally:
            process.remove_files()  # the inputs hold a copy of the CT
        outline = slicer.mrmlScene.GetFirstNodeByName(OUTLINE_NAME) or slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLLabelMapVolumeNode", OUTLINE_NAME)
        labels = self.labelNode(p)
        core.projectBones(p.ctVolume, labels, self.calibration(p), list(outputs), outputs, outline)
        self.showOnDetector(label=outline)
        ids = core.boneIds(labels, list(outputs))
        for bone, node in outputs.items():
            self.showBone(labels, ids[bone], f"{bone} surface", node)
        return "; ".join(f"{b}: {r['status'].upper()}, similarity {r['similarity']:.4f}, {r['iterations']} iterations, "
                         f"{r['seconds']:.1f} s" + (f" ({r['reason']})" if r["reason"] else "")
                         for b, r in result.items())

    def loadTrack(self, p, folder):
        """A tracking run into the scene (poses and, with the selected frame stack and calibration, the
        frames as Sequences; the kinematics as a table and charts) and the angles chart shown."""
        from FluoroRegistrationLib.slicer.track_scene import load_track

        self.core()  # the dependencies
        frames = p.frameVolume
        track = load_track(slicer.mrmlScene, folder)
        if frames is not None and frames.GetImageData() is not None and frames.GetImageData().GetDimensions()[2] > 1:
            from FluoroRegistrationLib.slicer.sequences import browse, frames_to_sequence

            track.frames = frames_to_sequence(slicer.mrmlScene, slicer.util.arrayFromVolume(frames),
                                              self.calibration(p), f"{frames.GetName()} frames")
            track.browser = browse(slicer.mrmlScene, [track.frames, *track.poses.values()])
        if track.browser is not None:
            slicer.modules.sequences.toolBar().setActiveBrowserNode(track.browser)
        if track.charts:
            slicer.modules.plots.logic().ShowChartInLayout(track.charts["angles"])
        return f"Loaded {len(track.poses)} pose sequences" + (", kinematics" if track.table else "")

    def showBone(self, labels, labelId, name, poseNode):
        """The bone's surface (a segmentation of its label) observing its pose transform, never hardened."""
        seg = slicer.mrmlScene.GetFirstNodeByName(name)
        if seg is None:
            single = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{name} label")
            slicer.util.updateVolumeFromArray(single, (slicer.util.arrayFromVolume(labels) == labelId).astype("uint8"))
            matrix = vtk.vtkMatrix4x4()
            labels.GetIJKToRASMatrix(matrix)
            single.SetIJKToRASMatrix(matrix)
            seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
            slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(single, seg)
            slicer.mrmlScene.RemoveNode(single)
            seg.CreateClosedSurfaceRepresentation()
        seg.SetAndObserveTransformNodeID(poseNode.GetID())

    def showOnDetector(self, background=None, foreground=None, label=None):
        """Show volumes in the Red view, oriented like a radiograph, label maps as outlines."""
        import numpy as np

        from FluoroRegistrationLib.slicer.geometry import detector_view_orientation

        kwargs = {k: v for k, v in (("background", background), ("foreground", foreground), ("label", label)) if v}
        slicer.util.setSliceViewerLayers(**kwargs, foregroundOpacity=0.5, fit=False)
        red = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        red.AddSliceOrientationPreset("Detector", slicer.util.vtkMatrixFromArray(np.asarray(detector_view_orientation())))
        red.SetOrientation("Detector")
        red.SetUseLabelOutline(True)
        slicer.app.layoutManager().sliceWidget("Red").sliceLogic().FitSliceToAll()


class FluoroRegistrationTest(ScriptedLoadableModuleTest):
    """The pytest scenario (Testing/test_slicer_logic.py) inside Slicer, on slicer.mrmlScene."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_register_phantom_femur()

    def test_register_phantom_femur(self):
        import math

        logic = FluoroRegistrationLogic()
        if not logic.ensureDependencies(ask=False):  # Slicer's Reload and Test would show SkipTest as a failure
            self.delayDisplay("PyTorch is not installed: install it from the module (or the PyTorch extension) "
                              "and run the test again. Test not run.")
            return
        import torch

        from FluoroRegistrationLib import FluoroRegError
        from FluoroRegistrationLib.geometry import CentredParameterization
        from FluoroRegistrationLib.register import pose_errors
        from FluoroRegistrationLib.register.config import QUICK
        from FluoroRegistrationLib.slicer import phantom_scene, to_parent_from_pose

        self.delayDisplay("Phantom knee scene")
        knee = phantom_scene(slicer.mrmlScene)
        core = logic.core()
        core.placeFrame(knee.frameNode, knee.camera)
        start = CentredParameterization(knee.femur.centroid, knee.truth).pose(
            torch.tensor([math.radians(3), math.radians(-2), math.radians(4), 4.0, -3.0, 5.0], dtype=torch.float64))
        initial = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "femur initial pose")
        initial.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(to_parent_from_pose(start.numpy())))
        drr = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "femur DRR")
        core.renderDRR(knee.ctNode, knee.labelNode, knee.camera, ["femur"], [initial], drr, longest=64)
        self.assertEqual(slicer.util.arrayFromVolume(drr).shape, (1, 64, 64))
        self.delayDisplay("Register the femur")
        output = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "femur pose")
        result = core.register(knee.ctNode, knee.labelNode, knee.frameNode, knee.camera, ["femur"], [initial], [output],
                               device="cpu", polarity="bone-dark",
                               config=QUICK)
        pose = result.bones["femur"].camera_from_volume
        self.assertLess(pose_errors(pose, knee.truth, knee.femur.centroid, knee.femur.points)["mtre_mm"], 1.0)
        written = slicer.util.arrayFromTransformMatrix(output)
        self.assertTrue(abs(written - to_parent_from_pose(pose.numpy())).max() < 1e-6)
        with self.assertRaises(FluoroRegError):
            core.renderDRR(knee.ctNode, knee.labelNode, knee.camera, ["meniscus"], [initial], drr)
        self.delayDisplay("Register again in a child process (what the Register button does)")
        import shutil
        import tempfile
        import time

        process = core.startRegistrationProcess(tempfile.mkdtemp(prefix="FluoroRegistrationTest-"), knee.ctNode,
                                                knee.labelNode, knee.frameNode, knee.camera, ["femur"], [initial],
                                                config=QUICK, polarity="bone-dark",
                                                python=shutil.which("PythonSlicer"))
        events = []
        while process.running:
            events += process.poll()
            slicer.app.processEvents()
            time.sleep(0.05)
        events += process.poll()
        child = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "femur pose (process)")
        result = core.finishRegistrationProcess(process, [child])
        self.assertTrue(events and result["femur"]["status"] in ("ok", "check"))
        child_pose = torch.tensor(result["femur"]["camera_from_volume"], dtype=torch.float64)
        self.assertLess(float((child_pose - pose).abs().max()), 1e-4)
        self.delayDisplay("Test passed")
