"""The tracked frame's registration: accuracy and seconds of candidate refine settings, from the
tracker's own predictions.

    .venv/bin/python benchmarks/track_step.py --track-dir track_bench [--frames 30] [--threads 2]

Reads a tracking run of ``benchmarks/track.py`` (its simulation ``sim/`` and records
``track/frames/*.json``, which keep each frame's constant-velocity prediction) and registers each
tracked (not cold) frame's bones from that prediction with each candidate setting, through the one
path (``Registration.register``, what the tracker calls), with the frame's true mask. Prints per
setting and bone: the prediction's error, median / p90 mTRE after, the share within 1 and 2 mm, and
seconds per bone. The candidates are RegistrationConfig dicts merged over the tracker's refine
setting's base (no global search).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from FluoroRegistrationLib.files import read_poses  # noqa: E402
from FluoroRegistrationLib.geometry import Camera  # noqa: E402
from FluoroRegistrationLib.register import Registration, RegistrationConfig, pose_errors  # noqa: E402

CANDIDATES = {
    "4 levels 2.8-0.35 mm (30, 30, 25, 20), scans >= 1.4 mm": {
        "pyramid": {"pixel_mm": [2.8, 1.4, 0.7, 0.35], "iterations": [30, 30, 25, 20]},
        "depth_scan": {"min_pixel_mm": 1.4}},
    "3 levels 2.8-0.7 mm (15, 20, 20), scans >= 1.4 mm": {
        "pyramid": {"pixel_mm": [2.8, 1.4, 0.7], "iterations": [15, 20, 20]},
        "depth_scan": {"min_pixel_mm": 1.4}},
    "2 levels 1.4-0.7 mm (25, 20), no scan": {
        "pyramid": {"pixel_mm": [1.4, 0.7], "iterations": [25, 20]}, "depth_scan": {"enabled": False}},
    "1 level 0.7 mm (30), no scan": {
        "pyramid": {"pixel_mm": [0.7], "iterations": [30]}, "depth_scan": {"enabled": False},
        "ranking": {"level": 0}},
}


def jobs(track_dir: Path, frames: int) -> list[tuple]:
    """(frame index, bone, predicted (4, 4)) for the first ``frames`` tracked frames."""
    out = []
    for path in sorted((track_dir / "track" / "frames").glob("*.json"))[:frames]:
        record = json.loads(path.read_text())
        for bone, rec in record["bones"].items():
            if not rec.get("cold") and rec.get("predicted") is not None:
                out.append((record["frame"], bone, torch.tensor(rec["predicted"], dtype=torch.float64)))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--track-dir", required=True)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = Path(args.track_dir)
    sim = base / "sim"
    calib = sim / "calib_true.json"
    camera = Camera.from_json(calib)
    todo = jobs(base, args.frames)
    bones = sorted({b for _, b, _ in todo})
    volumes = Registration.from_ct(sim / "phantom" / "ct.nii.gz", sim / "phantom" / "labels.nii.gz", bones).volumes
    rows = []
    for name, override in CANDIDATES.items():
        config = RegistrationConfig.from_dict({"search": {"enabled": False}, **override})
        for frame, bone, predicted in tqdm(todo, desc=name[:24], unit="bone"):
            truth = read_poses(sim / "poses" / f"{frame:04d}.json")[bone]
            reg = Registration({bone: volumes[bone]}, config)
            t0 = time.perf_counter()
            result = reg.register(sim / "frames" / f"{frame:04d}.png", calib, {bone: predicted},
                                  masks={bone: sim / "masks" / f"{frame:04d}_{bone}.png"}).bones[bone]
            seconds = time.perf_counter() - t0
            err = lambda pose: pose_errors(pose, truth, volumes[bone].centroid, volumes[bone].points, camera)["mtre_mm"]  # noqa: E731
            rows.append({"setting": name, "bone": bone, "before": err(predicted), "after": err(result.camera_from_volume),
                         "seconds": seconds})
    lines = [f"Tracked-frame settings from the tracker's predictions: {len(todo)} bone-frames of {base} "
             f"({torch.get_num_threads()} threads)", "",
             "| setting | bone | prediction mTRE mm (median) | after: median / p90 mm | within 1 mm | within 2 mm | s per bone |",
             "|---|---|---|---|---|---|---|"]
    for name in CANDIDATES:
        for bone in bones:
            sel = [r for r in rows if r["setting"] == name and r["bone"] == bone]
            before, after = np.array([r["before"] for r in sel]), np.array([r["after"] for r in sel])
            lines.append(f"| {name} | {bone} | {np.median(before):.2f} | {np.median(after):.2f} / "
                         f"{np.percentile(after, 90):.2f} | {100 * (after < 1).mean():.0f}% | {100 * (after < 2).mean():.0f}% | "
                         f"{np.median([r['seconds'] for r in sel]):.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
