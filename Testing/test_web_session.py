"""The web face's parts without a browser: pose sliders against their definition, the overlay's
pixels, the progress estimate against a real run, and WebSession on a slicer-core scene (the same
poses as the scene logic, errors in one line, a case read from a `fluororeg simulate` folder)."""

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from FluoroRegistrationLib import FluoroRegError
from FluoroRegistrationLib.geometry import rotation_from_rotvec
from FluoroRegistrationLib.slicer.overlay import compose, data_url, outline, resize
from FluoroRegistrationLib.slicer.pose_sliders import PoseSliders

F64 = torch.float64


def _pose(rotvec, t):
    p = np.eye(4)
    p[:3, :3] = rotation_from_rotvec(torch.tensor(rotvec, dtype=F64)).numpy()
    p[:3, 3] = t
    return p


# ------------------------------------------------------------------------------------ sliders
def test_sliders_show_the_centre_and_round_trip():
    centre = np.array([10.0, -20.0, 35.0])
    reference = _pose([0.3, -1.2, 0.5], [5.0, 8.0, 690.0])
    sliders = PoseSliders(centre, reference)
    v = sliders.values(reference)
    expected_centre = reference[:3, :3] @ centre + reference[:3, 3]
    assert np.allclose([v["x"], v["y"], v["z"]], expected_centre) and np.allclose([v["rx"], v["ry"], v["rz"]], 0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        pose = _pose(rng.normal(size=3), rng.normal(size=3) * 30 + [0, 0, 700])
        assert np.allclose(sliders.pose(sliders.values(pose)), pose, atol=1e-9)


def test_a_turn_slider_turns_about_the_bone_centre_and_one_camera_axis():
    centre = np.array([10.0, -20.0, 35.0])
    reference = _pose([0.3, -1.2, 0.5], [5.0, 8.0, 690.0])
    sliders = PoseSliders(centre, reference)
    turned = sliders.pose({"rz": 30.0})
    # the centre stays put, the rotation is exactly 30 deg about camera z on top of the reference
    assert np.allclose(sliders.centre_camera(turned), sliders.centre_camera(reference), atol=1e-9)
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    assert np.allclose(turned[:3, :3], rz @ reference[:3, :3], atol=1e-12)
    moved = sliders.pose({"z": 720.0})
    assert np.allclose(moved[:3, :3], reference[:3, :3]) and math.isclose(sliders.centre_camera(moved)[2], 720.0)
    with pytest.raises(FluoroRegError, match="slider rx is nan"):
        sliders.pose({"rx": float("nan")})


def test_slider_ranges_cover_the_field_at_the_bone():
    sliders = PoseSliders(np.zeros(3), _pose([0, 0, 0], [0, 0, 700.0]))
    r = sliders.ranges(1000.0, 128.0)  # 256 mm detector: 128 mm half-width at 1000 mm, ~90 at 700
    assert r["x"][1] == pytest.approx(1.2 * 128 * 0.7) and r["z"] == (50.0, 980.0) and r["rx"] == (-45.0, 45.0)


# ------------------------------------------------------------------------------------ overlay
def test_overlay_pixels():
    frame = np.tile(np.linspace(0, 1000, 64), (48, 1))
    drr = np.zeros((24, 32))
    drr[8:16, 8:16] = 5.0  # coarse DRR, scaled up 2x onto the frame
    masks = np.zeros((48, 64), int)
    masks[10:20, 30:40] = 1
    rgb = compose(frame, drr, masks)
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[24, 2]) == tuple(rgb[24, 2][[0, 0, 0]])  # grey where nothing is drawn
    assert rgb[24, 24, 0] > rgb[24, 24, 2] + 100  # orange inside the DRR's square (rows 16-31, cols 16-31)
    assert tuple(rgb[10, 35]) == (0, 220, 255) and tuple(rgb[15, 35]) != (0, 220, 255)  # outline, not fill
    assert outline(masks).sum() == 2 * 10 + 2 * 8
    assert resize(drr, (48, 64)).shape == (48, 64)
    url = data_url(rgb)
    assert url.startswith("data:image/png;base64,") and len(url) > 100


# ------------------------------------------------------------------------------------ session
slicer = pytest.importorskip("slicer", reason="needs the PyPI package slicer-core (test extra)")

from FluoroRegistrationLib.register import RegistrationConfig, expected_reports, pose_errors  # noqa: E402
from FluoroRegistrationLib.register.config import QUICK  # noqa: E402
from FluoroRegistrationLib.slicer.web_session import WebSession, find_inputs  # noqa: E402


@pytest.fixture(scope="module")
def session():
    s = WebSession(slicer.vtkMRMLScene())
    s.load_phantom()
    return s


def test_phantom_session_sliders_move_the_transform_node(session):
    node = session.start_poses["femur"]
    before = session.poses("start")["femur"]
    x = session.values("femur")["x"]
    session.move("femur", "x", x + 10.0)
    after = session.logic.poses(["femur"], [node])["femur"].numpy()
    assert np.allclose(after[:3, :3], before[:3, :3]) and np.allclose(after[:3, 3] - before[:3, 3], [10, 0, 0])
    session.move("femur", "x", x)
    with pytest.raises(FluoroRegError, match="no bone 'patella'"):
        session.move("patella", "x", 1.0)


def test_coarse_overlay_is_the_scene_logic_drr(session):
    full, coarse = session.overlay(), session.overlay(longest=64)
    plain = session.overlay(drr=False)
    assert full.shape == coarse.shape == (128, 128, 3)
    assert (np.abs(full.astype(int) - plain).sum(-1) > 30).sum() > 500  # the DRR shows
    assert np.abs(full.astype(int) - coarse).mean() < 8  # coarse is the same picture, blurrier


def test_register_in_a_child_process_writes_result_nodes(session):
    """QUICK settings from the phantom's start: the result lands near the truth, progress counted."""
    session.start_registration(config=QUICK, polarity="bone-dark")
    with pytest.raises(FluoroRegError, match="already running"):
        session.start_registration(config=QUICK)
    while session.running:
        session.poll()
        time.sleep(0.05)
    assert session.progress.fraction == 1.0 and "femur: OK" in session.progress.results["femur"]
    # 2 mm detector pixels (1.4 at the bone) and QUICK settings: the image plane is pinned, depth is
    # loose (2.19 mm mTRE on this machine's torch, under 2 on CI's, both almost all along the beam)
    femur = session.logic.boneVolumes(session.ct, session.labels, {"femur": session.label_ids["femur"]})["femur"]
    e = pose_errors(torch.as_tensor(session.poses("result")["femur"]), torch.as_tensor(session.truths[0]["femur"]),
                    femur.centroid, femur.points)
    assert e["in_plane_mm"] < 0.5 and e["rotation_deg"] < 1.0 and session.errors()["femur"] < 3.0, e
    exported = json.loads(session.export_poses())
    assert exported["femur"]["status"] == "ok"
    assert np.allclose(exported["femur"]["camera_from_volume"], session.poses("result")["femur"])
    start = session.poses("start")["femur"]
    session.take_result_as_start()
    assert np.allclose(session.poses("start")["femur"], session.poses("result")["femur"])
    assert np.allclose([session.values("femur")[k] for k in ("rx", "ry", "rz")], 0, atol=1e-9)
    session._write(session.start_poses["femur"], start)


def test_cancel_ends_the_child(session):
    session.start_registration(polarity="bone-dark")
    session.cancel()
    assert not session.running and session.progress.message == "Cancelled" and session.progress.fraction == 0


def test_expected_reports_is_about_a_real_run(femur_lateral):
    """The progress bar's estimate against the reports a default registration really makes."""
    from FluoroRegistrationLib.register import register

    ph, ct, bones, camera, truth = femur_lateral
    start = truth.clone()
    start[:3, 3] += torch.tensor([4.0, -3.0, 5.0], dtype=F64)
    reports = []
    register(bones, torch.ones(1, 1, *camera.shape), camera, {"femur": start}, config=RegistrationConfig(),
             progress=lambda *a: reports.append(a))
    estimate = expected_reports(RegistrationConfig(), camera, float(start[2, 3]))
    assert 0.5 < len(reports) / estimate < 1.5, (len(reports), estimate)


def test_find_inputs_reads_a_simulate_folder(tmp_path):
    from FluoroRegistrationLib.simulate.writer import DEFAULT_CAMERA, simulate_folder

    simulate_folder(tmp_path, frames=2, seed=1, camera=DEFAULT_CAMERA.resized(64, 64), realism="low")
    inputs = find_inputs(tmp_path)
    assert inputs.ct.name == "ct.nii.gz" and len(inputs.frames) == 2 and len(inputs.masks) == 2
    assert inputs.calib.name == "calib.json" and len(inputs.truth) == 2 and inputs.init is None
    s = WebSession(slicer.vtkMRMLScene())
    s.load_inputs(inputs)
    assert s.bones == ["femur", "tibia"] or set(s.bones) >= {"femur", "tibia"}
    assert s.logic.maskLabels(s.masks).max() > 0 and s.overlay().shape == (64, 64, 3)
    s.show_frame(1)
    assert s.frame_index == 1
    with pytest.raises(FluoroRegError, match="frame 2 does not exist"):
        s.show_frame(2)
    with pytest.raises(FluoroRegError, match="data folder not found"):
        find_inputs(tmp_path / "nowhere")


def test_truth_error_is_the_core_metric(session):
    truth = session.truths[0]["femur"]
    femur = session.logic.boneVolumes(session.ct, session.labels, session.label_ids)["femur"]
    start = session.poses("start")["femur"]
    expected = float(pose_errors(torch.as_tensor(start), torch.as_tensor(truth), femur.centroid, femur.points)["mtre_mm"])
    assert 4.0 < expected < 15.0  # the phantom's start is 4/-3/5 mm and 3/-2/4 deg off


def test_files_picked_in_the_page_are_told_apart_by_content(tmp_path):
    from FluoroRegistrationLib.slicer.web_session import inputs_from_files

    for name in ("knee_ct.nii.gz", "knee_labels.nrrd", "b.png", "a.png", "a_labels.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "c.json").write_text(json.dumps({"sdd_mm": 1000, "rows": 8, "cols": 8, "row_spacing_mm": 1,
                                                 "col_spacing_mm": 1}))
    (tmp_path / "n.json").write_text(json.dumps({"femur": 1, "tibia": 2}))
    (tmp_path / "s.json").write_text(json.dumps({"femur": {"camera_from_volume": np.eye(4).tolist()}}))
    files = sorted(tmp_path.iterdir())
    inputs = inputs_from_files(files)
    assert inputs.ct.name == "knee_ct.nii.gz" and inputs.labels.name == "knee_labels.nrrd"
    assert [p.name for p in inputs.frames] == ["a.png", "b.png"] and inputs.masks == []
    assert inputs.calib.name == "c.json" and Path(inputs.label_names).name == "n.json" and inputs.init.name == "s.json"
    with pytest.raises(FluoroRegError, match="one CT and one label map"):
        inputs_from_files([f for f in files if "labels.nrrd" not in f.name])
    with pytest.raises(FluoroRegError, match="no label names"):
        inputs_from_files([f for f in files if f.name != "n.json"])
    (tmp_path / "odd.json").write_text("[1, 2]")
    with pytest.raises(FluoroRegError, match="odd.json is neither"):
        inputs_from_files(files + [tmp_path / "odd.json"])


def test_a_refused_case_leaves_the_last_one_loaded(tmp_path):
    from FluoroRegistrationLib.simulate.writer import DEFAULT_CAMERA, simulate_folder

    simulate_folder(tmp_path, frames=1, seed=1, camera=DEFAULT_CAMERA.resized(64, 64), realism="low")
    s = WebSession(slicer.vtkMRMLScene())
    s.load_phantom()
    (tmp_path / "calib.json").write_text(json.dumps({"sdd_mm": 1000, "rows": 32, "cols": 32, "row_spacing_mm": 1,
                                                     "col_spacing_mm": 1}))
    with pytest.raises(FluoroRegError, match="64x64|64 x 64|32"):
        s.load_inputs(find_inputs(tmp_path))
    assert s.bones == ["femur"] and s.overlay().shape == (128, 128, 3)
    (tmp_path / "names.json").write_text(json.dumps({"femur": 1, "meniscus": 9}))
    inputs = find_inputs(tmp_path)
    inputs.label_names = tmp_path / "names.json"
    with pytest.raises(FluoroRegError, match=r"meniscus \(9\) of names.json not in the label map"):
        s.load_inputs(inputs)
    assert s.bones == ["femur"]


def test_tracking_results_show_on_their_frames(tmp_path):
    from FluoroRegistrationLib.files import read_poses
    from FluoroRegistrationLib.simulate.writer import DEFAULT_CAMERA, simulate_folder
    from FluoroRegistrationLib.track.tracker import write_record

    simulate_folder(tmp_path / "sim", frames=2, seed=1, camera=DEFAULT_CAMERA.resized(64, 64), realism="low")
    s = WebSession(slicer.vtkMRMLScene())
    s.load_inputs(find_inputs(tmp_path / "sim"))
    for k in range(2):
        truth = read_poses(tmp_path / "sim" / "poses" / f"{k:04d}.json")
        write_record(tmp_path / "track", {"frame": k, "time_ms": 33.3 * k, "flag": "ok", "bones": {
            b: {"camera_from_volume": truth[b].tolist(), "flag": "ok", "similarity": 0.9} for b in ("femur", "tibia")}})
    assert s.load_track(tmp_path / "track") == {"ok": 2, "check": 0, "failed": 0}
    s.show_frame(1)
    assert s.errors()["femur"] == pytest.approx(0.0, abs=1e-6)  # the tracked (here: true) poses are shown
    with_outlines = s.overlay(drr=False, masks=False)
    plain = WebSession(slicer.vtkMRMLScene())
    plain.load_inputs(find_inputs(tmp_path / "sim"))
    plain.show_frame(1)
    assert (with_outlines != plain.overlay(drr=False, masks=False)).any(axis=-1).sum() > 20
    write_record(tmp_path / "track", {"frame": 5, "time_ms": 0.0, "flag": "failed", "bones": {}})
    with pytest.raises(FluoroRegError, match="has frame 5 but 2 frame"):
        s.load_track(tmp_path / "track")


def test_predicted_masks_are_a_label_map_on_the_frame(tmp_path):
    """The page's Predict masks: the segmentation model's masks written with the labels' ids (the
    plumbing: an untrained model, so only ids, grid and placement are checked)."""
    from FluoroRegistrationLib.segment import BoneSegmenter, ModelInfo, save_model
    from FluoroRegistrationLib.slicer.nodes import ijk_to_ras

    torch.manual_seed(0)
    save_model(tmp_path / "model", BoneSegmenter(bones=["femur", "tibia"]), ModelInfo(bones=["femur", "tibia"], size=64))
    s = WebSession(slicer.vtkMRMLScene())
    s.load_phantom()
    s.predict_masks(tmp_path / "model")
    labels = s.logic.maskLabels(s.masks)
    assert labels.shape == s.camera.shape and set(np.unique(labels)) <= {0, s.label_ids["femur"]}
    assert np.allclose(ijk_to_ras(s.masks), ijk_to_ras(s.frame))
    with pytest.raises(FluoroRegError, match="segmentation model not found"):
        s.predict_masks(tmp_path / "nowhere")


def test_a_biplane_folder_registers_against_both_views_in_the_child(tmp_path):
    """A `fluororeg simulate --view-angle` folder: both views load (each frame on its own detector),
    and Register runs the one path on both frames (the poses come back in the first view's frame)."""
    from FluoroRegistrationLib.simulate.writer import DEFAULT_CAMERA, simulate_folder

    simulate_folder(tmp_path, frames=1, seed=1, camera=DEFAULT_CAMERA.resized(128, 128), realism="low",
                    view_angles_deg=(75.0,))
    inputs = find_inputs(tmp_path)
    assert inputs.rig == tmp_path / "rig.json" and inputs.view_frames == [[tmp_path / "views" / "B" / "frames" / "0000.png"]]
    assert inputs.view_masks == [[tmp_path / "views" / "B" / "masks" / "0000_labels.png"]]
    s = WebSession(slicer.vtkMRMLScene())
    s.load_inputs(inputs)
    assert s.view_names == ["A", "B"] and len(s.view_nodes) == 1 and len(s.view_mask_nodes) == 1
    # view B's frame stands on its own detector: its centre pixel where the rig puts B's principal point
    from FluoroRegistrationLib.slicer.nodes import ijk_to_ras

    camera_b = s.rig.cameras[1]
    ref_from_b = np.linalg.inv(s.rig.views[1].camera_from_reference.numpy())
    centre = ijk_to_ras(s.view_nodes[0]) @ np.array([camera_b.u0, camera_b.v0, 0.0, 1.0])
    np.testing.assert_allclose(centre[:3], ref_from_b[:3, :3] @ [0, 0, camera_b.sdd_mm] + ref_from_b[:3, 3], atol=1e-6)
    s.select_bones(["femur"])
    truth = s.truths[0]["femur"]
    s._write(s.start_poses["femur"], truth)  # from the truth: the test is the plumbing, not the capture
    s.start_registration(config=QUICK)
    assert "against views A, B" in s.progress.message
    while s.running:
        s.poll()
        time.sleep(0.05)
    assert "femur:" in s.progress.results["femur"], s.progress
    assert s.errors()["femur"] < 2.0, s.errors()
    # the page can show view B: its frame, and the registered femur as B sees it, over B's own mask
    # (the simulator's, an independent truth)
    from FluoroRegistrationLib.slicer.nodes import volume_array

    a, b = s.overlay(drr=False, masks=False), s.overlay(drr=False, masks=False, view=1)
    assert a.shape == b.shape == (*camera_b.shape, 3) and (a != b).any()
    outline = s.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")

    def centre(mask):  # (row, col) of a mask's centroid, pixels
        return np.argwhere(mask).mean(axis=0)

    truth_b = centre(s.logic.maskLabels(s.view_mask_nodes[0]) == s.label_ids["femur"])
    for view_from_reference, near in ((s.rig.views[1].camera_from_reference.numpy(), True), (None, False)):
        s.logic.projectBones(s.ct, s.labels, camera_b, {"femur": s.label_ids["femur"]}, s.result_poses, outline,
                             cameraFromReference=view_from_reference)
        seen = centre(volume_array(outline, "outline")[0] == s.label_ids["femur"])
        # within 2 px (1.4 mm at the bone; the rig file is the nominal one) as B sees it; as A sees it, far
        assert (np.linalg.norm(seen - truth_b) < 2.0) == near, (seen, truth_b)
        if near:  # drawn on B's detector in the scene
            np.testing.assert_allclose(ijk_to_ras(outline), ijk_to_ras(s.view_nodes[0]), atol=1e-9)
    with pytest.raises(FluoroRegError, match="view 2 does not exist; the case has 2 view"):
        s.overlay(view=2)
