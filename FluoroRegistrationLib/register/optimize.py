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
    t0 = time.perf_counter()
    with torch.no_grad():
        current = x0.clone()
        current_loss = float(objective(current[None])[0])
        best, best_loss = current.clone(), current_loss
        # the loss scale for the acceptance rule: the spread of losses over a first random draw
        probe = x0 + (torch.rand(candidates, 6, generator=generator, dtype=x0.dtype) * 2 - 1) * ranges
        probe_losses = objective(probe)
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
    log.seconds = time.perf_counter() - t0
    log.stop_reason = f"completed {steps} annealing steps"
    return best, best_loss, log


def adam_refine(objective, x0: torch.Tensor, scales: torch.Tensor, iterations: int = 80, lr: float = 0.6,
                lr_end: float = 0.05, patience: int = 12, tolerance: float = 1e-5, betas=(0.9, 0.999),
                bounds: tuple | None = None, report=None, name: str = "refine") -> tuple[torch.Tensor, float, StageLog]:
    """Adam on ``x / scales`` with one second moment shared by all six parameters, a cosine
    learning-rate schedule and an early stop on plateau.

    Plain Adam divides each coordinate by its own gradient RMS, so a parameter the image barely
    constrains (depth along the beam, in single-plane fluoroscopy) moves as fast as a well-constrained
    one and drifts. Sharing the second moment (the squared gradient norm) keeps Adam's momentum and
    step-size normalisation but preserves the relative gradient magnitudes, so steps follow how much
    the similarity actually depends on each parameter. The loss must improve by ``tolerance`` within
    ``patience`` iterations or the stage stops; the best pose seen is returned (not the last).

    Args:
        objective: (1, 6) -> (1,) differentiable loss.
        x0: (6,) start; scales: (6,) units of one optimiser step (e.g. 1 deg in rad, 1 mm).
        bounds: optional (low (6,), high (6,)) box in x that every step is projected back into.
    """
    log = StageLog(name)
    t0 = time.perf_counter()
    z = (x0 / scales).clone().requires_grad_()
    lo, hi = (None, None) if bounds is None else (bounds[0] / scales, bounds[1] / scales)
    m = torch.zeros_like(z)
    v = torch.zeros((), dtype=z.dtype)
    b1, b2 = betas
    best_z, best_loss, since_best = z.detach().clone(), math.inf, 0
    log.stop_reason = f"reached {iterations} iterations"
    for it in range(iterations):
        step_lr = lr_end + 0.5 * (lr - lr_end) * (1 + math.cos(math.pi * it / max(iterations - 1, 1)))
        loss = objective((z * scales)[None])[0]
        (grad,) = torch.autograd.grad(loss, z)
        value = float(loss.detach())
        log.losses.append(value)
        log.iterations = it + 1
        if value < best_loss - tolerance:
            best_z, best_loss, since_best = z.detach().clone(), value, 0
        else:
            since_best += 1
        if report is not None:
            report(name, it + 1, value, (z * scales).detach())
        if since_best >= patience:
            log.stop_reason = f"plateau: no improvement over {patience} iterations"
            break
        with torch.no_grad():
            m.mul_(b1).add_(grad, alpha=1 - b1)
            v.mul_(b2).add_((grad * grad).sum() / grad.numel(), alpha=1 - b2)
            m_hat = m / (1 - b1 ** (it + 1))
            v_hat = v / (1 - b2 ** (it + 1))
            z -= step_lr * m_hat / (v_hat.sqrt() + 1e-12)
            if lo is not None:
                z.copy_(torch.maximum(torch.minimum(z, hi), lo))
    log.seconds = time.perf_counter() - t0
    return (best_z * scales).detach(), best_loss, log
