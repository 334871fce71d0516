"""Low-pass filtering of tracked pose trajectories (``--lowpass HZ``).

Each bone's trajectory is written as six signals about its centroid: the centre's position in the
camera frame (mm) and the rotation from the bone's first trusted pose as a rotation vector (rad;
continuous while the bone turns by less than 180 deg from there); each is filtered by the zero-lag
Butterworth of :func:`~FluoroRegistrationLib.kinematics.lowpass` and turned back into a pose. Frames
flagged ``failed`` are bridged (filled linearly, then left without a pose). Single-plane depth is
the noisiest of the six; smoothing it is what knee studies do with fluoroscopic poses.
"""

from __future__ import annotations

import numpy as np
import torch

from ..geometry import rotation_from_rotvec, rotvec_from_rotation
from ..kinematics import lowpass


def smooth_trajectory(poses: list, times_ms, centre_volume, cutoff_hz: float) -> list:
    """``poses``: per frame a (4, 4) pose or None; returns the filtered poses (None where None)."""
    times = np.asarray(times_ms, np.float64)
    known = [i for i, p in enumerate(poses) if p is not None]
    if len(known) < 2:
        return list(poses)
    c = np.asarray(centre_volume, np.float64)
    reference = np.asarray(poses[known[0]], np.float64)[:3, :3]
    signals = np.full((len(poses), 6), np.nan)
    for i in known:
        p = np.asarray(poses[i], np.float64)
        signals[i, :3] = p[:3, :3] @ c + p[:3, 3]
        signals[i, 3:] = rotvec_from_rotation(torch.as_tensor(p[:3, :3] @ reference.T)).numpy()
    fps = 1000.0 / float(np.median(np.diff(times))) if len(times) > 1 else 30.0
    smooth = lowpass(signals, fps, cutoff_hz)
    out = []
    for i, p in enumerate(poses):
        if p is None:
            out.append(None)
            continue
        R = rotation_from_rotvec(torch.as_tensor(smooth[i, 3:])).numpy() @ reference
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = R, smooth[i, :3] - R @ c
        out.append(pose)
    return out


def smooth_records(records: list, centres: dict, cutoff_hz: float) -> list:
    """Copies of the tracking records with each bone's ``camera_from_volume`` low-passed (frames
    without a trusted pose keep theirs); ``centres``: {bone: (3,) centroid in the volume frame}."""
    records = [r for r in records if r is not None]
    out = [{**r, "bones": {b: dict(v) for b, v in r.get("bones", {}).items()}} for r in records]
    times = [r["time_ms"] for r in records]
    for bone, centre in centres.items():
        poses = [np.asarray(r["bones"][bone]["camera_from_volume"]) if bone in r.get("bones", {}) and
                 r["bones"][bone]["flag"] != "failed" else None for r in records]
        for r, pose in zip(out, smooth_trajectory(poses, times, centre, cutoff_hz)):
            if pose is not None:
                r["bones"][bone]["camera_from_volume"] = pose.tolist()
    return out
