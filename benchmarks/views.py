"""One view against two: runs `benchmarks/views.yaml` with the evaluation harness (the one
registration path, a local Dask cluster, one worker per core) and prints the 1-view vs 2-view table
into `benchmarks/VIEWS_RESULTS.md`: success (mTRE < 1 mm and < 2 mm), median errors of every run
in each direction (in-plane, out-of-plane: along the first view's beam, rotation), capture range
and seconds per bone, per bone and condition, on the same frames and starts.

    .venv/bin/python benchmarks/views.py [--out views_out] [--workers 2] [--config benchmarks/views.yaml]

Rerunning resumes: finished runs in ``--out`` are kept.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def views_table(rows: list[dict], edges: list[float]) -> str:
    """Markdown: per (bone, condition) success at 1 and 2 mm, medians of every run (in-plane,
    out-of-plane, rotation, mTRE), the 95th percentile of the mTRE, capture range and s per bone."""
    from FluoroRegistrationLib.evaluate.summary import summarise

    lines = ["| bone | condition | runs | success < 1 mm | < 2 mm | in-plane mm | out-of-plane mm | rotation deg "
             "| mTRE mm (median / 95th pct) | capture range | s per bone (median) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summarise(rows, edges):
        sel = [r for r in rows if r["bone"] == s["bone"] and r["condition"] == s["condition"]]

        def med(key):
            return float(np.median([r[key] for r in sel])) if sel else math.nan

        p95 = float(np.percentile([r["mtre_mm"] for r in sel], 95)) if sel else math.nan
        reach = s["capture_range_mm"]
        lines.append(f"| {s['bone']} | {s['condition']} | {s['runs']} | {100 * s['success_1mm']:.1f} % "
                     f"| {100 * s['success_2mm']:.1f} % | {med('in_plane_mm'):.3f} | {med('out_of_plane_mm'):.3f} "
                     f"| {med('rotation_deg'):.3f} | {med('mtre_mm'):.3f} / {p95:.2f} "
                     f"| {reach:g} mm{' (all bins)' if reach >= edges[-1] else ''} | {med('seconds'):.1f} |")
    return "\n".join(lines)


def main(argv=None, name: str = "views", results: str = "VIEWS_RESULTS.md", doc: str = __doc__):
    """Run ``benchmarks/<name>.yaml`` through the harness; print and write the table to ``results``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "benchmarks" / f"{name}.yaml"))
    parser.add_argument("--out", default=f"{name}_out")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--serial", action="store_true")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / results),
                        help="where the table is written ('' for nowhere)")
    args = parser.parse_args(argv)

    from FluoroRegistrationLib.evaluate import load_experiment, run_experiment

    exp = load_experiment(args.config)
    t0 = time.perf_counter()
    rows = run_experiment(exp, Path(args.out), workers=args.workers, serial=args.serial)
    wall = time.perf_counter() - t0
    header = (f"Printed by `.venv/bin/python benchmarks/{name}.py` (config `{Path(args.config).name}`, "
              f"{exp.frames.get('simulate', exp.frames)}): {len(rows)} runs, wall time of this invocation "
              f"{wall / 60:.1f} min on {args.workers or 'all'} worker(s); errors in the first view's camera frame, "
              "medians over every run; seconds per bone are each run's own.\n\n")
    from FluoroRegistrationLib.evaluate.summary import status_table, summarise

    text = (header + views_table(rows, exp.bins) + "\n\nThe result status (ok | check | failed) against the truth:\n\n"
            + status_table(summarise(rows, exp.bins)) + "\n")
    if args.results:
        Path(args.results).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
