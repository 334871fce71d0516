"""The validation zoo's members against what they are made to be: grid, anatomy size, bone density,
noise and a cut field of view; and its table from hand-made rows."""

import numpy as np
import pytest

from FluoroRegistrationLib import FluoroRegError
from FluoroRegistrationLib.evaluate.zoo import (KNEE_Z_MM, ZooMember, ZooSettings, make_member, zoo_overview,
                                                zoo_summary, zoo_table)
from FluoroRegistrationLib.volume import SOFT_TISSUE_HU, load_ct, load_labels, read_label_names


def _load(folder):
    ct = load_ct(folder / "ct.nii.gz")
    return ct, load_labels(folder / "labels.nii.gz", ct), read_label_names(folder / "labels.json")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return _load(make_member(ZooMember("base", spacing_mm=(3.0, 3.0, 3.0)), tmp_path_factory.mktemp("zoo_base"),
                             phantom_spacing_mm=3.0)["full"])


def test_a_member_is_the_phantom_scaled_resampled_denser_and_cut(base, tmp_path):
    member = ZooMember("m", spacing_mm=(2.0, 2.0, 4.0), scale=1.2, density=1.5, fov_z_mm=90.0)
    paths = make_member(member, tmp_path, phantom_spacing_mm=3.0)
    ct0, lab0, names = base
    ct, lab, _ = _load(paths["full"])
    assert np.allclose(ct.spacing, (2.0, 2.0, 4.0))
    femur = names["femur"]
    volume = lambda labels, c: (labels.array == femur).sum() * np.prod(c.spacing)  # noqa: E731
    assert volume(lab, ct) / volume(lab0, ct0) == pytest.approx(1.2 ** 3, rel=0.12)
    cut, cut_lab, _ = _load(paths["phantom"])
    z = cut.volume_from_index[2, 3] + np.arange(cut.array.shape[0]) * cut.spacing[2]
    assert z.min() >= KNEE_Z_MM - 45 - 1e-6 and z.max() <= KNEE_Z_MM + 45 + 1e-6 and len(z) >= 22
    # the cut CT lies where the full one does: same voxels at the same world z
    first = int(round((z[0] - ct.volume_from_index[2, 3]) / ct.spacing[2]))
    assert np.array_equal(cut.array, ct.array[first:first + len(z)])


def test_density_scales_each_bone_voxel_s_excess_over_soft_tissue(base, tmp_path):
    ct0, lab0, _ = base
    ct, lab, _ = _load(make_member(ZooMember("d", spacing_mm=(3.0, 3.0, 3.0), density=1.5), tmp_path,
                                   phantom_spacing_mm=3.0)["full"])
    bone = lab0.array > 0
    assert np.array_equal(lab.array, lab0.array) and np.array_equal(ct.array[~bone], ct0.array[~bone])
    # int16 HU: the phantom's values were rounded once, the member's twice
    expected = SOFT_TISSUE_HU + (ct0.array[bone].astype(float) - SOFT_TISSUE_HU) * 1.5
    assert np.abs(ct.array[bone] - expected).max() <= 1.0


def test_noise_has_the_asked_spread(base, tmp_path):
    ct0, _, _ = base
    ct, _, _ = _load(make_member(ZooMember("n", spacing_mm=(3.0, 3.0, 3.0), noise_hu=40.0), tmp_path,
                                 phantom_spacing_mm=3.0)["full"])
    assert np.std(ct.array.astype(float) - ct0.array) == pytest.approx(40.0, rel=0.05)


def test_zoo_table_counts_search_and_similarity_failures():
    def row(mtre, sim, truth):
        return {"member": "m", "geometry": "g", "bone": "femur", "condition": "mask", "mtre_mm": mtre,
                "in_plane_mm": 0.1, "out_of_plane_mm": mtre, "rotation_deg": 0.2, "seconds": 3.0,
                "similarity": sim, "truth_similarity": truth}
    (s,) = zoo_summary([row(0.5, 0.6, 0.6), row(3.0, 0.4, 0.5), row(4.0, 0.7, 0.6), row(1.0, 0.6, 0.6)])
    assert s["success_2mm"] == 0.5 and s["failures"] == 2 and s["search_failures"] == 1
    assert "| m | g | femur | mask | 4 | 50 % |" in zoo_table([s]) and "2 (1 / 1)" in zoo_table([s])
    with pytest.raises(FluoroRegError, match="unknown zoo member"):
        ZooSettings(members=("nope",))


def test_zoo_overview_pools_bones_then_members():
    """Per member and geometry both bones pooled, per geometry every member pooled; medians from the
    runs with true masks only."""
    def row(member, geometry, condition, mtre, oop):
        return {"member": member, "geometry": geometry, "bone": "femur", "condition": condition, "mtre_mm": mtre,
                "in_plane_mm": 0.1, "out_of_plane_mm": oop, "rotation_deg": 0.2, "seconds": 3.0}
    rows = [row("a", "g1", "mask", 0.5, 0.4), row("a", "g1", "mask", 3.0, 2.9), row("a", "g1", "no mask", 1.0, 5.0),
            row("b", "g1", "mask", 0.7, 0.6), row("b", "g2", "no mask", 2.5, 2.4), row("b", "g2", "mask", 1.5, 1.0)]
    text = zoo_overview(rows)
    assert "| a | g1 | 50 % (2) | 100 % (1) | 0.10 | 1.65 | 0.20 | 3.00 |" in text
    assert "| g1 | 67 % (3) | 100 % (1) | 0.10 | 0.60 |" in text
    assert "| g2 | 100 % (1) | 0 % (1) | 0.10 | 1.00 |" in text
    assert "| **all** | 75 % (4) | 50 % (2) |" in text


def test_the_spine_member_is_the_spine_phantom_on_a_clinical_grid(tmp_path):
    from FluoroRegistrationLib.evaluate.zoo import MEMBERS
    from FluoroRegistrationLib.phantom_spine import SPINE_LABELS

    spine = [m for m in MEMBERS.values() if m.anatomy == "spine"]
    assert spine and all(m.bones and set(m.bones) <= set(SPINE_LABELS) for m in spine)
    member = ZooMember("s", spacing_mm=(3.0, 3.0, 5.0), anatomy="spine", bones=("L3",))
    ct, labels, names = _load(make_member(member, tmp_path, phantom_spacing_mm=3.0)["phantom"])
    assert np.allclose(ct.spacing, (3.0, 3.0, 5.0)) and names == SPINE_LABELS
    assert all((labels.array == names[v]).any() for v in ("L1", "L2", "L3", "L4", "L5", "ribs", "pelvis"))
    with pytest.raises(FluoroRegError, match="not scaled or cut"):
        ZooMember("bad", anatomy="spine", scale=1.2)
    with pytest.raises(FluoroRegError, match="not knee or spine"):
        ZooMember("bad", anatomy="hip")
