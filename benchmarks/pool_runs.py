"""Pool the runs of several evaluation folders over the same kind of frames into one table.

    .venv/bin/python benchmarks/pool_runs.py LABEL=OUT_FOLDER [LABEL=OUT_FOLDER ...]

Each ``OUT_FOLDER`` is a ``fluororeg evaluate --out`` folder (its ``runs.csv``); ``LABEL`` names its
set of frames, so frames of different folders stay apart (``seed0/0000``, ``seed1/0000``). Folders
with the same label are one set of frames whose conditions were run separately (the same starts:
same seed and frames). Prints, per bone and condition, the runs, success under 2 mm and 1 mm, the
median mTRE and rotation error of the successes and the median seconds per run, then success per
frame. Used for the cluttered-frame comparison in ``benchmarks/SEGMENT_RESULTS.md``.
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pooled(specs: list[str]) -> list[dict]:
    from FluoroRegistrationLib.errors import FluoroRegError
    from FluoroRegistrationLib.evaluate.runner import read_rows

    rows = []
    for spec in specs:
        label, _, folder = spec.partition("=")
        if not folder:
            raise FluoroRegError(f"give LABEL=FOLDER, got '{spec}'")
        found = read_rows(Path(folder) / "runs.csv")
        if not found:
            raise FluoroRegError(f"no finished runs in {Path(folder) / 'runs.csv'}; run fluororeg evaluate first")
        rows += [{**r, "frame": f"{label}/{r['frame']}"} for r in found]
    return rows


def _median(values) -> str:
    return f"{statistics.median(values):.2f}" if values else "-"


def tables(rows: list[dict]) -> str:
    groups = defaultdict(list)
    for r in rows:
        groups[(r["bone"], r["condition"])].append(r)
    lines = ["| bone | masks | runs | success <2 mm | <1 mm | mTRE mm (median of successes) | rotation deg | s per run |",
             "|---|---|---|---|---|---|---|---|"]
    for (bone, cond), rs in sorted(groups.items()):
        ok = [r for r in rs if r["success_2mm"] == 1]
        lines.append(f"| {bone} | {cond} | {len(rs)} | {100 * len(ok) / len(rs):.1f} % | "
                     f"{100 * sum(r['success_1mm'] == 1 for r in rs) / len(rs):.1f} % | "
                     f"{_median([r['mtre_mm'] for r in ok])} | {_median([r['rotation_deg'] for r in ok])} | "
                     f"{statistics.median(r['seconds'] for r in rs):.1f} |")
    conds = sorted({r["condition"] for r in rows})
    frames = sorted({r["frame"] for r in rows})
    lines += ["", "Success (mTRE < 2 mm) per frame:", "",
              "| bone | frame | " + " | ".join(conds) + " |", "|---|---|" + "---|" * len(conds)]
    for bone in sorted({r["bone"] for r in rows}):
        for frame in frames:
            cells = []
            for c in conds:
                rs = [r for r in rows if r["bone"] == bone and r["frame"] == frame and r["condition"] == c]
                cells.append(f"{100 * sum(r['success_2mm'] == 1 for r in rs) / len(rs):.0f} %" if rs else "-")
            lines.append(f"| {bone} | {frame} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    from FluoroRegistrationLib.errors import FluoroRegError

    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__)
        raise SystemExit(2)
    try:
        print(tables(pooled(args)))
    except FluoroRegError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
