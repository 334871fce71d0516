"""An experiment's outputs beside its runs: ``summary.md`` (the study's table, success per bin,
landscape numbers), ``summary.json``, the plots, and the loss landscapes."""

from __future__ import annotations

import json
from pathlib import Path

from .config import Experiment
from .plots import plot_errors, plot_landscapes, plot_success
from .summary import status_table, success_table, summarise, summary_table


def compute_landscapes(exp: Experiment, folder: Path) -> list[dict]:
    """The config's landscapes: per frame and bone, per condition, six sweeps and the 2D slices."""
    from ..register import RegistrationConfig, similarity_objective
    from .landscape import slice_2d, sweeps
    from .runner import _frame, _scene

    spec = exp.landscape or {}
    volumes, rig = _scene(str(folder), tuple(exp.bones), exp.calibration)
    camera = rig.cameras[0]  # the first view: these read single-plane frames
    half = spec.get("half_range", {"translation_mm": 20.0, "rotation_deg": 15.0})
    points = int(spec.get("points", 41))
    out = []
    for index in spec.get("frames", [0]):
        key = f"{int(index):04d}"
        frame, truth, masks = _frame(str(folder), key, exp.calibration, tuple(exp.bones))
        for bone in spec.get("bones", exp.bones):
            item = {"frame": key, "bone": bone, "conditions": {}}
            for c in exp.conditions:
                config = RegistrationConfig.from_dict(exp.options).merged(c.options)
                mask = masks[bone][None, None] if c.mask == "truth" else None
                objective = similarity_objective(volumes[bone], frame.image, camera, truth[bone], mask, frame.field,
                                                 config, pixel_mm=float(spec.get("pixel_mm", 1.4)))
                item["conditions"][c.name] = {
                    "sweeps": sweeps(objective, half, points),
                    "slices": [slice_2d(objective, tuple(p), half, max(11, points // 2)) for p in spec.get("pairs", [])]}
            out.append(item)
    return out


def landscape_table(landscapes: list[dict]) -> str:
    """Local minima and basin width (deg / mm) along each parameter, per frame, bone and condition."""
    lines = ["| frame | bone | condition | " + " | ".join(f"{a} minima / basin" for a in
                                                         ("rx", "ry", "rz", "tx", "ty", "tz")) + " |",
             "|---|---|---|" + "---|" * 6]
    for item in landscapes:
        for name, c in item["conditions"].items():
            cells = [f"{sw['local_minima']} / {sw['basin_width']:.1f}" for sw in c["sweeps"].values()]
            lines.append(f"| {item['frame']} | {item['bone']} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(exp: Experiment, out: Path, rows: list[dict]) -> dict:
    """Write summary.md / summary.json and plots into ``out`` (the experiment's run folder);
    landscapes too if the config asks."""
    out = Path(out)
    edges = exp.bins
    summary = summarise(rows, edges)
    parts = [f"# {exp.name}", "", f"Runs: {len(rows)} (config: `config.yaml`, every run: `runs.csv`).", "",
             summary_table(summary, edges), "", "Success (mTRE < 2 mm) by initial mTRE (mm):", "",
             success_table(summary, edges), "", "Result status against the truth (docs/CONVENTIONS.md, "
             "\"Result status\"):", "", status_table(summary)]
    plot_success(summary, edges, out / "success_vs_initial_mtre.png")
    plot_errors(rows, out / "errors.png")
    result = {"summary": summary}
    if exp.landscape:
        from .runner import frames_folder

        lands = compute_landscapes(exp, frames_folder(exp, out))
        (out / "landscapes.json").write_text(json.dumps(lands))
        plot_landscapes(lands, out)
        parts += ["", "Loss landscapes (local minima along the sweep / width of the basin around the truth, "
                  "deg for rotations, mm for translations):", "", landscape_table(lands)]
        result["landscapes"] = lands
    (out / "summary.md").write_text("\n".join(parts) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return result
