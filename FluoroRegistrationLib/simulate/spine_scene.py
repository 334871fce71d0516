"""Spine scenes for the simulator: a lateral view of the lumbar spine bending forward and back.

A dynamic lateral radiograph of the lumbar spine (flexion-extension studies) sees the vertebrae
turn about the discs between them. Relative to the CT (docs/CONVENTIONS.md, LPS volume frame),
the pelvis stays; each vertebra turns about the x axis through the centre of the disc below it by
its segment's share of the lumbar flexion (``SEGMENT_SHARE``: L1-L2 ... L5-S1, lower segments
more), chained upward, so a vertebra carries every turn below it; the ribs follow the top
vertebra. Positive flexion bends forward: the upper spine moves anterior (-y). The view is a
lateral one through the middle vertebra (beam along x), perturbed as the knee's is.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import FluoroRegError
from ..geometry import CentredParameterization, lateral_view, rotation_from_rotvec

SEGMENT_SHARE = (0.17, 0.19, 0.22, 0.23, 0.19)  # of lumbar flexion: L1-L2, L2-L3, L3-L4, L4-L5, L5-S1
SPINE_FLEXION_RANGE = (-15.0, 35.0)  # extension to flexion, degrees over the lumbar spine
_VERTEBRA = re.compile(r"^[CTL]\d{1,2}$")


def is_spine(names: dict[str, int]) -> bool:
    """True when the label map names lumbar (or thoracic, cervical) vertebrae and no knee."""
    return "femur" not in names and any(_VERTEBRA.match(n) for n in names)


def vertebrae(names) -> list[str]:
    """The vertebra labels of ``names`` from the head down (C before T before L, then by number)."""
    order = {"C": 0, "T": 1, "L": 2}
    return sorted((n for n in names if _VERTEBRA.match(n)), key=lambda n: (order[n[0]], int(n[1:])))


@dataclass(frozen=True)
class SpineState:
    """One frame's spine: view perturbation (6: rad, mm, CentredParameterization) and flexion (deg)."""

    view_params: tuple
    flexion_deg: float


def sample_spine_states(n: int, generator: torch.Generator, flexion_range=SPINE_FLEXION_RANGE) -> list[SpineState]:
    """Independent lateral views: flexion uniform in ``flexion_range``, the view turned by
    N(0, 4 deg) about each camera axis (10 deg about the beam), moved N(0, 10 mm) in plane and
    N(0, 20 mm) in depth (as the knee's)."""
    lo, hi = flexion_range
    flex = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
    scale = torch.tensor([math.radians(4), math.radians(4), math.radians(10), 10.0, 10.0, 20.0], dtype=torch.float64)
    view = torch.randn(n, 6, generator=generator, dtype=torch.float64) * scale
    return [SpineState(tuple(view[i].tolist()), float(flex[i])) for i in range(n)]


def body_centres(bones: dict, names: dict[str, int]) -> dict[str, np.ndarray]:
    """{vertebra: (3,) LPS centroid of its voxels}, from the head down, for the vertebrae among
    ``bones`` ({name: RenderVolume}, as the simulator holds them: their centroids are the labels')."""
    out = {v: bones[v].centroid.numpy() for v in vertebrae(names) if v in bones}
    if not out:
        raise FluoroRegError("the label map names no vertebra with voxels; a spine scene needs L1-L5 (or T/C) labels")
    return out


def spine_relative_poses(centres: dict[str, np.ndarray], flexion_deg: float) -> dict[str, torch.Tensor]:
    """{vertebra: (4, 4) volume_from_volume}: each vertebra's motion relative to the CT at this flexion."""
    names = list(centres)
    shares = SEGMENT_SHARE[-len(names):] if len(names) <= len(SEGMENT_SHARE) else \
        (1.0 / len(names),) * len(names)
    pose = torch.eye(4, dtype=torch.float64)
    out = {}
    for k in range(len(names) - 1, -1, -1):  # from the lowest vertebra up
        c = torch.as_tensor(_disc_below(centres, names, k), dtype=torch.float64)
        turn = torch.eye(4, dtype=torch.float64)
        turn[:3, :3] = rotation_from_rotvec(torch.tensor([math.radians(shares[k] * flexion_deg), 0.0, 0.0],
                                                         dtype=torch.float64))
        turn[:3, 3] = c - turn[:3, :3] @ c
        pose = pose @ turn
        out[names[k]] = pose.clone()
    return out


def _disc_below(centres: dict, names: list[str], k: int) -> np.ndarray:
    """(3,) centre of the disc below vertebra ``names[k]``: half way to the next one down (the
    lowest: as far below it as the disc above)."""
    if k + 1 < len(names):
        return 0.5 * (centres[names[k]] + centres[names[k + 1]])
    if k > 0:
        return centres[names[k]] + 0.5 * (centres[names[k]] - centres[names[k - 1]])
    return centres[names[k]]


def spine_poses(centres: dict[str, np.ndarray], state: SpineState, depth_mm: float, bones) -> dict[str, torch.Tensor]:
    """``camera_from_volume`` of every part: the lateral view of the middle vertebra, perturbed,
    composed with each vertebra's motion; the ribs follow the top vertebra, every other part that is
    not a vertebra (the pelvis) the CT."""
    names = list(centres)
    centre = centres[names[len(names) // 2]]
    view = lateral_view(centre, depth_mm)
    par = CentredParameterization(torch.as_tensor(centre, dtype=torch.float64), view)
    reference = par.pose(torch.tensor(state.view_params, dtype=torch.float64))
    rel = spine_relative_poses(centres, state.flexion_deg)
    top = rel[names[0]]
    return {b: reference @ rel.get(b, top if b == "ribs" else torch.eye(4, dtype=torch.float64)) for b in bones}
