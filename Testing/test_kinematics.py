"""Grood-Suntay knee kinematics against known relative poses and an independent formulation (SciPy's
intrinsic X-Y'-Z'' Cardan angles), left vs right, translations, landmarks on the phantom."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from FluoroRegistrationLib import FluoroRegError
from FluoroRegistrationLib.kinematics import (KneeAngles, condyle_lowest_points, femur_frame, grood_suntay,
                                              landmarks_from_labels, lowpass, tibia_frame)


def _pose(R=np.eye(3), t=(0, 0, 0)):
    p = np.eye(4)
    p[:3, :3], p[:3, 3] = R, t
    return p


def _knee(flexion=0.0, adduction=0.0, internal=0.0, side="right", femur_world=None, tibia_offset=(0, 0, -20.0)):
    """Femur and tibia anatomical frames in a world frame, tibia relative to femur by the clinical
    angles built from elementary rotations (flexion: about -X; adduction: right knee about +Y'; internal:
    right knee about +Z''), tibia origin at ``tibia_offset`` in the femur frame."""
    m = 1.0 if side == "right" else -1.0
    R = Rotation.from_euler("XYZ", [-flexion, m * adduction, m * internal], degrees=True).as_matrix()
    F = femur_world if femur_world is not None else _pose()
    return F, F @ _pose(R, tibia_offset)


@pytest.mark.parametrize("side", ["right", "left"])
def test_pure_flexion_reads_flexion_only(side):
    F, T = _knee(30.0, side=side)
    k = grood_suntay(F, T, side)
    assert k.flexion_deg == pytest.approx(30.0) and k.adduction_deg == pytest.approx(0, abs=1e-9)
    assert k.internal_rotation_deg == pytest.approx(0, abs=1e-9)
    # the tibia's distal end went posterior (-Y): what flexion is
    distal = T[:3, :3] @ np.array([0, 0, -1.0])
    assert distal[1] < 0


def test_composed_angles_and_an_arbitrary_world_frame():
    rng = np.random.default_rng(1)
    for _ in range(30):
        angles = rng.uniform([-10, -15, -30], [140, 15, 30])
        world = _pose(Rotation.random(random_state=rng.integers(1e9)).as_matrix(), rng.normal(size=3) * 100)
        for side in ("right", "left"):
            F, T = _knee(*angles, side=side, femur_world=world)
            k = grood_suntay(F, T, side)
            assert np.allclose([k.flexion_deg, k.adduction_deg, k.internal_rotation_deg], angles, atol=1e-7)


def test_against_scipy_cardan_angles():
    """Independent formulation: the tibia in the femur frame decomposed by SciPy (intrinsic XYZ)."""
    rng = np.random.default_rng(2)
    for _ in range(30):
        F = _pose(Rotation.random(random_state=rng.integers(1e9)).as_matrix(), rng.normal(size=3))
        T = _pose(Rotation.random(random_state=rng.integers(1e9)).as_matrix(), rng.normal(size=3))
        x, y, z = Rotation.from_matrix(F[:3, :3].T @ T[:3, :3]).as_euler("XYZ", degrees=True)
        if abs(y) > 80:
            continue  # near the gimbal lock the two differ by branch
        k = grood_suntay(F, T, "right")
        assert np.allclose([k.flexion_deg, k.adduction_deg, k.internal_rotation_deg], [-x, y, z], atol=1e-7)


def test_left_knee_mirrors_the_right():
    """A left knee mirrored through the sagittal plane reads the same clinical numbers."""
    mirror = np.diag([-1.0, 1, 1, 1])
    F, T = _knee(35.0, 4.0, 10.0, "right", tibia_offset=(3.0, 2.0, -25.0))
    right = grood_suntay(F, T, "right")
    # mirror the bones' geometry, keep X pointing to the (new) patient's right: conjugate by the mirror
    left = grood_suntay(mirror @ F @ mirror, mirror @ T @ mirror, "left")
    assert np.allclose(right.as_tuple(), left.as_tuple(), atol=1e-9)
    assert right.adduction_deg == pytest.approx(4.0) and right.internal_rotation_deg == pytest.approx(10.0)


def test_translations_in_the_joint_axes():
    F, T = _knee(0.0, tibia_offset=(2.0, 5.0, -30.0))
    k = grood_suntay(F, T, "right")
    assert (k.lateral_mm, k.anterior_mm, k.distraction_mm) == pytest.approx((2.0, 5.0, 30.0))
    # with flexion, q2 follows the floating axis: a tibia offset along its own Y is all anterior
    F, T = _knee(60.0, tibia_offset=(0, 0, 0))
    T[:3, 3] = T[:3, :3] @ np.array([0, 4.0, -25.0])
    k = grood_suntay(F, T, "right")
    assert (k.lateral_mm, k.anterior_mm, k.distraction_mm) == pytest.approx((0.0, 4.0, 25.0))
    # adduction: e1 and e3 are not orthogonal; q is solved in the joint axes, not projected
    F, T = _knee(0.0, 10.0, tibia_offset=(0, 0, 0))
    h = 3.0 * F[:3, 0] + 7.0 * T[:3, 2]
    T[:3, 3] = h
    k = grood_suntay(F, T, "right")
    assert (k.lateral_mm, k.anterior_mm, k.distraction_mm) == pytest.approx((3.0, 0.0, -7.0))


def test_frames_from_landmarks_and_errors():
    pts = {"medial_epicondyle": [40.0, 0, 0], "lateral_epicondyle": [-40.0, 0, 0], "shaft_proximal": [0, 0, 200.0]}
    F = femur_frame(pts, "right")  # LPS: the patient's right is -x
    assert np.allclose(F[:3, 0], [-1, 0, 0]) and np.allclose(F[:3, 2], [0, 0, 1]) and np.allclose(F[:3, 1], [0, -1, 0])
    assert np.allclose(femur_frame(pts, "left")[:3, 0], [1, 0, 0])
    T = tibia_frame({"medial_plateau": [30.0, 0, -20], "lateral_plateau": [-30.0, 0, -20], "ankle_centre": [0, 0, -350]},
                    "right")
    assert np.allclose(T[:3, 3], [0, 0, -20]) and np.allclose(T[:3, 2], [0, 0, 1])
    with pytest.raises(FluoroRegError, match="femur.shaft_proximal missing"):
        femur_frame({k: v for k, v in pts.items() if k != "shaft_proximal"}, "right")
    with pytest.raises(FluoroRegError, match="points coincide"):
        femur_frame({**pts, "shaft_proximal": [0, 0, 0]}, "right")
    with pytest.raises(FluoroRegError, match="give right or left"):
        grood_suntay(F, T, "up")


@pytest.mark.parametrize("side", ["right", "left"])
def test_phantom_landmarks_give_its_flexion(side):
    """The phantom's tibia turns by its flexion about its flexion axis: the default landmarks (from
    the extended knee's labels) with the phantom's own poses read that flexion and ~0 elsewhere."""
    from FluoroRegistrationLib.phantom import make_knee_phantom
    from FluoroRegistrationLib.volume import ImageVolume

    ph = make_knee_phantom(spacing_mm=2.0, flexion_deg=0.0, seed=0, side=side)
    labels = ImageVolume.from_spacing(ph.labels, ph.spacing_mm, ph.origin_mm)
    marks = landmarks_from_labels(labels, ph.label_names, side)
    Fa, Ta = femur_frame(marks["femur"], side), tibia_frame(marks["tibia"], side)
    c = np.asarray(ph.knee_centre_mm)
    assert abs(abs(Fa[0, 0]) - 1) < 1e-3 and abs(grood_suntay(Fa, Ta, side).flexion_deg) < 3.0
    for flexion in (0.0, 30.0, 75.0):  # the phantom flexes its tibia about LPS +x through the knee centre
        R = Rotation.from_euler("x", flexion, degrees=True).as_matrix()
        tibia_pose = _pose(R, c - R @ c)
        k = grood_suntay(Fa, tibia_pose @ Ta, side)
        # the landmarks' epicondylar axis lies within a degree or two of the phantom's flexion axis
        assert k.flexion_deg == pytest.approx(flexion + grood_suntay(Fa, Ta, side).flexion_deg, abs=0.1)
        assert abs(k.adduction_deg) < 3.0 and abs(k.internal_rotation_deg) < 3.0


def test_condyle_lowest_points_follow_a_slide():
    """A femur whose condyles are two spheres: sliding the femur 5 mm anterior moves both lowest points."""
    rng = np.random.default_rng(0)
    d = rng.normal(size=(4000, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    points = np.concatenate([d * 20 + [-22.0, 0, 20], d * 20 + [22.0, 0, 20]])  # X right: lateral +x (right knee)
    tibia_anatomy = _pose()
    a = condyle_lowest_points(points, _pose(), _pose(), tibia_anatomy, "right", band_mm=0.5)
    b = condyle_lowest_points(points, _pose(t=(0, 5.0, 0)), _pose(), tibia_anatomy, "right", band_mm=0.5)
    assert np.allclose(a, (0.0, 0.0), atol=1.0) and np.allclose(np.subtract(b, a), (5.0, 5.0), atol=1e-6)


def test_lowpass_keeps_a_slow_curve_and_removes_noise():
    t = np.arange(200) / 30.0
    slow = 40 * np.sin(2 * np.pi * 0.5 * t)
    noisy = slow + np.random.default_rng(0).normal(0, 2, size=t.shape)
    smooth = lowpass(noisy, 30.0, 2.0)  # keeps 2 of the 15 Hz of white noise: about sqrt(2/15) of it
    assert np.sqrt(np.mean((smooth - slow)[10:-10] ** 2)) < 1.0 < 1.5 < np.sqrt(np.mean((noisy - slow) ** 2))
    with pytest.raises(FluoroRegError, match="half the frame rate"):
        lowpass(noisy, 30.0, 20.0)
    assert KneeAngles.NAMES[0] == "flexion_deg"
