"""What a tracking run hands over: ``poses.csv``, ``kinematics.csv``, the curves (``kinematics.png``)
and the tracked outlines over the frames (``overlay.gif``). Formats: docs/CONVENTIONS.md, "Tracking".
"""

from __future__ import annotations

import csv
import math

import numpy as np

from ..kinematics import KneeAngles, condyle_lowest_points, femur_frame, grood_suntay, tibia_frame
from .confidence import worst

POSE_COLUMNS = ["frame", "time_ms", "bone", *[f"m{r}{c}" for r in range(3) for c in range(4)], "similarity",
                "flag", "reason", "recovered"]
KINEMATIC_COLUMNS = ["frame", "time_ms", *KneeAngles.NAMES, "medial_condyle_ap_mm", "lateral_condyle_ap_mm", "flag"]


def write_poses_csv(path, records: list[dict | None]) -> None:
    """One row per frame and bone: the 3x4 of ``camera_from_volume`` (row-major), similarity, flag,
    reasons; a frame without a result (unreadable, refused) has one row with bone empty."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(POSE_COLUMNS)
        for r in records:
            if r is None:
                continue
            if not r.get("bones"):
                w.writerow([r["frame"], f"{r['time_ms']:.3f}", "", *[""] * 12, "", "failed", r.get("error", ""), ""])
            for bone, b in r.get("bones", {}).items():
                m = np.asarray(b["camera_from_volume"])[:3].ravel()
                w.writerow([r["frame"], f"{r['time_ms']:.3f}", bone, *[repr(float(v)) for v in m],
                            f"{b['similarity']:.5f}", b["flag"], "; ".join(b.get("reasons", [])), int(b["recovered"])])


def knee_kinematics(records: list[dict | None], landmarks: dict, side: str, femur_points: np.ndarray,
                    joint: tuple = ("femur", "tibia")) -> list[dict]:
    """Per frame the Grood-Suntay angles and translations and the condyles' lowest points (NaN where
    either side of the joint has no trusted pose). ``joint``: the tracked bodies on the femur's and
    the tibia's side (an implanted knee: the femoral component and the tray); ``landmarks``
    {"femur": ..., "tibia": ...} in those bodies' own frames; ``femur_points`` (N, 3) the femur
    side's surface in its frame. Smoothing is done on the poses (:mod:`.smoothing`)."""
    Fa, Ta = femur_frame(landmarks["femur"], side), tibia_frame(landmarks["tibia"], side)
    femur_side, tibia_side = joint
    rows = []
    for r in (r for r in records if r is not None):
        bones = r.get("bones", {})
        ok = all(b in bones and bones[b]["flag"] != "failed" for b in joint)
        if ok:
            pf, pt = (np.asarray(bones[b]["camera_from_volume"]) for b in joint)
            values = list(grood_suntay(pf @ Fa, pt @ Ta, side).as_tuple())
            values += list(condyle_lowest_points(femur_points, pf, pt, Ta, side))
            flag = worst(bones[femur_side]["flag"], bones[tibia_side]["flag"])
        else:
            values, flag = [math.nan] * 8, "failed"
        rows.append({"frame": r["frame"], "time_ms": r["time_ms"], "values": values, "flag": flag})
    return rows


def write_kinematics_csv(path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(KINEMATIC_COLUMNS)
        for row in rows:
            w.writerow([row["frame"], f"{row['time_ms']:.3f}", *[f"{v:.4f}" for v in row["values"]], row["flag"]])


def plot_kinematics(path, rows: list[dict], title: str = "") -> None:
    """Six curves against time, frames flagged check (orange) or failed (red) marked on each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([row["time_ms"] for row in rows]) / 1000.0
    v = np.array([row["values"] for row in rows])
    flags = [row["flag"] for row in rows]
    labels = ["flexion (deg)", "adduction (deg)", "internal rotation (deg)", "lateral (mm)", "anterior (mm)",
              "distraction (mm)"]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), sharex=True)
    for k, ax in enumerate(axes.ravel()):
        ax.plot(t, v[:, k], color="#1f4e79", lw=1.5)
        for flag, colour in (("check", "#f39c12"), ("failed", "#c0392b")):
            idx = [i for i, f in enumerate(flags) if f == flag]
            if idx:
                y = np.where(np.isfinite(v[idx, k]), v[idx, k], np.nanmean(v[:, k]) if np.isfinite(v[:, k]).any() else 0)
                ax.scatter(t[idx], y, color=colour, s=18, zorder=3, label=flag)
        ax.set_ylabel(labels[k])
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("time (s)")
    handles, names = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="upper right")
    fig.suptitle(title or "knee kinematics (Grood-Suntay)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def overlay_gif(path, sequence, records: list[dict | None], outlines, longest: int = 256, fps: float = 10.0) -> None:
    """The frames with each tracked bone's outline (green ok, orange check, red failed), at most
    ``longest`` pixels a side. ``outlines(index, record)``: (rows, cols) label map of the bones'
    projections at the frame's poses, and {label id: flag}."""
    from PIL import Image

    from ..slicer.overlay import grey, outline, resize

    colours = {"ok": (60, 255, 60), "check": (255, 165, 0), "failed": (255, 40, 40)}
    pictures = []
    for r in (r for r in records if r is not None):
        raw = sequence.read(r["frame"])
        scale = min(1.0, longest / max(raw.shape))
        shape = (max(1, round(raw.shape[0] * scale)), max(1, round(raw.shape[1] * scale)))
        rgb = np.repeat((grey(resize(raw, shape)) * 255)[..., None], 3, axis=2)
        if r.get("bones"):
            labels, flags = outlines(r["frame"], r)
            small = np.asarray(Image.fromarray(labels.astype(np.int32)).resize(shape[::-1], Image.NEAREST))
            for label_id, flag in flags.items():
                rgb[outline(small == label_id)] = colours[flag]
        pictures.append(Image.fromarray(rgb.astype(np.uint8)))
    if pictures:
        pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=int(1000 / fps), loop=0)
