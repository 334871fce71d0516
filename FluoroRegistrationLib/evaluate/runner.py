"""Run an experiment: every (frame, bone, start, condition) is an independent task, a plain function
executed serially or on Dask distributed (a local cluster by default, or ``scheduler=ADDRESS``).

Results are appended to ``runs.csv`` as each task finishes (one line per run, flushed), so a crash
loses nothing written and a rerun skips finished task ids.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import FluoroRegError
from .config import Condition, Experiment, write_experiment

FIELDS = ["task_id", "frame", "bone", "condition", "kind", "bin_lo", "bin_hi", "axis", "value",
          "initial_mtre_mm", "initial_rotation_deg", "initial_translation_mm",
          "rotation_deg", "translation_mm", "in_plane_mm", "out_of_plane_mm", "mtre_mm", "mpd_mm",
          "success_2mm", "success_1mm", "similarity", "truth_similarity", "iterations", "seconds", "stop_reason", "status", "status_reason",
          "voxel_model", "context", "camera_from_volume", "complete"]  # last: 1 on every whole line, so a line a crash cut short is recognised
ADDED = {"status": "", "status_reason": "", "voxel_model": "", "context": ""}  # columns newer than some runs files: blank in their old rows
TEXT = {"task_id", "frame", "bone", "condition", "kind", "axis", "stop_reason", "status", "status_reason",
        "voxel_model", "context", "camera_from_volume", "complete"}


@dataclass(frozen=True)
class Task:
    task_id: str
    frame: str
    bone: str
    condition: Condition
    start: dict  # from start_offsets (x: six offsets)


@lru_cache(maxsize=4)
def _scene(folder: str, bones: tuple, calibration: str, context_mm: float | None = None):
    """What every task on a worker shares, loaded once per process: bones' volumes (``context_mm``: as
    the config's ``context`` draws them) and the rig (:func:`_folder_rig`)."""
    from ..volume import load_ct, load_labels, read_label_names, registration_volumes

    root = Path(folder)
    components = _components(root / "phantom", bones)
    volumes = dict(components)
    wanted = [b for b in bones if b not in components]
    if wanted:
        ct = load_ct(root / "phantom" / "ct.nii.gz")
        labels = load_labels(root / "phantom" / "labels.nii.gz", ct)
        volumes.update(registration_volumes(ct, labels, read_label_names(root / "phantom" / "labels.json"), wanted,
                                            context_mm=context_mm))
    return volumes, _folder_rig(folder, calibration)


@lru_cache(maxsize=4)
def _folder_rig(folder: str, calibration: str):
    """The folder's rig: a one-view rig for a single-plane folder; ``rig_true.json`` or ``rig.json``
    for a folder of several views (``calibration`` "true": the C-arm that took the frames)."""
    from ..geometry import Rig

    root = Path(folder)
    suffix = "_true" if calibration == "true" else ""
    if (root / f"rig{suffix}.json").is_file():
        return Rig.from_json(root / f"rig{suffix}.json")
    return Rig.from_json(root / f"calib{suffix}.json")


def _components(phantom: Path, names) -> dict:
    """The implant components among ``names`` that ``phantom/implants.json`` lists (a folder simulated
    with implants), each as registration draws it ({name: ImplantBody}, its mesh and material)."""
    if not (phantom / "implants.json").is_file():
        return {}
    from ..implant.body import component_body
    from ..simulate.writer import read_implants

    listed = read_implants(phantom)
    return {n: component_body(listed[n][0], listed[n][2]) for n in names if n in listed}


def _view_folder(folder: str, index: int, name: str) -> Path:
    """Where view ``index`` (named ``name``) of a simulated folder keeps its frames and masks."""
    return Path(folder) if index == 0 else Path(folder) / "views" / name


@lru_cache(maxsize=16)
def _frame(folder: str, key: str, calibration: str, bones: tuple, view: int = 0):
    """View ``view``'s frame ``key`` read by the one path, the true poses (reference frame) and the
    view's true masks {bone: (H, W) bool}."""
    from ..files import read_poses
    from ..register import prepare_frame
    from ..simulate.writer import read_truth_mask

    rig = _folder_rig(folder, calibration)
    where = _view_folder(folder, view, rig.names[view])
    frame = prepare_frame(where / "frames" / f"{key}.png", rig.cameras[view])
    truth = read_poses(Path(folder) / "poses" / f"{key}.json")
    masks = {b: read_truth_mask(where, key, b) for b in bones}
    return frame, truth, masks


@lru_cache(maxsize=2)
def _model(path: str):
    from ..segment import load_model

    return load_model(path)


@lru_cache(maxsize=16)
def _predicted(folder: str, key: str, model: str, bones: tuple, view: int = 0, view_name: str = "A") -> dict:
    """The masks a segmentation model predicts for a view's frame, {bone: (H, W) bool tensor}, the
    frame read as the one path reads it (cached: every start and condition of a frame shares them)."""
    from ..register import prepare_frame
    from ..register.api import predicted_masks

    frame = prepare_frame(_view_folder(folder, view, view_name) / "frames" / f"{key}.png", None)
    return predicted_masks(_model(model), frame, list(bones))


def _mask(task: Task, folder: str, bones: tuple, truth_masks: dict, view: int = 0, view_name: str = "A"):
    """The condition's mask of the task's bone in one view, (H, W) bool, or None (a predicted mask
    that found nothing: that bone registers without one)."""
    source = task.condition.mask
    if source == "truth":
        return truth_masks[task.bone]
    if source == "predicted":
        mask = _predicted(folder, task.frame, task.condition.model, bones, view, view_name)[task.bone]
        return mask if bool(mask.any()) else None
    return None


def task_rig(task: Task, rig, seed: int = 0):
    """The rig a task registers against: the first ``condition.views`` views of the folder's rig,
    their relative poses perturbed by ``condition.rig_error`` (drawn per task, reproducibly)."""
    import zlib

    import torch

    from ..geometry import Rig, perturbed_rig

    n = task.condition.views
    if n > len(rig):
        raise FluoroRegError(f"condition {task.condition.name} asks for {n} views but the frames have {len(rig)}; "
                             "simulate more (frames: simulate: view_angles) or lower views")
    used = Rig(rig.views[:n])
    error = task.condition.rig_error
    if not error:
        return used
    g = torch.Generator().manual_seed(seed + zlib.crc32(task.task_id.encode()))
    return perturbed_rig(used, float(error.get("rotation_deg", 0.0)), float(error.get("translation_mm", 0.0)), g)


def run_task(task: Task, folder: str, bones: tuple, calibration: str, options: dict, threads: int = 1) -> dict:
    """One registration through the one path (:class:`Registration`): the task's start, its
    condition (masks, options, how many views and how well their rig is known); returns the CSV row,
    with the similarity of the true pose beside the result's (a failure whose truth scores better is
    a search failure, else the similarity's). Errors are in the first view's camera frame."""
    import torch

    from ..geometry import CentredParameterization
    from ..register import Registration, RegistrationConfig, pose_errors

    torch.set_num_threads(threads)
    config = RegistrationConfig.from_dict(options).merged(task.condition.options)
    volumes, folder_rig = _scene(folder, bones, calibration, config.context_mm)
    rig = task_rig(task, folder_rig)
    seen = [_frame(folder, task.frame, calibration, bones, k) for k in range(len(rig))]
    truth = seen[0][1]
    vol, T_gt = volumes[task.bone], truth[task.bone]
    start = CentredParameterization(vol.centroid, T_gt).pose(torch.tensor(task.start["x"], dtype=torch.float64))
    masks = [_mask(task, folder, bones, m, k, rig.names[k]) for k, (_, _, m) in enumerate(seen)]
    camera = rig.cameras[0]
    before = pose_errors(start, T_gt, vol.centroid, vol.points, camera)
    reg = Registration({task.bone: vol}, config)
    spec = [None if m is None else {task.bone: m} for m in masks]
    res = reg.register([f for f, _, _ in seen], rig, {task.bone: start},
                       masks=spec if len(rig) > 1 else spec[0]).bones[task.bone]
    # the truth is scored as the result was: with or without the CT around the bone, with the voxel
    # model its finest level chose
    drawn = vol.context if res.context else vol
    drawn = drawn.boxed(config.voxel_model.min_ratio) if res.voxel_model == "box" else drawn
    truth_similarity = _similarity_at(drawn, [f for f, _, _ in seen], rig, T_gt, masks, config, start)
    err = pose_errors(res.camera_from_volume, T_gt, vol.centroid, vol.points, camera)
    return {"task_id": task.task_id, "frame": task.frame, "bone": task.bone, "condition": task.condition.name,
            "kind": task.start["kind"], "bin_lo": task.start["bin_lo"], "bin_hi": task.start["bin_hi"],
            "axis": task.start["axis"], "value": task.start["value"],
            "initial_mtre_mm": before["mtre_mm"], "initial_rotation_deg": before["rotation_deg"],
            "initial_translation_mm": before["translation_mm"], **{k: err[k] for k in
            ("rotation_deg", "translation_mm", "in_plane_mm", "out_of_plane_mm", "mtre_mm", "mpd_mm")},
            "success_2mm": int(err["mtre_mm"] < 2.0), "success_1mm": int(err["mtre_mm"] < 1.0),
            "similarity": res.similarity, "truth_similarity": truth_similarity, "iterations": res.iterations,
            "seconds": res.seconds, "stop_reason": res.stop_reason, "status": res.status.flag,
            "status_reason": res.status.reason, "voxel_model": res.voxel_model,
            "context": "on" if res.context else "off", "camera_from_volume": json.dumps(res.camera_from_volume.flatten().tolist()), "complete": 1}


def _similarity_at(vol, frames, rig, pose, masks, config, start) -> float:
    """The similarity the registration started at ``start`` gives ``pose`` at its finest level (the
    level its result's similarity is measured at): the mean over the rig's views, each seeing
    ``pose`` through its ``camera_from_reference``."""
    import torch

    from ..register import similarity_objective
    from ..register.pipeline import bone_depth_mm

    values = []
    for frame, view, mask in zip(frames, rig.views, masks):
        seen, seen_start = view.camera_from_reference @ pose, view.camera_from_reference @ start
        objective = similarity_objective(vol, frame.image, view.camera, seen, None if mask is None else mask[None, None],
                                         frame.field, config, depth_mm=bone_depth_mm(vol, seen_start))
        with torch.no_grad():
            values.append(1.0 - float(objective(torch.zeros(1, 6, dtype=torch.float64))[0]))
    return sum(values) / len(values)


def frames_folder(exp: Experiment, out: Path) -> Path:
    """The folder of frames: the config's, or one simulated into ``out/frames_sim`` (once)."""
    if "folder" in exp.frames:
        folder = Path(exp.frames["folder"])
        if not (folder / "poses.json").is_file():
            raise FluoroRegError(f"{folder} is not a `fluororeg simulate` folder (no poses.json); simulate one or fix the path")
        return folder
    sim = dict(exp.frames["simulate"])
    folder = out / "frames_sim"
    if not (folder / "poses.json").is_file():
        from ..geometry import Camera
        from ..simulate.writer import simulate_folder

        camera = sim.pop("camera", None)
        simulate_folder(folder, frames=int(sim.pop("count", 6)), seed=exp.seed, realism=sim.pop("realism", "medium"),
                        flexion_range=tuple(sim.pop("flexion_range", (0.0, 90.0))),
                        camera=None if camera is None else Camera.from_dict(camera), clutter=sim.pop("clutter", None),
                        view_angles_deg=tuple(sim.pop("view_angles", ())), implants=bool(sim.pop("implant", False)) or None)
    return folder


def build_tasks(exp: Experiment, folder: Path) -> list[Task]:
    """Every task, in a fixed order; the starts depend only on the seed (same for every condition)."""
    import torch

    from ..geometry import CentredParameterization
    from ..files import read_poses
    from .starts import start_offsets

    volumes, _ = _scene(str(folder), tuple(exp.bones), exp.calibration)
    keys = sorted(json.loads((folder / "poses.json").read_text()))
    wanted = exp.frames.get("use")
    if wanted is not None:
        keys = [k for k in keys if int(k) in set(wanted)]
    g = torch.Generator().manual_seed(exp.seed)
    tasks = []
    for key in keys:
        truth = read_poses(folder / "poses" / f"{key}.json")
        for bone in exp.bones:
            if bone not in truth:
                raise FluoroRegError(f"frame {key} has no pose for {bone}; choose bones the folder has ({', '.join(truth)})")
            vol = volumes[bone]
            par = CentredParameterization(vol.centroid, truth[bone])
            starts = start_offsets(par, vol.points, exp.bins, int(exp.starts.get("per_bin", 1)), g,
                                   exp.starts.get("per_axis"))
            for i, s in enumerate(starts):
                for c in exp.conditions:
                    tasks.append(Task(f"{key}-{bone}-{i:03d}-{c.name}", key, bone, c, s))
    return tasks


def read_rows(path: Path) -> list[dict]:
    """Rows of a runs CSV; a line cut short by a crash (missing fields) is dropped."""
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            row = {**ADDED, **row}
            if None in row.values() or None in row or set(row) != set(FIELDS) or row["complete"] != "1":
                continue
            for k in FIELDS:
                if k in TEXT:
                    continue
                row[k] = float(row[k]) if row[k] not in ("", "nan") else math.nan
            rows.append(row)
    return rows


class _Appender:
    """Appends rows to the runs CSV, one flushed line each. On opening an existing file it keeps only
    its whole rows (rewritten atomically): a line a crash cut inside a quoted field would otherwise
    swallow the next row appended after it."""

    def __init__(self, path: Path):
        if path.is_file() and path.stat().st_size > 0:
            rows = read_rows(path)
            tmp = path.with_suffix(".tmp")
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, FIELDS)
                writer.writeheader()
                writer.writerows(rows)
            os.replace(tmp, path)
            self.file = open(path, "a", newline="")  # noqa: SIM115 (kept open for the run, closed in close())
            self.writer = csv.DictWriter(self.file, FIELDS)
        else:
            self.file = open(path, "w", newline="")  # noqa: SIM115
            self.writer = csv.DictWriter(self.file, FIELDS)
            self.writer.writeheader()

    def add(self, row: dict) -> None:
        self.writer.writerow(row)
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self):
        self.file.close()


def run_experiment(exp: Experiment, out, scheduler: str | None = None, workers: int | None = None,
                   serial: bool = False, progress: bool = True) -> list[dict]:
    """Run (or resume) ``exp`` into ``out``; returns every row of ``out/runs.csv``.

    Args:
        scheduler: address of a running Dask scheduler; None starts a local cluster of ``workers``
            processes (default: the machine's cores), one thread each.
        serial: run in this process instead (no Dask).
    """
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "runs.csv").is_file() and (out / "config.yaml").is_file():
        from .config import load_experiment

        if load_experiment(out / "config.yaml").to_dict() != exp.to_dict():
            raise FluoroRegError(f"{out} holds runs of a different experiment config; use a new --out folder "
                                 f"(or the config in {out / 'config.yaml'}) to resume")
    write_experiment(exp, out / "config.yaml")
    folder = frames_folder(exp, out)
    tasks = build_tasks(exp, folder)
    path = out / "runs.csv"
    done = {r["task_id"] for r in read_rows(path)}
    todo = [t for t in tasks if t.task_id not in done]
    args = (str(folder), tuple(exp.bones), exp.calibration, dict(exp.options), int(exp.threads_per_task))
    appender = _Appender(path)
    bar = tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc=f"evaluate {exp.name}", unit="run",
               disable=not progress)
    try:
        if serial or not todo:
            for t in todo:
                appender.add(run_task(t, *args))
                bar.update()
        else:
            from dask.distributed import Client, LocalCluster, as_completed

            cluster = None
            if scheduler is None:
                cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                                       processes=True, dashboard_address=None)
            with Client(scheduler or cluster) as client:
                futures = client.map(run_task, todo, *[[a] * len(todo) for a in args], pure=False)
                for future in as_completed(futures):
                    appender.add(future.result())
                    bar.update()
            if cluster is not None:
                cluster.close()
    finally:
        bar.close()
        appender.close()
    return read_rows(path)
