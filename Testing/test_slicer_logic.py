"""FluoroRegistrationLogic on a real MRML scene (PyPI slicer-core): the phantom knee, a rendered frame,
every method, docs/CONVENTIONS.md's "In a Slicer scene" checked against Slicer's own transform machinery."""

import math

import numpy as np
import pytest
import torch

slicer = pytest.importorskip("slicer", reason="needs the PyPI package slicer-core (test extra)")
vtk = pytest.importorskip("vtk")

from FluoroRegistrationLib import FluoroRegError  # noqa: E402
from FluoroRegistrationLib.geometry import Camera, CentredParameterization, transform_points  # noqa: E402
from FluoroRegistrationLib.register import Cancelled, pose_errors  # noqa: E402
from FluoroRegistrationLib.register.config import QUICK as FAST  # noqa: E402
from FluoroRegistrationLib.render import project_label, render  # noqa: E402
from FluoroRegistrationLib.slicer import FluoroRegistrationLogic, frame_ijk_to_ras, phantom_scene, to_parent_from_pose  # noqa: E402
from FluoroRegistrationLib.slicer.demo_scene import DEMO_CAMERA as CAMERA  # noqa: E402
from FluoroRegistrationLib.slicer.nodes import matrix_to_numpy as numpy_matrix  # noqa: E402
from FluoroRegistrationLib.slicer.nodes import numpy_to_matrix as vtk_matrix  # noqa: E402

F64 = torch.float64


def add_volume(scene, class_name, name, array, ijk_to_ras):
    """A volume node made the way a user's script would (slicer.util, then the geometry)."""
    node = scene.AddNewNodeByClass(class_name, name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    node.SetIJKToRASMatrix(vtk_matrix(ijk_to_ras))
    return node


def add_transform(scene, name, camera_from_volume):
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(vtk_matrix(to_parent_from_pose(np.asarray(camera_from_volume))))
    return node


def to_parent(node):
    m = vtk.vtkMatrix4x4()
    node.GetMatrixTransformToParent(m)
    return numpy_matrix(m)


@pytest.fixture(scope="module")
def knee():
    scene = slicer.vtkMRMLScene()
    k = phantom_scene(scene, camera=CAMERA)
    return dict(scene=scene, ct=k.ct, ct_node=k.ctNode, label_node=k.labelNode, frame_node=k.frameNode, truth=k.truth,
                femur=k.femur, logic=FluoroRegistrationLogic(scene), names=k.labelNames)


def test_ct_node_geometry_is_the_lps_affine_with_x_and_y_negated(knee):
    m = vtk.vtkMatrix4x4()
    knee["ct_node"].GetIJKToRASMatrix(m)
    sx, sy, sz = knee["ct"].spacing
    ox, oy, oz = knee["ct"].volume_from_index[:3, 3]
    expected = np.array([[-sx, 0, 0, -ox], [0, -sy, 0, -oy], [0, 0, sz, oz], [0, 0, 0, 1.0]])  # written out by hand
    np.testing.assert_allclose(numpy_matrix(m), expected, atol=1e-12)
    assert np.array_equal(slicer.util.arrayFromVolume(knee["ct_node"]), knee["ct"].array)


def test_place_frame_puts_pixels_on_the_detector(knee):
    logic, frame = knee["logic"], knee["frame_node"]
    source_node, ray_node = logic.placeFrame(frame, CAMERA)
    m = vtk.vtkMatrix4x4()
    frame.GetIJKToRASMatrix(m)
    ijk_to_ras = numpy_matrix(m)
    for col, row in [(0, 0), (127, 0), (0, 127), (60, 66.5), (17, 101)]:
        expected = [(col - CAMERA.u0) * CAMERA.col_spacing_mm, (row - CAMERA.v0) * CAMERA.row_spacing_mm, CAMERA.sdd_mm]
        np.testing.assert_allclose((ijk_to_ras @ [col, row, 0, 1])[:3], expected, atol=1e-9)
    # a scene point projects (Camera.project) to the pixel whose centre lies on its ray from the source
    point = np.array([31.0, -12.0, 640.0])
    u, v = CAMERA.project(torch.tensor(point)).tolist()
    np.testing.assert_allclose((ijk_to_ras @ [u, v, 0, 1])[:3], point * CAMERA.sdd_mm / point[2], atol=1e-9)
    position = [0.0] * 3
    source_node.GetNthControlPointPosition(0, position)
    assert position == [0.0, 0.0, 0.0]
    ray_node.GetNthControlPointPosition(1, position)
    np.testing.assert_allclose(position, [0, 0, CAMERA.sdd_mm])
    # placing again reuses the markups; the calibration is kept on the frame
    assert logic.placeFrame(frame, CAMERA) == (source_node, ray_node) and ray_node.GetNumberOfControlPoints() == 2
    assert logic.frameCalibration(frame) == CAMERA


def test_a_ct_point_lands_where_camera_from_volume_says(knee):
    scene, logic, ct_node = knee["scene"], knee["logic"], knee["ct_node"]
    pose = CentredParameterization(knee["femur"].centroid, knee["truth"]).pose(
        torch.tensor([0.1, -0.2, 0.3, 5.0, -7.0, 11.0], dtype=F64))
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "femur pose")
    logic.writePoses({"femur": pose}, {"femur": node})
    ct_node.SetAndObserveTransformNodeID(node.GetID())
    try:
        to_world = vtk.vtkGeneralTransform()
        ct_node.GetParentTransformNode().GetTransformToWorld(to_world)  # Slicer's own machinery
        m = vtk.vtkMatrix4x4()
        ct_node.GetIJKToRASMatrix(m)
        for ijk in [(0, 0, 0), (40, 30, 60), (79, 79, 119)]:
            ras = numpy_matrix(m) @ [*ijk, 1]
            scene_point = to_world.TransformPoint(ras[:3])
            lps = knee["ct"].volume_from_index @ [*ijk, 1]
            expected = transform_points(pose, torch.tensor(lps[None, :3]))[0].numpy()
            np.testing.assert_allclose(scene_point, expected, atol=1e-6)
        # the pose reads back unchanged, and the CT is read in its own frame while under the transform
        assert torch.allclose(logic.poses(["femur"], [node])["femur"], pose, atol=1e-12)
        assert logic.boneVolumes(ct_node, knee["label_node"], ["femur"])["femur"].centroid.allclose(
            knee["femur"].centroid)
    finally:
        ct_node.SetAndObserveTransformNodeID(None)


def test_render_drr_and_project_bones_on_the_frame_geometry(knee):
    scene, logic = knee["scene"], knee["logic"]
    truth_node = add_transform(scene, "femur truth", knee["truth"])
    out = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "DRR")
    logic.renderDRR(knee["ct_node"], knee["label_node"], CAMERA, ["femur"], [truth_node], out)
    drr = slicer.util.arrayFromVolume(out)
    with torch.no_grad():
        expected = render(knee["femur"], CAMERA, knee["truth"].float(), "fast")[0].numpy()
    assert drr.shape == (1, 128, 128)
    np.testing.assert_allclose(drr, expected, rtol=1e-5, atol=1e-6)
    m = vtk.vtkMatrix4x4()
    out.GetIJKToRASMatrix(m)
    np.testing.assert_allclose((numpy_matrix(m) @ [CAMERA.u0, CAMERA.v0, 0, 1])[:3], [0, 0, CAMERA.sdd_mm])
    # the coarse preview covers the same detector: its pixel corners meet the full frame's
    logic.renderDRR(knee["ct_node"], knee["label_node"], CAMERA, {"femur": 1}, {"femur": truth_node}, out, longest=64)
    assert slicer.util.arrayFromVolume(out).shape == (1, 64, 64)
    out.GetIJKToRASMatrix(m)
    np.testing.assert_allclose((numpy_matrix(m) @ [-0.5, -0.5, 0, 1])[:2], [(-0.5 - CAMERA.u0) * 2, (-0.5 - CAMERA.v0) * 2])
    masks = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "bones over frame")
    logic.projectBones(knee["ct_node"], knee["label_node"], CAMERA, ["femur"], [truth_node], masks)
    with torch.no_grad():
        inside = project_label(knee["femur"], CAMERA, knee["truth"].float())[0, 0].numpy() > 0
    labels = slicer.util.arrayFromVolume(masks)[0]
    assert np.array_equal(labels == knee["names"]["femur"], inside) and inside.sum() > 200
    masks_back = logic.masksFromLabelMap(masks, CAMERA, {"femur": 1, "tibia": 2})
    assert list(masks_back) == ["femur"] and np.array_equal(masks_back["femur"].numpy() > 0, inside)


def test_register_brings_a_perturbed_femur_back_within_1mm(knee):
    scene, logic, truth, femur = knee["scene"], knee["logic"], knee["truth"], knee["femur"]
    logic.placeFrame(knee["frame_node"], CAMERA)
    start = CentredParameterization(femur.centroid, truth).pose(
        torch.tensor([math.radians(3), math.radians(-2), math.radians(4), 4.0, -3.0, 5.0], dtype=F64))
    initial = add_transform(scene, "femur start", start)
    output = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "femur registered")
    masks = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "femur mask")
    logic.projectBones(knee["ct_node"], knee["label_node"], CAMERA, ["femur"], [add_transform(scene, "t", truth)], masks)
    calls = []
    result = logic.register(knee["ct_node"], knee["label_node"], knee["frame_node"], CAMERA, ["femur"],
                            {"femur": initial}, {"femur": output}, maskNode=masks, device="cpu", config=FAST,
                            progress=lambda *a: calls.append(a), polarity="bone-dark")
    pose = result.bones["femur"].camera_from_volume
    before = pose_errors(start, truth, femur.centroid, femur.points)["mtre_mm"]
    after = pose_errors(pose, truth, femur.centroid, femur.points)["mtre_mm"]
    assert before > 5.0 and after < 1.0, (before, after)
    np.testing.assert_allclose(to_parent(output), to_parent_from_pose(pose.numpy()), atol=1e-9)
    np.testing.assert_allclose(to_parent(initial), to_parent_from_pose(start.numpy()), atol=1e-9)  # left alone
    assert output.GetAttribute("FluoroRegistration.status") == result.bones["femur"].status.flag == "ok"
    assert calls and calls[0][0].startswith("femur: ") and len(calls) == result.bones["femur"].iterations
    with pytest.raises(Cancelled):
        logic.register(knee["ct_node"], knee["label_node"], knee["frame_node"], CAMERA, ["femur"], [initial],
                       [output], config=FAST, cancel=lambda: True, polarity="bone-dark")


def test_extract_frame_picks_one_slice_of_a_stack(knee):
    scene, logic = knee["scene"], knee["logic"]
    stack = add_volume(scene, "vtkMRMLScalarVolumeNode", "stack", np.arange(3 * 128 * 128, dtype=np.float32)
                       .reshape(3, 128, 128), np.eye(4))
    one = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "frame 2")
    logic.extractFrame(stack, 2, one)
    assert np.array_equal(logic.frameImage(one, CAMERA), slicer.util.arrayFromVolume(stack)[2])
    with pytest.raises(FluoroRegError, match="frame index 3 is outside stack's 3 frames; use 0 to 2"):
        logic.extractFrame(stack, 3, one)
    with pytest.raises(FluoroRegError, match="frame stack has 3 slices; a frame is one slice: pick one with extractFrame"):
        logic.placeFrame(stack, CAMERA)


def test_bad_inputs_give_one_line_errors(knee, tmp_path):
    scene, logic = knee["scene"], knee["logic"]
    ct, labels, frame = knee["ct_node"], knee["label_node"], knee["frame_node"]
    pose = add_transform(scene, "p", knee["truth"])
    out = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "out")
    cases = [
        (lambda: logic.placeFrame(frame, Camera(1000.0, 256, 256, 1.0, 1.0)),
         "frame frame is 128x128 pixels but the calibration says 256x256; use the calibration of this frame"),
        (lambda: logic.renderDRR(ct, labels, CAMERA, ["femur", "meniscus"], [pose, pose], out),
         "bone(s) meniscus not in label map knee bones (labels present: femur, tibia, patella, fibula)"),
        (lambda: logic.renderDRR(ct, labels, CAMERA, {"femur": 9}, [pose], out),
         "label femur=9 is not in labelmap node knee bones (ids present: [1, 2, 3, 4])"),
        (lambda: logic.renderDRR(ct, labels, CAMERA, ["femur", "tibia"], [pose], out),
         "2 bones (femur, tibia) need 2 pose transform nodes, got 1; give one transform node per bone"),
        (lambda: logic.renderDRR(pose, labels, CAMERA, ["femur"], [pose], out),
         "CT p is a vtkMRMLLinearTransformNode; select a vtkMRMLScalarVolumeNode node"),
        (lambda: logic.placeFrame(frame, {"sdd_mm": 1000.0, "rows": 128}),
         "calibration: missing key(s) cols, row_spacing_mm, col_spacing_mm"),
        (lambda: logic.placeFrame(frame, tmp_path / "nope.json"), "calibration file not found"),
        (lambda: logic.segmentFrame(frame, tmp_path / "model.pt", labels), "segmentation model not found"),
        (lambda: FluoroRegistrationLogic(None), "FluoroRegistrationLogic needs a vtkMRMLScene"),
        (lambda: logic.register(ct, labels, frame, CAMERA, ["femur"], [pose], [pose], device="tpu"),
         "unknown device 'tpu'; use one of cpu, cuda"),
    ]
    logic.placeFrame(frame, CAMERA)
    for call, message in cases:
        with pytest.raises(FluoroRegError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                           .replace("]", r"\]")) as err:
            call()
        assert "\n" not in str(err.value)
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    masks = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "predicted")
    with pytest.raises(FluoroRegError, match="no model.json in"):
        logic.segmentFrame(frame, model, masks)


def test_segment_frame_writes_predicted_masks_on_the_frame_grid(tmp_path):
    from FluoroRegistrationLib.segment import BoneSegmenter, ModelInfo, save_model

    scene = slicer.vtkMRMLScene()
    logic = FluoroRegistrationLogic(scene)
    raw = np.full((1, CAMERA.rows, CAMERA.cols), 3000.0)
    raw[0, 40:90, 30:100] = 1200.0
    frame = add_volume(scene, "vtkMRMLScalarVolumeNode", "frame", raw, np.eye(4))
    logic.placeFrame(frame, CAMERA)
    torch.manual_seed(0)
    save_model(tmp_path / "model", BoneSegmenter(bones=["femur", "tibia"]), ModelInfo(bones=["femur", "tibia"], size=64))
    masks = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "predicted")
    logic.segmentFrame(frame, tmp_path / "model", masks, {"femur": 7, "tibia": 9})
    labels = slicer.util.arrayFromVolume(masks)
    assert labels.shape == (1, CAMERA.rows, CAMERA.cols) and set(np.unique(labels)) <= {0, 7, 9}
    m_masks, m_frame = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    masks.GetIJKToRASMatrix(m_masks)
    frame.GetIJKToRASMatrix(m_frame)
    assert np.allclose(numpy_matrix(m_masks), numpy_matrix(m_frame))  # on the frame's geometry
    with pytest.raises(FluoroRegError, match="segments femur, tibia, not patella"):
        logic.segmentFrame(frame, tmp_path / "model", masks, {"patella": 3})


def test_detector_view_shows_the_frame_like_a_radiograph():
    from FluoroRegistrationLib.slicer.geometry import detector_view_orientation

    m = detector_view_orientation()
    assert np.isclose(np.linalg.det(m), 1.0)  # a rotation: Slicer accepts it as a slice orientation
    ijk_to_ras = frame_ijk_to_ras(CAMERA)[:3, :3]
    screen_from_pixel = m.T @ ijk_to_ras  # (screen right, screen up, normal) per (col, row, slice) step
    assert screen_from_pixel[0, 0] > 0 and screen_from_pixel[1, 1] < 0  # columns go right, rows go down
    assert m[:, 2] @ [0, 0, 1] < 0  # the normal points back at the source: seen from the source's side


def test_a_biplane_rig_in_the_scene_registers_as_the_one_path_does(knee):
    """Two views: each frame on its own detector in the first view's camera frame, and the scene's
    registration the same pose as Registration.register on the same arrays."""
    from FluoroRegistrationLib.geometry import biplane_rig
    from FluoroRegistrationLib.register import Registration
    from FluoroRegistrationLib.volume import whole_volume

    scene, logic, truth, femur = knee["scene"], knee["logic"], knee["truth"], knee["femur"]
    rig = biplane_rig(CAMERA, angle_deg=75.0, isocentre_depth_mm=float(truth[2, 3]))
    images = []
    with torch.no_grad():
        for pose in rig.view_poses(truth):
            images.append((1000.0 * np.exp(-render(femur, CAMERA, pose.float(), "exact", interpolation="linear")[0, 0].numpy()))
                          .astype(np.float32))
    nodes = [add_volume(scene, "vtkMRMLScalarVolumeNode", f"view {n}", img[None], np.eye(4))
             for n, img in zip(rig.names, images)]
    placed = logic.placeRigFrames(nodes, rig)
    # view B's source sits where the rig says, and its frame's principal point is sdd along its own axis
    ref_from_b = np.linalg.inv(rig.views[1].camera_from_reference.numpy())
    source_b = np.zeros(3)
    placed[1][0].GetNthControlPointPosition(0, source_b)
    np.testing.assert_allclose(source_b, ref_from_b[:3, 3], atol=1e-6)
    m = vtk.vtkMatrix4x4()
    nodes[1].GetIJKToRASMatrix(m)
    centre_px = np.array([CAMERA.u0, CAMERA.v0, 0.0, 1.0])
    np.testing.assert_allclose((numpy_matrix(m) @ centre_px)[:3], ref_from_b[:3, :3] @ [0, 0, CAMERA.sdd_mm] + ref_from_b[:3, 3],
                               atol=1e-6)
    start = CentredParameterization(femur.centroid, truth, depth_along_ray=True).pose(
        torch.tensor([0.03, -0.02, 0.04, 3.0, -2.0, 10.0], dtype=F64))
    initial = add_transform(scene, "femur start (rig)", start)
    output = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "femur registered (rig)")
    with pytest.raises(FluoroRegError, match=r"rig of 2 view\(s\) \(A, B\) but one frame node"):
        logic.register(knee["ct_node"], knee["label_node"], nodes[0], rig, ["femur"], [initial], [output], config=FAST)
    result = logic.register(knee["ct_node"], knee["label_node"], nodes, rig, ["femur"], [initial], [output],
                            device="cpu", config=FAST, polarity="bone-dark")
    direct = Registration(logic.boneVolumes(knee["ct_node"], knee["label_node"], ["femur"]), FAST).register(
        [img.astype(np.float64) for img in images], rig, {"femur": start}, polarity="bone-dark")
    pose = result.bones["femur"].camera_from_volume
    torch.testing.assert_close(pose, direct.bones["femur"].camera_from_volume, rtol=0, atol=1e-9)
    e = pose_errors(pose, truth, femur.centroid, femur.points)
    assert e["mtre_mm"] < 1.0 and e["out_of_plane_mm"] < 0.5, e
    np.testing.assert_allclose(to_parent(output), to_parent_from_pose(pose.numpy()), atol=1e-9)
