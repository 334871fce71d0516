"""How well the result status (register/status.py) tells failures from successes, on finished
evaluation runs: every row of every ``runs.csv`` under a folder (e.g. a `fluororeg zoo` output) is
judged again from its stored pose, with the current thresholds (RegistrationConfig().checks), and
compared with its truth (mTRE < 2 mm).

    python benchmarks/status_calibration.py /tmp/zoo_out

The evidence is measured as the registration measures it (similarity: the row's, at its finest
level; the bone in the collimated field; coverage of the true mask for runs that had one; depth),
except two things a row does not store: the search box's edge (left out) and the start's view of
the bone, for which the true pose stands in (every start lies within 12 mm of it). Prints, per
condition, how many failures were flagged (``check`` or ``failed``), how many successes were
(false alarms), and which finding fired.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from FluoroRegistrationLib.evaluate.runner import _frame, _scene  # noqa: E402
from FluoroRegistrationLib.register.config import RegistrationConfig  # noqa: E402
from FluoroRegistrationLib.register.status import evidence, judge  # noqa: E402

BONES = ("femur", "tibia")


def judged_rows(folder: Path):
    """(row, status, kind) for every row of ``folder/runs/runs.csv``: kind is ``success``,
    ``gross`` (in-plane > 2 mm or rotation > 5 deg) or ``depth`` (the rest: wrong along the beam)."""
    config = RegistrationConfig()
    with open(folder / "runs" / "runs.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("complete") == "1"]
    volumes, rig = _scene(str(folder), BONES, "true")
    camera = rig.cameras[0]  # the first view: these read single-plane frames
    for row in rows:
        frame, truth, masks = _frame(str(folder), row["frame"], "true", BONES)
        pose = torch.tensor(json.loads(row["camera_from_volume"]), dtype=torch.float64).reshape(4, 4)
        mask = masks[row["bone"]] if row["condition"] == "mask" else None
        ev = evidence(volumes[row["bone"]], camera, pose, float(row["similarity"]), frame.field, mask=mask,
                      similarity_name=config.similarity, initial=truth[row["bone"]])
        status = judge(ev, config.checks)
        if float(row["mtre_mm"]) < 2.0:
            kind = "success"
        elif float(row["in_plane_mm"]) > 2.0 or float(row["rotation_deg"]) > 5.0:
            kind = "gross"
        else:
            kind = "depth"
        yield row, status, kind


def _finding(reason: str) -> str:
    """The kind of a status reason, its numbers dropped."""
    for key in ("similarity", "left the field", "moved out of the field", "its mask overlap", "physical range", "edge"):
        if key in reason:
            return key
    return reason


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="a folder holding */runs/runs.csv (e.g. a zoo output)")
    args = parser.parse_args()
    folders = sorted(p.parent.parent for p in Path(args.root).glob("**/runs/runs.csv"))
    counts = collections.Counter()
    findings = collections.Counter()
    for folder in tqdm(folders, desc="folders"):
        for row, status, kind in judged_rows(folder):
            counts[(row["condition"], kind, status.flag)] += 1
            for reason in status.reasons:
                findings[(kind, _finding(reason))] += 1
    print("| condition | outcome | runs | ok | check | failed | flagged |")
    print("|---|---|---|---|---|---|---|")
    for cond in sorted({c for c, _, _ in counts}):
        for kind in ("success", "gross", "depth"):
            n = [counts[(cond, kind, f)] for f in ("ok", "check", "failed")]
            if sum(n):
                print(f"| {cond} | {kind} | {sum(n)} | {n[0]} | {n[1]} | {n[2]} | {100 * (n[1] + n[2]) / sum(n):.0f} % |")
    print("\nfindings (outcome, first words):")
    for (kind, words), n in findings.most_common():
        print(f"  {kind:8s} {words:25s} {n}")


if __name__ == "__main__":
    main()
