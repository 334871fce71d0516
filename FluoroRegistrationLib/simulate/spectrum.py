"""X-ray tube spectra for the simulator: a tungsten-anode bremsstrahlung model with filtration.

Bremsstrahlung follows Kramers' law (Kramers 1923): energy fluence per unit energy
``Psi(E) ~ (kVp - E)`` for ``E < kVp``, so the photon number per keV is ``N(E) ~ (kVp - E) / E``.
Tungsten's K lines (K-alpha2 57.98, K-alpha1 59.32, K-beta 67.24 keV) are added above their
excitation energy (69.5 keV) with a share growing as ``(1 - 69.5 / kVp)^1.6`` (an empirical fit of
published tungsten spectra: about 5-10 % of the photons at 80-120 kVp). The spectrum then passes
the tube's inherent plus added aluminium filtration, ``exp(-mu_Al(E) t)``, with NIST attenuation
values (``materials.py``). Good to a few per cent in mean energy and half-value layer against
published spectra, which is what a simulator that must *not* be a monoenergetic DRR needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import FluoroRegError
from .materials import linear_attenuation_per_mm

K_LINES_KEV = ((57.98, 0.58), (59.32, 1.0), (67.24, 0.33))  # (energy, relative intensity)
K_EDGE_W_KEV = 69.5


@dataclass(frozen=True)
class Spectrum:
    """Photon spectrum: ``energies_kev`` (E,) bin centres and ``photons`` (E,) fractions summing to 1."""

    energies_kev: np.ndarray
    photons: np.ndarray
    kvp: float
    filtration_mm_al: float

    @property
    def mean_energy_kev(self) -> float:
        return float((self.energies_kev * self.photons).sum())

    def energy_weights(self) -> np.ndarray:
        """(E,) weights of an energy-integrating detector (signal ~ photons x energy), summing to 1."""
        w = self.photons * self.energies_kev
        return w / w.sum()


def tube_spectrum(kvp: float = 70.0, filtration_mm_al: float = 3.0, bin_kev: float = 1.0,
                  min_kev: float = 15.0) -> Spectrum:
    """Tungsten-anode spectrum at ``kvp`` after ``filtration_mm_al`` mm of aluminium (total).

    Fluoroscopy of a knee typically runs at 55-75 kVp with 3-4.5 mm Al total filtration.
    """
    if not 30.0 <= kvp <= 150.0:
        raise FluoroRegError(f"tube voltage {kvp} kVp is outside 30-150 kVp; fluoroscopy uses about 50-120 kVp")
    if filtration_mm_al < 0:
        raise FluoroRegError("filtration must be >= 0 mm Al")
    energies = np.arange(min_kev + bin_kev / 2, kvp, bin_kev)
    photons = np.clip(kvp - energies, 0, None) / energies
    if kvp > K_EDGE_W_KEV:
        share = 0.35 * (1 - K_EDGE_W_KEV / kvp) ** 1.6
        total = photons.sum()
        lines = sum(w for _, w in K_LINES_KEV)
        for e_line, w in K_LINES_KEV:
            photons[np.argmin(np.abs(energies - e_line))] += share * total * w / lines
    photons = photons * np.exp(-linear_attenuation_per_mm("aluminium", energies) * filtration_mm_al)
    return Spectrum(energies, photons / photons.sum(), float(kvp), float(filtration_mm_al))


def monoenergetic(energy_kev: float) -> Spectrum:
    """A single-energy beam (the idealised DRR's physics)."""
    return Spectrum(np.array([float(energy_kev)]), np.array([1.0]), float(energy_kev), 0.0)
