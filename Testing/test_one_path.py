"""One registration path for every face: the same inputs through the command line, the Python API
and the Slicer scene logic (a real MRML scene, PyPI slicer-core) give the same pose, and each face's
frame, field, calibration (with its distortion) and masks are the ones the path prepares."""

import json
import math

import numpy as np
import pytest
import torch
import yaml

slicer = pytest.importorskip("slicer", reason="needs the PyPI package slicer-core (test extra)")

from FluoroRegistrationLib import FluoroRegError, register_frame  # noqa: E402
from FluoroRegistrationLib.cli import main  # noqa: E402
from FluoroRegistrationLib.files import read_poses, write_poses  # noqa: E402
from FluoroRegistrationLib.geometry import CentredParameterization  # noqa: E402
from FluoroRegistrationLib.register import pose_errors, prepare_frame  # noqa: E402
from FluoroRegistrationLib.render import project_label  # noqa: E402
from FluoroRegistrationLib.slicer import FluoroRegistrationLogic, phantom_scene, to_parent_from_pose  # noqa: E402
from FluoroRegistrationLib.slicer.nodes import numpy_to_matrix, set_volume, volume_array  # noqa: E402
from FluoroRegistrationLib.volume import ImageVolume, write_image  # noqa: E402

F64 = torch.float64
# a short run that still goes through every stage: search, two starts ranked, tilt probe, two levels
CONFIG = {"search": {"steps": 3, "candidates": 6}, "ranking": {"starts": 2},
          "pyramid": {"pixel_mm": [2.8, 1.4], "iterations": [15, 15]}, "axial_probe": {"enabled": False}}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The phantom scene, its files (CT, labels, names, a collimated frame, a mask label map, the
    calibration, the start) and the scene's nodes for the same data."""
    tmp = tmp_path_factory.mktemp("one_path")
    scene = slicer.vtkMRMLScene()
    knee = phantom_scene(scene)
    raw = volume_array(knee.frameNode, "frame")[0].astype(np.float64)
    raw[:, :6], raw[:, -5:], raw[:7, :], raw[-4:, :] = 0, 0, 0, 0  # a rectangular collimator
    set_volume(knee.frameNode, raw[None].astype(np.float32), np.eye(4))
    ids = knee.labelNames
    labels = ImageVolume(volume_array(knee.labelNode, "labels").astype(np.int32), knee.ct.volume_from_index)
    write_image(knee.ct, tmp / "ct.nii.gz")
    write_image(ImageVolume(labels.array.astype(np.int16), knee.ct.volume_from_index), tmp / "labels.nii.gz")
    (tmp / "labels.json").write_text(json.dumps(ids))
    np.save(tmp / "frame.npy", raw.astype(np.float32))
    with torch.no_grad():
        inside = project_label(knee.femur, knee.camera, knee.truth.float())[0, 0].numpy() > 0.5
    label_map = np.where(inside, ids["femur"], 0).astype(np.int16)
    np.save(tmp / "masks.npy", label_map)
    (tmp / "calib.json").write_text(json.dumps(knee.camera.to_dict()))
    start = CentredParameterization(knee.femur.centroid, knee.truth).pose(
        torch.tensor([math.radians(3), math.radians(-2), math.radians(4), 4.0, -3.0, 5.0], dtype=F64))
    write_poses(tmp / "init.json", {"femur": start})
    (tmp / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    mask_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "masks")
    set_volume(mask_node, label_map[None], np.eye(4))
    initial = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "femur start")
    initial.SetMatrixTransformToParent(numpy_to_matrix(to_parent_from_pose(start.numpy())))
    return dict(tmp=tmp, scene=scene, knee=knee, start=start, mask_node=mask_node, initial=initial, raw=raw)


def _cli_pose(inputs, capsys):
    tmp = inputs["tmp"]
    code = main(["register", "--ct", str(tmp / "ct.nii.gz"), "--labels", str(tmp / "labels.nii.gz"), "--bone", "femur",
                 "--frame", str(tmp / "frame.npy"), "--calib", str(tmp / "calib.json"), "--init", str(tmp / "init.json"),
                 "--mask", str(tmp / "masks.npy"), "--config", str(tmp / "config.yaml"), "--out", str(tmp / "cli.json")])
    assert code == 0, capsys.readouterr().err
    return read_poses(tmp / "cli.json")["femur"]


def _api_pose(inputs):
    tmp = inputs["tmp"]
    result = register_frame(ct=tmp / "ct.nii.gz", labels=tmp / "labels.nii.gz", frame=tmp / "frame.npy",
                            calibration=tmp / "calib.json", initial_poses=tmp / "init.json", bones=["femur"],
                            masks=tmp / "masks.npy", config=CONFIG)
    result.save(tmp / "api.json")
    return result.bones["femur"].camera_from_volume


def _slicer_pose(inputs):
    knee, scene = inputs["knee"], inputs["scene"]
    logic = FluoroRegistrationLogic(scene)
    logic.placeFrame(knee.frameNode, knee.camera)
    output = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "femur registered")
    result = logic.register(knee.ctNode, knee.labelNode, knee.frameNode, knee.camera, ["femur"], [inputs["initial"]],
                            [output], maskNode=inputs["mask_node"], device="cpu", config=CONFIG)
    return result.bones["femur"].camera_from_volume


def test_cli_python_api_and_slicer_logic_give_the_same_pose(inputs, capsys):
    cli, api, scene = _cli_pose(inputs, capsys), _api_pose(inputs), _slicer_pose(inputs)
    knee = inputs["knee"]
    torch.testing.assert_close(cli, api, atol=1e-9, rtol=0)  # the CLI prints 17 digits: the same pose
    torch.testing.assert_close(scene, api, atol=1e-6, rtol=0)  # the scene's CT went through RAS and back
    before = pose_errors(inputs["start"], knee.truth, knee.femur.centroid, knee.femur.points)
    after = pose_errors(api, knee.truth, knee.femur.centroid, knee.femur.points)
    assert after["in_plane_mm"] < 0.3 * before["in_plane_mm"]  # and the shared answer is a registration


def test_the_slicer_job_holds_the_frame_the_path_prepares_with_its_field(inputs):
    knee = inputs["knee"]
    logic = FluoroRegistrationLogic(inputs["scene"])
    logic.placeFrame(knee.frameNode, knee.camera)
    job = logic.prepareRegistration(knee.ctNode, knee.labelNode, knee.frameNode, knee.camera, ["femur"],
                                    [inputs["initial"]], inputs["mask_node"], config=CONFIG)
    prepared = prepare_frame(inputs["tmp"] / "frame.npy", knee.camera)
    assert not bool(job.frame.field.all()) and torch.equal(job.frame.field, prepared.field)  # the collimator
    assert job.frame.polarity == prepared.polarity == "bone-dark" and job.frame.log == prepared.log
    torch.testing.assert_close(job.frame.image, prepared.image)
    assert set(job.masks) == {"femur"} and job.masks["femur"].dtype == torch.bool


def test_the_slicer_module_sends_the_distortion_with_the_calibration():
    """The module's calibration dict carries distortion_k to the core (it used to be dropped)."""
    import ast
    from pathlib import Path

    source = (Path(__file__).resolve().parents[1] / "FluoroRegistration" / "FluoroRegistration.py").read_text()
    tree = ast.parse(source)
    method = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "calibration")
    namespace = {}
    exec(compile(ast.Module(body=[method], type_ignores=[]), "calibration", "exec"), namespace)

    class P:  # the parameter node's fields, as the module reads them
        sddMm, rows, cols, rowSpacingMm, colSpacingMm, principalCol, principalRow, distortionK = \
            1000.0, 64, 64, 0.5, 0.5, -1.0, -1.0, 0.08

    from FluoroRegistrationLib.geometry import Camera

    assert Camera.from_dict(namespace["calibration"](None, P())).distortion_k == pytest.approx(0.08)


def test_masks_follow_one_rule_whatever_their_form(inputs, tmp_path):
    from FluoroRegistrationLib.register import Registration, binary_mask

    tmp, knee = inputs["tmp"], inputs["knee"]
    label_map = np.load(tmp / "masks.npy")
    inside = label_map == knee.labelNames["femur"]
    for form in (inside, inside.astype(np.uint8) * 255, inside.astype(np.float32) * 0.9):
        assert torch.equal(binary_mask(form, "mask"), torch.from_numpy(inside))
    reg = Registration.from_ct(tmp / "ct.nii.gz", tmp / "labels.nii.gz", ["femur"])
    frame = prepare_frame(tmp / "frame.npy", knee.camera)
    from_map = reg.masks(tmp / "masks.npy", frame, knee.camera)
    np.save(tmp_path / "femur.npy", inside.astype(np.float32))
    from_file = reg.masks({"femur": tmp_path / "femur.npy"}, frame, knee.camera)
    assert torch.equal(from_map["femur"], from_file["femur"])
    with pytest.raises(FluoroRegError, match="is empty"):
        reg.masks({"femur": np.zeros_like(inside)}, frame, knee.camera)
    with pytest.raises(FluoroRegError, match="not registered"):
        reg.masks({"tibia": inside}, frame, knee.camera)
    with pytest.raises(FluoroRegError, match="but the frame is 128x128"):
        reg.masks({"femur": inside[:64]}, frame, knee.camera)
    with pytest.raises(FluoroRegError, match="need a segmentation model"):
        reg.masks("auto", frame, knee.camera)


def test_bad_configuration_fails_at_construction_in_one_line(inputs, capsys):
    tmp = inputs["tmp"]
    (tmp / "bad.yaml").write_text("pyramid: {pixel_mm: [2.8, 1.4], iterations: [10]}\n")
    code = main(["register", "--ct", str(tmp / "ct.nii.gz"), "--labels", str(tmp / "labels.nii.gz"), "--bone", "femur",
                 "--frame", str(tmp / "frame.npy"), "--calib", str(tmp / "calib.json"), "--init", str(tmp / "init.json"),
                 "--config", str(tmp / "bad.yaml"), "--out", str(tmp / "bad.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Pyramid.iterations has 1 entries but pixel_mm has 2" in err
    with pytest.raises(FluoroRegError, match="GlobalSearch.range_mm = 0 is out of range"):
        register_frame(tmp / "ct.nii.gz", tmp / "labels.nii.gz", tmp / "frame.npy", tmp / "calib.json",
                       tmp / "init.json", config={"search": {"range_mm": 0}})


def _process(inputs, tmp_path, config=CONFIG, calibration=None):
    knee, scene = inputs["knee"], inputs["scene"]
    logic = FluoroRegistrationLogic(scene)
    logic.placeFrame(knee.frameNode, knee.camera)
    return logic, logic.startRegistrationProcess(tmp_path / "job", knee.ctNode, knee.labelNode, knee.frameNode,
                                                 calibration or knee.camera, ["femur"], [inputs["initial"]],
                                                 maskNode=inputs["mask_node"], config=config)


def test_the_slicer_registration_process_gives_the_same_pose_and_streams_progress(inputs, tmp_path):
    """The GUI's registration runs `fluororeg register` in a child process (no Python thread under
    Slicer's Qt loop): polled, it streams every iteration, and its pose is the one path's."""
    import time

    logic, process = _process(inputs, tmp_path)
    events = []
    while process.running:
        events += process.poll()
        time.sleep(0.05)
    events += process.poll()
    output = inputs["scene"].AddNewNodeByClass("vtkMRMLLinearTransformNode", "femur (process)")
    result = logic.finishRegistrationProcess(process, [output])
    pose = torch.tensor(result["femur"]["camera_from_volume"], dtype=F64)
    # the child runs with torch's default thread count; an earlier test may have left this process with
    # another, and a different reduction order moves the optimiser's path by rounding (4.6e-6 mm seen)
    import subprocess
    import sys

    from FluoroRegistrationLib.slicer.scene_logic import _torch_threads

    child_threads = int(subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                                       capture_output=True, text=True, check=True).stdout)
    with _torch_threads(child_threads):
        api = _api_pose(inputs)
    torch.testing.assert_close(pose, api, atol=1e-6, rtol=0)
    assert len(events) == result["femur"]["iterations"] and events[0]["stage"].startswith("femur: ")
    assert np.asarray(events[-1]["pose"]).shape == (4, 4)
    assert output.GetAttribute("FluoroRegistration.status") == result["femur"]["status"]
    from FluoroRegistrationLib.slicer.nodes import to_parent
    from FluoroRegistrationLib.slicer import to_parent_from_pose as tp
    np.testing.assert_allclose(to_parent(output), tp(pose.numpy()), atol=1e-9)


def test_the_slicer_registration_process_cancels_and_reports_errors(inputs, tmp_path):
    import time

    slow = {**CONFIG, "pyramid": {"pixel_mm": [2.8, 1.4], "iterations": [400, 400]}}
    logic, process = _process(inputs, tmp_path, slow)
    deadline = time.time() + 120
    while not process.poll() and time.time() < deadline:  # wait for the first iteration
        time.sleep(0.05)
    process.cancel()
    assert not process.running
    with pytest.raises(FluoroRegError, match="registration cancelled"):
        process.result()
    camera = inputs["knee"].camera.to_dict()
    bad = {**camera, "distortion": {"model": "radial", "k": 5}}
    with pytest.raises(FluoroRegError, match="distortion k 5 is outside the physical range"):
        _process(inputs, tmp_path / "bad", calibration=bad)  # refused before a child starts
    with pytest.raises(FluoroRegError, match="Pyramid.learning_rate"):
        _process(inputs, tmp_path / "bad", {"pyramid": {"learning_rate": -1}})
    empty = inputs["scene"].AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "no bones here")
    set_volume(empty, np.zeros_like(volume_array(inputs["mask_node"], "m")), np.eye(4))
    knee, logic = inputs["knee"], FluoroRegistrationLogic(inputs["scene"])
    process = logic.startRegistrationProcess(tmp_path / "child", knee.ctNode, knee.labelNode, knee.frameNode,
                                             knee.camera, ["femur"], [inputs["initial"]], maskNode=empty,
                                             config=CONFIG)
    with pytest.raises(FluoroRegError, match="holds none of the bones' label ids"):  # the child's one line
        process.result()
    process.remove_files()
    assert not (tmp_path / "child").exists()
    with pytest.raises(FluoroRegError, match="cannot start the registration process with /no/such/python"):
        logic.startRegistrationProcess(tmp_path / "nopython", knee.ctNode, knee.labelNode, knee.frameNode, knee.camera,
                                       ["femur"], [inputs["initial"]], config=CONFIG, python="/no/such/python")
