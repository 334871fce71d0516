"""A tracking run's results in a Slicer scene: each bone's poses as a Sequence of transforms, the frames
as a Sequence of volumes on the detector, the knee kinematics as a table and two plot charts
(angles, translations), browsed together where the Sequences module is loaded.

    track = load_track(slicer.mrmlScene, "squat_track", frames="squat_frames/", calibration="calib.json")
    track.poses["femur"], track.table, track.charts["angles"]
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FluoroRegError
from .sequences import browse, frames_to_sequence, poses_to_sequence

ANGLES = ("flexion_deg", "adduction_deg", "internal_rotation_deg")
TRANSLATIONS = ("lateral_mm", "anterior_mm", "distraction_mm")


@dataclass
class TrackNodes:
    """poses: {bone: Sequence of transforms}; frames: Sequence of volumes (or None); table: the
    kinematics (vtkMRMLTableNode, or None without kinematics.csv); charts: {"angles", "translations"};
    browser: the Sequence Browser (None in plain MRML)."""

    poses: dict = field(default_factory=dict)
    frames: object = None
    table: object = None
    charts: dict = field(default_factory=dict)
    browser: object = None


def read_track_records(out) -> list[dict]:
    """The frame records of a tracking output folder, in frame order."""
    folder = Path(out) / "frames"
    if not folder.is_dir():
        raise FluoroRegError(f"{out} holds no tracking results (no frames/ folder); give the --out of fluororeg track")
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def load_track(scene, out, frames=None, calibration=None, fps: float | None = None) -> TrackNodes:
    """Add a tracking output folder's results to ``scene`` (see the module docstring); ``frames`` and
    ``calibration``: the sequence and its calibration, to add the frames too (the first calibration
    for all)."""
    records = read_track_records(out)
    nodes = TrackNodes()
    count = 1 + max(r["frame"] for r in records) if records else 0
    values = [str(i) for i in range(count)]
    bones = sorted({b for r in records for b in r.get("bones", {})})
    by_frame = {r["frame"]: r for r in records}
    for bone in bones:
        poses = [None if i not in by_frame or bone not in by_frame[i].get("bones", {}) or
                 by_frame[i]["bones"][bone]["flag"] == "failed" else by_frame[i]["bones"][bone]["camera_from_volume"]
                 for i in range(count)]
        nodes.poses[bone] = poses_to_sequence(scene, poses, f"{bone} poses", values)
    if frames is not None:
        if calibration is None:
            raise FluoroRegError("frames need their calibration to lie on the detector; pass calibration=")
        from ..track.sequence import FrameSequence

        sequence = FrameSequence.open(frames, fps)
        nodes.frames = frames_to_sequence(scene, np.stack([sequence.read(i) for i in range(sequence.count)]),
                                          calibration, "fluoroscopy")
    kinematics = Path(out) / "kinematics.csv"
    if kinematics.is_file():
        nodes.table, nodes.charts = kinematics_nodes(scene, kinematics)
    sequences = ([nodes.frames] if nodes.frames is not None else []) + list(nodes.poses.values())
    nodes.browser = browse(scene, sequences) if sequences else None
    return nodes


def kinematics_nodes(scene, path):
    """kinematics.csv as a table node and two plot charts (angles, translations) against time (s)."""
    import vtk

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "knee kinematics")
    columns = ["time_s", *ANGLES, *TRANSLATIONS]
    for name in columns:
        array = vtk.vtkDoubleArray()
        array.SetName(name)
        for row in rows:
            array.InsertNextValue(float(row["time_ms"]) / 1000.0 if name == "time_s" else float(row[name]))
        table.AddColumn(array)
    charts = {}
    for chart_name, names, unit in (("angles", ANGLES, "deg"), ("translations", TRANSLATIONS, "mm")):
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"knee {chart_name}")
        chart.SetXAxisTitle("time (s)")
        chart.SetYAxisTitle(unit)
        for name in names:
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", name)
            series.SetAndObserveTableNodeID(table.GetID())
            series.SetXColumnName("time_s")
            series.SetYColumnName(name)
            series.SetPlotType(series.PlotTypeScatter)
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
        charts[chart_name] = chart
    return table, charts
