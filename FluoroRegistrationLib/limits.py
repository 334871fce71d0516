"""Limits that catch unit slips and runaway allocations before any work: a memory budget and sane
voxel spacings (docs/CONVENTIONS.md, "Files")."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .errors import FluoroRegError

SANE_SPACING_MM = (0.01, 20.0)  # voxel sizes outside this are a units or header mistake (metres, microns)
_GIB = 2.0 ** 30


def memory_budget() -> float:
    """Bytes one volume may take: ``FLUOROREG_MEMORY_GB`` (GiB) if set, else half the memory (physical,
    or the container's limit where lower), at most 16 GiB."""
    text = os.environ.get("FLUOROREG_MEMORY_GB", "").strip()
    if text:
        try:
            gib = float(text)
        except ValueError:
            gib = float("nan")
        if not (math.isfinite(gib) and gib > 0):
            raise FluoroRegError(f"FLUOROREG_MEMORY_GB must be a positive number of gigabytes, got '{text}'")
        return gib * _GIB
    total = 64 * _GIB
    try:
        total = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        pass
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            total = min(total, float(Path(limit_file).read_text().strip()))
        except (OSError, ValueError):  # absent, or "max"
            pass
    return min(0.5 * total, 16 * _GIB)


def check_allocation(size, what: str, fix: str, itemsize: int = 1) -> float:
    """Raise before allocating ``size`` (a byte count, or a shape of ``itemsize``-byte items) when it
    exceeds :func:`memory_budget`. ``what`` names the allocation, ``fix`` says how to shrink it.
    Returns the byte count."""
    nbytes = float(size) if np.ndim(size) == 0 else float(np.prod(np.asarray(size, float))) * itemsize
    budget = memory_budget()
    if not nbytes <= budget:
        raise FluoroRegError(f"{what} needs {_size_text(nbytes)}, over the memory budget of {_size_text(budget)}; "
                             f"{fix} (or set FLUOROREG_MEMORY_GB)")
    return nbytes


def _size_text(nbytes: float) -> str:
    for unit, scale in (("GiB", _GIB), ("MiB", 2.0 ** 20), ("KiB", 1024.0)):
        if nbytes >= 0.1 * scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes:.0f} bytes"


def check_spacing(spacing, what: str, fix: str = "fix the spacing in its header (millimetres)") -> None:
    """Raise unless every voxel size (mm) is finite and within :data:`SANE_SPACING_MM`."""
    sp = np.asarray(spacing, float).ravel()
    lo, hi = SANE_SPACING_MM
    if not (np.isfinite(sp).all() and (sp >= lo).all() and (sp <= hi).all()):
        shown = ", ".join(f"{v:.6g}" for v in sp)
        raise FluoroRegError(f"{what} has voxel spacing ({shown}) mm, outside the sane range {lo:g}-{hi:g} mm; {fix}")
