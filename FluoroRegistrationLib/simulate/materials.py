"""X-ray attenuation of the simulator's materials (NIST SRD 126 tables, numpy only).

Data: ``data/attenuation.json`` holds the total mass attenuation coefficient mu/rho (cm^2/g,
coherent scattering included) of each material at the NIST grid energies from 8 to 150 keV, and
the material's nominal density (g/cm^3), both from Hubbell & Seltzer, NIST Standard Reference
Database 126 (https://physics.nist.gov/PhysRefData/XrayMassCoef/).

Units: photon energies in keV, mu/rho in cm^2/g, densities in g/cm^3, and linear attenuation
coefficients in 1/mm (the library's length unit), mu[1/mm] = mu/rho[cm^2/g] * rho[g/cm^3] / 10.

Between table points mu/rho is interpolated linearly in log(E)-log(mu/rho), the usual rule for
these tables. An absorption edge is stored as two rows at the same energy (below-edge value
first); interpolation never crosses it, and at the edge energy itself the above-edge value is
returned. Energies outside the table raise :class:`FluoroRegError`; nothing is extrapolated.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import FluoroRegError

_DATA_FILE = Path(__file__).parent / "data" / "attenuation.json"
_REL_TOL = 1e-9  # energies this close (relative) to the table's ends count as inside it


def _load_table(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Read and check the JSON table: name -> (energies keV, mu/rho cm^2/g, density g/cm^3)."""
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    table = {}
    for name, entry in raw["materials"].items():
        e = np.asarray(entry["energies_kev"], dtype=np.float64)
        m = np.asarray(entry["mu_over_rho_cm2_g"], dtype=np.float64)
        rho = float(entry["density_g_cm3"])
        ok = (e.ndim == 1 and e.shape == m.shape and e.size >= 2 and np.all(e > 0)
              and np.all(m > 0) and np.all(np.diff(e) >= 0) and rho > 0)
        # an energy may repeat (an edge) but never three times, and not at either end
        ok = ok and not np.any((e[2:] == e[:-2])) and e[0] < e[1] and e[-2] < e[-1]
        if not ok:
            raise AssertionError(f"malformed attenuation table for {name!r} in {path}")
        table[name] = (e, m, rho)
    return table


_TABLE = _load_table(_DATA_FILE)

ALLOYS: dict[str, tuple[dict[str, float], float]] = {
    # implant alloys: mass fractions of tabulated elements (the mixture rule, mu/rho = sum w_i (mu/rho)_i)
    # and the alloy's density (g/cm^3)
    "cobalt_chrome": ({"cobalt": 0.655, "chromium": 0.285, "molybdenum": 0.06}, 8.3),  # ASTM F75 Co-28Cr-6Mo
    "titanium_alloy": ({"titanium": 0.90, "aluminium": 0.06, "vanadium": 0.04}, 4.43),  # ASTM F136 Ti-6Al-4V
}

MATERIALS: tuple[str, ...] = tuple(_TABLE) + tuple(ALLOYS)
"""Names of the materials: the tabulated ones in the JSON file's order, then the alloys."""


def _entry(material: str) -> tuple[np.ndarray, np.ndarray, float]:
    try:
        return _TABLE[material]
    except (KeyError, TypeError):
        raise FluoroRegError(
            f"unknown material {material!r}; use one of: {', '.join(MATERIALS)}") from None


def density(material: str) -> float:
    """Nominal density of ``material`` in g/cm^3 (NIST SRD 126 Tables 1 and 2; an alloy's own)."""
    if isinstance(material, str) and material in ALLOYS:
        return ALLOYS[material][1]
    return _entry(material)[2]


def mass_attenuation(material: str, energies_kev) -> np.ndarray:
    """Total mass attenuation coefficient mu/rho of ``material`` in cm^2/g.

    ``energies_kev``: photon energies in keV, a scalar or an array of any shape; every value must
    lie within the table (8 to 150 keV). Returns float64 of the same shape. Table points are
    returned exactly; between them the value is interpolated log-log. An alloy's is the mass-fraction
    weighted sum of its elements' (:data:`ALLOYS`).
    """
    if isinstance(material, str) and material in ALLOYS:
        return sum(w * mass_attenuation(element, energies_kev) for element, w in ALLOYS[material][0].items())
    e_tab, m_tab, _ = _entry(material)
    e = np.asarray(energies_kev, dtype=np.float64)
    lo, hi = e_tab[0], e_tab[-1]
    bad = ~np.isfinite(e) | (e < lo * (1 - _REL_TOL)) | (e > hi * (1 + _REL_TOL))
    if np.any(bad):
        first = e[bad].flat[0]
        raise FluoroRegError(
            f"photon energy {first:g} keV is outside the attenuation table of {material!r} "
            f"({lo:g}-{hi:g} keV); use energies within that range")
    e = np.clip(e, lo, hi)
    # side="right": an energy equal to an edge falls in the interval above it
    i = np.clip(np.searchsorted(e_tab, e, side="right") - 1, 0, e_tab.size - 2)
    x0, x1, y0, y1 = e_tab[i], e_tab[i + 1], m_tab[i], m_tab[i + 1]
    t = np.log(e / x0) / np.log(x1 / x0)
    out = y0 * np.exp(t * np.log(y1 / y0))
    out = np.where(e == x0, y0, np.where(e == x1, y1, out))
    return out


def linear_attenuation_per_mm(material: str, energies_kev, density_g_cm3=None) -> np.ndarray:
    """Linear attenuation coefficient mu of ``material`` in 1/mm.

    mu = mu/rho [cm^2/g] * rho [g/cm^3] / 10. ``density_g_cm3`` (g/cm^3, scalar or an array that
    broadcasts against ``energies_kev``) defaults to the material's nominal density. Energies in
    keV as for :func:`mass_attenuation`.
    """
    if density_g_cm3 is None:
        rho = density(material)
    else:
        rho = np.asarray(density_g_cm3, dtype=np.float64)
        if not np.all(np.isfinite(rho)) or np.any(rho < 0):
            raise FluoroRegError(
                f"density for {material!r} must be finite and >= 0 g/cm^3; got {density_g_cm3!r}")
    return mass_attenuation(material, energies_kev) * rho / 10.0
