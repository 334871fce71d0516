"""Running a tracking job: keyframes first, then the chunks they seed, serially or on Dask.

The plan of a sequence of N frames with keyframes k0 < k1 < ...: each keyframe registered cold
from its start; then chunks ``(k_j -> k_{j+1})`` forward and ``(k0 -> 0)`` backward, each seeded
by its keyframe's record only. A serial run executes the same tasks in the same process, so the
poses are the same either way (given the same torch thread count per task, :attr:`TrackJob.threads`).
Finished frames are files (:mod:`.tracker`): a resumed run skips them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..errors import FluoroRegError
from ..geometry import Rig
from .tracker import TrackConfig, Tracker, as_camera_for, read_record
from .sequence import FrameSequence

_TRACKERS: dict = {}  # one Tracker per job and process (the bones' volumes are built once)


@dataclass(frozen=True)
class TrackJob:
    """What every task needs, as paths and settings (sent to Dask workers as is).

    masks: None (no masks), "auto" (the segmentation ``model``) or a folder of label maps over the
    frames named ``<frame stem>_labels.<ext>``. threads: torch threads per task. views: the further
    views' sequences of a rig (``calib`` is then the rig's JSON); view_masks: their mask folders (one
    per further view; empty: none, or "auto" when ``masks`` is). implants: components tracked beside
    the bones, each as ``NAME=MESH[,material=M][,scale=S][,repair][,follows=OTHER]``
    (:func:`~..implant.body.parse_implant_spec`)."""

    sequence: str
    ct: str | None  # None: components alone
    labels: str | None
    label_names: object
    bones: tuple
    calib: str
    out: str
    masks: str | None = None
    model: str | None = None
    fps: float | None = None
    polarity: str = "auto"
    config: TrackConfig = field(default_factory=TrackConfig)
    threads: int = 2
    views: tuple = ()
    view_masks: tuple = ()
    implants: tuple = ()


def tracker_for(job: TrackJob) -> Tracker:
    """The job's Tracker in this process (built on first use)."""
    key = (job.sequence, job.ct, job.labels, str(job.label_names), job.bones, job.calib, job.out, job.masks,
           job.model, job.fps, job.polarity, repr(job.config), job.views, job.view_masks, job.implants)
    if key not in _TRACKERS:
        from ..register import Registration

        sequence = FrameSequence.open(job.sequence, job.fps)
        cold = _cold_registration(job)
        refine = Registration(cold.volumes, job.config.refine, cold.label_ids)
        model = None
        if job.masks == "auto":
            from ..segment import load_model

            model = load_model(job.model)
        _TRACKERS.clear()
        views = [FrameSequence.open(v, job.fps) for v in job.views]
        cameras = as_camera_for(job.calib, sequence)
        n_views = len(cameras) if isinstance(cameras, Rig) else 1
        if n_views != 1 + len(views):
            raise FluoroRegError(f"--calib {job.calib} has {n_views} view(s) but {1 + len(views)} sequence(s) were given; "
                                 "give one sequence per view of the rig, in its order")
        if job.view_masks and len(job.view_masks) != len(views):
            raise FluoroRegError(f"{1 + len(job.view_masks)} mask folders for {1 + len(views)} views; give one per view")
        _TRACKERS[key] = Tracker(sequence, cold, refine, cameras, job.out, _mask_source(job.masks, sequence), model,
                                 job.config, job.polarity, views,
                                 [_mask_source(m, v) for m, v in zip(job.view_masks, views)])
    return _TRACKERS[key]


def _cold_registration(job: TrackJob):
    """The bones (from the CT and labels) and the implant components (from their meshes) as one
    :class:`~..register.Registration` with the job's cold settings."""
    from ..implant.body import implant_from_spec
    from ..register import Registration

    implants = dict(implant_from_spec(spec) for spec in job.implants)
    bones = [b for b in job.bones if b not in implants]
    if not bones:
        return Registration(implants, job.config.cold)
    cold = Registration.from_ct(job.ct, job.labels, bones, job.label_names, job.config.cold)
    return Registration({**cold.volumes, **implants}, cold.config, cold.label_ids) if implants else cold


def _mask_source(masks, sequence: FrameSequence):
    if masks is None or masks == "auto":
        return lambda index: masks
    folder = Path(masks)
    if not folder.is_dir():
        raise FluoroRegError(f"mask folder {folder} not found; give a folder of <frame>_labels.png label maps or 'auto'")

    def mask(index: int):
        found = sorted(folder.glob(f"{sequence.stem(index)}_labels.*"))
        return found[0] if found else None
    return mask


def run_keyframe(job: TrackJob, index: int, initial: dict) -> dict:
    torch.set_num_threads(job.threads)
    return tracker_for(job).keyframe(index, {b: np.asarray(p, np.float64) for b, p in initial.items()})


def run_chunk(job: TrackJob, start: int, stop: int, step: int) -> int:
    torch.set_num_threads(job.threads)
    return len(tracker_for(job).chunk(start, stop, step))


def plan(count: int, keyframes: list[int]) -> list[tuple[int, int, int]]:
    """Chunks (start, stop, step): forward from each keyframe to the next (or the end), and backward
    from the first keyframe to frame 0."""
    keys = sorted(set(keyframes))
    if not keys or keys[0] < 0 or keys[-1] >= count:
        raise FluoroRegError(f"keyframes {keyframes} must lie in 0..{count - 1}")
    chunks = [(k, nxt, 1) for k, nxt in zip(keys, keys[1:] + [count]) if nxt - k > 1]
    if keys[0] > 0:
        chunks.append((keys[0], -1, -1))
    return chunks


def track(job: TrackJob, starts: dict[int, dict], workers: int = 0, scheduler: str | None = None,
          progress: bool = True) -> list[dict | None]:
    """Track the sequence: ``starts`` {keyframe index: {bone: (4, 4)}}; ``workers`` 0 runs serially,
    else a local Dask cluster of that many workers (or ``scheduler``, an address). Returns every
    frame's record (None for a frame no task reached)."""
    count = FrameSequence.open(job.sequence, job.fps).count
    chunks = plan(count, list(starts))
    bar = tqdm(total=count, desc="track", unit="frame", disable=not progress)
    bar.update(sum(read_record(job.out, i) is not None for i in range(count)))
    t0 = time.perf_counter()
    try:
        if workers == 0 and scheduler is None:
            tracker_for(job).on_frame = lambda record: _tick(bar, t0)
            for index, initial in sorted(starts.items()):
                run_keyframe(job, index, initial)
            for chunk in chunks:
                run_chunk(job, *chunk)
        else:
            _on_dask(job, starts, chunks, workers, scheduler, bar, t0, count)
    finally:
        bar.close()
    return [read_record(job.out, i) for i in range(count)]


def _tick(bar, t0: float) -> None:
    bar.update()
    bar.set_postfix_str(f"{bar.n / max(time.perf_counter() - t0, 1e-9):.2f} frames/s")


def _on_dask(job, starts, chunks, workers, scheduler, bar, t0, count) -> None:
    from dask.distributed import Client, LocalCluster, wait

    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        with Client(scheduler or cluster) as client:
            for phase in ([client.submit(run_keyframe, job, i, p, pure=False) for i, p in sorted(starts.items())],
                          None):
                futures = phase if phase is not None else [client.submit(run_chunk, job, *c, pure=False)
                                                           for c in chunks]
                while not all(f.done() for f in futures):
                    _sync_bar(bar, job, count, t0)
                    time.sleep(0.5)
                wait(futures)
                for f in futures:
                    f.result()  # a task's error, raised here
            _sync_bar(bar, job, count, t0)
    finally:
        if cluster is not None:
            cluster.close()


def _sync_bar(bar, job, count, t0) -> None:
    done = sum(Path(job.out, "frames", f"{i:05d}.json").is_file() for i in range(count))
    if done > bar.n:
        bar.update(done - bar.n)
        bar.set_postfix_str(f"{bar.n / max(time.perf_counter() - t0, 1e-9):.2f} frames/s")
