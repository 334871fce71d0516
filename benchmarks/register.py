"""Registration benchmark: simulated knee frames, random starts, femur and tibia, with and without masks.

    .venv/bin/python benchmarks/register.py [--frames 20] [--realism medium] [--offset 12,8]
        [--calibration true|nominal] [--calibration-error 5,2] [--out table.md]

N frames are simulated from the built-in phantom (``fluororeg simulate`` physics: polyenergetic,
scatter, noise, blur, distortion). Each bone starts from the ground truth perturbed uniformly by up
to ``--offset`` mm / deg on every axis (rotations about the bone's centroid, camera axes). Masks are
the simulator's ground-truth masks.

Calibration: ``true`` registers with the C-arm that took the frames (the method's own accuracy);
``nominal`` hands the registration, per frame, a calibration off by N(0, sdd error) mm in the
source-to-detector distance and N(0, principal-point error) px on each principal-point axis (as a
user's calibration is), and reports beside each result the *calibration floor*: the errors of the
pose a perfect registration would return with that calibration (``calibration_floor``).

Prints success rates (mTRE < 2 mm and < 1 mm), median and 90th-percentile errors (in-plane,
out-of-plane, rotation, mTRE) and median seconds per frame per bone.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(frames=10, realism="medium", offset=(12.0, 8.0), seed=0, bones=("femur", "tibia"), config=None,
        sim_dir=None, flexion_range=(0.0, 90.0), calibration="true", calibration_error=None, camera=None,
        conditions=("mask", "no mask")):
    """Simulate (or reuse ``sim_dir``), register, and return (rows, summary).

    rows: one dict per (frame, bone, condition) with the errors, seconds, similarity and, for a
    nominal calibration, the calibration floor's errors (``floor_*``). ``camera``: the simulated
    C-arm (default: the simulator's 512 x 512 one).
    """
    import torch
    from tqdm import tqdm

    from FluoroRegistrationLib.files import read_poses
    from FluoroRegistrationLib.geometry import Camera, CentredParameterization
    from FluoroRegistrationLib.register import Registration, calibration_floor, pose_errors, prepare_frame
    from FluoroRegistrationLib.simulate.frames import get_realism, perturbed_camera
    from FluoroRegistrationLib.simulate.writer import simulate_folder

    sim_dir = Path(sim_dir or tempfile.mkdtemp(prefix="fluororeg-regbench-"))
    if not (sim_dir / "poses.json").is_file():
        simulate_folder(sim_dir, frames=frames, seed=seed, realism=realism, flexion_range=flexion_range,
                        camera=camera)
    reg = Registration.from_ct(sim_dir / "phantom" / "ct.nii.gz", sim_dir / "phantom" / "labels.nii.gz", list(bones),
                               config=config)
    vols = reg.volumes
    true_camera = Camera.from_json(sim_dir / "calib_true.json")
    if calibration_error is None:
        preset = get_realism(realism)
        calibration_error = (preset.sdd_error_mm, preset.principal_point_error_px)
    g = torch.Generator().manual_seed(seed + 1)
    g_calib = torch.Generator().manual_seed(seed + 2)
    rows = []
    jobs = [(i, b) for i in range(frames) for b in bones]
    for i, bone in tqdm(jobs, desc="register", unit="bone"):
        key = f"{i:04d}"
        nominal = perturbed_camera(true_camera, *calibration_error, g_calib)  # drawn every job: same streams
        camera_used = nominal if calibration == "nominal" else true_camera
        frame = prepare_frame(sim_dir / "frames" / f"{key}.png", camera_used)
        truth = read_poses(sim_dir / "poses" / f"{key}.json")[bone]
        vol = vols[bone]
        par = CentredParameterization(vol.centroid, truth)
        u = torch.rand(6, generator=g, dtype=torch.float64) * 2 - 1
        x = u * torch.tensor([math.radians(offset[1])] * 3 + [offset[0]] * 3, dtype=torch.float64)
        start = par.pose(x)
        mask = sim_dir / "masks" / f"{key}_{bone}.png"
        before = pose_errors(start, truth, vol.centroid, vol.points, camera_used)
        floor = {}
        if calibration == "nominal":
            _, f = calibration_floor(truth, vol.centroid, vol.points, true_camera, camera_used)
            floor = {f"floor_{k}": v for k, v in f.items()}
        for condition in conditions:
            one = Registration({bone: vol}, reg.config)  # the one path, this bone alone
            res = one.register(frame, camera_used, {bone: start},
                               masks={bone: mask} if condition == "mask" else None).bones[bone]
            err = pose_errors(res.camera_from_volume, truth, vol.centroid, vol.points, camera_used)
            path = stage_trajectory(res, lambda pose: pose_errors(pose, truth, vol.centroid, vol.points,
                                                                  camera_used)["mtre_mm"])
            rows.append({"frame": key, "bone": bone, "condition": condition, "initial_mtre_mm": before["mtre_mm"],
                         **err, **floor, "seconds": res.seconds, "similarity": res.similarity, "trajectory": path})
    return rows, summarise(rows)


def stage_trajectory(result, mtre) -> list[tuple]:
    """Where one bone's registration stood after each phase: [(phase, seconds so far, mTRE mm)].

    Phases: the global search; the starts (refined together, then ranked); then each pyramid level
    (its depth scan, probes and refinements; ``StageLog.level``, 1 = coarsest). ``mtre(pose)`` scores
    a (4, 4) pose."""
    import re

    out, elapsed = [], 0.0
    for s in result.stages:
        elapsed += s.seconds
        if s.level is None:
            label = "search"
        elif re.match(r"^(start \d+/\d+|\d+ starts): ", s.name):
            label = "starts"
        else:
            label = f"level {s.level + 1}"
        if out and out[-1][0] == label:
            out[-1] = (label, elapsed, mtre(s.pose))
        else:
            out.append((label, elapsed, mtre(s.pose)))
    return out


def trajectory_table(rows) -> str:
    """Median mTRE, success and seconds so far after each phase, per bone and mask condition: what each
    phase buys and costs (a phase's last pose is the next phase's start)."""
    import numpy as np

    lines = ["| bone | masks | after | runs | s so far (median) | mTRE mm (median / p90) | success <2 mm | <1 mm |",
             "|---|---|---|---|---|---|---|---|"]
    for bone in sorted({r["bone"] for r in rows}):
        for condition in ("mask", "no mask"):
            sel = [r for r in rows if r["bone"] == bone and r["condition"] == condition]
            labels = list(dict.fromkeys(p[0] for r in sel for p in r["trajectory"]))
            for label in labels:
                pts = [p for r in sel for p in r["trajectory"] if p[0] == label]
                t, e = np.array([p[1] for p in pts]), np.array([p[2] for p in pts])
                lines.append(f"| {bone} | {condition} | {label} | {len(pts)} | {np.median(t):.2f} | "
                             f"{np.median(e):.2f} / {np.percentile(e, 90):.2f} | {100 * (e < 2).mean():.0f}% | "
                             f"{100 * (e < 1).mean():.0f}% |")
    return "\n".join(lines)


def summarise(rows):
    import numpy as np

    out = []
    for bone in sorted({r["bone"] for r in rows}):
        for condition in ("mask", "no mask"):
            sel = [r for r in rows if r["bone"] == bone and r["condition"] == condition]
            if not sel:
                continue
            col = lambda k: np.array([r[k] for r in sel])  # noqa: E731
            s = {"bone": bone, "condition": condition, "n": len(sel),
                 "success_2mm": float((col("mtre_mm") < 2).mean()),
                 "success_1mm": float((col("mtre_mm") < 1).mean()),
                 **{f"{k}_median": float(np.median(col(k))) for k in
                    ("in_plane_mm", "out_of_plane_mm", "rotation_deg", "mtre_mm", "seconds")},
                 **{f"{k}_p90": float(np.percentile(col(k), 90)) for k in
                    ("in_plane_mm", "out_of_plane_mm", "rotation_deg", "mtre_mm")}}
            if "floor_mtre_mm" in sel[0]:
                s["floor_mtre_mm_median"] = float(np.median(col("floor_mtre_mm")))
                s["floor_success_2mm"] = float((col("floor_mtre_mm") < 2).mean())
            out.append(s)
    return out


def table(summary, header=""):
    floor = any("floor_mtre_mm_median" in s for s in summary)
    lines = [header, "", "| bone | masks | n | success <2 mm | <1 mm | in-plane mm (median / p90) | "
             "out-of-plane mm | rotation deg | mTRE mm | s per frame per bone (median) |"
             + (" calibration floor: mTRE mm (median), success <2 mm |" if floor else ""),
             "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if floor else "")]
    for s in summary:
        line = (f"| {s['bone']} | {s['condition']} | {s['n']} | {100 * s['success_2mm']:.0f}% "
                f"| {100 * s['success_1mm']:.0f}% "
                f"| {s['in_plane_mm_median']:.2f} / {s['in_plane_mm_p90']:.2f} "
                f"| {s['out_of_plane_mm_median']:.2f} / {s['out_of_plane_mm_p90']:.2f} "
                f"| {s['rotation_deg_median']:.2f} / {s['rotation_deg_p90']:.2f} "
                f"| {s['mtre_mm_median']:.2f} / {s['mtre_mm_p90']:.2f} | {s['seconds_median']:.1f} |")
        if floor:
            line += f" {s['floor_mtre_mm_median']:.2f}, {100 * s['floor_success_2mm']:.0f}% |"
        lines.append(line)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--realism", default="medium", choices=["off", "low", "medium", "high"])
    parser.add_argument("--offset", default="12,8", help="max initial offset per axis: mm,deg")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sim-dir", help="reuse (or keep) the simulated frames here")
    parser.add_argument("--no-global-search", action="store_true")
    parser.add_argument("--calibration", choices=["nominal", "true"], default="true",
                        help="register with the C-arm that took the frames, or with a perturbed (nominal) one")
    parser.add_argument("--calibration-error", help="nominal calibration's error: sdd mm std, principal point px "
                        "std (default: the realism preset's)")
    parser.add_argument("--similarity", default="patch-gncc", help="patch-gncc (default), gcc, ncc, patch-ncc, multiscale-ncc")
    parser.add_argument("--conditions", default="mask,no mask", help="comma list of: mask, no mask")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config", help="registration settings YAML (as fluororeg register --config); the "
                        "options above override it")
    parser.add_argument("--out", help="also write the table (Markdown) here")
    args = parser.parse_args(argv)
    import torch

    from FluoroRegistrationLib.register import RegistrationConfig

    torch.set_num_threads(args.threads)
    mm, deg = (float(v) for v in args.offset.split(","))
    error = None if not args.calibration_error else tuple(float(v) for v in args.calibration_error.split(","))
    from FluoroRegistrationLib.files import read_yaml

    base = read_yaml(args.config, "--config") if args.config else {}
    overrides = {"seed": args.seed, "similarity": args.similarity}
    if args.no_global_search:
        overrides["search"] = {"enabled": False}
    config = RegistrationConfig.from_dict(base, f"--config {args.config}").merged(overrides)
    rows, summary = run(args.frames, args.realism, (mm, deg), args.seed, config=config, sim_dir=args.sim_dir,
                        calibration=args.calibration, calibration_error=error,
                        conditions=tuple(c.strip() for c in args.conditions.split(",")))
    calib = args.calibration if args.calibration == "true" else (
        f"nominal, error {args.calibration_error or 'of the preset'} (sdd mm, principal point px, std)")
    text = table(summary, f"Registration benchmark: {args.frames} simulated frames ({args.realism} realism, "
                          f"{calib} calibration, {args.similarity}), starts up to {mm:g} mm / {deg:g} deg per axis, "
                          f"global search {'off' if args.no_global_search else 'on'}, {args.threads} threads")
    text += "\n\nWhat each phase buys (the pose after it, same runs):\n\n" + trajectory_table(rows)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
