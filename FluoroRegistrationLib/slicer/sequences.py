"""Slicer's idioms for time series: fluoroscopy frames as a Sequence of volume nodes on the detector,
and per-frame poses as a Sequence of transform nodes (what tracking writes), browsed together.

A Sequence node (``vtkMRMLSequenceNode``, core MRML) holds one data node per index value; a
Sequence Browser node (Slicer's Sequences module; absent from plain MRML such as slicer-core) shows
the items of its sequences at one index at a time. The index is the frame number, or the time in
milliseconds when the frames' times are known (a multi-frame DICOM's Frame Time).
"""

from __future__ import annotations

import numpy as np

from ..errors import FluoroRegError
from .geometry import as_camera, calibration_text, frame_ijk_to_ras, to_parent_from_pose
from .nodes import numpy_to_matrix, set_volume
from .scene_logic import CALIBRATION_ATTRIBUTE


def _index_values(count: int, frame_times_ms) -> tuple[list[str], str, str]:
    """The sequence's index values (text), name and unit: frame numbers, or times in ms."""
    if frame_times_ms is None:
        return [str(i) for i in range(count)], "frame", ""
    times = np.asarray(frame_times_ms, dtype=np.float64)
    if times.shape != (count,) or not np.isfinite(times).all() or np.any(np.diff(times) <= 0):
        raise FluoroRegError(f"frame_times_ms must be {count} increasing times in ms, got {frame_times_ms!r}")
    return [f"{t:g}" for t in times], "time", "ms"


def frames_to_sequence(scene, frames, calibration, name: str = "fluoroscopy", frame_times_ms=None):
    """A Sequence node of the frames (N, rows, cols), each a scalar volume on the detector of
    ``calibration`` (as ``placeFrame`` puts one) carrying the calibration; returns the node."""
    import slicer

    camera = as_camera(calibration)
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.shape[1:] != camera.shape:
        raise FluoroRegError(f"frames must be (N, {camera.rows}, {camera.cols}) for this calibration, got "
                             f"{frames.shape}; give a stack of frames of the calibration's size")
    values, index_name, unit = _index_values(len(frames), frame_times_ms)
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    sequence.SetIndexName(index_name)
    sequence.SetIndexUnit(unit)
    sequence.SetIndexType(sequence.NumericIndex)
    ijk_to_ras = frame_ijk_to_ras(camera)
    for value, frame in zip(values, frames):
        node = slicer.vtkMRMLScalarVolumeNode()
        node.SetName(f"{name} {value}")
        set_volume(node, frame[None].astype(np.float32), ijk_to_ras)
        node.SetAttribute(CALIBRATION_ATTRIBUTE, calibration_text(camera))
        sequence.SetDataNodeAtValue(node, value)
    return sequence


def poses_to_sequence(scene, poses, name: str, index_values=None):
    """A Sequence node of linear transforms, one per frame, from ``poses``: a list of (4, 4)
    ``camera_from_volume`` (None: no pose for that frame, e.g. a failed one, left out); index values
    default to the frame numbers (give the frames' sequence's values to browse them together)."""
    import slicer

    values = [str(i) for i in range(len(poses))] if index_values is None else [str(v) for v in index_values]
    if len(values) != len(poses):
        raise FluoroRegError(f"{len(poses)} poses but {len(values)} index values; give one value per frame")
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    sequence.SetIndexName("frame")
    sequence.SetIndexType(sequence.NumericIndex)
    for value, pose in zip(values, poses):
        if pose is None:
            continue
        node = slicer.vtkMRMLLinearTransformNode()
        node.SetName(f"{name} {value}")
        node.SetMatrixTransformToParent(numpy_to_matrix(to_parent_from_pose(np.asarray(pose, dtype=np.float64))))
        sequence.SetDataNodeAtValue(node, value)
    return sequence


def index_values(sequence) -> list[str]:
    """The index values of a Sequence node, in order."""
    return [sequence.GetNthIndexValue(i) for i in range(sequence.GetNumberOfDataNodes())]


def browse(scene, sequences: list, name: str = "FluoroRegistration browser"):
    """A Sequence Browser node showing ``sequences`` together (the first one leads), or None where
    the Sequences module is not loaded (plain MRML)."""
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", name) if _has_browser(scene) else None
    if browser is None:
        return None
    browser.SetAndObserveMasterSequenceNodeID(sequences[0].GetID())
    for sequence in sequences[1:]:
        browser.AddSynchronizedSequenceNodeID(sequence.GetID())
    return browser


def _has_browser(scene) -> bool:
    return scene.CreateNodeByClass("vtkMRMLSequenceBrowserNode") is not None
