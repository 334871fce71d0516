"""``track_sequence``: a fluoroscopy sequence in, per-frame poses, knee kinematics, their curves and an
overlay animation out. The one tracking path: ``fluororeg track`` and the Python API call it.

    from FluoroRegistrationLib.track import track_sequence
    result = track_sequence("squat_frames/", "ct.nii.gz", "labels.nii.gz", "calib.json", "init.json",
                            out="squat_track", masks="squat_masks/")
    result.paths["kinematics"]   # kinematics.csv
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import FluoroRegError
from ..geometry import Rig
from ..implant.body import parse_implant_spec
from ..register.pipeline import followed
from .run import TrackJob, track, tracker_for
from .sequence import FrameSequence
from .tracker import TrackConfig, flag_counts


@dataclass
class TrackResult:
    """records: every frame's record (docs/CONVENTIONS.md, "Tracking"); kinematics: per frame rows
    (empty without femur and tibia); paths: the files written; seconds, frames_per_second."""

    records: list
    kinematics: list
    paths: dict = field(default_factory=dict)
    seconds: float = 0.0
    smoothed: list | None = None  # the records with low-passed poses (with lowpass_hz)

    @property
    def flags(self) -> dict[str, int]:
        return flag_counts([r for r in self.records if r is not None])


def read_starts(path, keyframe: int = 0) -> dict[int, dict[str, np.ndarray]]:
    """Starts per keyframe from a JSON: a poses file (``{bone: {camera_from_volume}}``) for frame
    ``keyframe``, or ``{"<frame>": {bone: {camera_from_volume}}, ...}`` for several keyframes."""
    from ..files import poses_from_mapping, read_yaml

    path = Path(path)
    data = read_yaml(path, "initial poses file", "give the bones' poses at the keyframe")
    if not isinstance(data, dict) or not data:
        raise FluoroRegError(f"initial poses file {path} must map bones (or keyframe numbers) to poses")
    per_frame = data if all(str(k).isdigit() for k in data) else {str(keyframe): data}
    starts = {int(k): {b: p.numpy() for b, p in poses_from_mapping(poses, f"{path}, keyframe {k}").items()}
              for k, poses in per_frame.items()}
    return starts


def track_sequence(sequence, ct, labels, calib, init, out, bones=("femur", "tibia"), label_names=None, masks=None,
                   model=None, keyframe: int = 0, landmarks=None, side: str = "right", fps: float | None = None,
                   lowpass_hz: float | None = None, workers: int = 0, scheduler: str | None = None,
                   config: TrackConfig | None = None, polarity: str = "auto", progress: bool = True,
                   animation: bool = True, implants=(), joint=("femur", "tibia")) -> TrackResult:
    """Track ``bones`` through ``sequence`` (a folder of frames, a stack file or a video) and write
    into ``out``: frames/NNNNN.json (resumable), poses.csv, kinematics.csv, kinematics.png, overlay.gif.

    Several views (a biplane rig): ``sequence`` a list of synchronised sequences, one per view of the
    rig ``calib`` (its JSON has ``views``), and ``masks`` None, "auto" or a list of folders, one per
    view; poses are in the first view's camera frame and the animation shows the first view.

    init: poses JSON at ``keyframe`` or per keyframe (:func:`read_starts`). masks: None, "auto" (with
    ``model``) or a folder of ``<frame>_labels.png``. landmarks: JSON path (default: approximate ones
    from the labels). joint: the tracked bodies whose knee kinematics are written, the femur's side
    then the tibia's (an implanted knee: e.g. ("femoral", "tray"); see :func:`joint_landmarks`).
    workers: 0 serial, N a local Dask cluster; scheduler: a Dask address."""
    from ..volume import default_label_names

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if masks == "auto" and not model:
        raise FluoroRegError("masks 'auto' needs a segmentation model (--model DIR from `fluororeg segment train`)")
    if side not in ("right", "left"):
        raise FluoroRegError(f"side {side!r}: give right or left")
    if bones and (ct is None or labels is None):
        raise FluoroRegError(f"tracking {', '.join(bones)} needs the CT and its labels (--ct, --labels); "
                             "components alone (--implant) need neither")
    names = label_names if label_names is not None or labels is None else str(default_label_names(labels))
    sequences = [str(s) for s in sequence] if isinstance(sequence, (list, tuple)) else [str(sequence)]
    mask_list = [str(m) for m in masks] if isinstance(masks, (list, tuple)) else None
    if mask_list is not None and len(mask_list) != len(sequences):
        raise FluoroRegError(f"{len(mask_list)} mask folders for {len(sequences)} sequences; give one per view "
                             "(or 'auto')")
    first_masks = mask_list[0] if mask_list else (None if masks is None else str(masks))
    job = TrackJob(sequences[0], None if ct is None else str(ct), None if labels is None else str(labels), names,
                   tuple(bones), str(calib), str(out),
                   first_masks, None if model is None else str(model), fps, polarity,
                   config or TrackConfig(), threads=max(1, torch.get_num_threads()) if workers == 0 else 1,
                   views=tuple(sequences[1:]), view_masks=tuple(mask_list[1:]) if mask_list else (),
                   implants=tuple(str(spec) for spec in implants))
    starts = read_starts(init, keyframe)
    count = FrameSequence.open(job.sequence, fps).count
    specs = [parse_implant_spec(spec) for spec in implants]
    tracked = list(bones) + [s.name for s in specs]
    follower_of = followed({**dict.fromkeys(bones), **{s.name: s for s in specs}}, "track")
    for k, poses in starts.items():
        missing = [b for b in tracked if b not in poses and b not in follower_of]
        if missing or not 0 <= k < count:
            raise FluoroRegError(f"keyframe {k}: " + (f"no start for {', '.join(missing)}" if missing else
                                                      f"outside the sequence's {count} frames"))
    joint = _checked_joint(joint, tracked)
    marks = _joint_marks(joint, landmarks, ct, labels)
    tracker = tracker_for(job)  # inputs checked (CT, labels, calibration, masks) before any work
    t0 = time.perf_counter()
    records = track(job, starts, workers, scheduler, progress)
    result = TrackResult(records, [], seconds=time.perf_counter() - t0)
    _write_outputs(result, tracker, job, marks, side, lowpass_hz, animation, joint)
    return result


def _checked_joint(joint, tracked: list[str]) -> tuple | None:
    """``joint`` as (femur side, tibia side), or None when the default pair is not tracked (no
    kinematics); a named pair that is not tracked is a one-line error."""
    joint = tuple(str(j).strip() for j in joint)
    if len(joint) != 2 or joint[0] == joint[1] or not all(joint):
        raise FluoroRegError(f"joint {','.join(joint)!r}: give the femur's side and the tibia's side, e.g. "
                             "femur,tibia or femoral,tray")
    missing = [j for j in joint if j not in tracked]
    if not missing:
        return joint
    if joint == ("femur", "tibia"):
        return None
    raise FluoroRegError(f"joint {','.join(joint)}: {', '.join(missing)} is not tracked; tracked: "
                         f"{', '.join(tracked)}")


def joint_landmarks(marks: dict, joint: tuple) -> dict:
    """{"femur": ..., "tibia": ...} landmarks for ``joint``'s two bodies: each body's own entry in
    ``marks`` (landmarks in its frame, e.g. a component's CAD frame), else the bone's (a component whose
    mesh lies in the CT's frame, as `fluororeg phantom --implant` writes them, shares its bone's)."""
    out = {}
    for bone, body in zip(("femur", "tibia"), joint):
        if body not in marks and bone not in marks:
            raise FluoroRegError(f"the landmarks have no entry for {body} (or {bone}); add its landmarks "
                                 "(docs/CONVENTIONS.md, kinematics)")
        out[bone] = marks[body] if body in marks else marks[bone]
    return out


def _joint_marks(joint: tuple | None, landmarks, ct, labels) -> dict | None:
    """The landmarks the kinematics of ``joint`` use, read and checked before any tracking: from
    ``landmarks`` (a JSON path), else None (taken from the labels after tracking); errors as one line."""
    if joint is None:
        return None
    if landmarks is None:
        if ct is None or labels is None:
            raise FluoroRegError(f"the kinematics of {','.join(joint)} need landmarks: give --landmarks (or --ct "
                                 "and --labels when the meshes lie in the CT's frame)")
        return None
    from ..kinematics import read_landmarks

    marks = read_landmarks(landmarks, ())
    joint_landmarks(marks, joint)
    return marks


def _write_outputs(result: TrackResult, tracker, job: TrackJob, marks: dict | None, side, lowpass_hz, animation,
                   joint: tuple | None = ("femur", "tibia")) -> None:
    """poses.csv (and low-passed), the kinematics of ``joint`` with ``marks`` (None: landmarks from
    the job's labels), the animation."""
    from ..kinematics import landmarks_from_labels
    from ..volume import load_ct, load_labels, read_label_names
    from .outputs import knee_kinematics, overlay_gif, plot_kinematics, write_kinematics_csv, write_poses_csv

    from .smoothing import smooth_records

    out = Path(job.out)
    write_poses_csv(out / "poses.csv", result.records)
    result.paths["poses"] = out / "poses.csv"
    volumes = tracker.cold.volumes
    if lowpass_hz:
        result.smoothed = smooth_records(result.records, tracker.centres, lowpass_hz)
        write_poses_csv(out / "poses_smoothed.csv", result.smoothed)
        result.paths["poses_smoothed"] = out / "poses_smoothed.csv"
    if joint is not None:
        if marks is None:
            labels = load_labels(job.labels, load_ct(job.ct))
            marks = landmarks_from_labels(labels, read_label_names(job.label_names), side)
            (out / "landmarks.json").write_text(json.dumps(marks, indent=1))
            result.paths["landmarks"] = out / "landmarks.json"
        result.kinematics = knee_kinematics(result.smoothed or result.records, joint_landmarks(marks, joint), side,
                                            volumes[joint[0]].surface.cpu().numpy(), joint)
        write_kinematics_csv(out / "kinematics.csv", result.kinematics)
        plot_kinematics(out / "kinematics.png", result.kinematics,
                        f"{side} knee ({joint[0]} / {joint[1]}), {len(result.kinematics)} frames")
        result.paths.update(kinematics=out / "kinematics.csv", curves=out / "kinematics.png")
    if animation:
        overlay_gif(out / "overlay.gif", tracker.sequence, result.records, _outline_maker(tracker))
        result.paths["animation"] = out / "overlay.gif"


def _outline_maker(tracker):
    from ..render import project_label

    ids = {b: i + 1 for i, b in enumerate(tracker.cold.volumes)}

    def outlines(index: int, record: dict):
        camera = tracker.camera_for(index)
        camera = camera.cameras[0] if isinstance(camera, Rig) else camera  # the animation shows the first view
        labels, best = np.zeros(camera.shape, np.int32), np.zeros(camera.shape)
        for bone, b in record["bones"].items():
            with torch.no_grad():
                chord = project_label(tracker.cold.volumes[bone], camera,
                                      torch.tensor(b["camera_from_volume"], dtype=torch.float32))[0, 0].numpy()
            wins = (chord > 0) & (chord > best)
            labels[wins], best[wins] = ids[bone], chord[wins]
        return labels, {ids[b]: r["flag"] for b, r in record["bones"].items()}
    return outlines
