"""Tracking benchmark: a simulated knee sequence tracked by `track_sequence` (what `fluororeg track` runs),
scored against the simulation's truth.

    python benchmarks/track.py --out track_bench [--frames 120] [--sequence flexion] [--size 512]
        [--realism medium] [--clutter mixed] [--masks true|none] [--calibration true|nominal]

Simulates the sequence with the built-in phantom (1 mm), starts frame 0 3/-2/3 deg and 4/-3/5 mm off
the truth, tracks femur and tibia and prints (markdown): per bone the share of frames within 1 and
2 mm mTRE, median and 95th-percentile mTRE; the knee's kinematic RMS errors (each of the six against
the same Grood-Suntay read of the true poses with the same landmarks); the flags' recall of frames
over 2 mm and their false-alarm rate; time for the cold keyframe and per tracked frame; frames per
second. A second run into the same folder reuses the simulation (and the tracking: delete
out/track to track again).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from FluoroRegistrationLib.files import read_poses, write_poses
from FluoroRegistrationLib.geometry import CentredParameterization
from FluoroRegistrationLib.kinematics import femur_frame, grood_suntay, read_landmarks, tibia_frame
from FluoroRegistrationLib.register import Registration, pose_errors
from FluoroRegistrationLib.simulate.writer import DEFAULT_CAMERA, simulate_folder
from FluoroRegistrationLib.track import TrackConfig, track_sequence


def simulate(out: Path, args) -> Path:
    sim = out / "sim"
    if not (sim / "simulation.json").is_file():
        simulate_folder(sim, frames=args.frames, seed=args.seed, sequence=args.sequence, realism=args.realism,
                        camera=DEFAULT_CAMERA.resized(args.size, args.size), flexion_range=(5.0, 75.0),
                        clutter=None if args.clutter == "none" else args.clutter)
    return sim


def starts(sim: Path, reg: Registration) -> Path:
    truth = read_poses(sim / "poses" / "0000.json")
    offset = torch.tensor([0.0524, -0.0349, 0.0524, 4.0, -3.0, 5.0], dtype=torch.float64)  # 3/-2/3 deg, 4/-3/5 mm
    write_poses(sim / "init.json", {b: CentredParameterization(v.centroid, truth[b]).pose(offset)
                                    for b, v in reg.volumes.items()})
    return sim / "init.json"


def score(sim: Path, out: Path, result, reg: Registration, records=None) -> dict:
    records = [r for r in (records or result.records) if r is not None]
    truth = {r["frame"]: read_poses(sim / "poses" / f"{r['frame']:04d}.json") for r in records}
    errors = {b: [] for b in reg.volumes}
    flagged = {b: [] for b in reg.volumes}
    for r in records:
        for b, v in reg.volumes.items():
            res = r["bones"].get(b)
            e = float("inf") if res is None else float(pose_errors(torch.tensor(res["camera_from_volume"]),
                                                                    truth[r["frame"]][b], v.centroid, v.points)["mtre_mm"])
            errors[b].append(e)
            flagged[b].append(res is None or res["flag"] != "ok")
    marks = read_landmarks(out / "landmarks.json")
    Fa, Ta = femur_frame(marks["femur"], "right"), tibia_frame(marks["tibia"], "right")
    true_k = np.array([grood_suntay(truth[r["frame"]]["femur"].numpy() @ Fa, truth[r["frame"]]["tibia"].numpy() @ Ta,
                                    "right").as_tuple() for r in records])
    from FluoroRegistrationLib.track.outputs import knee_kinematics

    rows = knee_kinematics(records, marks, "right", reg.volumes["femur"].surface.numpy())
    got_k = np.array([row["values"][:6] for row in rows])
    return {"errors": errors, "flagged": flagged, "kinematic_rms": np.sqrt(np.nanmean((got_k - true_k) ** 2, axis=0)),
            "records": records}


def report(s: dict, result, args, smoothed: dict | None = None) -> str:
    lines = [f"{args.frames} frames, {args.sequence}, {args.size} px, realism {args.realism}, clutter {args.clutter}, "
             f"masks {args.masks}, calibration {args.calibration}, settings {args.config or 'default'}"
             + (f", poses low-passed at {args.lowpass} Hz" if args.lowpass else ""), ""]
    lines += _bone_table(s, "per-frame poses")
    if smoothed is not None:
        lines += [""] + _bone_table(smoothed, f"low-passed poses ({args.lowpass} Hz)")
    names = ["flexion", "adduction", "internal rotation", "lateral", "anterior", "distraction"]
    units = ["deg"] * 3 + ["mm"] * 3
    lines += ["", "| kinematics RMS error | " + " | ".join(names) + " |", "|---" * 7 + "|"]
    for title, scored in (("per-frame poses", s), (f"low-passed poses ({args.lowpass} Hz)", smoothed)):
        if scored is not None:
            lines.append(f"| {title} | " + " | ".join(f"{v:.2f} {u}" for v, u in zip(scored["kinematic_rms"], units)) + " |")
    recs = s["records"]
    key = [r["seconds"] for r in recs if r.get("keyframe")]
    tracked = [r["seconds"] for r in recs if not r.get("keyframe")]
    recovered = sum(any(b["recovered"] for b in r["bones"].values()) for r in recs)
    lines += ["", f"cold keyframe: {np.mean(key):.1f} s; tracked frame: median {np.median(tracked):.2f} s "
                  f"(both bones); {recovered} frames recovered cold; "
                  f"{len(recs) / result.seconds:.2f} frames/s overall ({result.seconds:.0f} s)"]
    return "\n".join(lines)


def _bone_table(s: dict, title: str) -> list[str]:
    lines = [f"| {title}: bone | within 1 mm | within 2 mm | median mTRE (mm) | p95 mTRE (mm) | flag recall (> 2 mm) | false alarms |",
             "|---|---|---|---|---|---|---|"]
    for b, e in s["errors"].items():
        e = np.array(e)
        f = np.array(s["flagged"][b])
        bad = e > 2.0
        recall = f"{(f & bad).sum()}/{bad.sum()}" if bad.any() else "no frame > 2 mm"
        lines.append(f"| {b} | {100 * np.mean(e < 1):.1f} % | {100 * np.mean(e < 2):.1f} % | {np.median(e):.2f} | "
                     f"{np.percentile(e, 95):.2f} | {recall} | {100 * (f & ~bad).sum() / max((~bad).sum(), 1):.1f} % |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="track_bench")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--sequence", choices=["flexion", "gait", "squat", "step-up"], default="flexion")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--realism", default="medium")
    parser.add_argument("--clutter", choices=["none", "mixed", "heavy"], default="mixed")
    parser.add_argument("--masks", choices=["true", "none"], default="true")
    parser.add_argument("--calibration", choices=["true", "nominal"], default="true")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--config", help="tracking settings YAML (as fluororeg track --config)")
    parser.add_argument("--name", default="track", help="output subfolder of this tracking run")
    parser.add_argument("--lowpass", type=float, help="also score the low-passed poses (cut-off in Hz)")
    args = parser.parse_args()
    out = Path(args.out)
    sim = simulate(out, args)
    ct, labels, names = sim / "phantom" / "ct.nii.gz", sim / "phantom" / "labels.nii.gz", sim / "phantom" / "labels.json"
    reg = Registration.from_ct(ct, labels, ["femur", "tibia"], names)
    init = starts(sim, reg)
    calib = sim / ("calib_true.json" if args.calibration == "true" else "calib.json")
    t0 = time.perf_counter()
    config = None
    if args.config:
        import yaml

        config = TrackConfig.from_dict(yaml.safe_load(Path(args.config).read_text()), args.config)
    result = track_sequence(sim / "frames", ct, labels, calib, init, out / args.name, label_names=names,
                            masks=sim / "masks" if args.masks == "true" else None, config=config,
                            lowpass_hz=args.lowpass)
    result.seconds = result.seconds or time.perf_counter() - t0
    raw = score(sim, out / args.name, result, reg)
    smoothed = score(sim, out / args.name, result, reg, result.smoothed) if result.smoothed else None
    text = report(raw, result, args, smoothed)
    (out / f"{args.name}_report.md").write_text(text + "\n")
    print(text)
    shutil.copy(out / args.name / "kinematics.png", out / f"{args.name}_kinematics.png")
    (out / "settings.json").write_text(json.dumps(vars(args), indent=1))


if __name__ == "__main__":
    main()
