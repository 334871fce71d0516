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


def test_a_tracking_run_loads_as_sequences_a_table_and_charts(tmp_path):
    """Records and kinematics.csv as fluororeg track writes them -> pose sequences (failed frames left
    out), the frames on the detector, the kinematics table and two charts."""
    from FluoroRegistrationLib.slicer.track_scene import load_track
    from FluoroRegistrationLib.track.outputs import write_kinematics_csv
    from FluoroRegistrationLib.track.tracker import write_record

    camera = CAMERA
    poses = [np.eye(4) for _ in range(4)]
    for k, p in enumerate(poses):
        p[:3, 3] = [k, 0, 700]
        bones = {} if k == 2 else {b: {"camera_from_volume": p.tolist(), "flag": "ok", "similarity": 0.9,
                                       "recovered": False} for b in ("femur", "tibia")}
        write_record(tmp_path, {"frame": k, "time_ms": 40.0 * k, "bones": bones, "flag": "ok" if bones else "failed"})
    write_kinematics_csv(tmp_path / "kinematics.csv", [{"frame": k, "time_ms": 40.0 * k,
                                                          "values": [10.0 * k, 1, 2, 3, 4, 5, 6, 7], "flag": "ok"}
                                                         for k in range(4)])
    stack = np.random.default_rng(0).random((4, camera.rows, camera.cols)).astype(np.float32)
    np.save(tmp_path / "frames.npy", stack)
    scene = slicer.vtkMRMLScene()
    track = load_track(scene, tmp_path, frames=tmp_path / "frames.npy", calibration=camera)
    femur = track.poses["femur"]
    assert index_values(femur) == ["0", "1", "3"]  # frame 2 failed: no pose
    m = femur.GetDataNodeAtValue("3").GetMatrixTransformToParent()
    assert m.GetElement(0, 3) == pytest.approx(3.0) and m.GetElement(2, 3) == pytest.approx(700.0)
    assert track.frames.GetNumberOfDataNodes() == 4
    table = track.table.GetTable()
    assert table.GetNumberOfRows() == 4 and table.GetColumnByName("flexion_deg").GetValue(3) == pytest.approx(30.0)
    assert table.GetColumnByName("time_s").GetValue(1) == pytest.approx(0.04)
    assert track.charts["angles"].GetNumberOfPlotSeriesNodes() == 3
    with pytest.raises(FluoroRegError, match="no tracking results"):
        load_track(scene, tmp_path / "nothing")
