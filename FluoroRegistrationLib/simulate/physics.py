"""X-ray physics of the simulator: CT numbers to materials, and polyenergetic transmission.

Material decomposition. CT numbers are read as mixtures of two neighbouring reference materials,
ordered by their CT number at the CT's effective energy (``CT_ENERGY_KEV``):
air -> adipose -> muscle -> cortical bone (-> titanium for metal, above ``METAL_HU``).
Between two references A and B, a voxel of CT number h holds partial densities
``rho_A (1 - f)`` and ``rho_B f`` with ``f = (h - h_A) / (h_B - h_A)``, so that its attenuation at
the CT energy equals the one the CT number states; at other energies each material attenuates as
its NIST table says, which gives energy-dependent bone contrast and beam hardening. Beyond cortical
bone (h > h_bone) the bone's density is scaled up.

Transmission. With ``A_m(ray) = integral of rho_m dl`` (g/cm^3 x mm) from the exact renderer, an
energy-integrating detector sees

    I / I0 = sum_E w(E) exp(-sum_m (mu/rho)_m(E) A_m / 10)

with ``w`` the spectrum's energy weights (photons x energy).
"""

from __future__ import annotations

import numpy as np
import torch

from .materials import density, mass_attenuation
from .spectrum import Spectrum

CT_ENERGY_KEV = 70.0  # effective energy at which CT numbers are interpreted
MATERIAL_ORDER = ("air", "adipose", "muscle", "cortical_bone", "titanium")
METAL_HU = 3000.0


def _mu_per_mm(material: str, energy_kev: float) -> float:
    return float(mass_attenuation(material, np.array([energy_kev]))[0]) * density(material) / 10.0


def reference_hu(energy_kev: float = CT_ENERGY_KEV) -> dict[str, float]:
    """CT number of each reference material at the CT energy: 1000 (mu / mu_water - 1)."""
    mu_w = _mu_per_mm("water", energy_kev)
    return {m: 1000.0 * (_mu_per_mm(m, energy_kev) / mu_w - 1.0) for m in MATERIAL_ORDER}


def decompose(hu: np.ndarray, energy_kev: float = CT_ENERGY_KEV) -> dict[str, np.ndarray]:
    """Partial densities (g/cm^3) of each reference material, same shape as ``hu``.

    Every voxel is a mixture of the two references whose CT numbers bracket its own (see module
    docstring); the result's attenuation at ``energy_kev`` reproduces the CT number exactly.
    """
    hu = np.asarray(hu, dtype=np.float32)
    refs = reference_hu(energy_kev)
    order = [m for m in MATERIAL_ORDER if m != "titanium"]
    out = {m: np.zeros_like(hu) for m in MATERIAL_ORDER}
    out["air"] += np.where(hu <= refs["air"], density("air"), 0.0).astype(np.float32)
    for a, b in zip(order[:-1], order[1:]):
        lo, hi = refs[a], refs[b]
        inside = (hu > lo) & (hu <= hi)
        f = np.clip((hu - lo) / (hi - lo), 0.0, 1.0)
        out[a] += np.where(inside, density(a) * (1 - f), 0.0).astype(np.float32)
        out[b] += np.where(inside, density(b) * f, 0.0).astype(np.float32)
    dense = hu > refs["cortical_bone"]
    metal = hu >= METAL_HU
    scale = (1000.0 + hu) / (1000.0 + refs["cortical_bone"])
    out["cortical_bone"] += np.where(dense & ~metal, density("cortical_bone") * scale, 0.0).astype(np.float32)
    ti_scale = (1000.0 + hu) / (1000.0 + refs["titanium"])
    out["titanium"] += np.where(metal, density("titanium") * ti_scale, 0.0).astype(np.float32)
    return out


def mono_mu(hu: np.ndarray, mu_water_per_mm: float) -> np.ndarray:
    """The idealised linear model the registration uses: mu = mu_water (1 + HU/1000), >= 0."""
    return np.clip(mu_water_per_mm * (1.0 + np.asarray(hu, np.float32) / 1000.0), 0.0, None)


def transmission(areal: torch.Tensor, materials: tuple[str, ...], spectrum: Spectrum) -> torch.Tensor:
    """Energy-integrated primary transmission I/I0.

    Args:
        areal: (B, M, H, W) line integrals of each material's partial density, g/cm^3 x mm.
        materials: the M material names, in the order of ``areal``'s channels.
        spectrum: the beam.
    Returns:
        (B, H, W) transmission in (0, 1].
    """
    mass_att = torch.tensor(np.stack([mass_attenuation(m, spectrum.energies_kev) for m in materials]),
                            dtype=areal.dtype, device=areal.device)  # (M, E) cm^2/g
    weights = torch.tensor(spectrum.energy_weights(), dtype=areal.dtype, device=areal.device)  # (E,)
    out = torch.zeros(areal.shape[0], *areal.shape[2:], dtype=areal.dtype, device=areal.device)
    for e in range(len(weights)):  # one energy at a time keeps memory at one image
        exponent = torch.einsum("bmhw,m->bhw", areal, mass_att[:, e]) / 10.0
        out += weights[e] * torch.exp(-exponent)
    return out
