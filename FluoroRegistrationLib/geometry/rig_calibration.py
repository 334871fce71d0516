"""Calibrating a rig: each further view's pose relative to the first, from a bead phantom that every
view sees at once.

Protocol: put a phantom of metal beads at known positions near the isocentre (``helix_beads``: a
helix, whose projections do not overlap from any direction around its axis), take one frame per
view, and give each view's calibration and the rig's nominal relative poses (the C-arms' angle
readouts: :func:`~.rig.biplane_rig`). Per view the beads are found (:func:`detect_beads`: bright
blobs of the attenuation-like frame above its background), matched to their predicted projections
and the phantom's pose in that camera is solved (:func:`solve_pose`: Gauss-Newton on the
reprojection error, rematched until the matches settle). The rig is then
``camera_k_from_reference = camera_k_from_phantom @ inverse(camera_first_from_phantom)``.

What an error left in the rig costs a registration is measured by the evaluation harness
(``rig_error`` conditions, ``benchmarks/views.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import FluoroRegError
from .camera import Camera
from .rig import Rig, View, crossing_point
from .rigid import invert, make_pose, pose_from_rotvec, transform_points


def helix_beads(count: int = 16, radius_mm: float = 30.0, height_mm: float = 80.0, turns: float = 1.25) -> torch.Tensor:
    """Bead centres (count, 3) of a helix about the phantom's y axis (mm, centred on its origin)."""
    t = torch.linspace(0.0, 1.0, count, dtype=torch.float64)
    angle = 2 * math.pi * turns * t
    return torch.stack([radius_mm * torch.cos(angle), height_mm * (t - 0.5), radius_mm * torch.sin(angle)], 1)


def bead_image(camera: Camera, beads_camera: torch.Tensor, radius_mm: float = 1.0, mu_per_mm: float = 0.5) -> torch.Tensor:
    """Line integrals (H, W) of metal spheres of ``radius_mm`` at ``beads_camera`` (N, 3) (camera frame):
    each ray's chord through each sphere, exactly."""
    _, detector = camera.rays(torch.float64)
    d = detector / detector.norm(dim=-1, keepdim=True)  # (H, W, 3) unit rays from the source
    image = torch.zeros(camera.shape, dtype=torch.float64)
    for c in beads_camera.to(torch.float64):
        along = (d * c).sum(-1)
        perp2 = (c * c).sum() - along ** 2
        image += 2 * torch.sqrt(torch.clamp(radius_mm ** 2 - perp2, min=0.0)) * mu_per_mm
    return image


def detect_beads(image, min_area_px: int = 3, threshold: float = 0.5) -> np.ndarray:
    """Centres (M, 2) as (u = column, v = row) of bright blobs in an attenuation-like frame (beads
    bright): the frame minus its local background (a 15 px median), blobs above ``threshold`` of the
    strongest, each centre the excess-weighted mean over the blob grown by 2 px."""
    from scipy import ndimage

    a = np.asarray(image, np.float64)
    background = ndimage.median_filter(a, size=15)
    excess = np.clip(a - background, 0, None)
    if excess.max() <= 0:
        raise FluoroRegError("no bead stands out of the frame's background; check the frame and its polarity")
    labels, n = ndimage.label(excess > threshold * excess.max())
    found = []
    for k in range(1, n + 1):
        core = labels == k
        if int(core.sum()) < min_area_px:
            continue
        # the centre over the whole blob (its core grown by 2 px): a threshold cuts a sampled blob
        # unevenly, and a centre of what is left is biased by a tenth of a pixel
        rows, cols = np.nonzero(ndimage.binary_dilation(core, iterations=2) & (excess > 0))
        w = excess[rows, cols]
        found.append((float((cols * w).sum() / w.sum()), float((rows * w).sum() / w.sum())))
    return np.array(found).reshape(-1, 2)


@dataclass(frozen=True)
class PoseFit:
    """camera_from_phantom (4, 4); rms_px: reprojection error of the matched beads; matched: how many."""

    camera_from_phantom: torch.Tensor
    rms_px: float
    matched: int


def _refine(camera: Camera, beads: torch.Tensor, uv: torch.Tensor, pose: torch.Tensor, iterations: int = 30) -> torch.Tensor:
    """Gauss-Newton on the reprojection error of matched beads (N, 3) -> uv (N, 2), from ``pose``."""
    for _ in range(iterations):
        centre = transform_points(pose, beads).mean(0)  # turn about the phantom, not the source: decoupled steps

        def moved(x):  # (6,) -> this step's pose: a turn about the centre, then a shift
            turn = pose_from_rotvec(x[:3], x[3:] + centre) @ make_pose(torch.eye(3, dtype=torch.float64), -centre)
            return turn @ pose

        def residual(x):
            return (camera.project(transform_points(moved(x), beads)) - uv).flatten()

        x = torch.zeros(6, dtype=torch.float64)
        J = torch.autograd.functional.jacobian(residual, x)
        step = torch.linalg.lstsq(J, -residual(x)[:, None]).solution[:, 0]
        pose = moved(step).detach()
        if float(step.abs().max()) < 1e-10:
            break
    return pose


def solve_pose(camera: Camera, beads: torch.Tensor, found: np.ndarray, guess: torch.Tensor,
               gate_px: float = 40.0) -> PoseFit:
    """The phantom's pose in ``camera`` from detected bead centres ``found`` (M, 2), starting at
    ``guess`` (4, 4): match predicted and found beads one to one (Hungarian, within ``gate_px``),
    solve, and rematch until the matches settle."""
    from scipy.optimize import linear_sum_assignment

    pose, matched = guess.to(torch.float64), None
    found_t = torch.as_tensor(found, dtype=torch.float64)
    for _ in range(10):
        predicted = camera.project(transform_points(pose, beads))
        cost = torch.cdist(predicted, found_t).numpy()
        rows, cols = linear_sum_assignment(cost)
        keep = cost[rows, cols] < gate_px
        pairs = (tuple(rows[keep]), tuple(cols[keep]))
        if len(pairs[0]) < 6:
            raise FluoroRegError(f"only {len(pairs[0])} beads matched their predicted projections within {gate_px:g} px; "
                                 "put the phantom at the isocentre and check the nominal rig (angles, distances)")
        if pairs == matched:
            break
        matched = pairs
        pose = _refine(camera, beads[list(pairs[0])], found_t[list(pairs[1])], pose)
    residual = camera.project(transform_points(pose, beads[list(matched[0])])) - found_t[list(matched[1])]
    return PoseFit(pose, float(residual.norm(dim=-1).pow(2).mean().sqrt()), len(matched[0]))


def calibrate_rig(frames: list, nominal: Rig, beads: torch.Tensor, phantom_in_reference: torch.Tensor | None = None,
                  ) -> tuple[Rig, list[PoseFit]]:
    """The rig from one frame of a bead phantom per view (attenuation-like, beads bright; (H, W)
    each). ``nominal``: the cameras and rough relative poses; ``phantom_in_reference``: the phantom's
    rough pose in the first view's frame (default: at the isocentre, axes along the first view's).
    Returns the calibrated rig and each view's fit."""
    if len(frames) != len(nominal):
        raise FluoroRegError(f"{len(frames)} bead frames for a rig of {len(nominal)} views; give one per view")
    if phantom_in_reference is None:
        phantom_in_reference = make_pose(torch.eye(3, dtype=torch.float64),
                                         crossing_point(nominal) if len(nominal) > 1 else
                                         torch.tensor([0.0, 0.0, 0.7 * nominal.cameras[0].sdd_mm], dtype=torch.float64))
    fits = []
    for frame, view in zip(frames, nominal.views):
        view.camera.check_frame(*np.asarray(frame).shape, f"bead frame of view {view.name}")
        found = detect_beads(frame)
        fits.append(solve_pose(view.camera, beads, found, view.camera_from_reference @ phantom_in_reference))
    first_from_phantom = fits[0].camera_from_phantom
    views = [View(v.name, v.camera, fit.camera_from_phantom @ invert(first_from_phantom))
             for v, fit in zip(nominal.views, fits)]
    return Rig(tuple(views)), fits
