"""Per-frame confidence of a tracked bone: ``ok | check | failed`` with the reasons.

A frame's flag is the worst of: the registration's own status (:mod:`..register.status`: final
similarity, bone in the field, depth, mask overlap), a similarity drop against the bone's recent
trusted frames, and a pose jump from the previous frame faster than a knee moves. Thresholds are
:class:`TrackChecks`; ``benchmarks/track.py`` measures their false-alarm and miss rates on simulated
sequences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import FluoroRegError

RANK = {"ok": 0, "check": 1, "failed": 2}


@dataclass(frozen=True)
class TrackChecks:
    """similarity_drop: flag ``check`` when the similarity falls this far below the median of the
    bone's last ``window`` ok frames. max_speed_mm_s, max_turn_deg_s: flag ``check`` when the bone's
    centre moves, or the bone turns, faster than this between two frames (a knee in gait or a squat
    stays well below: about 1 m/s and 400 deg/s). depth_jump_mm: flag ``check`` when the bone's
    centre lands this far along the beam from where the previous frames predicted it (single-plane
    depth is weakly seen: an error there leaves the fit in the image good).

    Calibrated on a simulated 120-frame flexion sequence (benchmarks/track.py, medium realism with
    clutter drawn anew every frame, so the similarity varies more than in a real sequence)."""

    similarity_drop: float = 0.2
    window: int = 5
    max_speed_mm_s: float = 1500.0
    max_turn_deg_s: float = 720.0
    depth_jump_mm: float = 3.0

    def __post_init__(self):
        for name in ("similarity_drop", "max_speed_mm_s", "max_turn_deg_s", "depth_jump_mm"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise FluoroRegError(f"TrackChecks.{name} = {value!r} must be a positive number")
        if not (isinstance(self.window, int) and self.window >= 1):
            raise FluoroRegError(f"TrackChecks.window = {self.window!r} must be a whole number >= 1")


def worst(*flags: str) -> str:
    return max(flags, key=RANK.__getitem__)


def motion(previous: dict, current: dict, centre_volume: np.ndarray) -> tuple[float, float]:
    """(mm, deg) the bone's centre moved and the bone turned between two records' poses."""
    a, b = np.asarray(previous["camera_from_volume"]), np.asarray(current["camera_from_volume"])
    c = np.asarray(centre_volume, np.float64)
    shift = float(np.linalg.norm((b[:3, :3] @ c + b[:3, 3]) - (a[:3, :3] @ c + a[:3, 3])))
    cos = (np.trace(b[:3, :3] @ a[:3, :3].T) - 1.0) / 2.0
    return shift, math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def judge_frame(record: dict, history: list[dict], dt_s: float, centre_volume: np.ndarray,
                checks: TrackChecks) -> tuple[str, list[str]]:
    """Flag and reasons of one bone in one frame.

    record: the bone's result ({camera_from_volume, similarity, status, reason}); history: the bone's
    records of the frames tracked before it, nearest last (failed frames included); dt_s: seconds
    since the previous record."""
    flag, reasons = record["status"], [record["reason"]] if record.get("reason") else []
    trusted = [h["similarity"] for h in history if h["flag"] == "ok"][-checks.window:]
    if trusted:
        reference = float(np.median(trusted))
        if record["similarity"] < reference - checks.similarity_drop:
            flag = worst(flag, "check")
            reasons.append(f"similarity {record['similarity']:.3f} fell below its recent {reference:.3f}")
    if history and record.get("predicted") is not None:
        c = np.asarray(centre_volume, np.float64)
        got, want = np.asarray(record["camera_from_volume"]), np.asarray(record["predicted"])
        jump = abs(float((got[:3, :3] @ c + got[:3, 3])[2] - (want[:3, :3] @ c + want[:3, 3])[2]))
        if jump > checks.depth_jump_mm:
            flag = worst(flag, "check")
            reasons.append(f"{jump:.1f} mm along the beam from its predicted depth")
    previous = next((h for h in reversed(history) if h["flag"] != "failed"), None)
    if previous is not None and dt_s > 0:
        shift, turn = motion(previous, record, centre_volume)
        if shift / dt_s > checks.max_speed_mm_s:
            flag = worst(flag, "check")
            reasons.append(f"moved {shift:.1f} mm in {1000 * dt_s:.0f} ms (faster than {checks.max_speed_mm_s:g} mm/s)")
        if turn / dt_s > checks.max_turn_deg_s:
            flag = worst(flag, "check")
            reasons.append(f"turned {turn:.1f} deg in {1000 * dt_s:.0f} ms (faster than {checks.max_turn_deg_s:g} deg/s)")
    return flag, reasons
