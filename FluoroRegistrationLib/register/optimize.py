"""Optimisers over the six pose parameters: batched simulated annealing, then Adam.

Both minimise an ``objective(x) -> (B,) loss`` for parameters ``x`` of shape (B, 6), in the
units of :class:`~FluoroRegistrationLib.geometry.CentredParameterization` (radians, mm). Each
parameter has an explicit scale (``scales``, (6,)): the optimisers work on ``x / scales`` so that a
step of 1 means "one degree" or "one millimetre" whatever the parameter.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ..geometry import rotation_from_rotvec, rotvec_from_rotation
from . import timing


class Cancelled(Exception):
    """Raised when the caller's ``cancel()`` returns True."""


@dataclass
class StageLog:
    """What one optimisation stage did: its losses, iterations, time and why it stopped."""

    name: str
    losses: list = field(default_factory=list)
    iterations: int = 0
    seconds: float = 0.0
    stop_reason: str = ""
    candidates: tuple | None = None  # (x (N, 6), loss (N,)) every pose evaluated, when a stage keeps them
    parts: dict = field(default_factory=dict)  # seconds in render, similarity, backward (timing.PARTS)
    pose: object = None  # (4, 4) camera_from_volume the stage ended at (set by the registration pipeline)
    level: int | None = None  # the pyramid level it ran at, 0 = coarsest (None: the global search)

    def start(self) -> float:
        """Start the stage's clock (and its parts'); returns the start time."""
        timing.take()
        return time.perf_counter()

    def finish(self, t0: float) -> None:
        """Stop the clock: the stage's seconds and their parts since :meth:`start`."""
        self.seconds = time.perf_counter() - t0
        self.parts = timing.take()


def simulated_annealing(objective, x0: torch.Tensor, ranges: torch.Tensor, generator: torch.Generator,
                        steps: int = 30, candidates: int = 32, t_start: float = 1.0, t_end: float = 0.05,
                        report=None, name: str = "global search") -> tuple[torch.Tensor, float, StageLog]:
    """Population simulated annealing within ``x0 +- ranges``.

    Each step draws ``candidates`` proposals around the current state, Gaussian with a spread of
    ``temperature x ranges / 2`` (the temperature falls geometrically from ``t_start`` to
    ``t_end``), evaluates them in one batched call, moves to the best proposal by the Metropolis rule
    (accept if better, else with probability ``exp(-increase / (temperature x loss scale))``), and
    remembers the best pose seen. Proposals are clipped to the search box.

    Args:
        objective: (B, 6) -> (B,) losses, no gradient needed.
        x0: (6,) start; ranges: (6,) half-widths of the search box.
        generator: the random source (reproducible runs).
    Returns:
        (best x (6,), best loss, log).
    """
    log = StageLog(name)
    t0 = log.start()
    with torch.no_grad():
        current = x0.clone()
        current_loss = float(objective(current[None])[0])
        best, best_loss = current.clone(), current_loss
        # the loss scale for the acceptance rule: the spread of losses over a first random draw
        probe = x0 + (torch.rand(candidates, 6, generator=generator, dtype=x0.dtype) * 2 - 1) * ranges
        probe_losses = objective(probe)
        seen_x, seen_loss = [current[None], probe], [torch.tensor([current_loss], dtype=x0.dtype), probe_losses]
        scale = float(probe_losses.std().clamp_min(1e-6))
        i = int(probe_losses.argmin())
        if float(probe_losses[i]) < best_loss:
            best, best_loss = probe[i].clone(), float(probe_losses[i])
            current, current_loss = best.clone(), best_loss
        log.losses.append(best_loss)
        for step in range(steps):
            temperature = t_start * (t_end / t_start) ** (step / max(steps - 1, 1))
            noise = torch.randn(candidates, 6, generator=generator, dtype=x0.dtype)
            proposals = current + noise * ranges * temperature / 2
            proposals = torch.maximum(torch.minimum(proposals, x0 + ranges), x0 - ranges)
            losses = objective(proposals)
            seen_x.append(proposals)
            seen_loss.append(losses.to(x0.dtype))
            i = int(losses.argmin())
            cand, cand_loss = proposals[i], float(losses[i])
            accept = cand_loss < current_loss or float(torch.rand(1, generator=generator)) < math.exp(
                -(cand_loss - current_loss) / (temperature * scale))
            if accept:
                current, current_loss = cand.clone(), cand_loss
            if cand_loss < best_loss:
                best, best_loss = cand.clone(), cand_loss
            log.losses.append(best_loss)
            log.iterations = step + 1
            if report is not None:
                report(name, step + 1, best_loss, best)
    log.finish(t0)
    log.stop_reason = f"completed {steps} annealing steps"
    log.candidates = (torch.cat(seen_x), torch.cat(seen_loss))
    return best, best_loss, log


def distinct_minima(x: torch.Tensor, loss: torch.Tensor, count: int, separation: torch.Tensor) -> list[torch.Tensor]:
    """Up to ``count`` low-loss poses that differ from each other: in order of loss, a pose is kept when
    it differs from every pose already kept by more than ``separation`` (6,) on at least one parameter.

    Args:
        x: (N, 6) poses; loss: (N,) their losses.
    Returns:
        list of (6,) poses, best first.
    """
    kept: list[torch.Tensor] = []
    for i in torch.argsort(loss).tolist():
        if all(differs(x[i], k, separation) for k in kept):
            kept.append(x[i].clone())
            if len(kept) == count:
                break
    return kept


def differs(a: torch.Tensor, b: torch.Tensor, separation: torch.Tensor) -> bool:
    """Whether poses ``a`` and ``b`` (6,) differ by more than ``separation`` (6,) on some parameter."""
    return bool(((a - b).abs() > separation).any())


def evaluate_in_batches(objective, xs: torch.Tensor, batch: int) -> torch.Tensor:
    """``objective`` over the rows of ``xs`` (N, 6), ``batch`` at a time, without gradients: (N,) in
    ``xs``'s dtype (a batch's renders must fit in memory; the whole set may not)."""
    with torch.no_grad():
        return torch.cat([objective(xs[i:i + batch]) for i in range(0, len(xs), batch)]).to(xs.dtype)


def grid_search(objective, x0: torch.Tensor, axes: tuple, offsets: torch.Tensor, batch: int = 64, report=None,
                name: str = "grid search") -> tuple[torch.Tensor, float, StageLog]:
    """Evaluate ``x0`` moved by every combination of ``offsets`` on the parameters ``axes`` (a full
    grid, batched, no gradient) and return the best (``x0`` itself is on the grid when 0 is an offset).

    Used for the two out-of-plane rotations, whose wrong basins a coarse global search can prefer
    while the rest of the pose is already right: at a finer level the right basin wins clearly.

    Args:
        objective: (B, 6) -> (B,) losses. x0: (6,). axes: parameter indices. offsets: (K,) values.
    Returns:
        (best x (6,), its loss, log).
    """
    grids = torch.meshgrid(*([offsets.to(x0.dtype)] * len(axes)), indexing="ij")
    xs = x0.repeat(grids[0].numel(), 1)
    for axis, g in zip(axes, grids):
        xs[:, axis] += g.flatten()
    return best_of(objective, xs, batch, report, name,
                   f"evaluated a grid of {len(xs)} poses over parameters {tuple(axes)}")


def rotation_scan(objective, x0: torch.Tensor, axis: torch.Tensor, offsets: torch.Tensor, batch: int = 64,
                  report=None, name: str = "rotation scan") -> tuple[torch.Tensor, float, StageLog]:
    """Turn the pose ``x0`` about ``axis`` (a unit (3,) direction in the camera frame, through the
    bone's centre) by each angle in ``offsets`` (radians, (K,)) and return the best.

    In :class:`~FluoroRegistrationLib.geometry.CentredParameterization` units a turn about the centre
    leaves the translation ``x[3:]`` as it is and composes the rotation on the left:
    ``w' = log(exp(theta axis) exp(w))``. Used for a long bone's turn about its own shaft (internal /
    external rotation), which a lateral view sees only through small details and where a wrong
    basin can hold the rest of the pose right.

    Returns:
        (best x (6,), its loss, log).
    """
    turns = rotation_from_rotvec(offsets.to(x0.dtype)[:, None] * axis.to(x0.dtype))
    xs = x0.repeat(len(offsets), 1)
    xs[:, :3] = rotvec_from_rotation(turns @ rotation_from_rotvec(x0[:3]))
    return best_of(objective, xs, batch, report, name,
                   f"evaluated {len(xs)} turns about axis {[round(float(a), 2) for a in axis]}")


def best_of(objective, xs: torch.Tensor, batch: int, report, name: str,
            stop_reason: str) -> tuple[torch.Tensor, float, StageLog]:
    """The lowest-loss row of ``xs`` (N, 6), evaluated in batches without gradient, with its log."""
    log = StageLog(name)
    t0 = log.start()
    losses = evaluate_in_batches(objective, xs, batch)
    i = int(losses.argmin())
    log.losses = losses.tolist()
    log.iterations = len(xs)
    if report is not None:
        for k, value in enumerate(log.losses):
            report(name, k + 1, value, xs[k])
    log.finish(t0)
    log.stop_reason = stop_reason
    return xs[i].clone(), float(losses[i]), log


def parabola_vertex(before, at, after) -> float | None:
    """Where the parabola through three equally spaced losses has its vertex, in steps from the middle
    one (within +-0.5 when the middle one is the lowest), or None when they do not curve upwards."""
    curvature = float(before) - 2 * float(at) + float(after)
    return 0.5 * (float(before) - float(after)) / curvature if curvature > 0 else None


def line_search(objective, x0: torch.Tensor, axis: int, half_width: float, points: int = 25,
                batch: int = 25, report=None, name: str = "line search") -> tuple[torch.Tensor, float, StageLog]:
    """Minimise along one parameter: evaluate ``points`` evenly spaced values of ``x[axis]`` within
    ``x0[axis] +- half_width`` (batched, no gradient), then refine the best by the vertex of the
    parabola through it and its two neighbours (kept only if it is lower still).

    For a parameter the similarity barely constrains (depth along the beam), gradient steps are small
    and stop early on the shallow slope; a scan finds the bottom of a wide, flat basin directly.

    Args:
        objective: (B, 6) -> (B,) losses. x0: (6,) start.
        report: ``report(name, k, loss, x)`` once per scanned value (the k-th; the best carries the
            parabola's refinement).
    Returns:
        (best x (6,), its loss, log).
    """
    log = StageLog(name)
    t0 = log.start()
    offsets = torch.linspace(-half_width, half_width, points, dtype=x0.dtype)
    xs = x0.repeat(points, 1)
    xs[:, axis] += offsets
    losses = evaluate_in_batches(objective, xs, batch)
    with torch.no_grad():
        i = int(losses.argmin())
        best, best_loss = xs[i].clone(), float(losses[i])
        vertex = parabola_vertex(losses[i - 1], losses[i], losses[i + 1]) if 0 < i < points - 1 else None
        if vertex is not None:
            trial = best.clone()
            trial[axis] += vertex * float(offsets[1] - offsets[0])
            trial_loss = float(objective(trial[None])[0])
            if trial_loss < best_loss:
                best, best_loss = trial, trial_loss
    log.losses = losses.tolist()
    log.losses[i] = best_loss
    log.iterations = points
    if report is not None:
        for k, value in enumerate(log.losses):
            report(name, k + 1, value, best if k == i else xs[k])
    log.finish(t0)
    log.stop_reason = f"scanned {points} values of parameter {axis} within +-{half_width:g}"
    return best, best_loss, log


def adam_refine(objective, x0: torch.Tensor, scales: torch.Tensor, iterations: int = 80, lr: float = 0.6,
                lr_end: float = 0.05, patience: int = 12, tolerance: float = 1e-5, betas=(0.9, 0.999),
                bounds: tuple | None = None, report=None, name: str = "refine", retries: int = 2):
    """Adam on ``x / scales`` with one second moment shared by all six parameters, a cosine
    learning-rate schedule and an early stop on plateau; one start (6,) or K starts (K, 6) at once.

    Plain Adam divides each coordinate by its own gradient RMS, so a parameter the image barely
    constrains (depth along the beam, in single-plane fluoroscopy) moves as fast as a well-constrained
    one and drifts. Sharing the second moment (the squared gradient norm) keeps Adam's momentum and
    step-size normalisation but preserves the relative gradient magnitudes, so steps follow how much
    the similarity actually depends on each parameter. The loss must improve by ``tolerance`` within
    ``patience`` iterations or the start stops; the best pose seen is returned (not the last).

    K starts run as one batch: one objective call and one backward pass per iteration, each start with
    its own moments, best pose and plateau (a stopped start is no longer evaluated), so each start
    follows exactly the path it would alone.

    Args:
        objective: (B, 6) -> (B,) differentiable losses, each row's loss depending on that row only.
        x0: (6,) or (K, 6) starts; scales: (6,) units of one optimiser step (e.g. 1 deg in rad, 1 mm).
        bounds: optional (low (6,), high (6,)) box in x that every step is projected back into.
    Returns:
        for x0 (6,): (best x (6,), best loss, log); for (K, 6): (best x (K, 6), best losses (K,), log).
    """
    log = StageLog(name)
    t0 = log.start()
    single = x0.dim() == 1
    z = (x0.reshape(-1, 6) / scales).clone()
    K = len(z)
    lo, hi = (None, None) if bounds is None else (bounds[0] / scales, bounds[1] / scales)
    m = torch.zeros_like(z)
    v = torch.zeros(K, dtype=z.dtype)
    b1, b2 = betas
    best_z, best_loss = z.clone(), torch.full((K,), math.inf, dtype=z.dtype)
    since_best = torch.zeros(K, dtype=torch.long)
    first_loss = torch.full((K,), math.nan, dtype=z.dtype)
    steps_taken = torch.zeros(K, dtype=z.dtype)  # per start: Adam's bias correction restarts with it
    step_scale = torch.ones(K, dtype=z.dtype)
    retried = torch.zeros(K, dtype=torch.long)
    active = torch.arange(K)
    log.stop_reason = f"reached {iterations} iterations"
    for it in range(iterations):
        step_lr = lr_end + 0.5 * (lr - lr_end) * (1 + math.cos(math.pi * it / max(iterations - 1, 1)))
        za = z[active].requires_grad_()
        loss = objective(za * scales)
        with timing.part("backward"):
            (grad,) = torch.autograd.grad(loss.sum(), za)
        values = loss.detach().to(z.dtype)
        first_loss[active] = torch.where(first_loss[active].isnan(), values, first_loss[active])
        lowest = int(values.argmin())
        log.losses.append(float(values[lowest]))
        log.iterations = it + 1
        improved = values < best_loss[active] - tolerance
        best_z[active[improved]] = za.detach()[improved]
        best_loss[active[improved]] = values[improved]
        since_best[active] = torch.where(improved, 0, since_best[active] + 1)
        if report is not None:
            report(name, it + 1, log.losses[-1], (za[lowest] * scales).detach())
        stuck = (since_best[active] >= patience) & (best_loss[active] >= first_loss[active] - tolerance) \
            & (retried[active] < retries)
        if bool(stuck.any()):  # never improved on its start: again from there, with smaller steps
            rows = active[stuck]
            z[rows], m[rows], v[rows], steps_taken[rows] = best_z[rows], 0.0, 0.0, 0.0
            step_scale[rows] *= 0.25
            retried[rows] += 1
            since_best[rows] = 0
        going = since_best[active] < patience
        if not bool(going.any()):
            log.stop_reason = f"plateau: no improvement over {patience} iterations"
            break
        with torch.no_grad():
            moving = going & ~stuck
            rows, g = active[moving], grad[moving]
            steps_taken[rows] += 1
            n = steps_taken[rows]
            m[rows] = m[rows] * b1 + g * (1 - b1)
            v[rows] = v[rows] * b2 + (g * g).sum(-1) / g.shape[-1] * (1 - b2)
            m_hat = m[rows] / (1 - b1 ** n)[:, None]
            v_hat = v[rows] / (1 - b2 ** n)
            step = z[rows] - (step_lr * step_scale[rows] / (v_hat.sqrt() + 1e-12))[:, None] * m_hat
            z[rows] = step if lo is None else torch.maximum(torch.minimum(step, hi), lo)
        active = active[going]
    log.finish(t0)
    best_x = best_z * scales
    if single:
        return best_x[0], float(best_loss[0]), log
    return best_x, best_loss, log
