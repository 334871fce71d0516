"""Where registration spends its time: a per-thread clock of the render, the similarity and the
backward pass, read by each optimisation stage into its :class:`~.optimize.StageLog`.

The objective adds the seconds of each render and similarity call, the optimiser those of each
backward pass; a stage reads the totals it accumulated (:func:`take`) so every stage log carries
``parts = {"render": s, "similarity": s, "backward": s}`` and the rest of its seconds is Python and
bookkeeping. Always on: a ``perf_counter`` pair costs well under a microsecond. On a GPU, work is
queued asynchronously, so these are launch times unless ``FLUOROREG_SYNC_TIMING=1`` in the
environment (read once, at import) makes each part wait for the device: set it when profiling on a
GPU (it slows the run).
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

import torch

PARTS = ("render", "similarity", "backward")
_SYNC_CUDA = os.environ.get("FLUOROREG_SYNC_TIMING") == "1"
_local = threading.local()


def _totals() -> dict:
    if not hasattr(_local, "totals"):
        _local.totals = dict.fromkeys(PARTS, 0.0)
    return _local.totals


@contextmanager
def part(name: str, device=None):
    """Add the seconds spent in the block to ``name`` (one of :data:`PARTS`) on this thread."""
    sync = _SYNC_CUDA and device is not None and torch.device(device).type == "cuda"
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if sync:
            torch.cuda.synchronize(device)
        _totals()[name] += time.perf_counter() - t0


def take() -> dict:
    """The seconds per part since the last call on this thread (and start counting afresh)."""
    totals = _totals()
    out = {k: round(v, 6) for k, v in totals.items()}
    for k in totals:
        totals[k] = 0.0
    return out
