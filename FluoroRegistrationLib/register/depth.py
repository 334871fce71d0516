"""What a registration's depth and out-of-plane rotations are worth: standard deviations from the
curvature of the objective at the result, along the ray through the bone's centre (depth) and over
the two rotations about axes across the beam (tilt).

One view sees depth only through a change of size, so the objective is shallow along the ray. A
Laplace approximation turns its curvature there into a standard deviation. Model: the frame's
similarity features are a scaled copy of the DRR's plus Gaussian noise over ``n_eff`` independent
samples. Its profile likelihood in a pose is ``-(n_eff / 2) log(1 - rho^2)`` for the correlation
``rho``. With ``rho = 1 - loss`` its second derivative at the optimum gives the Fisher information
``I = n_eff rho loss'' / (1 - rho^2)``, and ``sd = 1 / sqrt(I)``.

``n_eff`` counts the pixels the similarity weighs at the level, over the few pixels each gradient
sample shares with its neighbours (:data:`PIXELS_PER_SAMPLE`: a Sobel stencil couples a 3 x 3
neighbourhood). The patch similarities are not a single correlation, so this is an approximation.
``benchmarks/depth_sd.py`` checks it against the depth errors registrations actually make.

The tilt is the same approximation in two parameters: a quadratic surface fitted to the loss on a
3 x 3 grid (-2, 0, 2 deg) over the rotations about the camera's x and y axes through the bone's
centre; the direction its curvature is least in gives the largest standard deviation. A shape that
looks alike turned either way about an axis across the beam has no curvature there: a tibial tray
seen from the side, turned about its stem, at the true poses of three simulated frames (medium
realism, finest level); against 0.08 deg for the femoral component on the same frames and 0.08-0.11
deg for the phantom's femur and tibia on four frames.
"""

from __future__ import annotations

import math

import torch

PIXELS_PER_SAMPLE = 9.0  # a Sobel gradient couples a 3 x 3 neighbourhood: ~9 pixels per independent sample
PROFILE_HALF_WIDTH_MM = 3.0
PROFILE_POINTS = 9
TILT_STEP_DEG = 2.0  # the tilt grid: 3 x 3 rotations, -2, 0, 2 deg about each axis across the beam
TILT_POINTS = 3


def depth_profile(objective, x: torch.Tensor, half_width_mm: float = PROFILE_HALF_WIDTH_MM,
                  points: int = PROFILE_POINTS) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss along the depth parameter (``x[5]``, mm along the ray through the bone's centre) about
    ``x`` (6,): offsets (K,) in mm and losses (K,), one batched evaluation."""
    offsets = torch.linspace(-half_width_mm, half_width_mm, points, dtype=torch.float64)
    xs = x.detach().to(torch.float64).repeat(points, 1)
    xs[:, 5] += offsets
    with torch.no_grad():
        losses = objective(xs).to(torch.float64).cpu()
    return offsets, losses


def curvature(offsets: torch.Tensor, losses: torch.Tensor) -> tuple[float, float]:
    """A parabola fitted to the profile by least squares: (its value at its lowest point, its second
    derivative), the second derivative 0 when the profile does not curve upwards."""
    A = torch.stack([torch.ones_like(offsets), offsets, offsets ** 2], 1)
    a, b, c = torch.linalg.lstsq(A, losses[:, None]).solution[:, 0].tolist()
    # a flat profile's fit leaves c at rounding level (1e-17 or so, either sign, by the LAPACK build)
    if c * float(offsets.abs().max()) ** 2 <= 1e-12 * max(1.0, float(losses.abs().max())):
        return float(losses.min()), 0.0
    lowest = -b / (2 * c)
    if abs(lowest) > float(offsets.abs().max()):  # the minimum lies outside the profile: take the best point
        return float(losses.min()), 2 * c
    return a + b * lowest + c * lowest ** 2, 2 * c


def depth_sd_mm(offsets: torch.Tensor, losses: torch.Tensor, pixels: float) -> float:
    """The standard deviation of the depth (mm) from a profile (:func:`depth_profile`) and the number
    of pixels the similarity weighed; ``inf`` when the profile is flat or has no correlation."""
    loss, second = curvature(offsets, losses)
    return laplace_sd(loss, second, pixels)


def laplace_sd(loss: float, second: float, pixels: float) -> float:
    """The standard deviation of a parameter whose loss (``1 - rho``) has the second derivative
    ``second`` at its lowest point, over ``pixels`` weighed pixels; ``inf`` when the loss does not
    curve upwards or there is no correlation."""
    rho = 1.0 - loss
    n_eff = pixels / PIXELS_PER_SAMPLE
    if second <= 0 or rho <= 0 or n_eff <= 0:
        return math.inf
    return math.sqrt(max(1.0 - rho * rho, 1e-6) / (n_eff * rho * second))


def tilt_grid(objective, x: torch.Tensor, step_deg: float = TILT_STEP_DEG,
              points: int = TILT_POINTS) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss on a ``points`` x ``points`` grid of turns about the camera's x and y axes through the
    bone's centre, from the pose ``x`` (6,) (the centred parameterisation: ``x[:3]`` a rotation vector
    applied on the left, in camera axes, so a turn is composed with it, not added): offsets (K, 2) in
    degrees and losses (K,), one batch."""
    from ..geometry import rotation_from_rotvec, rotvec_from_rotation

    axis = (torch.arange(points, dtype=torch.float64) - (points - 1) / 2) * step_deg
    offsets = torch.cartesian_prod(axis, axis)
    xs = x.detach().to(torch.float64).cpu().repeat(len(offsets), 1)
    turns = torch.cat([torch.deg2rad(offsets), offsets.new_zeros(len(offsets), 1)], 1)
    xs[:, :3] = rotvec_from_rotation(rotation_from_rotvec(turns) @ rotation_from_rotvec(xs[:, :3]))
    with torch.no_grad():
        losses = objective(xs).to(torch.float64).cpu()
    return offsets, losses


def tilt_sd_deg(offsets: torch.Tensor, losses: torch.Tensor, pixels: float) -> tuple[float, torch.Tensor]:
    """(the largest standard deviation (deg) of a rotation across the beam, the direction (2,) in
    (x[0], x[1]) it lies along) from a grid (:func:`tilt_grid`); ``inf`` where the surface does not
    curve upwards in some direction."""
    u, v = offsets[:, 0], offsets[:, 1]
    A = torch.stack([torch.ones_like(u), u, v, u * u, u * v, v * v], 1)
    c = torch.linalg.lstsq(A, losses[:, None]).solution[:, 0]
    hessian = torch.stack([torch.stack([2 * c[3], c[4]]), torch.stack([c[4], 2 * c[5]])])
    values, vectors = torch.linalg.eigh(hessian)
    # float32 losses carry rounding of ~1e-7: a curvature that small over the grid is none
    scale = 1e-6 * max(1.0, float(losses.abs().max())) / float(offsets.abs().max()) ** 2
    weakest = float(values[0]) if float(values[0]) > scale else 0.0
    return laplace_sd(float(losses.min()), weakest, pixels), vectors[:, 0]


def weighed_pixels(objective, x: torch.Tensor) -> float:
    """How many pixels the similarity weighs in ``objective`` (a JointObjective: over its views) at
    the pose ``x`` (6,) (a cut bone's continuation left out there)."""
    return float(sum(o.weighed(x) for o in objective.objectives))
