"""Start poses for an experiment: perturbations of the truth binned by initial mTRE, and one parameter
at a time for per-parameter capture ranges (van de Kraats et al. 2005).

Offsets ``x`` (6,) are in :class:`~FluoroRegistrationLib.geometry.CentredParameterization` units about
the bone's centroid: rotations about the camera axes (radians), translations along them (mm).
"""

from __future__ import annotations

import math

import torch

from ..geometry import CentredParameterization, transform_points

AXES = ("rx", "ry", "rz", "tx", "ty", "tz")


def random_offset(generator: torch.Generator, mm: float, deg: float) -> torch.Tensor:
    """An offset (6,) of ``deg`` degrees about a random axis and ``mm`` along a random direction."""
    d = torch.randn(6, generator=generator, dtype=torch.float64)
    return torch.cat([d[:3] / d[:3].norm() * math.radians(deg), d[3:] / d[3:].norm() * mm])


def mtre_of_offset(par: CentredParameterization, points: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """mTRE (mm) of the poses ``par.pose(x)`` against ``par.pose(0)``: x (B, 6) -> (B,)."""
    ref = transform_points(par.reference, points)
    moved = transform_points(par.pose(x), points)
    return (moved - ref).norm(dim=-1).mean(-1)


def _offset_with_mtre(par, points, direction: torch.Tensor, target: float) -> torch.Tensor:
    """``s * direction`` with mTRE == target (bisection on s; mTRE grows with s)."""
    hi = 1.0
    while float(mtre_of_offset(par, points, (hi * direction)[None])[0]) < target:
        hi *= 2.0
    lo = 0.0
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if float(mtre_of_offset(par, points, (mid * direction)[None])[0]) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi) * direction


def start_offsets(par: CentredParameterization, points: torch.Tensor, bins: list[float], per_bin: int,
                  generator: torch.Generator, per_axis: dict | None = None) -> list[dict]:
    """The starts of one (frame, bone).

    Binned: for each bin ``[lo, hi)`` of initial mTRE, ``per_bin`` offsets along random directions
    (rotation parts of 1 deg and translation parts of 1 mm per unit normal draw), each scaled so its
    mTRE is a uniform draw within the bin. Per axis: for ``per_axis['translation_mm']`` values along
    x, y, z and ``per_axis['rotation_deg']`` values about x, y, z, one offset each, random sign.

    Args:
        par: parameterisation about the bone's centroid with the true pose as reference.
        points: (N, 3) the bone's sample points (volume frame, mm).
    Returns:
        list of {"kind": "bin" | "axis", "bin_lo", "bin_hi", "axis", "value", "x": (6,) float64 list}.
    """
    dtype = torch.float64
    unit = torch.tensor([math.radians(1.0)] * 3 + [1.0] * 3, dtype=dtype)
    out = []
    for lo, hi in zip(bins, bins[1:]):
        for _ in range(per_bin):
            direction = torch.randn(6, generator=generator, dtype=dtype) * unit
            target = lo + (hi - lo) * float(torch.rand(1, generator=generator, dtype=dtype))
            target = max(target, 1e-3)
            x = _offset_with_mtre(par, points, direction, target)
            out.append({"kind": "bin", "bin_lo": lo, "bin_hi": hi, "axis": "", "value": target, "x": x.tolist()})
    per_axis = per_axis or {}
    for axis in range(6):
        values = per_axis.get("rotation_deg" if axis < 3 else "translation_mm", [])
        for v in values:
            sign = 1.0 if float(torch.rand(1, generator=generator)) < 0.5 else -1.0
            x = torch.zeros(6, dtype=dtype)
            x[axis] = sign * (math.radians(float(v)) if axis < 3 else float(v))
            out.append({"kind": "axis", "bin_lo": math.nan, "bin_hi": math.nan, "axis": AXES[axis],
                        "value": float(v), "x": x.tolist()})
    return out
