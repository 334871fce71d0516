"""The NIST attenuation table and its loader (FluoroRegistrationLib.simulate.materials)."""
import json

import numpy as np
import pytest

from FluoroRegistrationLib.errors import FluoroRegError
from FluoroRegistrationLib.simulate import materials as mat

GRID_KEV = [8.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 80.0, 100.0, 150.0]


def _raw():
    with open(mat._DATA_FILE, encoding="utf-8") as f:
        return json.load(f)


TABULATED = ["air", "water", "adipose", "muscle", "cortical_bone", "aluminium", "titanium", "tungsten",
             "vanadium", "chromium", "cobalt", "molybdenum", "polyethylene"]


def test_materials_and_densities():
    assert set(mat.MATERIALS) == set(TABULATED) | {"cobalt_chrome", "titanium_alloy"}
    expected = {"air": 0.001205, "water": 1.0, "adipose": 0.95, "muscle": 1.05,
                "cortical_bone": 1.92, "aluminium": 2.699, "titanium": 4.54, "tungsten": 19.3,
                "vanadium": 6.11, "chromium": 7.18, "cobalt": 8.9, "molybdenum": 10.22, "polyethylene": 0.94,
                "cobalt_chrome": 8.3, "titanium_alloy": 4.43}
    for name, rho in expected.items():
        assert mat.density(name) == pytest.approx(rho, rel=1e-3)


def test_every_material_covers_the_nist_grid_and_cites_nist():
    raw = _raw()
    assert "SRD 126" in raw["source"] or "Reference Database 126" in raw["source"]
    assert "physics.nist.gov/PhysRefData/XrayMassCoef" in raw["source"]
    for name in TABULATED:
        energies = raw["materials"][name]["energies_kev"]
        assert set(GRID_KEV) <= set(energies), name
        assert min(energies) == 8.0 and max(energies) == 150.0


@pytest.mark.parametrize("name", TABULATED)
def test_table_points_are_returned_exactly(name):
    entry = _raw()["materials"][name]
    e = np.array(entry["energies_kev"])
    m = np.array(entry["mu_over_rho_cm2_g"])
    # at an edge (repeated energy) the above-edge (second) row is the one returned
    last_of_each = np.r_[e[1:] != e[:-1], True]
    np.testing.assert_array_equal(mat.mass_attenuation(name, e[last_of_each]), m[last_of_each])
    for ek, mk in zip(e[last_of_each], m[last_of_each]):
        assert mat.mass_attenuation(name, float(ek)) == mk  # scalar in, 0-d out


def test_log_log_interpolation_between_points():
    # geometric midpoint of 60 and 80 keV -> geometric mean of the two NIST values
    got = mat.mass_attenuation("water", np.sqrt(60.0 * 80.0))
    assert got == pytest.approx(np.sqrt(0.2059 * 0.1837), rel=1e-12)


@pytest.mark.parametrize("name", ["water", "cortical_bone", "muscle", "adipose", "aluminium"])
def test_monotone_decreasing_without_edges(name):
    e = np.geomspace(10.0, 150.0, 801)
    mu = mat.mass_attenuation(name, e)
    assert np.all(np.diff(mu) < 0)


def test_water_at_60_kev_matches_nist():
    mu = mat.linear_attenuation_per_mm("water", 60.0)
    assert mu == pytest.approx(0.02059, rel=1e-12)  # NIST mu/rho(60 keV) = 0.2059 cm^2/g
    assert abs(mu - 0.0206) / 0.0206 < 0.02


def test_bone_contrast_falls_with_energy():
    """Beam hardening: bone/water attenuation ratio is far larger at 30 keV than at 100 keV."""
    def ratio(e):
        return (mat.linear_attenuation_per_mm("cortical_bone", e)
                / mat.linear_attenuation_per_mm("water", e))
    r30, r100 = ratio(30.0), ratio(100.0)
    assert r30 > 6.0 and 1.9 < r100 < 2.3
    assert r30 > 3.0 * r100


def test_tungsten_k_edge():
    below, at, above = mat.mass_attenuation("tungsten", [69.5, 69.525, 69.6])
    assert below == pytest.approx(2.55, rel=0.01)
    assert at == 11.23
    assert above == pytest.approx(11.23, rel=0.01)
    assert mat.mass_attenuation("tungsten", 69.52) < 3.0


def test_linear_attenuation_density_and_shape():
    e = np.array([[30.0, 60.0], [80.0, 100.0]])
    mu = mat.linear_attenuation_per_mm("cortical_bone", e)
    assert mu.shape == (2, 2)
    np.testing.assert_allclose(mu, mat.mass_attenuation("cortical_bone", e) * 1.92 / 10)
    np.testing.assert_allclose(mat.linear_attenuation_per_mm("cortical_bone", e, 1.5),
                               mat.mass_attenuation("cortical_bone", e) * 0.15)
    with pytest.raises(FluoroRegError, match="density"):
        mat.linear_attenuation_per_mm("water", 60.0, density_g_cm3=-1.0)


def test_unknown_material_lists_the_valid_names():
    with pytest.raises(FluoroRegError) as info:
        mat.mass_attenuation("unobtainium", 60.0)
    msg = str(info.value)
    assert "unobtainium" in msg and "\n" not in msg
    for name in mat.MATERIALS:
        assert name in msg
    with pytest.raises(FluoroRegError):
        mat.density("bone ")


@pytest.mark.parametrize("bad", [5.0, 151.0, [60.0, 200.0], float("nan")])
def test_energy_outside_the_table_raises(bad):
    with pytest.raises(FluoroRegError, match="outside the attenuation table"):
        mat.mass_attenuation("water", bad)


def test_implant_alloys_follow_the_mixture_rule_and_metal_stops_what_polyethylene_lets_through():
    """mu/rho of an alloy is the mass-fraction weighted sum of its elements' (checked at table points
    by hand), its K-edge steps carry over (molybdenum at 20 keV), and at a typical 60 keV a 3 mm
    cobalt-chrome shell passes a few percent, a 5 mm titanium-alloy plate about a fifth, while a 10 mm
    polyethylene insert passes about as much as 10 mm of soft tissue."""
    assert mat.mass_attenuation("cobalt_chrome", 60.0) == pytest.approx(0.655 * 1.314 + 0.285 * 0.9639 + 0.06 * 4.274)
    assert mat.mass_attenuation("titanium_alloy", 100.0) == pytest.approx(0.90 * 0.2721 + 0.06 * 0.1704 + 0.04 * 0.2877, rel=1e-3)
    below, above = mat.mass_attenuation("cobalt_chrome", [19.99, 20.0])
    assert above - below > 0.06 * (80.5 - 13.1) * 0.9
    transmitted = {m: float(np.exp(-mat.linear_attenuation_per_mm(m, 60.0) * mm))
                   for m, mm in (("cobalt_chrome", 3.0), ("titanium_alloy", 5.0), ("polyethylene", 10.0), ("muscle", 10.0))}
    assert 0.01 < transmitted["cobalt_chrome"] < 0.05
    assert 0.1 < transmitted["titanium_alloy"] < 0.3
    assert transmitted["polyethylene"] == pytest.approx(transmitted["muscle"], abs=0.03)
