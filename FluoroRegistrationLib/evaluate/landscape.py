"""Loss landscapes: the registration's similarity along each pose parameter around the true pose
(1D sweeps) and over chosen pairs (2D slices), with and without masks, plus numbers to compare:
local minima along each sweep and the width of the basin around the truth."""

from __future__ import annotations

import math

import torch

from ..register.optimize import evaluate_in_batches
from .starts import AXES


def sweep_offsets(axis: int, half_range: dict, points: int) -> torch.Tensor:
    """(points,) offsets along one parameter: radians for rotations, mm for translations."""
    r = math.radians(half_range.get("rotation_deg", 15.0)) if axis < 3 else float(half_range.get("translation_mm", 20.0))
    return torch.linspace(-r, r, points, dtype=torch.float64)


def local_minima(values: torch.Tensor) -> int:
    """Strict interior local minima of a 1D curve (plateaus count once)."""
    v = values.tolist()
    # collapse runs of equal values so a flat bottom is one point
    dedup = [x for i, x in enumerate(v) if i == 0 or x != v[i - 1]]
    return sum(1 for i in range(1, len(dedup) - 1) if dedup[i] < dedup[i - 1] and dedup[i] < dedup[i + 1])


def basin_width(offsets: torch.Tensor, losses: torch.Tensor) -> float:
    """Width of the basin holding the truth (offset 0): from the lowest point of the sweep's local
    minimum nearest 0, walk out while the loss keeps rising on each side; returns the span (same unit
    as ``offsets``)."""
    l = losses.tolist()
    i = int((offsets.abs()).argmin())
    # descend from the truth to its local minimum
    while True:
        left = l[i - 1] if i > 0 else math.inf
        right = l[i + 1] if i < len(l) - 1 else math.inf
        if min(left, right) >= l[i]:
            break
        i = i - 1 if left < right else i + 1
    lo = i
    while lo > 0 and l[lo - 1] >= l[lo]:
        lo -= 1
    hi = i
    while hi < len(l) - 1 and l[hi + 1] >= l[hi]:
        hi += 1
    return float(offsets[hi] - offsets[lo])


def sweeps(objective, half_range: dict, points: int = 41, batch: int = 32) -> dict:
    """All six 1D sweeps of ``objective`` ((B, 6) -> (B,) loss) about x = 0.

    Returns {axis name: {"offsets": (points,), "similarity": (points,), "local_minima": int,
    "basin_width": float (deg or mm)}}.
    """
    out = {}
    for axis in range(6):
        offsets = sweep_offsets(axis, half_range, points)
        x = torch.zeros(points, 6, dtype=torch.float64)
        x[:, axis] = offsets
        losses = evaluate_in_batches(objective, x, batch)
        shown = torch.rad2deg(offsets) if axis < 3 else offsets
        out[AXES[axis]] = {"offsets": shown.tolist(), "similarity": (1 - losses).tolist(),
                           "local_minima": local_minima(losses), "basin_width": basin_width(shown, losses)}
    return out


def slice_2d(objective, pair: tuple[int, int], half_range: dict, points: int = 21, batch: int = 64) -> dict:
    """Similarity over a grid of two parameters: {"axes", "offsets_a", "offsets_b", "similarity" (points x points)}."""
    a, b = pair
    oa, ob = sweep_offsets(a, half_range, points), sweep_offsets(b, half_range, points)
    ga, gb = torch.meshgrid(oa, ob, indexing="ij")
    x = torch.zeros(points * points, 6, dtype=torch.float64)
    x[:, a], x[:, b] = ga.flatten(), gb.flatten()
    losses = evaluate_in_batches(objective, x, batch)
    show = lambda axis, o: (torch.rad2deg(o) if axis < 3 else o).tolist()  # noqa: E731
    return {"axes": [AXES[a], AXES[b]], "offsets_a": show(a, oa), "offsets_b": show(b, ob),
            "similarity": (1 - losses).view(points, points).tolist()}
