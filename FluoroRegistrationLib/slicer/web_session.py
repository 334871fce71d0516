"""The web face's state over a Slicer scene: data in, pose sliders, live DRR overlay, registration.

:class:`WebSession` holds what one page works on (a CT, its bone labels, the frames of a fluoroscopy
sequence with their calibration, optional masks) as nodes of a ``vtkMRMLScene`` (trame-slicer's
``SlicerApp().scene`` in ``fluororeg gui``, slicer-core's scene in the tests) and does every step
through :class:`~.scene_logic.FluoroRegistrationLogic`, the scene logic the Slicer module uses:
``renderDRR`` for the live overlay, ``startRegistrationProcess`` / ``finishRegistrationProcess`` for
Register (the one registration path in a child process, so the page's event loop never waits).
Nothing here knows about trame; :mod:`.web_app` binds it to a page.

    session = WebSession(SlicerApp().scene)
    session.load_phantom()                    # or session.load_inputs(find_inputs("sim_out"))
    session.move("femur", "x", 12.0)
    rgb = session.overlay(longest=128)        # (rows, cols, 3) uint8
    session.start_registration(); ...; session.poll()
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import FluoroRegError
from ..geometry import Camera
from .nodes import set_volume
from .pose_sliders import PoseSliders
from .scene_logic import FluoroRegistrationLogic

PREVIEW_LONGEST = 128  # pixels of the coarse DRR while a slider moves
KNEE = ("femur", "tibia")  # registered by default when the labels have both (the others can be chosen)


@dataclass
class Inputs:
    """Paths of one case. frames: one or more frame files (or one multi-frame file); masks: label
    maps over each frame (same order; optional); truth: poses files per frame (optional, shown as an
    error); init: a poses file of starts (optional)."""

    ct: Path
    labels: Path
    label_names: Path | str
    frames: list[Path]
    calib: Path
    masks: list[Path] = field(default_factory=list)
    truth: list[Path] = field(default_factory=list)
    init: Path | None = None
    rig: Path | None = None  # a rig's JSON (several views): ``calib`` is then its first view's
    view_frames: list = field(default_factory=list)  # per further view of the rig, its frames (as ``frames``)
    view_masks: list = field(default_factory=list)  # per further view, its label maps (or [])


@dataclass
class Progress:
    """What the page shows of a registration: running, fraction done (0-1), one status line, and
    per bone its result line once finished."""

    running: bool = False
    fraction: float = 0.0
    message: str = ""
    results: dict = field(default_factory=dict)


class WebSession:
    """One page's data and steps on ``scene`` (see the module docstring)."""

    def __init__(self, scene):
        self.scene = scene
        self.logic = FluoroRegistrationLogic(scene)
        self.ct = self.labels = self.frame = self.masks = None
        self.camera: Camera | None = None
        self.rig = None  # a Rig of several views, or None (one view: ``camera``)
        self.view_frames: list = []  # per further view: its frames; and its frame and mask nodes
        self.view_mask_files: list = []
        self.view_nodes: list = []
        self.view_mask_nodes: list = []
        self.label_ids: dict[str, int] = {}
        self.bones: list[str] = []
        self.frames: list = []  # (rows, cols) float32 arrays or paths, read when shown
        self.mask_files: list = []
        self.truths: list[dict | None] = []
        self.frame_index = 0
        self.track_records: dict[int, dict] = {}
        self.sliders: dict[str, PoseSliders] = {}
        self.start_poses: dict[str, object] = {}
        self.result_poses: dict[str, object] = {}
        self.status: dict[str, str] = {}
        self.progress = Progress()
        self._process = None
        self._events = 0
        self._expected = 1

    # ------------------------------------------------------------------------------------ data
    def load_phantom(self, offset=(3.0, -2.0, 4.0, 4.0, -3.0, 5.0)) -> None:
        """The built-in knee phantom: CT, labels, a frame of its femur (exact renderer) and a start
        ``offset`` (deg about x, y, z; mm along x, y, z) from the truth, as the demo does."""
        from .demo_scene import phantom_scene

        self._clear()
        knee = phantom_scene(self.scene)
        self.ct, self.labels, self.camera = knee.ctNode, knee.labelNode, knee.camera
        self.label_ids = {"femur": knee.labelNames["femur"]}
        self._place(knee.frameNode)
        self.frames, self.mask_files = [self.logic.frameImage(knee.frameNode, knee.camera)], []
        self.frame = knee.frameNode
        self.truths = [{"femur": knee.truth.numpy()}]
        truth = knee.truth.numpy()
        sliders = PoseSliders(knee.femur.centroid.numpy(), truth)
        start = sliders.pose({**sliders.values(truth), "rx": offset[0], "ry": offset[1], "rz": offset[2],
                              **{k: sliders.values(truth)[k] + d for k, d in zip("xyz", offset[3:])}})
        self._set_bones({"femur": start})

    def load_inputs(self, inputs: Inputs) -> None:
        """Load a case from files (checked as the CLI checks them)."""
        from ..files import read_poses
        from ..volume import load_ct, load_labels, read_label_names
        from .nodes import set_image_volume

        from ..geometry import Rig

        rig = Rig.from_json(inputs.rig) if inputs.rig else None
        camera = rig.cameras[0] if rig else Camera.from_json(inputs.calib)
        if rig and len(inputs.view_frames) != len(rig) - 1:
            raise FluoroRegError(f"rig {Path(inputs.rig).name} has {len(rig)} views but frames of {1 + len(inputs.view_frames)}; "
                                 "give each view's frames")
        ct = load_ct(inputs.ct)
        labels = load_labels(inputs.labels, ct)
        ids = read_label_names(inputs.label_names)
        if not inputs.frames:
            raise FluoroRegError("no frames given; pass frame files (PNG, TIFF, DICOM, .npy) or a folder of them")
        present = set(np.unique(labels.array).tolist())
        missing = [f"{b} ({i})" for b, i in ids.items() if i not in present]
        if missing:
            raise FluoroRegError(f"label(s) {', '.join(missing)} of {Path(str(inputs.label_names)).name} not in the "
                                 f"label map {Path(inputs.labels).name}; fix the names file or the label map")
        first = _frame_pixels(inputs.frames[0])
        camera.check_frame(first.shape[0], first.shape[1], f"frame {Path(inputs.frames[0]).name}")
        for view, frames in zip(rig.views[1:] if rig else [], inputs.view_frames):
            if len(frames) != len(inputs.frames):
                raise FluoroRegError(f"view {view.name} has {len(frames)} frames but view {rig.names[0]} has "
                                     f"{len(inputs.frames)}; give synchronised frames, one per instant and view")
            pixels = _frame_pixels(frames[0])
            view.camera.check_frame(pixels.shape[0], pixels.shape[1], f"frame {Path(frames[0]).name} of view {view.name}")
        self._clear()  # only once the case is known to load: a refused one leaves the last case on the page
        self.camera, self.label_ids, self.rig = camera, ids, rig
        self.view_frames = [list(f) for f in inputs.view_frames]
        self.view_mask_files = [list(m) for m in inputs.view_masks] or [[] for _ in self.view_frames]
        self.view_nodes = [self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"frame {v.name}")
                           for v in (rig.views[1:] if rig else [])]
        self.ct = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
        set_image_volume(self.ct, ct)
        self.labels = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "bone labels")
        set_image_volume(self.labels, labels)
        self.frames, self.mask_files = list(inputs.frames), list(inputs.masks)
        self.truths = [{b: p.numpy() for b, p in read_poses(t).items()} for t in inputs.truth]
        self.frame = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "frame")
        self.show_frame(0)
        volumes = self.logic.boneVolumes(self.ct, self.labels, ids)
        starts = read_poses(inputs.init) if inputs.init else {}
        self._set_bones({b: starts[b].numpy() if b in starts else _facing_start(v.centroid.numpy(), camera)
                         for b, v in volumes.items()})

    def show_frame(self, index: int) -> None:
        """Make frame ``index`` the one shown and registered (its masks too, when given)."""
        if not 0 <= index < len(self.frames):
            raise FluoroRegError(f"frame {index} does not exist; there are {len(self.frames)} frame(s)")
        raw = _frame_pixels(self.frames[index])
        self.camera.check_frame(raw.shape[0], raw.shape[1], f"frame {index}")
        set_volume(self.frame, np.asarray(raw, np.float32)[None], np.eye(4))
        self._place(self.frame)
        self.frame_index = index
        if index < len(self.mask_files):
            if self.masks is None:
                self.masks = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "bone masks")
            set_volume(self.masks, np.rint(_frame_pixels(self.mask_files[index])).astype(np.int16)[None], np.eye(4))
            self._place(self.masks)
        self._show_views(index)
        self.result_poses, self.status = {}, {}
        record = self.track_records.get(index)
        if record is not None and record.get("bones"):
            self._show_tracked(record)

    def _show_views(self, index: int) -> None:
        """The further views' frames (and masks) of instant ``index``, each on its own detector."""
        for k, (node, view) in enumerate(zip(self.view_nodes, self.rig.views[1:] if self.rig else [])):
            raw = _frame_pixels(self.view_frames[k][index])
            view.camera.check_frame(raw.shape[0], raw.shape[1], f"frame {index} of view {view.name}")
            set_volume(node, np.asarray(raw, np.float32)[None], np.eye(4))
            self.logic.placeFrame(node, view.camera, view.camera_from_reference.numpy())
            files = self.view_mask_files[k] if k < len(self.view_mask_files) else []
            if index < len(files):
                while len(self.view_mask_nodes) <= k:
                    self.view_mask_nodes.append(self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode",
                                                                             f"bone masks {self.rig.names[k + 1]}"))
                mask = self.view_mask_nodes[k]
                set_volume(mask, np.rint(_frame_pixels(files[index])).astype(np.int16)[None], np.eye(4))
                self.logic.placeFrame(mask, view.camera, view.camera_from_reference.numpy())

    @property
    def view_names(self) -> list[str]:
        """The views registered together: ["A"] for one view, the rig's names for several."""
        return self.rig.names if self.rig else ["A"]

    def load_track(self, out) -> dict:
        """A tracking run's records (``fluororeg track --out``) over the loaded frames: each frame then
        shows its tracked bones as outlines. Returns {ok, check, failed} counts."""
        from .track_scene import read_track_records

        records = {r["frame"]: r for r in read_track_records(out)}
        beyond = [k for k in records if k >= len(self.frames)]
        if beyond:
            raise FluoroRegError(f"the tracking run has frame {max(beyond)} but {len(self.frames)} frame(s) are loaded; "
                                 "load the case it tracked first")
        self.track_records = records
        self.show_frame(self.frame_index)
        from ..track.tracker import flag_counts

        return flag_counts(list(records.values()))

    def _show_tracked(self, record: dict) -> None:
        bones = {b: r for b, r in record["bones"].items() if b in self.label_ids}
        self.result_poses = {b: self._node("vtkMRMLLinearTransformNode", f"{b} pose") for b in bones}
        for bone, r in bones.items():
            self._write(self.result_poses[bone], np.asarray(r["camera_from_volume"]))
        self.status = {b: r["flag"] for b, r in bones.items()}

    def predict_masks(self, model_path) -> None:
        """Masks of the shown frame from a segmentation model (``fluororeg segment train``'s folder)."""
        if self.masks is None:
            self.masks = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "bone masks")
        self.logic.segmentFrame(self.frame, model_path, self.masks, self.label_ids)

    def select_bones(self, bones) -> None:
        """Which of the labelled bones are drawn and registered (each keeps its start pose)."""
        unknown = [b for b in bones if b not in self.sliders]
        if unknown or not bones:
            raise FluoroRegError(f"bone(s) {', '.join(unknown) or '(none)'} cannot be registered; choose from "
                                 f"{', '.join(self.sliders)}")
        self.bones = [b for b in self.sliders if b in bones]

    # ------------------------------------------------------------------------------------ poses
    def values(self, bone: str) -> dict[str, float]:
        """The bone's slider values at its start pose."""
        return self.sliders[bone].values(self._pose(self.start_poses[bone]))

    def ranges(self, bone: str) -> dict[str, tuple[float, float]]:
        half = 0.5 * max(self.camera.rows * self.camera.row_spacing_mm, self.camera.cols * self.camera.col_spacing_mm)
        return self.sliders[bone].ranges(self.camera.sdd_mm, half)

    def move(self, bone: str, name: str, value: float) -> None:
        """Set one slider of a bone's start pose (the transform node changes; the overlay follows)."""
        if bone not in self.sliders:
            raise FluoroRegError(f"no bone {bone!r}; bones: {', '.join(self.bones)}")
        values = {**self.values(bone), name: float(value)}
        self._write(self.start_poses[bone], self.sliders[bone].pose(values))

    def take_result_as_start(self) -> None:
        """Copy each registered pose to its bone's start and turn the rotation sliders from there."""
        for bone, node in self.result_poses.items():
            pose = self._pose(node)
            self._write(self.start_poses[bone], pose)
            self.sliders[bone].reference = pose

    def poses(self, which: str = "result") -> dict[str, np.ndarray]:
        nodes = self.result_poses if which == "result" else self.start_poses
        return {b: self._pose(n) for b, n in nodes.items()}

    def errors(self) -> dict[str, float]:
        """mTRE (mm) of each registered bone against the frame's truth, when the data has one."""
        from ..register import pose_errors

        truth = self.truths[self.frame_index] if self.frame_index < len(self.truths) else None
        if not truth:
            return {}
        volumes = self.logic.boneVolumes(self.ct, self.labels, self.label_ids)
        out = {}
        for bone, pose in self.poses("result").items():
            if bone in truth:
                v = volumes[bone]
                out[bone] = float(pose_errors(torch.as_tensor(pose), torch.as_tensor(truth[bone]), v.centroid,
                                              v.points)["mtre_mm"])
        return out

    def export_poses(self) -> str:
        """The registered poses (else the starts) as a poses JSON (docs/CONVENTIONS.md), with status."""
        which = "result" if self.result_poses else "start"
        return json.dumps({b: {"camera_from_volume": p.tolist(), "status": self.status.get(b, "not registered"),
                               "frame": self.frame_index} for b, p in self.poses(which).items()}, indent=1)

    # ------------------------------------------------------------------------------------ images
    def overlay(self, longest: int | None = None, drr: bool = True, masks: bool = True, view: int = 0) -> np.ndarray:
        """(rows, cols, 3) uint8: view ``view``'s frame (bone dark; 0: the first view), the DRR of the
        bones at their start poses in orange (``longest``: rendered coarse and scaled up), mask
        outlines in cyan, registered outlines in green, each as that view sees the bones."""
        from .overlay import compose

        frame, camera, mask, camera_from_reference = self._view(view)
        image = self.logic.frameImage(frame, camera)
        drr_image = self._drr(longest, camera, camera_from_reference) if drr and self.bones else None
        mask_labels = self.logic.maskLabels(mask) if masks and mask is not None else None
        result = self._result_outline(camera, camera_from_reference) if self.result_poses else None
        return compose(image, drr_image, mask_labels, result)

    def _view(self, view: int) -> tuple:
        """View ``view``'s (frame node, camera, mask node or None, camera_from_reference or None)."""
        if not 0 <= view < len(self.view_names):
            raise FluoroRegError(f"view {view} does not exist; the case has {len(self.view_names)} view(s) "
                                 f"({', '.join(self.view_names)})")
        if view == 0:
            return self.frame, self.camera, self.masks, None
        masks = self.view_mask_nodes[view - 1] if view - 1 < len(self.view_mask_nodes) else None
        v = self.rig.views[view]
        return self.view_nodes[view - 1], v.camera, masks, v.camera_from_reference.numpy()

    def _drr(self, longest, camera, camera_from_reference):
        node = self._node("vtkMRMLScalarVolumeNode", "web DRR")
        self.logic.renderDRR(self.ct, self.labels, camera, self.bone_ids(), self.start_poses, node, longest=longest,
                             cameraFromReference=camera_from_reference)
        from .nodes import volume_array

        return volume_array(node, "DRR")[0]

    def _result_outline(self, camera, camera_from_reference):
        from .nodes import volume_array

        node = self._node("vtkMRMLLabelMapVolumeNode", "web result outline")
        bones = {b: self.label_ids[b] for b in self.result_poses}
        self.logic.projectBones(self.ct, self.labels, camera, bones, self.result_poses, node,
                                cameraFromReference=camera_from_reference)
        return volume_array(node, "outline")[0]

    # ------------------------------------------------------------------------------------ register
    def start_registration(self, use_masks: bool = True, config=None, polarity: str = "auto") -> None:
        """Start the one registration path in a child process on the shown frame (all bones)."""
        from ..register import RegistrationConfig, expected_reports

        if self._process is not None:
            raise FluoroRegError("a registration is already running; wait for it or press Cancel")
        config = config if isinstance(config, RegistrationConfig) else RegistrationConfig.from_dict(config or {})
        folder = tempfile.mkdtemp(prefix="fluororeg-gui-")
        frames, calibration, masks = self.frame, self.camera, self.masks if use_masks else None
        if self.rig is not None:  # every view at once; a view without masks registers without them
            frames, calibration = [self.frame, *self.view_nodes], self.rig
            masks = None if not use_masks or self.masks is None else \
                [self.masks, *[self.view_mask_nodes[k] if k < len(self.view_mask_nodes) else None
                               for k in range(len(self.view_nodes))]]
        self._process = self.logic.startRegistrationProcess(
            folder, self.ct, self.labels, frames, calibration, self.bone_ids(), self.start_poses, masks, config,
            polarity)
        self._events, self._expected = 0, sum(expected_reports(config, self.camera, self._depth(b), len(self.view_names))
                                               for b in self.bones)
        views = f" against views {', '.join(self.view_names)}" if self.rig is not None else ""
        self.progress = Progress(True, 0.0, f"Registering {', '.join(self.bones)}{views}...")
        self._started = time.perf_counter()

    def poll(self) -> Progress:
        """Read the child's progress since the last call; when it has ended, write the result poses."""
        if self._process is None:
            return self.progress
        for event in self._process.poll():
            self._events += 1
            self.progress.message = f"{event['stage']}: similarity {event['similarity']:.4f}"
        self.progress.fraction = min(0.99, self._events / self._expected)
        if not self._process.running:
            self._finish()
        return self.progress

    def cancel(self) -> None:
        if self._process is not None:
            self._process.cancel()
            self._finish()

    def _finish(self) -> None:
        process, self._process = self._process, None
        try:
            outputs = {b: self._node("vtkMRMLLinearTransformNode", f"{b} pose") for b in self.bones}
            result = self.logic.finishRegistrationProcess(process, outputs)
        except FluoroRegError as err:
            self.progress = Progress(False, 0.0, f"Error: {err}" if "cancelled" not in str(err) else "Cancelled")
            return
        finally:
            process.remove_files()
        self.result_poses = {b: outputs[b] for b in result}
        self.status = {b: r["status"] for b, r in result.items()}
        errors = self.errors()
        lines = {b: f"{b}: {r['status'].upper()}, similarity {r['similarity']:.4f}, {r['seconds']:.1f} s"
                 + (f", mTRE {errors[b]:.2f} mm vs truth" if b in errors else "")
                 + (f" ({r['reason']})" if r["reason"] else "") for b, r in result.items()}
        self.progress = Progress(False, 1.0, f"Done in {time.perf_counter() - self._started:.1f} s", lines)

    @property
    def running(self) -> bool:
        return self._process is not None

    # ------------------------------------------------------------------------------------ helpers
    def _clear(self) -> None:
        self.cancel()
        self.scene.Clear(0)
        self.logic = FluoroRegistrationLogic(self.scene)
        self.masks, self.result_poses, self.status, self.progress = None, {}, {}, Progress()
        self.track_records = {}
        self.rig, self.view_frames, self.view_mask_files, self.view_nodes, self.view_mask_nodes = None, [], [], [], []

    def _place(self, node) -> bool:
        self.logic.placeFrame(node, self.camera)
        return True

    def _set_bones(self, starts: dict) -> None:
        volumes = self.logic.boneVolumes(self.ct, self.labels, self.label_ids)
        self.bones = [b for b in starts if b in KNEE] if all(b in starts for b in KNEE) else list(starts)
        self.start_poses = {b: self._node("vtkMRMLLinearTransformNode", f"{b} start") for b in starts}
        for bone, pose in starts.items():
            pose = np.asarray(pose, np.float64)
            self._write(self.start_poses[bone], pose)
            self.sliders[bone] = PoseSliders(volumes[bone].centroid.numpy().astype(np.float64), pose)

    def bone_ids(self) -> dict[str, int]:
        return {b: self.label_ids[b] for b in self.bones}

    def _depth(self, bone: str) -> float:
        """Depth (mm from the source) of the bone's centre at its start."""
        return float(self.sliders[bone].centre_camera(self._pose(self.start_poses[bone]))[2])

    def _node(self, class_name: str, name: str):
        return self.scene.GetFirstNodeByName(name) or self.scene.AddNewNodeByClass(class_name, name)

    def _pose(self, node) -> np.ndarray:
        return self.logic.poses(["b"], [node])["b"].numpy()

    def _write(self, node, pose) -> None:
        self.logic.writePoses({"b": pose}, [node])


def _frame_pixels(frame) -> np.ndarray:
    """(rows, cols) pixels of a frame given as an array or a file."""
    from ..frame_files import read_frame_array

    return frame if isinstance(frame, np.ndarray) else read_frame_array(frame)


def _facing_start(centre_volume: np.ndarray, camera: Camera, depth_fraction: float = 0.7) -> np.ndarray:
    """A start for a bone with no given one: the CT's axes as the camera's, the bone's centre on the
    principal ray at ``depth_fraction`` of the source-detector distance (nudge it with the sliders)."""
    pose = np.eye(4)
    pose[:3, 3] = np.array([0.0, 0.0, depth_fraction * camera.sdd_mm]) - centre_volume
    return pose


def find_inputs(folder) -> Inputs:
    """A case in ``folder``: a ``fluororeg simulate`` output (phantom/ or the CT it names, frames/,
    masks/NNNN_labels.png, poses/NNNN.json as truth, calib.json), or a folder holding ct.*, labels.*,
    labels.json, calib.json and frames (frames/ or frame.*), optionally init.json."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FluoroRegError(f"data folder not found: {folder}; pass a folder written by `fluororeg simulate` "
                             "or one with ct, labels, labels.json, calib.json and frames")
    sim = folder / "simulation.json"
    record = json.loads(sim.read_text()) if sim.is_file() else {}
    ct = Path(record["ct"]) if record.get("ct") not in (None, "None") else _first(folder, "ct")
    labels = Path(record["labels"]) if record.get("labels") not in (None, "None") else _first(folder, "labels")
    if not ct or not ct.exists() or not labels or not labels.exists():
        ct, labels = _first(folder / "phantom", "ct"), _first(folder / "phantom", "labels")
    if ct is None or labels is None:
        raise FluoroRegError(f"no CT and labels in {folder}; put ct.nii.gz and labels.nii.gz (or .nrrd, .mha) there")
    frames = sorted(p for p in (folder / "frames").glob("*") if p.is_file()) if (folder / "frames").is_dir() else \
        [p for p in [_first(folder, "frame")] if p]
    keys = [p.stem for p in frames]
    masks = [folder / "masks" / f"{k}_labels.png" for k in keys]
    truth = [folder / "poses" / f"{k}.json" for k in keys]
    calib = folder / "calib.json"  # the nominal calibration, what a user has (not calib_true.json)
    names = labels.parent / "labels.json" if (labels.parent / "labels.json").is_file() else folder / "labels.json"
    rig, view_frames, view_masks = _rig_inputs(folder, keys)
    return Inputs(ct, labels, names, frames, calib, masks if all(m.is_file() for m in masks) else [],
                  truth if all(t.is_file() for t in truth) else [],
                  folder / "init.json" if (folder / "init.json").is_file() else None, rig, view_frames, view_masks)


def _rig_inputs(folder: Path, keys: list[str]) -> tuple:
    """A simulated rig in ``folder`` (rig.json, views/<name>/frames and masks, as ``fluororeg simulate
    --view-angle`` writes): (rig path, frames per further view, masks per further view); (None, [], [])
    for one view."""
    from ..geometry import Rig

    if not (folder / "rig.json").is_file():
        return None, [], []
    rig = Rig.from_json(folder / "rig.json")
    view_frames, view_masks = [], []
    for name in rig.names[1:]:
        where = folder / "views" / name
        frames = [where / "frames" / f"{k}.png" for k in keys]
        missing = [f for f in frames if not f.is_file()]
        if missing:
            raise FluoroRegError(f"view {name} of {folder / 'rig.json'} has no {missing[0].relative_to(folder)}; every "
                                 "view needs a frame at every instant")
        masks = [where / "masks" / f"{k}_labels.png" for k in keys]
        view_frames.append(frames)
        view_masks.append(masks if all(m.is_file() for m in masks) else [])
    return folder / "rig.json", view_frames, view_masks


VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def inputs_from_files(paths) -> Inputs:
    """A case from files a person picked (an upload): volumes, JSON files and frames, told apart by
    what they hold. Volumes: the one named *label* or *seg* is the label map, the other the CT. JSON:
    a calibration has ``sdd_mm``, starts are poses (``camera_from_volume``), label names map names to
    ids. Images (PNG, TIFF, DICOM, .npy): frames in name order; one named *_labels.* is the masks."""
    paths = [Path(p) for p in paths]
    volumes = [p for p in paths if p.name.lower().endswith(VOLUME_SUFFIXES)]
    labels = [p for p in volumes if any(w in p.name.lower() for w in ("label", "seg"))]
    cts = [p for p in volumes if p not in labels]
    if len(cts) != 1 or len(labels) != 1:
        raise FluoroRegError(f"give one CT and one label map (a name with 'label' or 'seg') among the volumes; got "
                             f"{', '.join(p.name for p in volumes) or 'none'}")
    roles: dict[str, Path] = {}
    for p in (p for p in paths if p.suffix.lower() == ".json"):
        roles[_json_role(p)] = p
    if "calib" not in roles:
        raise FluoroRegError("no calibration among the files; add the C-arm's calibration JSON (docs/CONVENTIONS.md)")
    if "names" not in roles:
        raise FluoroRegError("no label names among the files; add labels.json ({\"femur\": 1, \"tibia\": 2}: the "
                             "label map's ids)")
    images = sorted(p for p in paths if p not in volumes and p.suffix.lower() != ".json")
    masks = [p for p in images if p.stem.lower().endswith("_labels")]
    frames = [p for p in images if p not in masks]
    return Inputs(cts[0], labels[0], roles["names"], frames, roles["calib"],
                  masks if len(masks) == len(frames) else [], [], roles.get("init"))


def _json_role(path: Path) -> str:
    from ..files import read_yaml

    data = read_yaml(path, f"JSON file {path.name}", "check it is the calibration, starts or label names")
    if isinstance(data, dict) and "sdd_mm" in data:
        return "calib"
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "camera_from_volume" in v for v in data.values()):
        return "init"
    if isinstance(data, dict) and data and all(isinstance(v, int) for v in data.values()):
        return "names"
    raise FluoroRegError(f"{path.name} is neither a calibration (sdd_mm), starts (camera_from_volume per bone) nor "
                         "label names ({\"femur\": 1}); leave it out or fix it")


def _first(folder: Path, stem: str) -> Path | None:
    for suffix in (*VOLUME_SUFFIXES, ".png", ".tif", ".tiff", ".dcm", ".npy"):
        if (folder / (stem + suffix)).is_file():
            return folder / (stem + suffix)
    return None

