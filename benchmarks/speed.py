"""Where registration spends its time, and how the time grows: the profile behind issue "Speed".

    .venv/bin/python benchmarks/speed.py [--sim-dir DIR] [--out benchmarks/SPEED_RESULTS.md]
        [--plot Resources/speed_scaling.png] [--no-scaling] [--threads 2]

Everything runs through the one registration path (``Registration.register``, what ``fluororeg
register``, the Python API, the Slicer module and the tracker call), on the built-in phantom:

1. **Profile**: a simulated lateral frame (512 px of 0.5 mm, medium realism); a *cold* two-bone
   registration (the default ``RegistrationConfig``, starts about 10 mm / 8 deg off, true masks) and
   a *tracked* frame (the tracker's refine configuration ``TRACK_REFINE`` from a prediction about
   2 mm / 2 deg off). Each stage's seconds split into render, similarity, backward (from the stage
   logs' ``parts``, :mod:`FluoroRegistrationLib.register.timing`) and the rest (Python, the
   optimiser, bookkeeping).
2. **Scaling** (a plot): seconds per bone, cold and tracked, against the detector (256 px of
   1.35 mm, 512 px of 0.5 mm, 1024 px of 0.2 mm) for two CT grids (0.5 mm isotropic and a clinical
   0.7 x 0.7 x 2.5 mm grid, both resampled from the phantom); render time per pose against the
   batch size; seconds against the number of bones.

Errors (mTRE, docs/CONVENTIONS.md) are printed beside the times so a faster setting that lands
worse shows at once.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from FluoroRegistrationLib.evaluate.starts import random_offset  # noqa: E402
from FluoroRegistrationLib.files import read_poses  # noqa: E402
from FluoroRegistrationLib.geometry import Camera, CentredParameterization  # noqa: E402
from FluoroRegistrationLib.register import Registration, pose_errors  # noqa: E402
from FluoroRegistrationLib.register.timing import PARTS  # noqa: E402

BONES = ("femur", "tibia")


def perturbed_starts(volumes, truth: dict, mm: float, deg: float, seed: int) -> dict:
    """{bone: pose} ``mm`` / ``deg`` off the truth in a random direction (about the bone's centroid)."""
    g = torch.Generator().manual_seed(seed)
    return {b: CentredParameterization(volumes[b].centroid, pose).pose(random_offset(g, mm, deg))
            for b, pose in truth.items()}


def stage_kind(name: str) -> str:
    """A stage's name without the start it ran for: 'start 2/5: rank 127px' -> 'starts: rank 127px'."""
    return re.sub(r"^(start \d+/\d+|\d+ starts): ", "starts: ", name)


def profile_rows(result) -> list[dict]:
    """One row per stage kind over every bone of a result, in the order they first ran."""
    rows: dict[str, dict] = {}
    for bone in result.bones.values():
        for s in bone.stages:
            row = rows.setdefault(stage_kind(s.name), {"stage": stage_kind(s.name), "runs": 0, "evals": 0,
                                                       "seconds": 0.0, **dict.fromkeys(PARTS, 0.0)})
            row["runs"] += 1
            row["evals"] += s.iterations
            row["seconds"] += s.seconds
            for p in PARTS:
                row[p] += getattr(s, "parts", {}).get(p, 0.0)
    return list(rows.values())


def profile_table(title: str, result, errors: dict) -> str:
    rows = profile_rows(result)
    lines = [f"**{title}**: {result.seconds:.2f} s for {len(result.bones)} bones "
             f"({', '.join(f'{b} {r.seconds:.2f} s, mTRE {errors[b]:.2f} mm' for b, r in result.bones.items())})", "",
             "| stage | runs | poses scored | s | render s | similarity s | backward s | other s | share |",
             "|---|---|---|---|---|---|---|---|---|"]
    total = sum(r["seconds"] for r in rows)
    sums = dict.fromkeys(["seconds", *PARTS], 0.0)
    for r in rows:
        other = r["seconds"] - sum(r[p] for p in PARTS)
        lines.append(f"| {r['stage']} | {r['runs']} | {r['evals']} | {r['seconds']:.3f} | {r['render']:.3f} | "
                     f"{r['similarity']:.3f} | {r['backward']:.3f} | {other:.3f} | {100 * r['seconds'] / total:.0f}% |")
        for k in sums:
            sums[k] += r[k]
    other = sums["seconds"] - sum(sums[p] for p in PARTS)
    outside = result.seconds - sums["seconds"]
    lines.append(f"| **all stages** | | | **{sums['seconds']:.3f}** | {sums['render']:.3f} | {sums['similarity']:.3f} | "
                 f"{sums['backward']:.3f} | {other:.3f} | 100% |")
    lines.append(f"\nOutside the stages (levels' objectives, the final score, the checks): {outside:.3f} s. "
                 f"Shares of all stages: render {100 * sums['render'] / total:.0f}%, similarity "
                 f"{100 * sums['similarity'] / total:.0f}%, backward {100 * sums['backward'] / total:.0f}%, "
                 f"other {100 * other / total:.0f}%.")
    return "\n".join(lines)


def registered(reg: Registration, folder: Path, frame: int, calib: Path, starts: dict, truth: dict):
    """Register one frame through the one path; returns (result, {bone: mTRE mm})."""
    masks = {b: folder / "masks" / f"{frame:04d}_{b}.png" for b in starts}
    result = reg.register(folder / "frames" / f"{frame:04d}.png", calib, starts, masks=masks)
    camera = Camera.from_json(calib)
    errors = {b: pose_errors(r.camera_from_volume, truth[b], reg.volumes[b].centroid, reg.volumes[b].points,
                             camera)["mtre_mm"] for b, r in result.bones.items()}
    return result, errors


def profile(sim: Path, seed: int) -> tuple[str, dict]:
    """The profile tables of a cold and a tracked two-bone frame; returns (markdown, figures)."""
    from FluoroRegistrationLib.simulate.writer import simulate_folder
    from FluoroRegistrationLib.track.tracker import TRACK_REFINE

    if not (sim / "poses.json").is_file():
        simulate_folder(sim, frames=1, seed=seed, realism="medium", flexion_range=(10.0, 60.0))
    ct, labels = sim / "phantom" / "ct.nii.gz", sim / "phantom" / "labels.nii.gz"
    cold = Registration.from_ct(ct, labels, list(BONES))
    tracked = Registration(cold.volumes, TRACK_REFINE, cold.label_ids)
    truth = read_poses(sim / "poses" / "0000.json")
    truth = {b: truth[b] for b in BONES}
    calib = sim / "calib_true.json"
    out, figures = [], {}
    for name, reg, (mm, deg) in (("cold", cold, (10.0, 8.0)), ("tracked", tracked, (2.0, 2.0))):
        registered(reg, sim, 0, calib, perturbed_starts(cold.volumes, truth, 1.0, 1.0, seed + 1), truth)  # warm-up
        result, errors = registered(reg, sim, 0, calib, perturbed_starts(cold.volumes, truth, mm, deg, seed), truth)
        out.append(profile_table(f"{name.capitalize()} two-bone frame (starts {mm:g} mm / {deg:g} deg off)", result,
                                 errors))
        figures[name] = {"seconds": result.seconds, "mtre": errors}
    return "\n\n".join(out), figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sim-dir", help="keep (or reuse) the simulated frames here")
    parser.add_argument("--out", help="also write the tables (Markdown) here")
    parser.add_argument("--plot", default=str(ROOT / "Resources" / "speed_scaling.png"))
    parser.add_argument("--no-scaling", action="store_true", help="the profile only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = Path(args.sim_dir) if args.sim_dir else Path(tempfile.mkdtemp(prefix="fluororeg_speed_"))
    header = (f"Speed profile: torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; "
              f"`{' '.join(['benchmarks/speed.py'] + (argv if argv is not None else sys.argv[1:]))}`")
    print(header, flush=True)
    t0 = time.perf_counter()
    text, _ = profile(base / "profile", args.seed)
    print(text, flush=True)
    parts = [header, text]
    if not args.no_scaling:
        from speed_scaling import scaling  # noqa: E402  (benchmarks/speed_scaling.py)

        table = scaling(base / "scaling", Path(args.plot), args.seed)
        print(table, flush=True)
        parts.append(table)
    print(f"\n(benchmark wall time {time.perf_counter() - t0:.0f} s)")
    if args.out:
        Path(args.out).write_text("# Speed profile\n\n" + "\n\n".join(parts) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
