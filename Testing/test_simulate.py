"""The fluoroscopy simulator: physics, scenes, ground truth, determinism and the command."""

import json
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from FluoroRegistrationLib.cli import main
from FluoroRegistrationLib.geometry import Camera, lateral_view, transform_points
from FluoroRegistrationLib.render import render
from FluoroRegistrationLib.simulate.frames import PRESETS, FrameSimulator
from FluoroRegistrationLib.simulate.materials import linear_attenuation_per_mm
from FluoroRegistrationLib.simulate.physics import (
    CT_ENERGY_KEV, MATERIAL_ORDER, decompose, reference_hu, transmission)
from FluoroRegistrationLib.simulate.scene import (
    knee_poses, knee_relative_poses, sample_knee_states)
from FluoroRegistrationLib.simulate.spectrum import tube_spectrum
from FluoroRegistrationLib.volume import whole_volume

F64 = torch.float64
CAM = Camera(1000.0, 56, 56, 4.0, 4.0)


def test_decomposition_reproduces_ct_numbers_at_the_ct_energy():
    hu = np.linspace(-995, 2800, 400).astype(np.float32)  # air itself is about -999 HU (mu > 0)
    parts = decompose(hu)
    mu = sum(parts[m] * linear_attenuation_per_mm(m, [CT_ENERGY_KEV], 1.0)[0] for m in MATERIAL_ORDER)
    mu_water = linear_attenuation_per_mm("water", [CT_ENERGY_KEV])[0]
    expected = mu_water * (1 + hu / 1000.0)
    assert np.allclose(mu, expected, rtol=2e-3, atol=2e-6)
    below = decompose(np.array([-1024.0, -1000.0], np.float32))
    assert np.allclose(below["air"], 0.00120479, rtol=1e-4) and all(below[m].sum() == 0 for m in MATERIAL_ORDER[1:])


def test_bone_contrast_depends_on_energy_not_a_linear_rescale():
    refs = reference_hu()
    assert refs["adipose"] < 0 < refs["muscle"] < refs["cortical_bone"]
    bone = linear_attenuation_per_mm("cortical_bone", [30.0, 100.0])
    water = linear_attenuation_per_mm("water", [30.0, 100.0])
    assert bone[0] / water[0] > 1.5 * bone[1] / water[1]


def test_spectrum_and_beam_hardening():
    soft = tube_spectrum(70.0, 2.0)
    hard = tube_spectrum(70.0, 6.0)
    assert 35.0 < soft.mean_energy_kev < hard.mean_energy_kev < 55.0
    assert abs(soft.photons.sum() - 1) < 1e-12 and soft.energies_kev.max() < 70.0
    # effective attenuation of bone falls with thickness (the beam hardens): -log T / t decreases
    t = torch.tensor([5.0, 20.0, 40.0], dtype=F64)  # mm of cortical bone at 1.92 g/cm^3
    areal = torch.zeros(3, len(MATERIAL_ORDER), 1, 1, dtype=F64)
    areal[:, MATERIAL_ORDER.index("cortical_bone"), 0, 0] = 1.92 * t
    mu_eff = -torch.log(transmission(areal, MATERIAL_ORDER, soft)[:, 0, 0]) / t
    assert mu_eff[0] > mu_eff[1] > mu_eff[2]


@pytest.mark.parametrize("interpolation", ["nearest", "linear"])
def test_realism_off_equals_the_exact_renderer(knee, interpolation):
    ph, ct, labels = knee
    sim = FrameSimulator(ct, labels, ph.label_names, "off", interpolation=interpolation)
    T = lateral_view(ph.knee_centre_mm, 700.0)
    frame = sim.frame(CAM, {b: T for b in ph.label_names}, torch.Generator().manual_seed(0))
    exact = render(whole_volume(ct), CAM, T, "exact", interpolation=interpolation)[0, 0].double()
    assert torch.allclose(frame["image"], exact, rtol=1e-5, atol=1e-6), float((frame["image"] - exact).abs().max())


def test_masks_project_where_the_poses_say(knee):
    ph, ct, labels = knee
    realism = replace(PRESETS["low"], detector=replace(PRESETS["low"].detector, distortion_k=0.0,
                                                       collimation_radius=None))
    sim = FrameSimulator(ct, labels, ph.label_names, realism)
    T = lateral_view(ph.knee_centre_mm, 700.0)
    poses = knee_poses(ph.knee_centre_mm, T, 40.0, 2.0, 3.0, bones=list(ph.label_names))
    cam = Camera(1000.0, 96, 96, 2.0, 2.0)
    frame = sim.frame(cam, poses, torch.Generator().manual_seed(0))
    patella = sim.bones["patella"]
    thickness = frame["thickness"]["patella"]
    uv = cam.pixel_uv(F64)
    centroid_2d = (thickness[..., None] * uv).sum((0, 1)) / thickness.sum()
    expected = cam.project(transform_points(poses["patella"], patella.centroid[None])[0])
    assert (centroid_2d - expected).norm() < 1.0
    mask = frame["masks"]["patella"]
    mask_centroid = (mask[..., None] * uv).sum((0, 1)) / mask.sum()
    assert (mask_centroid - expected).norm() < 1.0, float((mask_centroid - expected).norm())
    assert frame["masks"]["femur"].sum() > frame["masks"]["patella"].sum()


def test_frames_look_like_fluoroscopy_bone_dark_with_noise(knee):
    ph, ct, labels = knee
    sim = FrameSimulator(ct, labels, ph.label_names, "medium")
    T = lateral_view(ph.knee_centre_mm, 700.0)
    poses = knee_poses(ph.knee_centre_mm, T, 30.0, bones=list(ph.label_names))
    cam = Camera(1000.0, 96, 96, 2.0, 2.0)
    a = sim.frame(cam, poses, torch.Generator().manual_seed(1))
    b = sim.frame(cam, poses, torch.Generator().manual_seed(1))
    c = sim.frame(cam, poses, torch.Generator().manual_seed(2))
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])
    image = a["image"]
    assert a["levels"] == 4095 and torch.equal(image, image.round()) and image.max() <= 4095
    femur, air = a["masks"]["femur"], a["transmission"] > 0.95
    field = image > 0
    assert image[femur & field].mean() < image[air & field].mean()  # bone dark


def test_knee_kinematics_rotate_about_the_flexion_axis():
    centre = torch.tensor([0.0, 0.0, 24.0], dtype=F64)
    rel = knee_relative_poses(centre, 90.0)["tibia"]
    assert torch.allclose(transform_points(rel, centre[None])[0], centre, atol=1e-12)
    distal = centre + torch.tensor([0.0, 0.0, -100.0], dtype=F64)
    moved = transform_points(rel, distal[None])[0]
    assert moved[1] > 99.0 and abs(moved[2] - centre[2]) < 1e-6  # swung posteriorly, to the axis' level
    poses = knee_poses(centre, torch.eye(4, dtype=F64), 30.0, bones=["femur", "tibia", "fibula", "patella"])
    assert torch.equal(poses["fibula"], poses["tibia"]) and torch.equal(poses["femur"], torch.eye(4, dtype=F64))


def test_motion_sequences():
    g = torch.Generator().manual_seed(0)
    states = sample_knee_states(20, g, "flexion", (0.0, 90.0))
    flex = [s.flexion_deg for s in states]
    assert flex[0] == pytest.approx(0.0) and max(flex) == pytest.approx(90.0) and flex[10] == max(flex)
    gait = [s.flexion_deg for s in sample_knee_states(50, g, "gait")]
    assert 50 < max(gait) < 70 and min(gait) > 0
    free = sample_knee_states(200, g, None, (0.0, 120.0))
    assert min(s.flexion_deg for s in free) >= 0 and max(s.flexion_deg for s in free) <= 120


def test_simulate_command_writes_ground_truth(tmp_path, capsys):
    args = ["simulate", "--out", str(tmp_path / "a"), "--frames", "2", "--size", "48", "--realism", "high",
            "--seed", "3", "--sequence", "flexion"]
    assert main(args) == 0
    out = tmp_path / "a"
    frame = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "frames" / "0000.png")))
    assert frame.dtype == np.uint16 and frame.shape == (48, 48) and frame.max() <= 255  # 8-bit levels
    for name in ("masks/0001_femur.png", "masks/0001_tibia_visible.png", "masks/0001_labels.png",
                 "poses/0001.json", "calib.json", "calib_true.json", "frames.json", "simulation.json"):
        assert (out / name).is_file(), name
    poses = json.loads((out / "poses.json").read_text())
    assert set(poses) == {"0000", "0001"} and set(poses["0000"]) == {"femur", "tibia", "patella", "fibula"}
    nominal = json.loads((out / "calib.json").read_text())
    true = json.loads((out / "calib_true.json").read_text())
    assert nominal["sdd_mm"] != true["sdd_mm"]
    assert main(args[:2] + [str(tmp_path / "b")] + args[3:]) == 0
    again = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "b" / "frames" / "0000.png")))
    assert np.array_equal(frame, again)


def test_simulate_errors(tmp_path, capsys):
    assert main(["simulate", "--out", str(tmp_path), "--ct", str(tmp_path / "ct.nii.gz")]) == 2
    assert "pass both --ct and --labels" in capsys.readouterr().err


def test_a_bone_outside_a_narrow_field_is_written_without_a_crash(tmp_path):
    """A zoomed detector that sees the femoral condyles only: bones outside its field get empty masks
    and the label image holds only the ids of bones in view (the writer once sized its id table by
    the bones in view and crashed)."""
    from FluoroRegistrationLib.phantom import make_knee_phantom, write_phantom
    from FluoroRegistrationLib.simulate.writer import simulate_folder

    ph = make_knee_phantom(spacing_mm=3.0, flexion_deg=0.0, seed=0)
    paths = write_phantom(ph, tmp_path / "ph")
    simulate_folder(tmp_path / "sim", paths["ct"], paths["labels"], paths["labels_json"], frames=1, seed=0,
                    realism="low", camera=Camera(1000.0, 32, 32, 0.5, 0.5), flexion_range=(20.0, 30.0))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "sim" / "masks" / "0000_labels.png")))
    in_view = {b for b in ph.label_names
               if sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "sim" / "masks" / f"0000_{b}.png"))).any()}
    assert in_view and in_view != set(ph.label_names)  # some bones are out of this 16 mm field
    assert set(np.unique(labels)) - {0} <= {ph.label_names[b] for b in in_view}


@pytest.mark.parametrize("sequence", ["squat", "step-up"])
def test_activity_sequences_have_screw_home_and_roll_back(sequence):
    """Squat and step-up: flexion within the range (a squat holds its bottom, a step-up extends),
    internal rotation growing with flexion, and the tibia rolled anterior under the femur by the
    roll-back, read back from the poses in the volume frame."""
    import math

    from FluoroRegistrationLib.simulate.scene import (ROLLBACK_MM_PER_90_DEG, knee_relative_poses,
                                                      sample_knee_states, screw_home_deg)

    states = sample_knee_states(60, torch.Generator().manual_seed(0), sequence, (5.0, 95.0))
    flex = np.array([s.flexion_deg for s in states])
    assert flex.min() >= 5.0 - 1e-9 and flex.max() <= 95.0 + 1e-9
    if sequence == "squat":
        assert flex[0] == pytest.approx(5.0) and flex[-1] == pytest.approx(5.0) and (flex > 94.0).sum() >= 8
    else:
        assert flex[0] == pytest.approx(95.0) and flex[-1] == pytest.approx(5.0) and np.all(np.diff(flex) <= 1e-9)
    rot = np.array([s.rotation_deg for s in states])
    assert np.all(np.diff(rot)[np.diff(flex) > 0] > 0)  # turns internally as it flexes
    assert float(screw_home_deg(90.0)) == pytest.approx(8.0) and float(screw_home_deg(30.0)) > 0.8 * 8.0
    centre = np.zeros(3)
    k = int(np.argmax(flex))
    rel = knee_relative_poses(centre, flex[k], 0.0, 0.0, 0.0, states[k].rollback_mm)["tibia"]
    plain = knee_relative_poses(centre, flex[k], 0.0, 0.0, 0.0, 0.0)["tibia"]
    assert float(rel[1, 3] - plain[1, 3]) == pytest.approx(-ROLLBACK_MM_PER_90_DEG * flex[k] / 90.0)  # LPS -y: anterior
    assert math.isclose(states[k].rollback_mm, ROLLBACK_MM_PER_90_DEG * flex[k] / 90.0)
