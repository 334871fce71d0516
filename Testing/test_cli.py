"""The fluororeg command line: phantom, render, demo, and one-line errors for bad input."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from FluoroRegistrationLib.cli import main
from FluoroRegistrationLib.files import read_poses, write_poses
from FluoroRegistrationLib.geometry import Camera, lateral_view


@pytest.fixture(scope="module")
def knee(tmp_path_factory):
    out = tmp_path_factory.mktemp("knee")
    assert main(["phantom", "--out", str(out), "--spacing", "2", "--flexion", "20"]) == 0
    names = json.loads((out / "labels.json").read_text())
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nii.gz")))
    ct = sitk.ReadImage(str(out / "ct.nii.gz"))
    idx = np.argwhere(labels == names["femur"]).mean(0)[::-1]  # (i, j, k)
    centre = ct.TransformContinuousIndexToPhysicalPoint(idx.tolist())
    pose = lateral_view(centre, 700.0)
    write_poses(out / "poses.json", {"femur": pose, "tibia": pose})
    write_poses(out / "one.json", {"volume": pose})
    Camera(1000.0, 64, 64, 2.0, 2.0).to_json(out / "calib.json")
    return out


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_phantom_files(knee):
    assert json.loads((knee / "labels.json").read_text()) == {"femur": 1, "tibia": 2, "patella": 3, "fibula": 4}
    img = sitk.ReadImage(str(knee / "ct.nii.gz"))
    assert img.GetSpacing() == pytest.approx((2.0, 2.0, 2.0))


def test_render_bones_png_and_npy(knee, capsys):
    code, out, _ = run(capsys, "render", "--ct", knee / "ct.nii.gz", "--labels", knee / "labels.nii.gz",
                       "--calib", knee / "calib.json", "--pose", knee / "poses.json", "--bones", "femur,tibia",
                       "--out", knee / "bones.npy")
    assert code == 0 and "DRR 64x64" in out
    bones = np.load(knee / "bones.npy")
    assert bones.shape == (64, 64) and bones.max() > 0.5  # > 25 mm of bone at mu ~0.03 somewhere
    code, _, _ = run(capsys, "render", "--ct", knee / "ct.nii.gz", "--labels", knee / "labels.nii.gz",
                     "--calib", knee / "calib.json", "--pose", knee / "poses.json", "--bones", "femur",
                     "--out", knee / "femur.png")
    assert code == 0
    png = sitk.GetArrayFromImage(sitk.ReadImage(str(knee / "femur.png")))
    assert png.dtype == np.uint16 and png.max() == 65535
    scale = json.loads((knee / "femur.json").read_text())["scale"]
    code, _, _ = run(capsys, "render", "--ct", knee / "ct.nii.gz", "--labels", knee / "labels.nii.gz",
                     "--calib", knee / "calib.json", "--pose", knee / "poses.json", "--bones", "femur",
                     "--out", knee / "femur.npy", "--method", "exact")
    exact = np.load(knee / "femur.npy")
    assert np.abs(png / scale - exact).max() < 0.02 * exact.max()  # fast PNG vs exact float


def test_render_whole_ct(knee, capsys):
    code, _, _ = run(capsys, "render", "--ct", knee / "ct.nii.gz", "--calib", knee / "calib.json",
                     "--pose", knee / "one.json", "--out", knee / "knee.npy")
    assert code == 0
    knee_img = np.load(knee / "knee.npy")
    assert knee_img.min() > 0 or (knee_img > 0).mean() > 0.5  # soft tissue everywhere in the field


@pytest.mark.parametrize("change, message", [
    ({"--calib": "missing.json"}, "calibration file not found"),
    ({"--ct": "missing.nii.gz"}, "CT not found"),
    ({"--bones": "femur,patella"}, "no pose for patella"),
    ({"--bones": "femur,kneecap"}, "no pose for kneecap"),
])
def test_render_errors_are_one_line(knee, capsys, change, message):
    args = {"--ct": knee / "ct.nii.gz", "--labels": knee / "labels.nii.gz", "--calib": knee / "calib.json",
            "--pose": knee / "poses.json", "--bones": "femur", "--out": knee / "x.npy"}
    args.update({k: (knee / v if k != "--bones" else v) for k, v in change.items()})
    code, _, err = run(capsys, "render", *[x for kv in args.items() for x in kv])
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_bone_missing_from_labels_is_one_line(knee, capsys, tmp_path):
    pose = read_poses(knee / "poses.json")["femur"]
    write_poses(tmp_path / "p.json", {"femur": pose, "meniscus": pose})
    code, _, err = run(capsys, "render", "--ct", knee / "ct.nii.gz", "--labels", knee / "labels.nii.gz",
                       "--label-names", "femur=1,meniscus=9", "--calib", knee / "calib.json",
                       "--pose", tmp_path / "p.json", "--bones", "femur,meniscus", "--out", tmp_path / "x.npy")
    assert code == 2 and "label meniscus=9 is not in labelmap" in err


def test_pose_behind_source_is_one_line(knee, capsys, tmp_path):
    pose = read_poses(knee / "poses.json")["femur"].clone()
    pose[2, 3] -= 1000.0
    write_poses(tmp_path / "p.json", {"femur": pose})
    code, _, err = run(capsys, "render", "--ct", knee / "ct.nii.gz", "--labels", knee / "labels.nii.gz",
                       "--calib", knee / "calib.json", "--pose", tmp_path / "p.json", "--bones", "femur",
                       "--out", tmp_path / "x.npy")
    assert code == 2 and "behind or at the X-ray source" in err


def test_non_rigid_pose_is_rejected(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"femur": {"camera_from_volume": [[2, 0, 0, 0], [0, 1, 0, 0],
                                                                                [0, 0, 1, 800], [0, 0, 0, 1]]}}))
    from FluoroRegistrationLib import FluoroRegError

    with pytest.raises(FluoroRegError, match="not a rigid transform"):
        read_poses(tmp_path / "p.json")


def test_demo_writes_pictures(tmp_path, capsys):
    from FluoroRegistrationLib.demo import run_demo

    timings = run_demo(tmp_path, spacing_mm=2.0)
    for name in ("demo.png", "drr_knee.png", "drr_femur.png", "mask_tibia.png", "calib.json", "poses.json"):
        assert (tmp_path / name).is_file(), name
    assert timings["femur_fast_vs_exact_rel_l2"] < 0.01
    poses = read_poses(tmp_path / "poses.json")
    assert set(poses) == {"volume", "femur", "tibia", "patella", "fibula"}


@pytest.mark.slow
def test_registration_demo_table_and_overlays(tmp_path, capsys):
    from FluoroRegistrationLib.demo_register import run_register_demo

    rows = run_register_demo(tmp_path)
    assert {(r["bone"], r["condition"]) for r in rows} == {(b, c) for b in ("femur", "tibia")
                                                           for c in ("masks", "no masks")}
    femur = next(r for r in rows if r["bone"] == "femur" and r["condition"] == "masks")
    assert femur["in_plane_mm"] < 1.0 and femur["mtre_mm"] < femur["start_mtre"]
    assert (tmp_path / "overlay_masks.png").is_file() and "| femur | masks |" in capsys.readouterr().out
