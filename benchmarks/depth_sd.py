"""Is the reported depth sd honest? For every run of an evaluation (`benchmarks/views.py`'s by
default), the depth sd the registration reports (register/depth.py) is computed again at the
run's result, through the same objective, and set against the run's actual error along the first
view's beam: a calibrated sd holds about 68 % of the errors within 1 sd and 95 % within 2.

    .venv/bin/python benchmarks/depth_sd.py [--runs views_out] [--config benchmarks/views.yaml]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def sd_at(row: dict, exp, folder: Path) -> float:
    """The depth sd at a run's result, as the registration computes it at its end."""
    from FluoroRegistrationLib.evaluate.runner import Task, _frame, _mask, _scene, task_rig
    from FluoroRegistrationLib.register import RegistrationConfig, ViewImage
    from FluoroRegistrationLib.register.depth import depth_profile, depth_sd_mm, weighed_pixels
    from FluoroRegistrationLib.register.pipeline import _bone_view, _BoneRegistration

    condition = next(c for c in exp.conditions if c.name == row["condition"])
    task = Task(row["task_id"], row["frame"], row["bone"], condition, {})
    bones = tuple(exp.bones)
    volumes, folder_rig = _scene(str(folder), bones, exp.calibration)
    rig = task_rig(task, folder_rig)
    views = []
    for k, v in enumerate(rig.views):
        frame, _, truth_masks = _frame(str(folder), row["frame"], exp.calibration, bones, k)
        mask = _mask(task, str(folder), bones, truth_masks, k, v.name)
        views.append(ViewImage(v.camera, frame.image, {} if mask is None else {row["bone"]: mask}, frame.field,
                               v.camera_from_reference, v.name))
    pose = torch.tensor(json.loads(row["camera_from_volume"]), dtype=torch.float64).reshape(4, 4)
    bone = volumes[row["bone"]]
    prepared = [_bone_view(v, bone.name, k == 0) for k, v in enumerate(views)]
    config = RegistrationConfig.from_dict(exp.options).merged(condition.options)
    job = _BoneRegistration(bone, prepared, pose, config, None)
    objective = job.level_objective(len(job.levels) - 1)
    at = torch.zeros(6, dtype=torch.float64)
    return depth_sd_mm(*depth_profile(objective, at), weighed_pixels(objective, at))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="views_out")
    parser.add_argument("--config", default=str(ROOT / "benchmarks" / "views.yaml"))
    args = parser.parse_args(argv)
    from FluoroRegistrationLib.evaluate import load_experiment
    from FluoroRegistrationLib.evaluate.runner import frames_folder

    torch.set_num_threads(2)
    exp = load_experiment(args.config)
    out = Path(args.runs)
    with open(out / "runs.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("complete") == "1"]
    by = {}
    for row in rows:
        sd = sd_at(row, exp, frames_folder(exp, out))
        by.setdefault(row["condition"], []).append((float(row["out_of_plane_mm"]), sd))
    lines = ["| condition | runs | median depth sd mm | median out-of-plane error mm | within 1 sd | within 2 sd |",
             "|---|---|---|---|---|---|"]
    for cond, pairs in by.items():
        err, sd = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        lines.append(f"| {cond} | {len(pairs)} | {np.median(sd):.3f} | {np.median(err):.3f} "
                     f"| {100 * np.mean(err <= sd):.0f} % | {100 * np.mean(err <= 2 * sd):.0f} % |")
    print(f"Printed by `.venv/bin/python benchmarks/depth_sd.py --runs {args.runs}`: the depth sd registration "
          "reports, at each run's result, against the run's error along the first view's beam.\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
