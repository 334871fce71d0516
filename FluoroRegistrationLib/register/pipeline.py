"""The registration job: each bone's pose from one frame (or from the frames of several views of a
rig at once), by global search then coarse-to-fine Adam.

Swappable parts: the renderer (``render_fast``), the similarity (``config.similarity``, a name in
:data:`~FluoroRegistrationLib.similarity.SIMILARITIES`), the pose parameterisation
(:class:`~FluoroRegistrationLib.geometry.CentredParameterization` about the bone's centroid) and the
optimisers (:func:`simulated_annealing`, :func:`adam_refine`). Only the bone's own labels are
rendered; a 2D mask per bone (ground truth, a file, or a segmentation network's output) restricts
the similarity to the bone's region. With several views (:class:`ViewImage`, a
:class:`~FluoroRegistrationLib.geometry.Rig`) every stage optimises the bone's one pose against the
mean of the views' losses (:class:`~.objective.JointObjective`).

Settings: :class:`~FluoroRegistrationLib.register.config.RegistrationConfig` (physical units). Users
call :func:`~FluoroRegistrationLib.register.register_frame` (files in, one path for every face);
:func:`register` is its core on prepared tensors.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import torch

from ..errors import FluoroRegError
from ..geometry import Camera, CentredParameterization, transform_points
from ..volume import RenderVolume
from .config import RegistrationConfig, Ranking
from .status import Status, evidence, judge, judge_joint_similarity, judge_tilt, overall
from .depth import depth_profile, depth_sd_mm, tilt_grid, tilt_sd_deg, weighed_pixels
from .objective import (_CROP_MARGIN, JointObjective, Level, _level_objective, _Objective, _pool, _weights,  # noqa: F401
                        level_for, level_volume, pixel_at_bone_mm)
from .optimize import (Cancelled, StageLog, adam_refine, differs, distinct_minima, grid_search, line_search,
                       rotation_scan, simulated_annealing)


@dataclass
class ViewImage:
    """One view's prepared inputs to :func:`register_views`.

    camera: its calibration; frame: (1, 1, H, W) or (H, W) attenuation-like (bone bright);
    masks: {bone: (1, 1, H, W) or (H, W)} (a bone may have none); field: (1, 1, H, W) bool or None;
    camera_from_reference: (4, 4) the view's pose relative to the first view (None: the identity);
    name: for messages."""

    camera: Camera
    frame: torch.Tensor
    masks: dict = field(default_factory=dict)
    field: torch.Tensor | None = None
    camera_from_reference: torch.Tensor | None = None
    name: str = "A"


@dataclass
class _BoneView:
    """One view as one bone's registration uses it: undistorted camera, frame, mask and field (1, 1, H,
    W), and ``view_from_reference`` (4, 4) or None for the reference view."""

    name: str
    camera: Camera
    frame: torch.Tensor
    mask: torch.Tensor | None
    field: torch.Tensor | None
    view_from_reference: torch.Tensor | None

    def pose(self, camera_from_volume: torch.Tensor) -> torch.Tensor:
        """A reference-frame pose (4, 4) as this view sees it."""
        if self.view_from_reference is None:
            return camera_from_volume
        return self.view_from_reference.to(camera_from_volume) @ camera_from_volume


@dataclass
class BoneResult:
    """One bone's registration."""

    bone: str
    camera_from_volume: torch.Tensor  # (4, 4) float64
    initial: torch.Tensor  # (4, 4) float64
    similarity: float  # similarity (1 = identical) at the finest level, at the result
    iterations: int
    seconds: float
    stop_reason: str
    loss_history: list
    stages: list
    status: Status = field(default_factory=Status)  # ok | check | failed, with the reasons
    view_similarity: dict = field(default_factory=dict)  # {view: similarity} with several views
    depth_sd_mm: float | None = None  # standard deviation along the first view's beam (register/depth.py)
    tilt_sd_deg: float | None = None  # the largest standard deviation of a rotation across the first view's beam
    tilt_axis: tuple | None = None  # (3,) the axis of that rotation in the bone's own (volume) frame
    voxel_model: str = "linear"  # how the finest level drew the CT's voxels (config.VoxelModel)
    context: bool = False  # whether the bone was drawn with the CT around it (config.Context)

    def to_dict(self) -> dict:
        return {"camera_from_volume": self.camera_from_volume.tolist(), "status": self.status.flag,
                "reason": self.status.reason, "similarity": self.similarity,
                "iterations": self.iterations, "seconds": round(self.seconds, 3), "stop_reason": self.stop_reason,
                "voxel_model": self.voxel_model, "context": self.context,
                **({"view_similarity": self.view_similarity} if self.view_similarity else {}),
                **({"depth_sd_mm": _finite(self.depth_sd_mm)} if self.depth_sd_mm is not None else {}),
                **({"tilt_sd_deg": _finite(self.tilt_sd_deg), "tilt_axis": [round(a, 3) for a in self.tilt_axis]}
                   if self.tilt_sd_deg is not None and self.tilt_axis is not None else {}),
                "stages": [{"name": s.name, "iterations": s.iterations, "seconds": round(s.seconds, 3),
                            "stop_reason": s.stop_reason, "final_loss": s.losses[-1] if s.losses else None,
                            "parts": s.parts}
                           for s in self.stages]}


def _finite(value: float):
    """A float for JSON: None for inf or NaN (JSON has neither)."""
    return round(value, 3) if math.isfinite(value) else None


@dataclass
class RegistrationResult:
    """Every bone's result, and the configuration used."""

    bones: dict = field(default_factory=dict)
    config: RegistrationConfig | None = None
    seconds: float = 0.0

    def poses(self) -> dict[str, torch.Tensor]:
        return {b: r.camera_from_volume for b, r in self.bones.items()}

    @property
    def status(self) -> str:
        """The worst bone's flag: ``ok``, ``check`` or ``failed``."""
        return overall(r.status for r in self.bones.values())

    def to_dict(self) -> dict:
        """{bone: result}: a poses JSON (each entry has ``camera_from_volume``) with the details."""
        return {b: r.to_dict() for b, r in self.bones.items()}

    def save(self, path) -> None:
        """Write :meth:`to_dict` as JSON (what ``fluororeg register --out`` writes)."""
        import json
        from pathlib import Path

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def pyramid_levels(camera: Camera, depth_mm: float, config: RegistrationConfig) -> list[Level]:
    """The refinement pyramid for a bone at ``depth_mm`` from the source: one :class:`Level` per
    ``config.pyramid.pixel_mm``, coarse to fine; a level the detector cannot resolve (the same size
    as the one before it) is dropped."""
    levels: list[Level] = []
    for pixel_mm, iterations in zip(config.pyramid.pixel_mm, config.pyramid.iterations):
        level = level_for(camera, depth_mm, pixel_mm, iterations)
        if not levels or level.size != levels[-1].size:
            levels.append(level)
    return levels


def view_levels(cameras: list[Camera], depths_mm: list[float], config: RegistrationConfig) -> list[tuple]:
    """The refinement pyramid of a bone seen by several views: per ``config.pyramid.pixel_mm`` one
    :class:`Level` per view (each view's detector resized to that pixel at the bone, at its own
    depth), coarse to fine; a level no view resolves better than the one before is dropped. With one
    view: :func:`pyramid_levels`, each level in a 1-tuple."""
    levels: list[tuple] = []
    for pixel_mm, iterations in zip(config.pyramid.pixel_mm, config.pyramid.iterations):
        level = tuple(level_for(c, d, pixel_mm, iterations) for c, d in zip(cameras, depths_mm))
        if not levels or any(a.size != b.size for a, b in zip(level, levels[-1])):
            levels.append(level)
    return levels


def expected_reports(config: RegistrationConfig, camera: Camera, depth_mm: float, views: int = 1) -> int:
    """About how many progress reports one bone's registration makes (the GUIs' progress bars).

    Every pose the optimisers score is one report: the search's steps, each start's refinement and
    rank scan, the probes' grids, the levels coarse to fine. Adam usually stops on a plateau at about
    half its iterations and the probes run about once, so this is a typical count, not a bound
    (measured on the phantom: within 0.7-1.3 of it, Testing/test_web_session.py). The levels are
    the pipeline's own for a bone at ``depth_mm`` from the source (:func:`pyramid_levels`). With
    several ``views`` the depth scans before the levels are skipped (the ranking's are not).
    """
    levels = pyramid_levels(camera, depth_mm, config)
    iterations = [level.iterations for level in levels]
    adam = [0.5 * n for n in iterations]
    scan = config.depth_scan.points
    rank = min(config.ranking.level, len(levels) - 1)
    tilt = (2 * int(config.tilt_probe.range_deg // config.tilt_probe.step_deg) + 1) ** 2 \
        if config.tilt_probe.enabled else 0
    axial = 2 * int(config.axial_probe.range_deg // config.axial_probe.step_deg) + 1 if config.axial_probe.enabled else 0
    total = 0.0
    first = 0
    if config.search.enabled:
        total += config.search.steps
        if views > 1:  # a wide depth scan per start, one search pixel apart
            search = level_for(camera, depth_mm, config.search.pixel_mm)
            total += (config.ranking.starts + 1) * (int(2 * config.search.range_mm / search.pixel_mm) + 1)
        if rank > 0:
            # the starts refine as one batch (one report per iteration); each has its depth scans
            # before levels 1..rank-1 and the rank scan
            total += sum(adam[:rank]) + config.ranking.starts * scan * (rank if views == 1 else 1) + tilt
            first = rank
    for index in range(first, len(levels)):
        scans = index > first and config.depth_scan.enabled and views == 1 and \
            levels[index].pixel_mm >= config.depth_scan.min_pixel_mm * 0.999
        total += adam[index] + (scan if scans else 0)
        if index == first == rank and index > 0:
            total += tilt + axial + adam[index]  # the probes and one refinement after them
        if index == rank + 1 and rechecks_tilt(config):
            total += tilt  # the tilt recheck (its refinement, when one runs, is not counted)
    return max(1, round(total))


def rechecks_tilt(config: RegistrationConfig) -> bool:
    """Whether the tilt grid runs again at the level after the ranking level: when enabled, and
    only after a global search (a refinement from a close pose, as tracking's, keeps its tilt)."""
    probe = config.tilt_probe
    return probe.enabled and probe.recheck and config.search.enabled


def bone_depth_mm(bone: RenderVolume, pose: torch.Tensor) -> float:
    """Distance along the beam from the source to the bone's centroid at ``pose`` (4, 4) (mm)."""
    return float(transform_points(pose, bone.centroid[None].to(pose))[0, 2])


def _check_in_view(bone: RenderVolume, camera: Camera, pose: torch.Tensor, view: str = "") -> None:
    c = transform_points(pose, bone.centroid[None].to(pose))[0]
    where = f" of view {view}" if view else ""
    if c[2] <= 0:
        raise FluoroRegError(f"initial pose puts {bone.name} behind the X-ray source{where} (depth {float(c[2]):.0f} mm); "
                             "check the initial pose file" + (" and the rig's calibration" if view else ""))
    u, v = camera.project(c).tolist()
    if not (0 <= u < camera.cols and 0 <= v < camera.rows):
        raise FluoroRegError(f"initial pose puts {bone.name}'s centre outside the field of view{where} (pixel {u:.0f}, "
                             f"{v:.0f} of {camera.cols}x{camera.rows}); start from a pose that shows the bone"
                             + (", and check the rig's calibration" if view else ""))


def _fine_mask(index: int, n_levels: int, ranking_level: int) -> bool:
    """Whether pyramid level ``index`` (of ``n_levels``) grows the mask by the fine dilation: the
    levels after the ranking level, in a pyramid of three or more."""
    return n_levels > 2 and index > min(ranking_level, n_levels - 1)


def _probe_offsets(probe) -> torch.Tensor:
    """A probe's turns in radians: every multiple of its step within +-its range, (2n + 1,)."""
    n = int(probe.range_deg // probe.step_deg)
    return torch.arange(-n, n + 1, dtype=torch.float64) * math.radians(probe.step_deg)


def similarity_objective(bone: RenderVolume, frame: torch.Tensor, camera: Camera, reference: torch.Tensor,
                         mask: torch.Tensor | None = None, field: torch.Tensor | None = None,
                         config: RegistrationConfig | None = None, pixel_mm: float | None = None,
                         fine: bool | None = None, depth_mm: float | None = None):
    """The registration's loss about a pose, for landscapes and diagnostics: returns ``loss(x)``,
    (B, 6) -> (B,) (1 - similarity), with ``x`` in :class:`CentredParameterization` units about the
    bone's centroid and ``reference`` (camera axes: rotations in radians, translations in mm).

    The level: its pixel spans ``pixel_mm`` at ``depth_mm`` from the source (defaults: the pyramid's
    finest level, at the reference's depth; registration sizes its levels at the initial pose's
    depth); the mask dilated as at the fine levels when ``fine`` (default: as registration does at
    its finest level), exactly as :func:`register_bone` evaluates it. Shapes: frame, mask, field
    (1, 1, H, W) on the camera's grid; reference (4, 4).
    """
    config = config or RegistrationConfig()
    camera, frame, mask, field = _undistort(camera, _as_image(frame, "frame"),
                                            None if mask is None else _as_image(mask, "mask"), field)
    reference = reference.to(torch.float64).cpu()
    par = CentredParameterization(bone.centroid.to(torch.float64).cpu(), reference)
    depth = bone_depth_mm(bone, reference) if depth_mm is None else depth_mm
    if fine is None:
        n_levels = len(pyramid_levels(camera, depth, config))
        fine = _fine_mask(n_levels - 1, n_levels, config.ranking.level)
    level = level_for(camera, depth, pixel_mm or config.pyramid.pixel_mm[-1])
    dilation = config.masks.fine_dilation_mm if fine else config.masks.dilation_mm
    return _level_objective(bone, frame, camera, par, mask, field, level, dilation, config.pyramid.coarsen,
                            config.similarity)


class _BoneRegistration:
    """One bone's registration, stage by stage (see :func:`register_bone`); holds the shared state:
    the parameterisation about the initial pose (in the reference frame: the first view's camera),
    the views, the objectives per level, the stage logs."""

    def __init__(self, bone, views: list[_BoneView], initial, config: RegistrationConfig, report):
        self.bone, self.views = bone, list(views)
        self.config, self.report = config, report
        self.par = CentredParameterization(bone.centroid.to(torch.float64).cpu(), initial, depth_along_ray=True)
        cameras = [v.camera for v in self.views]
        depths = [bone_depth_mm(bone, v.pose(initial)) for v in self.views]
        self.levels = view_levels(cameras, depths, config)
        self.rank_level = min(config.ranking.level, len(self.levels) - 1)
        self.search_level = tuple(level_for(c, d, config.search.pixel_mm) for c, d in zip(cameras, depths))
        self.stages: list[StageLog] = []
        self._objectives: dict = {}
        self.voxel_model = "linear"  # how the finest level draws a thick-slice CT (choose_voxel_model)
        self.context = False  # whether the bone is drawn with the CT around it (choose_context)
        self.context_chosen = config.context.choice != "auto"  # auto chooses once: after the search, or else at the ranking level
        if config.context.choice == "on" and getattr(bone, "appearance", None) is None:
            if bone.context is None:
                raise FluoroRegError(f"context.choice is on but {bone.name} was built without the CT around it; "
                                     "build the volumes with registration_volumes(..., context_mm=config.context_mm)")
            self.bone, self.context = bone.context, True
        deg = math.pi / 180
        st, s = config.steps, config.search
        # one view sees depth only through a change of size: it gets a larger step and the depth scans;
        # with several views the others see it across their images, so it is stepped like an in-plane
        # translation and found by one wide scan per start after the search (see search())
        self.seen_across = seen_across = len(self.views) > 1
        depth_step = st.translation_mm if seen_across else st.depth_mm
        self.scales = torch.tensor([st.out_of_plane_rotation_deg * deg] * 2 + [st.rotation_deg * deg]
                                   + [st.translation_mm] * 2 + [depth_step], dtype=torch.float64)
        # the refinement stays inside the search box around the initial pose (depth: the in-plane
        # range), so a weakly constrained parameter cannot run away
        self.box = torch.tensor([s.range_deg * deg] * 3 + [s.range_mm] * 3, dtype=torch.float64)
        self.ranges = torch.tensor([s.range_deg * deg] * 3 + [s.range_mm] * 2 + [s.range_depth_mm], dtype=torch.float64)

    def objective(self, levels: tuple, fine: bool = False) -> JointObjective:
        """The loss at ``levels`` (one :class:`Level` per view; fewer: the first views alone), the mask
        dilated as at the fine levels when ``fine`` (cached)."""
        dilation = self.config.masks.fine_dilation_mm if fine else self.config.masks.dilation_mm
        key = (id(self.bone), tuple(level.size for level in levels), dilation)
        if key not in self._objectives:
            self._objectives[key] = JointObjective([
                _level_objective(self.bone, v.frame, v.camera, self.par, v.mask, v.field, level, dilation,
                                 self.config.pyramid.coarsen, self.config.similarity, v.view_from_reference)
                for v, level in zip(self.views, levels)])
        return self._objectives[key]

    def level_objective(self, index: int) -> JointObjective:
        """The loss at pyramid level ``index``: levels finer than the ranking level use the fine mask."""
        return self.objective(self.levels[index], fine=_fine_mask(index, len(self.levels), self.rank_level))

    def size(self, index: int) -> str:
        """Level ``index``'s detector width(s) for stage names: ``512px`` (``512+256px`` for views
        of different sizes)."""
        widths = dict.fromkeys(level.size[1] for level in self.levels[index])
        return "+".join(map(str, widths)) + "px"

    def log(self, result, level: int | None = None):
        """Keep a stage's log, with the pose it ended at (the best start's, for a batch) and the
        pyramid level it ran at (None: the global search)."""
        x, loss, log = result
        best = x if x.dim() == 1 else x[int(torch.as_tensor(loss).argmin())]
        log.pose, log.level = self.par.pose(best.detach()), level
        self.stages.append(log)
        return x, loss

    def losses_drawn(self, x, index: int, *drawings) -> list[float]:
        """The loss at ``x`` at pyramid level ``index`` with the bone drawn each way in turn (no
        gradients), [float] per drawing; leaves the last drawing as the bone."""
        losses = []
        with torch.no_grad():
            for drawing in drawings:
                self.bone = drawing
                losses.append(float(self.level_objective(index)(x[None])[0]))
        return losses

    def choose_voxel_model(self, x, index: int) -> bool:
        """Before the finest level ``index``: draw a thick-slice CT's voxels as boxes from here on
        (``config.voxel_model``: always for ``box``; for ``auto`` when the box model scores better at
        ``x`` by the margin). Returns True when the model changed."""
        vm = self.config.voxel_model
        if vm.choice == "linear" or getattr(self.bone, "appearance", None) is not None:
            return False
        linear, boxed = self.bone, self.bone.boxed(vm.min_ratio)
        if boxed is linear:
            return False
        log = StageLog(f"voxel model {self.size(index)}")
        t0 = log.start()
        linear_loss, box_loss = self.losses_drawn(x, index, linear, boxed)
        if vm.choice == "auto" and not box_loss < linear_loss - vm.margin:
            self.bone = linear
        self.voxel_model = "box" if self.bone is boxed else "linear"
        log.losses, log.iterations = [box_loss if self.bone is boxed else linear_loss], 2
        log.stop_reason = (f"{self.voxel_model}: similarity {1 - box_loss:.3f} as boxes, {1 - linear_loss:.3f} "
                           f"trilinear")
        log.finish(t0)
        self.log((x, log.losses[0], log), index)
        return self.bone is boxed

    def choose_context(self, x, index: int) -> bool:
        """At pyramid level ``index`` (the ranking level): draw the bone with the CT around it from here
        on when ``config.context`` is ``auto`` and that scores better at ``x`` by its margin. Returns
        True when the drawing changed."""
        if not self.context_open():
            return False
        ctx, alone = self.config.context, self.bone
        self.context_chosen = True
        log = StageLog(f"context {self.size(index)}")
        t0 = log.start()
        alone_loss, context_loss = self.losses_drawn(x, index, alone, alone.context)
        self.context = context_loss < alone_loss - ctx.margin
        if not self.context:
            self.bone = alone
        log.losses, log.iterations = [context_loss if self.context else alone_loss], 0  # a comparison, no iterations
        log.stop_reason = (f"{'with its context' if self.context else 'alone'}: similarity {1 - context_loss:.3f} "
                           f"with the CT {ctx.margin_mm:g} mm around it, {1 - alone_loss:.3f} alone")
        log.finish(t0)
        self.log((x, log.losses[0], log), index)
        return self.context

    def search(self) -> list[torch.Tensor]:
        """The global search: the starts to refine (distinct minima, and the initial pose)."""
        x0 = torch.zeros(6, dtype=torch.float64)
        if not self.config.search.enabled:
            return [x0]
        # with several views the search runs on the first view alone: like one view it barely sees depth,
        # so the initial pose's depth error does not mislead it, while the others see it as an in-plane
        # shift (measured: a tibia start 16 mm off along the beam left a joint search no pose that fitted
        # view B, ending 18 deg off); a sixth parameter instead diluted the search's turns (a start 27 deg
        # off lost its basin). Each start's depth is then scanned on the joint objective.
        name = "global search" + (f" in view {self.views[0].name}" if self.seen_across else "")
        best, loss = self.anneal(x0, name)
        stage = self.stages[-1]
        if self.context_open():
            best, loss, stage = self.choose_context_by_search(x0, name, best, loss, stage)
        separation = self.config.ranking.separation * torch.cat([self.ranges[:5], self.box[5:]])
        starts = _search_starts(stage.candidates, best, separation, self.config.ranking)
        if self.seen_across:
            # the user's start is kept beside its scanned copy: with its turns off, a coarse scan can move
            # it into a wrong basin (measured: a tibia start 10 deg off went 21 mm along the beam)
            scanned = [self.wide_depth_scan(x, f"start {k + 1}: ") for k, x in enumerate(starts)]
            starts = scanned + [x for x in starts if not bool(x.abs().max() > 0)]
        return starts

    def anneal(self, x0, name: str):
        """The global search's simulated annealing about x0 on the first view at the search level:
        (best x, its loss); the stage log (with its candidates) is the last one kept."""
        s = self.config.search
        return self.log(simulated_annealing(self.objective(self.search_level[:1]), x0, self.ranges,
                                            torch.Generator().manual_seed(self.config.seed), steps=s.steps,
                                            candidates=s.candidates, report=self.report, name=name))

    def context_open(self) -> bool:
        """Whether ``config.context`` (``auto``) has still to choose how the bone is drawn: only with a
        mask in every view (without one the context crop's own edges show; measured on the knee
        phantom without masks, femur / tibia under 2 mm in 62 / 50 % of 8 frames, against 95 / 80 % of the
        20-frame benchmark drawn alone)."""
        return (self.config.context.choice == "auto" and not self.context_chosen
                and getattr(self.bone, "context", None) is not None
                and all(v.mask is not None for v in self.views))

    def choose_context_by_search(self, x0, name: str, best, loss, stage):
        """``auto``: the global search again with the bone drawn with its context; that drawing is kept
        (with its search's best pose and candidates) when its best scores better than the bone alone's
        best by the margin: each drawing judged at its own best fit. Returns (best, loss, stage)."""
        alone = self.bone
        self.bone = alone.context
        best_ctx, loss_ctx = self.anneal(x0, f"{name} with its context")
        self.context_chosen = True
        self.context = bool(loss_ctx < loss - self.config.context.margin)
        reason = (f"context: best similarity {1 - loss_ctx:.3f} with it, {1 - loss:.3f} alone; drawn "
                  + ("with it" if self.context else "alone"))
        self.stages[-1].stop_reason += f"; {reason}"
        if self.context:
            return best_ctx, loss_ctx, self.stages[-1]
        self.bone = alone
        return best, loss, stage

    def wide_depth_scan(self, x, label: str) -> torch.Tensor:
        """Several views: x with its depth scanned over the in-plane search range, one search pixel
        apart, on the joint objective at the search level (the other views see depth sharply)."""
        s = self.config.search
        points = int(2 * s.range_mm / self.search_level[0].pixel_mm) + 1
        return self.log(line_search(self.objective(self.search_level), x, 5, s.range_mm, points=points,
                                    report=self.report, name=f"{label}wide depth scan"))[0]

    def depth_scan(self, x, index: int, label: str = "", name: str = "depth scan"):
        scan = self.config.depth_scan
        return self.log(line_search(self.level_objective(index), x, 5, scan.half_width_mm, points=scan.points,
                                    report=self.report, name=f"{label}{name} {self.size(index)}"), index)

    def refine(self, x, index: int, label: str = "", scan: bool = True):
        """Adam at pyramid level ``index`` (after a depth scan when ``scan`` and enabled), from one
        start x (6,), or from K starts (K, 6) refined as one batch (then losses are (K,))."""
        scan_here = self.levels[index][0].pixel_mm >= self.config.depth_scan.min_pixel_mm * 0.999
        # the scan before a level is for the depth one view barely sees; several views see it across
        # their images (Adam moves it like any in-plane translation), so they skip it
        if scan and index > 0 and self.config.depth_scan.enabled and scan_here and not self.seen_across:
            if x.dim() == 1:
                x, _ = self.depth_scan(x, index, label)
            else:
                x = torch.stack([self.depth_scan(row, index, label)[0] for row in x])
        retries = self.config.pyramid.retries
        if retries is None:  # automatic: components (drawn through an appearance) retry, bones do not
            retries = 2 if getattr(self.bone, "appearance", None) is not None else 0
        return self.log(adam_refine(self.level_objective(index), x, self.scales,
                                    iterations=self.levels[index][0].iterations,
                                    lr=self.config.pyramid.learning_rate, patience=self.config.pyramid.patience,
                                    bounds=(-self.box, self.box), retries=retries,
                                    report=self.report, name=f"{label}refine {self.size(index)}"), index)

    def tilt_probe(self, x, name: str, index: int | None = None):
        """Best pose on a grid over both out-of-plane rotations at level ``index`` (None: the ranking level)."""
        index = self.rank_level if index is None else index
        offsets = _probe_offsets(self.config.tilt_probe)
        return self.log(grid_search(self.level_objective(index), x, (0, 1), offsets, report=self.report,
                                    name=f"{name} {self.size(index)}"), index)

    def axial_probe(self, x):
        """Best turn about the bone's long axis at the ranking level."""
        long_axis = _long_axis(self.bone)
        if long_axis is None:
            return None
        axis = self.par.pose(x)[:3, :3] @ long_axis
        return self.log(rotation_scan(self.level_objective(self.rank_level), x, axis,
                                      _probe_offsets(self.config.axial_probe), report=self.report,
                                      name=f"axial probe {self.size(self.rank_level)}"), self.rank_level)

    def probes(self, x):
        """The best of the enabled probes about ``x``: (x, loss), or None when none is enabled."""
        found = []
        if self.config.tilt_probe.enabled:
            found.append(self.tilt_probe(x, "tilt re-probe"))
        if self.config.axial_probe.enabled:
            found.append(self.axial_probe(x))
        found = [f for f in found if f is not None]
        return min(found, key=lambda f: f[1]) if found else None

    def rank(self, starts: list[torch.Tensor]) -> torch.Tensor:
        """The starts refined together (one batch) through the levels before the ranking level, then
        each ranked there after a depth scan: a coarse level can prefer a wrong out-of-plane rotation
        that a finer one rejects."""
        label = f"{len(starts)} starts: "
        xs = torch.stack(starts)
        for index in range(self.rank_level):
            xs, _ = self.refine(xs, index, label)
        ranked = []
        for k, x in enumerate(xs):
            x, loss = self.depth_scan(x, self.rank_level, f"start {k + 1}/{len(starts)}: ", name="rank")
            ranked.append((loss, k, x))
        x = min(ranked, key=lambda r: (r[0], r[1]))[2]
        if self.config.tilt_probe.enabled:
            x, _ = self.tilt_probe(x, "tilt probe")
        return x

    def run(self) -> torch.Tensor:
        """Search, rank, refine coarse to fine with the probes at the ranking level; returns x (6,)."""
        starts = self.search()
        first = 0
        x = starts[0]
        if len(starts) > 1 and self.rank_level > 0:
            x, first = self.rank(starts), self.rank_level
        for index in range(first, len(self.levels)):
            widened = index == self.rank_level and self.choose_context(x, index)
            boxed = index == len(self.levels) - 1 and self.choose_voxel_model(x, index)
            x, loss = self.refine(x, index, scan=index > first or first == 0 or boxed or widened)
            if index == first == self.rank_level and index > 0:
                # once the rest of the pose has settled, probe the out-of-plane rotations and the turn
                # about the bone's long axis again, and refine from a better one, until none helps (at
                # most three times)
                for _ in range(3):
                    probed = self.probes(x)
                    if probed is None or probed[1] >= loss - 1e-4:
                        break
                    x, loss = self.refine(probed[0], index, scan=False)
            if index == self.rank_level + 1 and rechecks_tilt(self.config):
                probed = self.tilt_probe(x, "tilt recheck", index)
                if probed[1] < loss - 1e-4:
                    x, loss = self.refine(probed[0], index, scan=False)
        return x


def _device_bone(bone: RenderVolume, config: RegistrationConfig) -> RenderVolume:
    if config.device is None:
        return bone
    if str(config.device).startswith("cuda") and not torch.cuda.is_available():
        raise FluoroRegError(f"device {config.device} asked for but CUDA is not available; use device='cpu'")
    return bone.to(device=config.device)


def _bone_view(view: ViewImage, bone: str, first: bool) -> _BoneView:
    """One view as ``bone``'s registration uses it: checked against its camera and undistorted."""
    frame = _as_image(view.frame, f"frame of view {view.name}").cpu()
    mask = view.masks.get(bone)
    mask = None if mask is None else _as_image(mask, f"mask of {bone}").cpu()
    field = None if view.field is None else view.field.cpu()
    view.camera.check_frame(frame.shape[-2], frame.shape[-1],
                            "frame" if first and view.camera_from_reference is None else f"frame of view {view.name}")
    camera, frame, mask, field = _undistort(view.camera, frame, mask, field)
    pose = view.camera_from_reference
    identity = pose is None or torch.equal(pose.to(torch.float64).cpu(), torch.eye(4, dtype=torch.float64))
    return _BoneView(view.name, camera, frame, mask, field, None if identity else pose.to(torch.float64).cpu())


def _views_status(bone: RenderVolume, views: list[_BoneView], job: _BoneRegistration, x: torch.Tensor,
                  initial: torch.Tensor, config: RegistrationConfig) -> tuple[float, dict, Status]:
    """The result's joint similarity, each view's ({name: similarity}) and status. One view: judged
    as it is. Several: each view judged on its own for what it alone shows (the bone in its field,
    its depth, its mask, the search box, no sign of the bone: a similarity under
    ``fail_similarity``), and the views' joint similarity judged against ``check_similarity``: a view
    that sees the bone obliquely scores lower at the right pose (a metal component 60 deg off a
    lateral view: 0.13-0.25, under the bone-measured 0.25) while the joint pose fits; the worst
    flag, reasons named by view."""
    objective = job.level_objective(len(job.levels) - 1)
    with torch.no_grad():
        losses = [float(loss[0]) for loss in objective.per_view(x[None])]
    joint = losses[0] if len(losses) == 1 else \
        sum(w * loss for w, loss in zip(objective.view_weights, losses)) / sum(objective.view_weights)
    pose = job.par.pose(x).detach()
    checks = config.checks if len(views) == 1 else replace(config.checks, check_similarity=config.checks.fail_similarity)
    statuses = {v.name: judge(evidence(bone, v.camera, v.pose(pose), 1.0 - loss, v.field, x.detach(), job.box,
                                       v.mask, config.similarity, v.pose(initial)), checks)
                for v, loss in zip(views, losses)}
    if len(views) == 1:
        return 1.0 - joint, {}, next(iter(statuses.values()))
    reasons = tuple(f"view {name}: {r}" for name, st in statuses.items() for r in st.reasons)
    joint_status = judge_joint_similarity(1.0 - joint, config.similarity, config.checks)
    flag = overall([*statuses.values(), joint_status])
    return 1.0 - joint, {v.name: 1.0 - loss for v, loss in zip(views, losses)}, Status(flag, joint_status.reasons + reasons)


def register_bone_views(bone: RenderVolume, views: list[ViewImage], initial: torch.Tensor,
                        config: RegistrationConfig | None = None, progress=None, cancel=None) -> BoneResult:
    """Register one bone against one or more views of a rig: one pose ``initial`` (4, 4) in the
    reference frame (the first view's camera), optimised against the mean of the views' losses.

    ``progress(stage, iteration, similarity, pose)`` is called every iteration (pose: (4, 4));
    ``cancel()`` returning True stops with :class:`Cancelled`.
    """
    config = config or RegistrationConfig()
    bone = _device_bone(bone, config)
    prepared = [_bone_view(v, bone.name, k == 0) for k, v in enumerate(views)]
    initial = initial.to(torch.float64).cpu()
    for v in prepared:
        _check_in_view(bone, v.camera, v.pose(initial), v.name if len(prepared) > 1 else "")
    t0 = time.perf_counter()
    job = None

    def report(stage, iteration, loss, x):
        if cancel is not None and cancel():
            raise Cancelled(f"registration of {bone.name} cancelled during {stage}")
        if progress is not None:
            progress(stage, iteration, 1.0 - loss, job.par.pose(x.detach()))

    job = _BoneRegistration(bone, prepared, initial, config, report)
    x = job.run()
    similarity, per_view, status = _views_status(bone, prepared, job, x, initial, config)
    finest = job.level_objective(len(job.levels) - 1)
    sd = depth_sd_mm(*depth_profile(finest, x), weighed_pixels(finest, x))
    pose = job.par.pose(x).detach()
    tilt, direction = tilt_sd_deg(*tilt_grid(finest, x), weighed_pixels(finest, x))
    tilt_axis = pose[:3, :3].T @ torch.cat([direction, direction.new_zeros(1)])  # camera axes -> the bone's
    tilt_axis = tuple(tilt_axis.tolist())
    status = judge_tilt(status, tilt, tilt_axis, config.checks)
    stages = job.stages
    return BoneResult(bone.name, pose, initial, similarity, sum(s.iterations for s in stages),
                      time.perf_counter() - t0, stages[-1].stop_reason if stages else "no stage",
                      [v for s in stages for v in s.losses], stages, status, per_view, sd, tilt, tilt_axis,
                      job.voxel_model, job.context)


def register_bone(bone: RenderVolume, frame: torch.Tensor, camera: Camera, initial: torch.Tensor,
                  mask: torch.Tensor | None = None, field: torch.Tensor | None = None,
                  config: RegistrationConfig | None = None, progress=None, cancel=None) -> BoneResult:
    """Register one bone to one frame: :func:`register_bone_views` with a single view. Shapes: frame,
    mask, field (1, 1, H, W) on the camera's grid; initial (4, 4)."""
    view = ViewImage(camera, frame, {} if mask is None else {bone.name: mask}, field)
    return register_bone_views(bone, [view], initial, config, progress, cancel)


def register(bones: dict[str, RenderVolume], frame: torch.Tensor, camera: Camera,
             initial_poses: dict[str, torch.Tensor], masks: dict[str, torch.Tensor] | None = None,
             field: torch.Tensor | None = None, config: RegistrationConfig | None = None, progress=None,
             cancel=None) -> RegistrationResult:
    """Register every bone in ``bones`` (name -> render volume) to one prepared frame:
    :func:`register_views` with a single view.

    The core under :func:`~FluoroRegistrationLib.register.register_frame`, which reads files, converts
    the frame, finds the field and makes the masks; call that unless the inputs are already prepared.

    Args:
        bones: the bones' render volumes (``registration_volumes``), each drawn alone at its own pose.
        frame: (1, 1, H, W) or (H, W) attenuation-like frame (bone bright), H x W = camera.rows x cols.
        camera: the calibration.
        initial_poses: bone -> (4, 4) ``camera_from_volume`` start.
        masks: optional bone -> (1, 1, H, W) or (H, W) weights in [0, 1] (the bone's 2D region).
        field: optional (1, 1, H, W) bool, the collimated field.
        config, progress, cancel: see :func:`register_views`.
    Returns:
        :class:`RegistrationResult` with one :class:`BoneResult` per bone.
    """
    return register_views(bones, [ViewImage(camera, frame, dict(masks or {}), field)], initial_poses, config,
                          progress, cancel)


def register_views(bones: dict[str, RenderVolume], views: list[ViewImage], initial_poses: dict[str, torch.Tensor],
                   config: RegistrationConfig | None = None, progress=None, cancel=None) -> RegistrationResult:
    """Register every bone in ``bones`` to the prepared frames of one or more views of a rig (a
    biplane pair, say): each bone's one pose (reference frame: the first view's camera) against all
    views at once.

    Args:
        bones: the bones' render volumes (``registration_volumes``), each drawn alone at its own pose.
        views: one :class:`ViewImage` per view (the first is the reference).
        initial_poses: bone -> (4, 4) ``camera_from_volume`` start, in the first view's camera frame.
        config: :class:`RegistrationConfig`.
        progress: ``progress(stage, iteration, similarity, pose)``, stage names the bone.
        cancel: ``cancel() -> bool``; True stops with :class:`Cancelled`.
    Returns:
        :class:`RegistrationResult` with one :class:`BoneResult` per bone (poses in the first view's frame).
    """
    config = config or RegistrationConfig()
    if not views:
        raise FluoroRegError("no view to register to; give at least one frame with its calibration")
    for view in views:
        frame = _as_image(view.frame, "frame")
        if not torch.isfinite(frame).all():
            where = f" of view {view.name}" if len(views) > 1 else ""
            raise FluoroRegError(f"the frame{where} contains NaN or infinite values; fix or crop the frame")
        unknown = [b for b in view.masks if b not in bones]
        if unknown:
            raise FluoroRegError(f"mask given for {', '.join(unknown)} but no such bone is registered ({', '.join(bones)})")
    follower_of = followed(bones)
    missing = [b for b in bones if b not in initial_poses and b not in follower_of]
    if missing:
        raise FluoroRegError(f"no initial pose for {', '.join(missing)}; add it to the initial poses")
    result = RegistrationResult(config=config)
    t0 = time.perf_counter()
    for name, bone in bones.items():
        if name in follower_of:
            continue
        bone_progress = None if progress is None else (
            lambda stage, it, sim, pose, name=name: progress(f"{name}: {stage}", it, sim, pose))
        result.bones[name] = register_bone_views(bone, views, initial_poses[name], config, bone_progress, cancel)
    for name, leader in follower_of.items():
        result.bones[name] = _following(name, result.bones[leader])
    result.seconds = time.perf_counter() - t0
    return result


def followed(bones: dict, doing: str = "register") -> dict[str, str]:
    """{name: the body whose pose it takes} for the bodies that follow another (an implant's
    ``follows``: a polyethylene insert locked in its tray) and are not registered themselves.
    ``bones``: {name: anything with a ``follows`` attribute, or not}; ``doing`` words the errors
    ("register", "track")."""
    follower_of = {name: b.follows for name, b in bones.items() if getattr(b, "follows", None)}
    for name, leader in follower_of.items():
        if leader == name:
            raise FluoroRegError(f"{name} cannot follow itself; name another component, e.g. the tray")
        if leader not in bones:
            raise FluoroRegError(f"{name} follows {leader}, which is not {doing}ed; {doing} {leader} too "
                                 f"({doing}ed: {', '.join(b for b in bones if b not in follower_of)})")
        if leader in follower_of:
            raise FluoroRegError(f"{name} follows {leader}, which follows {follower_of[leader]}; let {name} follow "
                                 f"{follower_of[leader]} directly")
    return follower_of


def _following(name: str, leader: BoneResult) -> BoneResult:
    """A follower's result: its leader's pose and status (its mesh lies in the leader's mesh frame)."""
    reasons = leader.status.reasons + (f"pose of {leader.bone} (follows it)",)
    return BoneResult(name, leader.camera_from_volume.clone(), leader.initial.clone(), leader.similarity, 0, 0.0,
                      f"follows {leader.bone}", [], [], Status(leader.status.flag, reasons))


def _search_starts(candidates: tuple, best: torch.Tensor, separation: torch.Tensor,
                   ranking: Ranking) -> list[torch.Tensor]:
    """The starts the refinement ranks: up to ``ranking.starts`` distinct minima of the global search's
    ``candidates`` ((N, 6) poses, (N,) losses), and the initial pose (x = 0) when ``keep_initial`` and
    no minimum lies within ``separation`` (6,) of it: a coarse search can rank the right basin below
    wrong ones, and the user's start is often in it."""
    starts = distinct_minima(*candidates, max(1, ranking.starts), separation) or [best]
    initial = torch.zeros(6, dtype=torch.float64)
    if ranking.keep_initial and all(differs(x, initial, separation) for x in starts):
        starts.append(initial)
    return starts


def _long_axis(bone: RenderVolume) -> torch.Tensor | None:
    """The bone's long axis in its volume frame: the first principal direction of its voxels, (3,)
    (None for a volume without voxel points)."""
    if bone.points is None or len(bone.points) < 3:
        return None
    points = bone.points.to(torch.float64).cpu()
    _, _, vh = torch.linalg.svd(points - points.mean(0), full_matrices=False)
    return vh[0]


def _undistort(camera: Camera, frame, mask, field):
    """Undo the image intensifier's pincushion (``camera.distortion_k``) on the frame, mask and field,
    and return the camera without distortion: DRRs are rendered by an ideal pinhole."""
    if not camera.distortion_k:
        return camera, frame, mask, field
    from dataclasses import replace

    from ..simulate.detector import distort_image

    def undo(img):
        return distort_image(img, camera.distortion_k, (camera.u0, camera.v0), inverse=True)

    mask = None if mask is None else undo(mask.float())
    field = None if field is None else undo(field.float()) > 0.5
    return replace(camera, distortion_k=0.0), undo(frame), mask, field


def _as_image(x, what: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() == 2:
        x = x[None, None]
    if x.dim() != 4 or x.shape[:2] != (1, 1):
        raise FluoroRegError(f"{what} must be (H, W) or (1, 1, H, W), got {tuple(x.shape)}")
    return x.to(torch.float32)
