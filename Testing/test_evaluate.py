"""The evaluation harness: start poses hit their mTRE bins, summaries against hand-made rows, loss
landscape numbers on known curves, config errors, and a tiny experiment run serially, resumed after a
crash, and on a local Dask cluster of 2 workers (same results)."""

import csv
import math

import pytest
import torch

from FluoroRegistrationLib import FluoroRegError
from FluoroRegistrationLib.cli import main
from FluoroRegistrationLib.evaluate import capture_range, run_experiment, summarise, write_report
from FluoroRegistrationLib.evaluate.config import experiment_from_dict, load_experiment
from FluoroRegistrationLib.evaluate.landscape import basin_width, local_minima
from FluoroRegistrationLib.evaluate.runner import read_rows
from FluoroRegistrationLib.evaluate.starts import mtre_of_offset, start_offsets
from FluoroRegistrationLib.geometry import CentredParameterization, lateral_view

F64 = torch.float64


def test_starts_land_in_their_mtre_bins_and_axes_move_one_parameter():
    centre = torch.tensor([0.0, 0.0, 24.0], dtype=F64)
    points = torch.randn(500, 3, generator=torch.Generator().manual_seed(0), dtype=F64) * 25 + centre
    par = CentredParameterization(centre, lateral_view(centre, 700.0))
    starts = start_offsets(par, points, [0, 2, 5, 10], 3, torch.Generator().manual_seed(1),
                           {"translation_mm": [4.0], "rotation_deg": [6.0]})
    binned = [s for s in starts if s["kind"] == "bin"]
    assert len(binned) == 9 and len(starts) == 15
    for s in binned:
        m = float(mtre_of_offset(par, points, torch.tensor([s["x"]], dtype=F64))[0])
        assert s["bin_lo"] <= m < s["bin_hi"] and m == pytest.approx(s["value"], abs=1e-6)
    for s in starts[9:]:
        x = torch.tensor(s["x"], dtype=F64)
        i = ("rx", "ry", "rz", "tx", "ty", "tz").index(s["axis"])
        assert torch.count_nonzero(x) == 1 and x[i] != 0
        assert abs(float(x[i])) == pytest.approx(4.0 if i >= 3 else math.radians(6.0))


def test_capture_range_is_the_run_of_bins_from_zero_at_95_percent():
    assert capture_range([0, 2, 4, 6, 8], [1.0, 0.96, 0.9, 1.0]) == 4
    assert capture_range([0, 2, 4], [0.5, 1.0]) == 0
    assert capture_range([0, 2, 4], [1.0, math.nan]) == 2


def test_summary_of_hand_made_rows():
    def row(bone, cond, lo, ok, axis="", value=0.0, kind="bin"):
        return {"bone": bone, "condition": cond, "kind": kind, "bin_lo": lo, "bin_hi": lo + 2, "axis": axis,
                "value": value, "success_2mm": ok, "success_1mm": ok, "in_plane_mm": 0.1, "out_of_plane_mm": 0.5,
                "translation_mm": 0.6, "rotation_deg": 0.2, "mtre_mm": 0.5 if ok else 9.0, "seconds": 3.0}
    rows = [row("femur", "mask", 0, 1), row("femur", "mask", 0, 1), row("femur", "mask", 2, 1), row("femur", "mask", 2, 0),
            row("femur", "mask", 0, 1, "tx", 5.0, "axis"), row("femur", "mask", 0, 0, "tx", 10.0, "axis")]
    (s,) = summarise(rows, [0, 2, 4])
    assert s["success_per_bin"] == [1.0, 0.5] and s["capture_range_mm"] == 2 and s["success_2mm"] == 0.75
    assert s["axis_capture"] == {"tx": 5.0} and s["mtre_mm"] == 0.5 and s["runs"] == 6 and s["binned_runs"] == 4


def test_landscape_numbers_on_known_curves():
    x = torch.linspace(-10, 10, 21, dtype=F64)
    bowl = x ** 2
    assert local_minima(bowl) == 1 and basin_width(x, bowl) == pytest.approx(20.0)
    wavy = x ** 2 / 50 + torch.cos(x * math.pi / 2)  # minima every 4 units, the truth at a maximum of cos
    assert local_minima(wavy) >= 4
    assert basin_width(x, wavy) < 5


def test_config_errors_are_one_line_and_name_the_fix(tmp_path):
    with pytest.raises(FluoroRegError, match="either 'folder'"):
        experiment_from_dict({"frames": {}})
    with pytest.raises(FluoroRegError, match="options: unknown key.*learning_rat; allowed: axial_probe"):
        experiment_from_dict({"frames": {"folder": "x"}, "options": {"learning_rat": 1}})
    with pytest.raises(FluoroRegError, match=r"Pyramid.learning_rate = -1 is out of range; allowed > 0"):
        experiment_from_dict({"frames": {"folder": "x"}, "options": {"pyramid": {"learning_rate": -1}}})
    with pytest.raises(FluoroRegError, match=r"Pyramid.patience = 0 is out of range; allowed >= 1"):
        experiment_from_dict({"frames": {"folder": "x"}, "options": {"pyramid": {"patience": 0}}})
    with pytest.raises(FluoroRegError, match=r"Pyramid.retries = -1 is out of range; allowed >= 0 and <= 10"):
        experiment_from_dict({"frames": {"folder": "x"}, "options": {"pyramid": {"retries": -1}}})
    assert experiment_from_dict({"frames": {"folder": "x"}, "options": {"pyramid": {"retries": 0}}}) is not None
    with pytest.raises(FluoroRegError, match="Pyramid.iterations has 1 entries but pixel_mm has 4 levels"):
        experiment_from_dict({"frames": {"folder": "x"}, "conditions": [
            {"name": "a", "options": {"pyramid": {"iterations": [5]}}}]})
    with pytest.raises(FluoroRegError, match="level \\(px\\) is now pixel_mm"):
        experiment_from_dict({"frames": {"folder": "x"}, "landscape": {"level": 128}})
    # the documented `calibration: true` (a YAML boolean) is the true calibration
    assert experiment_from_dict({"frames": {"folder": "x"}, "calibration": True}).calibration == "true"
    assert experiment_from_dict({"frames": {"folder": "x"}, "calibration": False}).calibration == "nominal"
    with pytest.raises(FluoroRegError, match=r"conditions\[0\].mask = .auto\?. is not one of truth, none, predicted"):
        experiment_from_dict({"frames": {"folder": "x"}, "conditions": [{"name": "a", "mask": "auto?"}]})
    with pytest.raises(FluoroRegError, match="must rise from 0"):
        experiment_from_dict({"frames": {"folder": "x"}, "starts": {"mtre_bins_mm": [2, 4]}})
    with pytest.raises(FluoroRegError, match="not found"):
        load_experiment(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(FluoroRegError, match="not valid YAML"):
        load_experiment(tmp_path / "bad.yaml")


TINY = {
    "name": "tiny", "seed": 1, "bones": ["femur"],
    "frames": {"simulate": {"count": 1, "realism": "low", "flexion_range": [20, 40],
                            "camera": {"sdd_mm": 1000.0, "rows": 128, "cols": 128,
                                       "row_spacing_mm": 2.0, "col_spacing_mm": 2.0}}},
    "starts": {"mtre_bins_mm": [0, 3, 6], "per_bin": 1, "per_axis": {"translation_mm": [4.0]}},
    "conditions": [{"name": "mask", "mask": "truth"}, {"name": "no mask", "mask": "none"}],
    "options": {"pyramid": {"pixel_mm": [5.6, 2.8, 1.4], "iterations": [20, 20, 15]},
                "search": {"steps": 5, "candidates": 8}, "ranking": {"starts": 2}},
    "landscape": {"frames": [0], "points": 9, "pairs": [[3, 4]], "pixel_mm": 2.8},
}


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_serial")
    exp = experiment_from_dict(TINY)
    rows = run_experiment(exp, out, serial=True, progress=False)
    return exp, out, rows


def test_tiny_experiment_writes_every_run_and_a_report(serial_run):
    exp, out, rows = serial_run
    # 1 frame x 1 bone x (2 bins + 3 axes) x 2 conditions
    assert len(rows) == 10 and len({r["task_id"] for r in rows}) == 10
    assert (out / "config.yaml").is_file() and load_experiment(out / "config.yaml").to_dict() == exp.to_dict()
    for r in rows:
        assert r["initial_mtre_mm"] > 0 and r["seconds"] > 0 and r["mtre_mm"] >= 0
        # the true pose's similarity, at the level the result's is measured: near the result's when it succeeds
        assert 0 < r["truth_similarity"] <= 1
        if r["mtre_mm"] < 0.5:
            assert abs(r["truth_similarity"] - r["similarity"]) < 0.05, r
    result = write_report(exp, out, rows)
    text = (out / "summary.md").read_text()
    assert "| femur | mask |" in text and "| femur | no mask |" in text and "minima / basin" in text
    for name in ("success_vs_initial_mtre.png", "errors.png", "landscape_0000_femur.png", "landscapes.json"):
        assert (out / name).stat().st_size > 0, name
    sweeps = result["landscapes"][0]["conditions"]["mask"]["sweeps"]
    # the similarity peaks at (or next to) the truth along the in-plane translations
    for axis in ("tx", "ty"):
        sim = sweeps[axis]["similarity"]
        assert abs(sim.index(max(sim)) - len(sim) // 2) <= 1


def test_rerun_after_a_crash_resumes(serial_run, tmp_path):
    exp, out, rows = serial_run
    lines = (out / "runs.csv").read_text().splitlines()
    (tmp_path / "frames_sim").symlink_to(out / "frames_sim", target_is_directory=True)
    # a crash after 7 runs, the 8th half written
    (tmp_path / "runs.csv").write_text("\n".join(lines[:8]) + "\n" + lines[8][: len(lines[8]) // 2])
    assert len(read_rows(tmp_path / "runs.csv")) == 7
    again = run_experiment(exp, tmp_path, serial=True, progress=False)
    assert sorted(r["task_id"] for r in again) == sorted(r["task_id"] for r in rows)
    with open(tmp_path / "runs.csv", newline="") as f:
        assert sum(1 for _ in csv.DictReader(f)) >= 10


@pytest.mark.slow  # ~40 s: starts a local Dask cluster; the serial runner is what every other test drives
def test_a_local_dask_cluster_gives_the_serial_results(serial_run, tmp_path):
    pytest.importorskip("dask.distributed")
    exp, out, rows = serial_run
    (tmp_path / "frames_sim").symlink_to(out / "frames_sim", target_is_directory=True)
    parallel = run_experiment(exp, tmp_path, workers=2, progress=False)
    by_id = {r["task_id"]: r for r in rows}
    assert len(parallel) == len(rows)
    for r in parallel:
        s = by_id[r["task_id"]]
        assert r["mtre_mm"] == pytest.approx(s["mtre_mm"], abs=1e-9) and r["camera_from_volume"] == s["camera_from_volume"]


def test_resuming_with_another_config_is_refused(serial_run):
    exp, out, rows = serial_run
    other = experiment_from_dict({**TINY, "seed": 2})
    with pytest.raises(FluoroRegError, match="different experiment config"):
        run_experiment(other, out, serial=True, progress=False)


def test_evaluate_command_reports_bad_config(tmp_path, capsys):
    (tmp_path / "e.yaml").write_text("frames: {}\n")
    assert main(["evaluate", "--config", str(tmp_path / "e.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "either 'folder'" in capsys.readouterr().err
