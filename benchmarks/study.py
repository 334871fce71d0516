"""The study FluoroRegistration builds on, reproduced on the phantom: runs `benchmarks/study.yaml`
with the evaluation harness (a local Dask cluster, one worker per core) and copies its table and
plots into `benchmarks/STUDY_RESULTS.md` and `Resources/`.

    .venv/bin/python benchmarks/study.py [--out study_out] [--workers 2] [--config benchmarks/study.yaml]

Rerunning resumes: finished runs in ``--out`` are kept.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "benchmarks" / "study.yaml"))
    parser.add_argument("--out", default="study_out")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--serial", action="store_true")
    args = parser.parse_args(argv)

    from FluoroRegistrationLib.evaluate import load_experiment, run_experiment, write_report

    exp = load_experiment(args.config)
    out = Path(args.out)
    t0 = time.perf_counter()
    rows = run_experiment(exp, out, workers=args.workers, serial=args.serial)
    wall = time.perf_counter() - t0
    write_report(exp, out, rows)
    text = (out / "summary.md").read_text()
    header = (f"Printed by `.venv/bin/python benchmarks/study.py` (config `benchmarks/study.yaml`): {len(rows)} runs, "
              f"wall time of this invocation {wall / 60:.1f} min (finished runs from an earlier invocation are "
              "reused, not re-timed); seconds per run are each run's own.\n\n")
    (ROOT / "benchmarks" / "STUDY_RESULTS.md").write_text(header + text)
    shutil.copy(out / "success_vs_initial_mtre.png", ROOT / "Resources" / "study_success.png")
    print(header + text)


if __name__ == "__main__":
    main()
