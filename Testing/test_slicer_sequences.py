"""Frames and per-frame poses as Slicer Sequence nodes (a real MRML scene, PyPI slicer-core)."""

import json

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the PyPI package slicer-core (test extra)")
import vtk  # noqa: E402

from FluoroRegistrationLib import FluoroRegError  # noqa: E402
from FluoroRegistrationLib.geometry import Camera, lateral_view  # noqa: E402
from FluoroRegistrationLib.slicer import frame_ijk_to_ras, to_parent_from_pose  # noqa: E402
from FluoroRegistrationLib.slicer.nodes import volume_array  # noqa: E402
from FluoroRegistrationLib.slicer.sequences import (browse, frames_to_sequence, index_values,  # noqa: E402
                                                    poses_to_sequence)

CAMERA = Camera(1000.0, 24, 32, 1.0, 1.0)


def test_frames_become_a_sequence_of_volumes_on_the_detector():
    scene = slicer.vtkMRMLScene()
    frames = np.random.default_rng(0).random((3, 24, 32)).astype(np.float32)
    sequence = frames_to_sequence(scene, frames, CAMERA, "squat")
    assert sequence.GetNumberOfDataNodes() == 3 and index_values(sequence) == ["0", "1", "2"]
    assert sequence.GetIndexName() == "frame"
    for i in range(3):
        node = sequence.GetNthDataNode(i)
        np.testing.assert_array_equal(volume_array(node, "frame")[0], frames[i])
        ijk = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(ijk)
        got = np.array([[ijk.GetElement(r, c) for c in range(4)] for r in range(4)])
        np.testing.assert_allclose(got, frame_ijk_to_ras(CAMERA), atol=1e-9)
        assert json.loads(node.GetAttribute("FluoroRegistration.Calibration"))["rows"] == 24
    timed = frames_to_sequence(scene, frames, CAMERA, "timed", frame_times_ms=[0, 33.3, 66.7])
    assert index_values(timed) == ["0", "33.3", "66.7"] and timed.GetIndexUnit() == "ms"
    with pytest.raises(FluoroRegError, match=r"frames must be \(N, 24, 32\)"):
        frames_to_sequence(scene, frames[:, :10], CAMERA)
    with pytest.raises(FluoroRegError, match="increasing times"):
        frames_to_sequence(scene, frames, CAMERA, frame_times_ms=[0, 10, 5])


def test_poses_become_a_sequence_of_transforms_and_a_failed_frame_is_left_out():
    scene = slicer.vtkMRMLScene()
    poses = [lateral_view((0.0, 0.0, float(z)), 700.0).numpy() for z in (0, 5, 10)]
    sequence = poses_to_sequence(scene, [poses[0], None, poses[2]], "femur poses")
    assert index_values(sequence) == ["0", "2"]
    for i, pose in zip(range(2), (poses[0], poses[2])):
        m = vtk.vtkMatrix4x4()
        sequence.GetNthDataNode(i).GetMatrixTransformToParent(m)
        got = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
        np.testing.assert_allclose(got, to_parent_from_pose(pose), atol=1e-9)
    with pytest.raises(FluoroRegError, match="one value per frame"):
        poses_to_sequence(scene, poses, "x", index_values=[0, 1])
    frames = frames_to_sequence(scene, np.zeros((3, 24, 32)) + np.arange(3)[:, None, None], CAMERA)
    assert browse(scene, [frames, sequence]) is None  # no Sequences module in plain MRML: nothing to browse with
