"""Tracking bones through a fluoroscopy sequence, frame by frame, resumable.

A keyframe is registered cold (the one registration path with its global search) from the user's
start. Each later frame (forward, or backward from the first keyframe) starts from a constant-
velocity prediction of the bone's last two poses and is refined without the global search
(:data:`TRACK_REFINE`). When a refined frame's confidence is not ``ok`` the frame is registered
cold from the prediction as well, and the result with the higher similarity is kept (lost-track
recovery). Every finished frame is written at once to ``out/frames/NNNNN.json`` (written whole, then
renamed): a run that is killed continues at the first unfinished frame and repeats nothing.

A chunk (a keyframe and the frames it seeds, up to the next keyframe) depends only on its
keyframe's record and the frames, so chunks run in any order or in parallel (:mod:`.run`) and give
the same poses as a serial run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import FluoroRegError
from ..geometry import Camera, rotation_from_rotvec, rotvec_from_rotation
from ..register import DepthScan, GlobalSearch, Pyramid, Registration, RegistrationConfig
from ..register.status import UNPINNED
from .confidence import RANK, TrackChecks, judge_frame, worst
from .sequence import FrameSequence

# from a prediction a frame away: no global search, the pyramid with fewer iterations, depth scanned
# only before the coarse levels (at the fine ones a scan costs as much as the refinement there)
# The 0.35 mm level stays: without it (2.8-0.7 mm, (15, 20, 20)) a tracked frame took 1.4 s instead of
# about 3 s, and single frames from the tracker's predictions scored the same (benchmarks/track_step.py),
# but over a sequence the errors carried into the next predictions: within 1 mm fell from 69 to 47 %
# (benchmarks/track.py, 120 frames)
TRACK_REFINE = RegistrationConfig(search=GlobalSearch(enabled=False),
                                  pyramid=Pyramid(iterations=(30, 30, 25, 20)),
                                  depth_scan=DepthScan(min_pixel_mm=1.4))


@dataclass(frozen=True)
class TrackConfig:
    """cold: keyframes and recoveries; refine: every other frame; recover: re-run a frame that is
    not ok cold from its prediction and keep the better."""

    cold: RegistrationConfig = field(default_factory=RegistrationConfig)
    refine: RegistrationConfig = TRACK_REFINE
    checks: TrackChecks = field(default_factory=TrackChecks)
    recover: bool = True

    def __post_init__(self):
        # the bones' volumes (and their contexts) are built once per sequence, from the cold config
        if self.refine.context_mm is not None and self.refine.context_mm != self.cold.context_mm:
            raise FluoroRegError(f"tracking builds every frame's bones once, from the cold config: refine context "
                                 f"{self.refine.context} needs the CT {self.refine.context_mm:g} mm around each bone, "
                                 f"cold context {self.cold.context} holds "
                                 + ("none" if self.cold.context_mm is None else f"{self.cold.context_mm:g} mm")
                                 + "; give both the same context margin_mm (or refine choice off)")

    @classmethod
    def from_dict(cls, d: dict | None, where: str = "tracking config") -> "TrackConfig":
        """From nested dicts (a YAML file): ``cold`` and ``refine`` as registration configs merged over
        their defaults, ``checks`` (TrackChecks fields), ``recover``; unknown keys fail in one line."""
        import dataclasses

        d = d or {}
        if not isinstance(d, dict):
            raise FluoroRegError(f"{where} must be a mapping with cold, refine, checks, recover; got {d!r}")
        unknown = sorted(set(d) - {"cold", "refine", "checks", "recover"})
        if unknown:
            raise FluoroRegError(f"{where}: unknown key(s) {', '.join(unknown)}; use cold, refine, checks, recover")
        checks = d.get("checks") or {}
        names = {f.name for f in dataclasses.fields(TrackChecks)}
        if not isinstance(checks, dict) or set(checks) - names:
            raise FluoroRegError(f"{where}: checks takes {', '.join(sorted(names))}; got {checks!r}")
        if not isinstance(d.get("recover", True), bool):
            raise FluoroRegError(f"{where}: recover must be true or false, got {d['recover']!r}")
        return cls(RegistrationConfig().merged(d.get("cold"), f"{where}, cold"),
                   TRACK_REFINE.merged(d.get("refine"), f"{where}, refine"), TrackChecks(**checks),
                   d.get("recover", True))


def frame_path(out: Path, index: int) -> Path:
    return Path(out) / "frames" / f"{index:05d}.json"


def read_record(out: Path, index: int) -> dict | None:
    path = frame_path(out, index)
    return json.loads(path.read_text()) if path.is_file() else None


def write_record(out: Path, record: dict) -> None:
    """Write a frame's record whole (a temporary file renamed), so a kill never leaves half a file."""
    path = frame_path(out, record["frame"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def predict(history: list[dict], bone: str, time_ms: float, centre_volume: np.ndarray) -> np.ndarray | None:
    """Constant-velocity prediction of ``bone``'s pose at ``time_ms`` from its last two poses that did
    not fail, about the bone's centre: its centre moves on, its rotation turns on, each scaled by the
    time step; the last pose when only one is known; None when none is. (Frames flagged check are
    used: predicting from older ok frames over a growing gap drifts away, measured on the benchmark;
    a wrong check frame costs the next frame a recovery instead.)"""
    known = [(r["time_ms"], np.asarray(r["bones"][bone]["camera_from_volume"])) for r in history
             if bone in r.get("bones", {}) and r["bones"][bone]["flag"] != "failed"][-2:]
    if not known:
        return None
    t1, p1 = known[-1]
    if len(known) == 1 or known[1][0] == known[0][0]:
        return p1
    t0, p0 = known[0]
    s = (time_ms - t1) / (t1 - t0)
    c = np.asarray(centre_volume, np.float64)
    c0, c1 = p0[:3, :3] @ c + p0[:3, 3], p1[:3, :3] @ c + p1[:3, 3]
    turn = rotvec_from_rotation(torch.as_tensor(p1[:3, :3] @ p0[:3, :3].T))
    R = rotation_from_rotvec(turn * s).numpy() @ p1[:3, :3]
    centre = c1 + s * (c1 - c0)
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = R, centre - R @ c
    return out


class Tracker:
    """Tracks the bones of ``cold.volumes`` through ``sequence`` into ``out``.

    cameras: one Camera or Rig, or a function index -> Camera (a calibration per frame). masks: a
    function index -> what :meth:`Registration.register` takes as masks (None, "auto", a label map
    path). model: the segmentation model for "auto" masks (loaded once). views: the further views'
    sequences of a rig (biplane: one), frame ``i`` of each taken at the same instant as ``sequence``'s;
    view_masks: one masks function per further view (default: none, or "auto" when ``masks`` is)."""

    def __init__(self, sequence: FrameSequence, cold: Registration, refine: Registration, cameras, out,
                 masks=None, model=None, config: TrackConfig | None = None, polarity: str = "auto", views=(),
                 view_masks=()):
        self.sequence, self.cold, self.refine, self.out = sequence, cold, refine, Path(out)
        self.camera_for = cameras if callable(cameras) else (lambda i: cameras)
        self.masks_for = masks or (lambda i: None)
        self.views = list(views)
        for k, view in enumerate(self.views):
            if view.count != sequence.count:
                raise FluoroRegError(f"view {k + 2}'s sequence has {view.count} frames but the first view's has "
                                     f"{sequence.count}; give synchronised sequences, one frame per instant")
        self.view_masks_for = list(view_masks) or [lambda i: "auto" if self.masks_for(i) == "auto" else None
                                                   for _ in self.views]
        self.model, self.polarity = model, polarity
        self.config = config or TrackConfig()
        self.centres = {b: v.centroid.double().cpu().numpy() for b, v in cold.volumes.items()}
        self.on_frame = None  # called with each finished record (progress bars)

    # ------------------------------------------------------------------------------------ frames
    def keyframe(self, index: int, initial: dict) -> dict:
        """Register frame ``index`` cold from ``initial`` ({bone: (4, 4)}) unless it is done already."""
        done = read_record(self.out, index)
        if done is not None:
            return done
        return self._finish(self._register(index, initial, cold=True, keyframe=True), [])

    def chunk(self, start: int, stop: int, step: int) -> list[dict]:
        """Frames ``start + step, ...`` up to ``stop`` (exclusive), seeded by frame ``start``'s record
        (which must exist): each from its prediction, refined, recovered when not ok."""
        seed = read_record(self.out, start)
        if seed is None:
            raise FluoroRegError(f"frame {start} has no record in {self.out}; register the keyframe first")
        if not seed.get("bones"):
            raise FluoroRegError(f"frame {start}, where tracking starts, has no poses ({seed.get('error', 'failed')}); "
                                 "fix it or start from another keyframe (--keyframe)")
        history, done = [seed], []
        for index in range(start + step, stop, step):
            record = read_record(self.out, index)
            if record is None:
                record = self._track(index, history)
            history.append(record)
            done.append(record)
        return done

    def _track(self, index: int, history: list[dict]) -> dict:
        t = self.sequence.time_ms(index)
        prediction = {}
        for b in self.cold.volumes:
            p = predict(history, b, t, self.centres[b])
            prediction[b] = p if p is not None else np.asarray(history[0]["bones"][b]["camera_from_volume"])
        record = self._register(index, prediction, cold=False)
        if record.get("error") is None:
            record = self._judge(record, history)
            if self.config.recover and any(_worth_recovering(b) for b in record["bones"].values()):
                record = self._recover(index, prediction, record, history)
        return self._finish(record, history, judged=True)

    def _recover(self, index: int, prediction: dict, record: dict, history: list[dict]) -> dict:
        """Register cold from the prediction; per bone keep the result with the higher similarity."""
        again = self._judge(self._register(index, prediction, cold=True), history)
        for bone, result in again.get("bones", {}).items():
            if result["similarity"] > record["bones"][bone]["similarity"]:
                record["bones"][bone] = {**result, "recovered": True}
        record["flag"] = worst(*(r["flag"] for r in record["bones"].values()))
        return record

    # ------------------------------------------------------------------------------------ steps
    def _register(self, index: int, initial: dict, cold: bool, keyframe: bool = False) -> dict:
        t0 = time.perf_counter()
        record = {"frame": index, "time_ms": self.sequence.time_ms(index), "name": self.sequence.name(index),
                  "keyframe": keyframe}
        try:
            raw, masks = self._inputs(index)
            registration = self.cold if cold else self.refine
            result = registration.register(raw, self.camera_for(index), {b: torch.as_tensor(p) for b, p in initial.items()},
                                           masks=masks, model=self.model, polarity=self.polarity)
        except FluoroRegError as err:  # an unreadable or refused frame: recorded by index, tracking goes on
            return {**record, "error": str(err), "flag": "failed", "bones": {}, "seconds": time.perf_counter() - t0}
        record["bones"] = {b: {"camera_from_volume": r.camera_from_volume.tolist(), "similarity": r.similarity,
                               "status": r.status.flag, "reason": r.status.reason, "stop_reason": r.stop_reason,
                               "predicted": np.asarray(initial.get(b, r.camera_from_volume)).tolist(), "cold": cold, "recovered": False,
                               "flag": r.status.flag, "reasons": list(r.status.reasons),
                               **{k: v for k, v in r.to_dict().items() if k in ("depth_sd_mm", "tilt_sd_deg", "tilt_axis")}}
                           for b, r in result.bones.items()}
        record["seconds"] = time.perf_counter() - t0
        return record

    def _inputs(self, index: int):
        """Frame ``index`` and its masks: as :meth:`Registration.register` takes them for one view,
        or one per view (lists) for a rig ("auto" stays one word for every view)."""
        raw, masks = self.sequence.read(index), self.masks_for(index)
        if not self.views:
            return raw, masks
        frames = [raw] + [view.read(index) for view in self.views]
        per_view = [masks] + [m(index) for m in self.view_masks_for]
        if all(m == "auto" for m in per_view):
            return frames, "auto"
        return frames, per_view

    def _judge(self, record: dict, history: list[dict]) -> dict:
        previous = next((h for h in reversed(history) if h.get("bones")), None)
        dt = abs(record["time_ms"] - previous["time_ms"]) / 1000.0 if previous else 0.0
        for bone, result in record.get("bones", {}).items():
            past = [{**h["bones"][bone], "time_ms": h["time_ms"]} for h in history if bone in h.get("bones", {})]
            result["flag"], result["reasons"] = judge_frame(result, past, dt, self.centres[bone], self.config.checks)
        if record.get("bones"):
            record["flag"] = worst(*(r["flag"] for r in record["bones"].values()))
        return record

    def _finish(self, record: dict, history: list[dict], judged: bool = False) -> dict:
        if record.get("bones") and not judged:
            record = self._judge(record, history)
        write_record(self.out, record)
        if self.on_frame is not None:
            self.on_frame(record)
        return record


def _worth_recovering(result: dict) -> bool:
    """A bone flagged for something a cold registration could change: an unpinned turn across the
    beam alone (:func:`~..register.status.judge_tilt`) is the frame's limit, and recovery cannot lift it."""
    return result["flag"] != "ok" and not all(r.startswith(UNPINNED) for r in result.get("reasons", []))


def flag_counts(records: list[dict]) -> dict[str, int]:
    """How many frames are ok, check, failed."""
    counts = {k: 0 for k in RANK}
    for r in records:
        counts[r["flag"]] += 1
    return counts


def load_records(out, count: int) -> list[dict | None]:
    return [read_record(out, i) for i in range(count)]


def as_camera_for(calib, sequence: FrameSequence):
    """One Camera for every frame (a calibration file), one Rig (a rig's file: several views), or per
    frame (a folder of calibration files named like the frames: NNNN.json or <frame name>.json)."""
    path = Path(calib)
    if path.is_dir():
        cameras = {}

        def camera(index: int) -> Camera:
            stem = sequence.stem(index)
            candidates = [path / f"{stem}.json", path / f"{index:04d}.json", path / f"{index:05d}.json"]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                raise FluoroRegError(f"no calibration for frame {index} in {path} (looked for {candidates[0].name}); "
                                     "add it, or give one calibration file for every frame")
            if found not in cameras:
                cameras[found] = Camera.from_json(found)
            return cameras[found]
        return camera
    from ..geometry import Rig

    rig = Rig.from_json(path)
    return rig.cameras[0] if len(rig) == 1 else rig

