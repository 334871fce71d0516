"""Implant components: runs `benchmarks/implants.yaml` with the evaluation harness (the one
registration path: each component drawn from its mesh, `fluororeg register --implant` does the same)
and prints the table into `benchmarks/IMPLANT_RESULTS.md`: success (mTRE < 1 mm and < 2 mm), median
in-plane, out-of-plane (along the beam) and rotation errors, capture range and seconds, per component
and mask condition, on simulated frames of the procedural total knee.

    .venv/bin/python benchmarks/implants.py [--out implants_out] [--workers 2]

Rerunning resumes: finished runs in ``--out`` are kept.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from views import main as run_table  # noqa: E402 - the same runner and table as the views benchmark

if __name__ == "__main__":
    run_table(name="implants", results="IMPLANT_RESULTS.md", doc=__doc__)
