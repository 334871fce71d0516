"""Clutter in simulated frames: exact chords through solids, the other leg, ground truth untouched."""

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from FluoroRegistrationLib.cli import main
from FluoroRegistrationLib.errors import FluoroRegError
from FluoroRegistrationLib.evaluate.config import experiment_from_dict
from FluoroRegistrationLib.geometry import Camera, lateral_view, make_pose, rotation_from_rotvec
from FluoroRegistrationLib.simulate.clutter import (
    ClutterModel, ClutterScene, Solid, chord_lengths, get_clutter, sample_clutter, solid_integrals)
from FluoroRegistrationLib.simulate.frames import FrameSimulator
from FluoroRegistrationLib.simulate.materials import mass_attenuation
from FluoroRegistrationLib.simulate.physics import MATERIAL_ORDER
from FluoroRegistrationLib.simulate.scene import knee_poses

F64 = torch.float64
CAM = Camera(1000.0, 12, 12, 12.0, 12.0)


def _inside(solid: Solid, points: torch.Tensor) -> torch.Tensor:
    """Brute-force membership of camera-frame points (..., 3) in ``solid``."""
    R, t = solid.camera_from_solid[:3, :3], solid.camera_from_solid[:3, 3]
    p = (points - t) @ R  # into the solid's frame
    s = solid.size
    if solid.kind == "box":
        return (p[..., 0].abs() <= s[0]) & (p[..., 1].abs() <= s[1]) & (p[..., 2].abs() <= s[2])
    return (p[..., 0] ** 2 + p[..., 1] ** 2 <= s[0] ** 2) & (p[..., 2].abs() <= s[2])


@pytest.mark.parametrize("kind,size", [("box", (9.0, 4.0, 30.0)), ("cylinder", (6.0, 0.0, 40.0))])
def test_chords_match_dense_sampling_along_each_ray(kind, size):
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        R = rotation_from_rotvec(torch.randn(3, generator=g, dtype=F64))
        centre = torch.tensor([5.0, -8.0, 500.0], dtype=F64) + 10 * torch.randn(3, generator=g, dtype=F64)
        solid = Solid(kind, size, make_pose(R, centre), "titanium", 4.54)
        chord = chord_lengths(solid, CAM)
        _, det = CAM.rays(F64)
        d = det / det.norm(dim=-1, keepdim=True)
        step = 0.01
        t = torch.arange(400.0, 600.0, step, dtype=F64)
        inside = _inside(solid, d[..., None, :] * t[:, None])  # (H, W, T)
        reference = inside.sum(-1).double() * step
        assert (chord - reference).abs().max() < 2 * step, float((chord - reference).abs().max())
        assert chord.max() > 5.0  # the solid is in view


def test_chords_on_the_principal_ray_are_the_solids_depth():
    cam = Camera(1000.0, 5, 5, 1.0, 1.0)  # pixel (2, 2) lies on the principal ray
    box = Solid("box", (50.0, 50.0, 7.5), make_pose(torch.eye(3, dtype=F64), torch.tensor([0.0, 0.0, 600.0])),
                "adipose", 1.0)
    assert chord_lengths(box, cam)[2, 2] == pytest.approx(15.0, abs=1e-9)
    across = rotation_from_rotvec(torch.tensor([0.0, math.pi / 2, 0.0], dtype=F64))  # axis along camera x
    rod = Solid("cylinder", (3.0, 0.0, 40.0), make_pose(across, torch.tensor([0.0, 0.0, 600.0])), "titanium", 4.54)
    assert chord_lengths(rod, cam)[2, 2] == pytest.approx(6.0, abs=1e-9)
    beyond = Solid("box", (5.0, 5.0, 5.0), make_pose(torch.eye(3, dtype=F64), torch.tensor([0.0, 0.0, 1200.0])),
                   "adipose", 1.0)
    assert chord_lengths(beyond, cam).max() == 0  # past the detector: not crossed
    eye = torch.eye(3, dtype=F64)
    straddle = Solid("box", (50.0, 50.0, 20.0), make_pose(eye, torch.tensor([0.0, 0.0, 1000.0])), "adipose", 1.0)
    assert chord_lengths(straddle, cam)[2, 2] == pytest.approx(20.0, abs=1e-9)  # clipped at the detector
    at_source = Solid("box", (50.0, 50.0, 10.0), make_pose(eye, torch.tensor([0.0, 0.0, 0.0])), "adipose", 1.0)
    assert chord_lengths(at_source, cam)[2, 2] == pytest.approx(10.0, abs=1e-9)  # clipped at the source
    along = Solid("cylinder", (0.6, 0.0, 30.0), make_pose(eye, torch.tensor([0.0, 0.0, 500.0])), "titanium", 4.54)
    chords = chord_lengths(along, cam)  # a wire along the principal ray: 60 mm on it, nothing 1 px off
    assert chords[2, 2] == pytest.approx(60.0, abs=1e-9) and chords[2, 4] == 0 and chords[0, 2] == 0


def test_solids_add_density_times_chord_and_leave_the_masks(knee):
    ph, ct, labels = knee
    cam = Camera(1000.0, 40, 40, 5.0, 5.0)
    T = lateral_view(ph.knee_centre_mm, 700.0)
    poses = knee_poses(ph.knee_centre_mm, T, 30.0, bones=list(ph.label_names))
    rod = Solid("cylinder", (2.5, 0.0, 60.0), make_pose(rotation_from_rotvec(torch.tensor([0.3, 1.2, 0.0],
                dtype=F64)), torch.tensor([10.0, 5.0, 690.0], dtype=F64)), "titanium", 4.54)
    scene = ClutterScene(solids=[rod])
    chord = chord_lengths(rod, cam)
    sim = FrameSimulator(ct, labels, ph.label_names, "low", render_factor=1)
    clean, cluttered = sim.line_integrals(cam, poses), sim.line_integrals(cam, poses, scene)
    ti = MATERIAL_ORDER.index("titanium")
    diff = cluttered["areal"] - clean["areal"]
    assert torch.allclose(diff[0, ti].double(), 4.54 * chord, atol=1e-4)
    assert diff[0, [m for m in range(len(MATERIAL_ORDER)) if m != ti]].abs().max() == 0
    for bone in clean["thickness"]:
        assert torch.equal(clean["thickness"][bone], cluttered["thickness"][bone])
    mono = solid_integrals([rod], cam, ("mu",))
    mu = float(mass_attenuation("titanium", np.array([70.0]))[0]) * 4.54 / 10.0
    assert torch.allclose(mono[0, 0], mu * chord)


def test_other_leg_is_nearer_the_source_and_ahead_or_behind(knee):
    ph, ct, labels = knee
    model = ClutterModel(other_leg=1.0, implants=(0, 0), table=0.0)
    T = lateral_view(ph.knee_centre_mm, 700.0)
    c = torch.as_tensor(ph.knee_centre_mm, dtype=F64)
    knee_cam = T[:3, :3] @ c + T[:3, 3]
    bones = list(ph.label_names)
    shifts = []
    for seed in range(8):
        scene = sample_clutter(model, ph.knee_centre_mm, T, Camera(1000.0, 64, 64, 4.0, 4.0),
                               torch.Generator().manual_seed(seed), bones=bones)
        assert set(scene.other_leg) == set(bones) and not scene.solids
        femur = scene.other_leg["femur"]
        other = femur[:3, :3] @ c + femur[:3, 3]
        # the other femur's own view perturbation moves it by N(0, 10 mm) in plane, N(0, 20 mm) in depth
        assert 150 - 80 < float(knee_cam[2] - other[2]) < 230 + 80
        # across the leg (camera x) by 50-130 mm either way, plus that N(0, 10 mm) perturbation
        shifts.append(float(other[0] - knee_cam[0]))
        assert 50 - 40 < abs(shifts[-1]) < 130 + 40
        tibia_motion = torch.linalg.solve(femur, scene.other_leg["tibia"])  # a knee motion about the centre
        assert torch.allclose(tibia_motion[:3, :3] @ c + tibia_motion[:3, 3], c, atol=1e-9)
    assert min(shifts) < 0 < max(shifts)  # ahead and behind
    sim = FrameSimulator(ct, labels, ph.label_names, "low", render_factor=1)
    cam = Camera(1000.0, 40, 40, 5.0, 5.0)
    poses = knee_poses(ph.knee_centre_mm, T, 30.0, bones=bones)
    scene = sample_clutter(model, ph.knee_centre_mm, T, cam, torch.Generator().manual_seed(0), bones=bones)
    clean, cluttered = sim.line_integrals(cam, poses), sim.line_integrals(cam, poses, scene)
    added = cluttered["areal"] - clean["areal"]
    assert added.min() > -1e-4 and added.sum() > 0.1 * clean["areal"].sum()  # a second leg's worth of tissue
    assert all(torch.equal(clean["thickness"][b], cluttered["thickness"][b]) for b in bones)
    coarse = FrameSimulator(ct, labels, ph.label_names, "low", render_factor=2)  # resampled to the frame
    plain = coarse.line_integrals(cam, poses)
    assert torch.equal(coarse.line_integrals(cam, poses, ClutterScene())["areal"], plain["areal"])
    assert coarse.line_integrals(cam, poses, scene)["areal"].sum() > plain["areal"].sum()
    with pytest.raises(FluoroRegError, match="the other leg has no pose for patella"):
        sim.line_integrals(cam, poses, ClutterScene(other_leg={b: T for b in bones if b != "patella"}))


def test_no_clutter_draws_nothing():
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    scene = sample_clutter(None, [0.0, 0.0, 0.0], torch.eye(4, dtype=F64), CAM, g)
    assert scene.other_leg is None and scene.solids == [] and torch.equal(g.get_state(), state)


def test_clutter_errors():
    with pytest.raises(FluoroRegError, match="unknown clutter 'lots'; choose one of none, mixed, heavy"):
        get_clutter("lots")
    with pytest.raises(FluoroRegError, match="clutter must be a preset name"):
        get_clutter({"other_leg": 1.0})
    with pytest.raises(FluoroRegError, match="other_leg_depth_mm must be"):
        ClutterModel(other_leg_depth_mm=(200.0, 100.0)).check()
    with pytest.raises(FluoroRegError, match="implants must be whole numbers"):
        ClutterModel(implants=(0, 1.5)).check()
    with pytest.raises(FluoroRegError, match="other_leg is a probability"):
        ClutterModel(other_leg=1.5).check()
    with pytest.raises(FluoroRegError, match="implants must be"):
        ClutterModel(implants=(3, 1)).check()
    base = {"name": "x", "bones": ["femur"], "frames": {"simulate": {"count": 1, "clutter": "lots"}}}
    with pytest.raises(FluoroRegError, match="unknown clutter 'lots'"):
        experiment_from_dict(base)
    base["frames"]["simulate"] = {"count": 1, "clutterr": "heavy"}
    with pytest.raises(FluoroRegError, match="unknown key.*clutterr.*frames.simulate"):
        experiment_from_dict(base)


def test_cluttered_frames_keep_the_ground_truth_of_the_same_seed(tmp_path):
    common = ["--frames", "2", "--size", "48", "--realism", "medium", "--seed", "4"]
    assert main(["simulate", "--out", str(tmp_path / "clean")] + common) == 0
    assert main(["simulate", "--out", str(tmp_path / "clutter"), "--clutter", "heavy"] + common) == 0
    a, b = tmp_path / "clean", tmp_path / "clutter"
    assert json.loads((a / "poses.json").read_text()) == json.loads((b / "poses.json").read_text())
    assert (a / "calib_true.json").read_text() == (b / "calib_true.json").read_text()

    def png(folder, name):
        return sitk.GetArrayFromImage(sitk.ReadImage(str(folder / name)))

    for name in ("masks/0000_femur.png", "masks/0001_tibia.png"):
        assert np.array_equal(png(a, name), png(b, name))
    assert not np.array_equal(png(a, "frames/0000.png"), png(b, "frames/0000.png"))
    record = json.loads((b / "frames.json").read_text())["0000"]["clutter"]
    assert record["other_leg_camera_from_volume"] is not None and len(record["solids"]) >= 2  # metal + table
    assert json.loads((b / "simulation.json").read_text())["clutter"]["other_leg"] == 1.0
