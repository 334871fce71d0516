"""Tests of the procedural knee CT phantom (FluoroRegistrationLib.phantom). Fast: 2 mm voxels."""
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from FluoroRegistrationLib.phantom import LABELS, Phantom, make_knee_phantom, write_phantom

SP = 2.0
BIG = (160.0, 240.0, 240.0)   # room for the flexed lower leg around the knee


@pytest.fixture(scope="module")
def ph0():
    return make_knee_phantom(spacing_mm=SP, flexion_deg=0.0, seed=0, size_mm=BIG)


@pytest.fixture(scope="module")
def ph60():
    return make_knee_phantom(spacing_mm=SP, flexion_deg=60.0, seed=0, size_mm=BIG)


def _points(ph, mask):
    """LPS mm coordinates (N, 3) of the voxel centres in a (Z, Y, X) mask."""
    k, j, i = np.nonzero(mask)
    return np.asarray(ph.origin_mm) + np.stack([i, j, k], 1) * np.asarray(ph.spacing_mm)


def _centroid(ph, lid):
    return _points(ph, ph.labels == lid).mean(0)


def _rot_x(deg):
    a = np.deg2rad(deg)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def test_metadata_and_grid():
    ph = make_knee_phantom(spacing_mm=(1.5, 2.0, 2.5), size_mm=(120.0, 100.0, 150.0))
    assert isinstance(ph, Phantom)
    assert ph.hu.shape == (60, 50, 80) and ph.labels.shape == ph.hu.shape
    assert ph.hu.dtype == np.int16 and ph.labels.dtype == np.uint8
    assert ph.spacing_mm == (1.5, 2.0, 2.5)
    n = np.array(ph.hu.shape[::-1])
    # the grid is centred on LPS (0, 0, 0)
    np.testing.assert_allclose(np.asarray(ph.origin_mm) + (n - 1) / 2 * np.asarray(ph.spacing_mm),
                               0, atol=1e-9)
    assert ph.label_names == LABELS == {"femur": 1, "tibia": 2, "patella": 3, "fibula": 4}
    assert ph.flexion_axis == (1.0, 0.0, 0.0) and len(ph.knee_centre_mm) == 3
    with pytest.raises(ValueError):
        make_knee_phantom(spacing_mm=SP, side="middle")


def test_labels_present_disjoint_connected(ph0):
    assert set(np.unique(ph0.labels)) == {0, 1, 2, 3, 4}
    vol = {}
    for name, lid in LABELS.items():
        m = ph0.labels == lid
        _, ncomp = ndimage.label(m)
        assert ncomp == 1, name
        vol[name] = m.sum() * np.prod(ph0.spacing_mm) / 1000.0   # cm^3
    assert 12 < vol["patella"] < 35
    assert 8 < vol["fibula"] < 40
    for big in ("femur", "tibia"):
        assert vol[big] > 120 and vol[big] > 4 * max(vol["patella"], vol["fibula"])
    # a joint space separates femur and tibia: no femur voxel touches a tibia voxel
    assert not (ndimage.binary_dilation(ph0.labels == 1) & (ph0.labels == 2)).any()


def test_hu_materials(ph0):
    hu, lab = ph0.hu, ph0.labels
    # air: exactly -1000 outside the leg (the volume's corners), noise-free
    assert (hu[[0, 0, -1, -1], [0, -1, 0, -1], [0, -1, 0, -1]] == -1000).all()
    assert ((hu < -500) == (hu == -1000)).all() and (hu == -1000).mean() > 0.2
    bone = lab > 0
    # each bone's outer layer (voxels with a non-bone 6-neighbour) is cortical, 1200-1800 HU
    for lid in LABELS.values():
        m = lab == lid
        surf = m & ~ndimage.binary_erosion(m, border_value=1)
        assert ((hu[surf] >= 1200) & (hu[surf] <= 1800)).all()
    # bone voxels are cortical, trabecular (150-400) or marrow (about 30 HU)
    v = hu[bone]
    ok = ((v >= 1200) & (v <= 1800)) | ((v >= 150) & (v <= 400)) | ((v >= -80) & (v <= 140))
    assert ok.all()
    assert ((v >= 1200) & (v <= 1800)).mean() > 0.15 and ((v >= 150) & (v <= 400)).mean() > 0.3
    # the distal femur's interior is textured trabecular bone
    fem = lab == 1
    inner = ndimage.distance_transform_edt(fem, sampling=ph0.spacing_mm[::-1]) > 5.0
    z = ph0.origin_mm[2] + ph0.spacing_mm[2] * np.arange(hu.shape[0])
    inner &= (z < ph0.knee_centre_mm[2] + 15.0)[:, None, None]
    t = hu[inner].astype(float)
    assert inner.sum() > 500
    assert t.min() >= 150 and t.max() <= 400 and t.std() > 40
    # marrow in the femoral shaft
    shaft = fem & (z > ph0.knee_centre_mm[2] + 90.0)[:, None, None]
    assert np.median(hu[shaft & (hu < 150)]) == pytest.approx(30, abs=15)
    # soft tissue: muscle (~50 HU) and fat (~-100 HU) both present, with noise
    soft = hu[(lab == 0) & (hu > -1000)].astype(float)
    muscle, fat = soft[(soft > 0) & (soft < 100)], soft[(soft > -170) & (soft < -40)]
    assert len(muscle) > 0.3 * len(soft) and len(fat) > 0.1 * len(soft)
    assert np.median(muscle) == pytest.approx(50, abs=10)
    assert np.median(fat) == pytest.approx(-100, abs=10)
    assert 8 < muscle.std() < 25


@pytest.mark.parametrize("side", ["right", "left"])
def test_anatomy(side):
    ph = make_knee_phantom(spacing_mm=SP, side=side)
    c = {name: _centroid(ph, lid) for name, lid in LABELS.items()}
    cz = ph.knee_centre_mm[2]
    distal_femur = _points(ph, ph.labels == 1)
    distal_femur = distal_femur[distal_femur[:, 2] < cz + 20]
    assert c["patella"][1] < distal_femur[:, 1].min() + 5           # patella anterior (-y)
    assert c["patella"][1] < distal_femur.mean(0)[1] - 30
    assert c["femur"][2] > cz > c["tibia"][2]                         # femur superior
    lateral = -1 if side == "right" else 1                            # right leg: lateral = -x
    assert lateral * (c["fibula"][0] - c["tibia"][0]) > 25           # fibula lateral
    assert c["fibula"][1] > c["tibia"][1] + 8                         # ... and posterior
    # fibular head below the joint line; medio-lateral width of the distal femur ~75-85 mm
    assert _points(ph, ph.labels == 4)[:, 2].max() < cz - 30
    x = distal_femur[:, 0]
    assert 72 <= x.max() - x.min() + SP <= 90
    # the joint line (between the bones) lies near the volume centre
    top_tibia = _points(ph, ph.labels == 2)[:, 2].max()
    assert abs(top_tibia) < 10


def test_flexion_rotates_tibia(ph0, ph60):
    c = np.asarray(ph0.knee_centre_mm)
    assert ph60.flexion_deg == 60.0 and ph60.knee_centre_mm == ph0.knee_centre_mm
    # compare the parts of the tibia within 90 mm of the knee centre (a rotation-invariant crop)
    p0 = _points(ph0, ph0.labels == 2)
    p60 = _points(ph60, ph60.labels == 2)
    c0 = p0[np.linalg.norm(p0 - c, axis=1) < 90].mean(0)
    c60 = p60[np.linalg.norm(p60 - c, axis=1) < 90].mean(0)
    expected = c + _rot_x(60.0) @ (c0 - c)
    assert np.linalg.norm(c60 - expected) < 1.5 * SP
    assert c60[1] > c0[1] + 20                                        # swung posteriorly (+y)
    # the femur does not move
    assert np.array_equal(ph0.labels == 1, ph60.labels == 1)
    assert np.array_equal(ph0.hu[ph0.labels == 1], ph60.hu[ph60.labels == 1])
    # the patella follows, still anterior of the femur's distal end
    fem = _points(ph60, ph60.labels == 1)
    pat0, pat60 = _centroid(ph0, 3), _centroid(ph60, 3)
    assert pat60[2] < pat0[2] - 10
    assert pat60[1] < fem[fem[:, 2] < c[2] + 20].mean(0)[1] - 20
    for lid in LABELS.values():
        assert ndimage.label(ph60.labels == lid)[1] == 1


def test_determinism_and_seed():
    kw = dict(spacing_mm=SP, size_mm=(120.0, 120.0, 120.0))
    a, b = make_knee_phantom(seed=3, **kw), make_knee_phantom(seed=3, **kw)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.labels, b.labels)
    c = make_knee_phantom(seed=4, **kw)
    assert np.array_equal(a.labels, c.labels)                         # geometry is seed-free
    trab = (a.labels > 0) & (a.hu >= 150) & (a.hu <= 400) & (c.hu >= 150) & (c.hu <= 400)
    assert trab.sum() > 1000
    r = np.corrcoef(a.hu[trab].astype(float), c.hu[trab].astype(float))[0, 1]
    assert abs(r) < 0.5
    assert not np.array_equal(a.hu, c.hu)


def test_write_phantom_roundtrip(tmp_path):
    ph = make_knee_phantom(spacing_mm=(2.0, 1.5, 2.5), size_mm=(100.0, 90.0, 120.0))
    out = tmp_path / "nested" / "phantom"
    paths = write_phantom(ph, out)
    assert set(paths) == {"ct", "labels", "labels_json"}
    for key, arr in (("ct", ph.hu), ("labels", ph.labels)):
        img = sitk.ReadImage(str(paths[key]))
        np.testing.assert_allclose(img.GetSpacing(), ph.spacing_mm, atol=1e-5)
        np.testing.assert_allclose(img.GetOrigin(), ph.origin_mm, atol=1e-4)
        np.testing.assert_allclose(img.GetDirection(), np.eye(3).ravel(), atol=1e-6)
        back = sitk.GetArrayFromImage(img)
        assert back.shape == arr.shape and np.array_equal(back, arr)
        # physical point of voxel (i, j, k) = origin + spacing * index (identity direction)
        pt = img.TransformIndexToPhysicalPoint((3, 4, 5))
        np.testing.assert_allclose(pt, np.asarray(ph.origin_mm) + np.asarray(ph.spacing_mm)
                                   * (3, 4, 5), atol=1e-4)
    with open(paths["labels_json"]) as f:
        assert json.load(f) == {"femur": 1, "tibia": 2, "patella": 3, "fibula": 4}
