"""A small version of benchmarks/register.py in the default suite: realistic simulated frames, random
starts, ground-truth masks, errors against the simulator's ground truth, loose bounds."""

import sys
from pathlib import Path

import pytest

from FluoroRegistrationLib.geometry import Camera

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import register as register_benchmark  # noqa: E402


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """Two medium-realism frames on a 256 x 256 detector (1 mm pixels), femur with its mask, starts up
    to 8 mm / 5 deg per axis, the simulated calibration."""
    camera = Camera(1000.0, 256, 256, 1.0, 1.0)
    # the default pyramid: at 0.7 mm per pixel at the knee its 0.35 mm level is dropped (64, 128, 256 px)
    return register_benchmark.run(frames=2, realism="medium", offset=(8.0, 5.0), seed=3, bones=("femur",),
                                  sim_dir=tmp_path_factory.mktemp("regbench"),
                                  flexion_range=(10.0, 60.0), calibration="true", camera=camera,
                                  conditions=("mask",))


@pytest.mark.slow  # ~1.5 min: the benchmark script end to end (the one path it calls is tested everywhere)
def test_small_benchmark_recovers_the_femur(small_run):
    rows, summary = small_run
    assert len(rows) == 2 and all(r["initial_mtre_mm"] > 2.0 for r in rows)  # the starts were off
    for r in rows:
        # loose: in-plane and rotation are what one view sees well; depth is looser
        assert r["in_plane_mm"] < 0.5 and r["rotation_deg"] < 1.0 and r["mtre_mm"] < 3.0, r
    (s,) = summary
    assert s["bone"] == "femur" and s["n"] == 2 and s["success_2mm"] >= 0.5
    text = register_benchmark.table(summary, "small")
    assert "| femur | mask | 2 |" in text
    for r in rows:  # the phases in order, time growing, and the last one's pose is the result
        labels = [p[0] for p in r["trajectory"]]
        assert labels[:2] == ["search", "starts"] and labels[-1] in ("level 3", "level 4"), labels
        assert all(a[1] <= b[1] for a, b in zip(r["trajectory"], r["trajectory"][1:]))
        assert r["trajectory"][-1][2] == pytest.approx(r["mtre_mm"], abs=1e-9)
    assert "| femur | mask | starts | 2 |" in register_benchmark.trajectory_table(rows)


def test_the_summary_carries_the_calibration_floor():
    rows = [{"bone": "femur", "condition": "mask", "mtre_mm": 1.0, "in_plane_mm": 0.1, "out_of_plane_mm": 1.0,
             "rotation_deg": 0.2, "seconds": 3.0, "floor_mtre_mm": m} for m in (0.5, 2.5)]
    (s,) = register_benchmark.summarise(rows)
    assert s["floor_success_2mm"] == 0.5 and s["floor_mtre_mm_median"] == 1.5
    assert "calibration floor" in register_benchmark.table([s])
