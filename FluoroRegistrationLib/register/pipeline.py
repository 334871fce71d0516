"""The registration job: each bone's pose from one frame, by global search then coarse-to-fine Adam.

Swappable parts: the renderer (``render_fast``), the similarity (``config.similarity``, a name in
:data:`~FluoroRegistrationLib.similarity.SIMILARITIES`), the pose parameterisation
(:class:`~FluoroRegistrationLib.geometry.CentredParameterization` about the bone's centroid) and the
optimisers (:func:`simulated_annealing`, :func:`adam_refine`). Only the bone's own labels are
rendered; a 2D mask per bone (ground truth, a file, or a segmentation network's output) restricts
the similarity to the bone's region.

Settings: :class:`~FluoroRegistrationLib.register.config.RegistrationConfig` (physical units). Users
call :func:`~FluoroRegistrationLib.register.register_frame` (files in, one path for every face);
:func:`register` is its core on prepared tensors.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import FluoroRegError
from ..geometry import Camera, CentredParameterization, transform_points
from ..render import render
from ..volume import RenderVolume
from . import timing
from .config import RegistrationConfig, Ranking
from .status import Status, evidence, judge, overall
from .optimize import (Cancelled, StageLog, adam_refine, differs, distinct_minima, grid_search, line_search,
                       rotation_scan, simulated_annealing)


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

    def to_dict(self) -> dict:
        return {"camera_from_volume": self.camera_from_volume.tolist(), "status": self.status.flag,
                "reason": self.status.reason, "similarity": self.similarity,
                "iterations": self.iterations, "seconds": round(self.seconds, 3), "stop_reason": self.stop_reason,
                "stages": [{"name": s.name, "iterations": s.iterations, "seconds": round(s.seconds, 3),
                            "stop_reason": s.stop_reason, "final_loss": s.losses[-1] if s.losses else None,
                            "parts": s.parts}
                           for s in self.stages]}


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


def _pool(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return image if tuple(image.shape[-2:]) == size else F.adaptive_avg_pool2d(image, size)


@dataclass(frozen=True)
class Level:
    """One image size the registration works at. size: (rows, cols) of the resized detector;
    pixel_mm: its pixel seen at the bone (mm); iterations: Adam's budget there (pyramid levels)."""

    size: tuple
    pixel_mm: float
    iterations: int = 0


def pixel_at_bone_mm(camera: Camera, depth_mm: float) -> float:
    """The detector's (finer) pixel pitch seen at a depth ``depth_mm`` from the source (mm)."""
    return min(camera.row_spacing_mm, camera.col_spacing_mm) * depth_mm / camera.sdd_mm


def level_for(camera: Camera, depth_mm: float, pixel_mm: float, iterations: int = 0) -> Level:
    """The detector resized so that a pixel spans ``pixel_mm`` at the bone (never finer than the
    detector itself, never under 8 pixels a side)."""
    native = pixel_at_bone_mm(camera, depth_mm)
    factor = max(1.0, pixel_mm / native)
    size = (max(8, round(camera.rows / factor)), max(8, round(camera.cols / factor)))
    if size[0] > camera.rows or size[1] > camera.cols:
        size = camera.shape
    return Level(size, native * max(camera.rows / size[0], camera.cols / size[1]), iterations)


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


def expected_reports(config: RegistrationConfig, camera: Camera, depth_mm: float) -> int:
    """About how many progress reports one bone's registration makes (the GUIs' progress bars).

    Every pose the optimisers score is one report: the search's steps, each start's refinement and
    rank scan, the probes' grids, the levels coarse to fine. Adam usually stops on a plateau at about
    half its iterations and the probes run about once, so this is a typical count, not a bound
    (measured on the phantom: within 0.7-1.3 of it, Testing/test_web_session.py). The levels are
    the pipeline's own for a bone at ``depth_mm`` from the source (:func:`pyramid_levels`).
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
        if rank > 0:
            # the starts refine as one batch (one report per iteration); each has its depth scans
            # before levels 1..rank-1 and the rank scan
            total += sum(adam[:rank]) + config.ranking.starts * scan * rank + tilt
            first = rank
    for index in range(first, len(levels)):
        scans = index > first and config.depth_scan.enabled and \
            levels[index].pixel_mm >= config.depth_scan.min_pixel_mm * 0.999
        total += adam[index] + (scan if scans else 0)
        if index == first == rank and index > 0:
            total += tilt + axial + adam[index]  # the probes and one refinement after them
    return max(1, round(total))


def bone_depth_mm(bone: RenderVolume, pose: torch.Tensor) -> float:
    """Distance along the beam from the source to the bone's centroid at ``pose`` (4, 4) (mm)."""
    return float(transform_points(pose, bone.centroid[None].to(pose))[0, 2])


def _check_in_view(bone: RenderVolume, camera: Camera, pose: torch.Tensor) -> None:
    c = transform_points(pose, bone.centroid[None].to(pose))[0]
    if c[2] <= 0:
        raise FluoroRegError(f"initial pose puts {bone.name} behind the X-ray source (depth {float(c[2]):.0f} mm); "
                             "check the initial pose file")
    u, v = camera.project(c).tolist()
    if not (0 <= u < camera.cols and 0 <= v < camera.rows):
        raise FluoroRegError(f"initial pose puts {bone.name}'s centre outside the field of view (pixel {u:.0f}, {v:.0f} "
                             f"of {camera.cols}x{camera.rows}); start from a pose that shows the bone")


_CROP_MARGIN = 14  # >= the widest patch's half-width (23 // 2) + Sobel reach (1) + 1


class _Objective:
    """loss(x) at one level for one bone: x (B, 6) -> (B,).

    The similarity is evaluated on the bounding box of the weights' support plus ``_CROP_MARGIN``
    pixels: every similarity weights each pixel's terms by the mask, and the patch similarities also
    count pixels whose window (up to 23 pixels wide) reaches into it, after a Sobel stencil (1 pixel),
    so pixels further out cannot change the value, and a bone's box is a fraction of the frame. Only
    that box is rendered, and the frame's side of the similarity is computed once
    (:class:`~FluoroRegistrationLib.similarity.FrameLoss`).
    """

    def __init__(self, bone, camera, par, frame, weights, similarity: str):
        from ..similarity import FrameLoss

        self.bone, self.camera, self.par = bone, camera, par
        rows, cols = torch.nonzero(weights[0, 0] > 0, as_tuple=True)
        H, W = weights.shape[-2:]
        r0, r1 = max(0, int(rows.min()) - _CROP_MARGIN), min(H, int(rows.max()) + _CROP_MARGIN + 1)
        c0, c1 = max(0, int(cols.min()) - _CROP_MARGIN), min(W, int(cols.max()) + _CROP_MARGIN + 1)
        self.region = (r0, r1, c0, c1)  # the detector rows and columns rendered and compared
        device = bone.mu.device  # render and compare where the bone lives; the optimiser stays on the CPU
        self.frame = frame[..., r0:r1, c0:c1].to(device)
        self.weights = weights[..., r0:r1, c0:c1].to(device)
        self.loss = FrameLoss(similarity, self.frame, self.weights)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        device = self.bone.mu.device
        with timing.part("render", device):
            poses = self.par.pose(x).to(device=device, dtype=self.bone.mu.dtype)
            drr = render(self.bone, self.camera, poses, "fast", region=self.region)
        with timing.part("similarity", device):
            return self.loss(drr).cpu()


def _weights(mask, field, size, dilation_px: int):
    """Similarity weights at one level: the bone mask dilated by ``dilation_px`` pixels, inside the
    collimated field."""
    w = torch.ones(1, 1, *size) if field is None else (_pool(field.float(), size) > 0.999).float()
    if mask is not None:
        m = (_pool(mask.float(), size) > 0.25).float()
        if dilation_px > 0:  # a square's dilation is a row's then a column's (separable: 2k, not k^2, per pixel)
            k = 2 * dilation_px + 1
            m = F.max_pool2d(m, (1, k), stride=1, padding=(0, dilation_px))
            m = F.max_pool2d(m, (k, 1), stride=1, padding=(dilation_px, 0))
        w = w * m
    if w.sum() == 0:
        raise FluoroRegError("the mask is empty inside the collimated field at this level; check the mask image")
    return w


def level_volume(bone: RenderVolume, level: Level) -> RenderVolume:
    """The bone as ``level`` draws it: a level whose pixels, seen at the bone, span k voxels draws it
    on a k-times coarser grid (``Pyramid.coarsen``)."""
    voxel = float(bone.volume_from_index[:3, :3].norm(dim=0).min())
    return bone.coarsened(max(1, int(level.pixel_mm / voxel)))


def _level_objective(bone, frame, camera, par, mask, field, level: Level, dilation_mm: float, coarsen: bool,
                     similarity: str) -> _Objective:
    """The loss at ``level`` (undistorted inputs), the mask dilated by ``dilation_mm`` at the bone."""
    level_camera = camera.resized(*level.size)
    drawn = level_volume(bone, level) if coarsen else bone
    dilation_px = round(dilation_mm / level.pixel_mm)
    return _Objective(drawn, level_camera, par, _pool(frame, level.size),
                      _weights(mask, field, level.size, dilation_px), similarity)


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
    the parameterisation about the initial pose, the objectives per level, the stage logs."""

    def __init__(self, bone, frame, camera, initial, mask, field, config: RegistrationConfig, report):
        self.bone, self.frame, self.camera, self.mask, self.field = bone, frame, camera, mask, field
        self.config, self.report = config, report
        self.par = CentredParameterization(bone.centroid.to(torch.float64).cpu(), initial, depth_along_ray=True)
        depth = bone_depth_mm(bone, initial)
        self.levels = pyramid_levels(camera, depth, config)
        self.rank_level = min(config.ranking.level, len(self.levels) - 1)
        self.search_level = level_for(camera, depth, config.search.pixel_mm)
        self.stages: list[StageLog] = []
        self._objectives: dict = {}
        deg = math.pi / 180
        st = config.steps
        self.scales = torch.tensor([st.out_of_plane_rotation_deg * deg] * 2 + [st.rotation_deg * deg]
                                   + [st.translation_mm] * 2 + [st.depth_mm], dtype=torch.float64)
        s = config.search
        # the refinement stays inside the search box around the initial pose (depth: the in-plane
        # range), so a weakly constrained parameter cannot run away
        self.box = torch.tensor([s.range_deg * deg] * 3 + [s.range_mm] * 3, dtype=torch.float64)
        self.ranges = torch.tensor([s.range_deg * deg] * 3 + [s.range_mm] * 2 + [s.range_depth_mm], dtype=torch.float64)

    def objective(self, level: Level, fine: bool = False) -> _Objective:
        """The loss at ``level``, the mask dilated as at the fine levels when ``fine`` (cached)."""
        dilation = self.config.masks.fine_dilation_mm if fine else self.config.masks.dilation_mm
        key = (level.size, dilation)
        if key not in self._objectives:
            self._objectives[key] = _level_objective(self.bone, self.frame, self.camera, self.par, self.mask,
                                                     self.field, level, dilation, self.config.pyramid.coarsen,
                                                     self.config.similarity)
        return self._objectives[key]

    def level_objective(self, index: int) -> _Objective:
        """The loss at pyramid level ``index``: levels finer than the ranking level use the fine mask."""
        return self.objective(self.levels[index], fine=_fine_mask(index, len(self.levels), self.rank_level))

    def log(self, result, level: int | None = None):
        """Keep a stage's log, with the pose it ended at (the best start's, for a batch) and the
        pyramid level it ran at (None: the global search)."""
        x, loss, log = result
        best = x if x.dim() == 1 else x[int(torch.as_tensor(loss).argmin())]
        log.pose, log.level = self.par.pose(best.detach()), level
        self.stages.append(log)
        return x, loss

    def search(self) -> list[torch.Tensor]:
        """The global search: the starts to refine (distinct minima, and the initial pose)."""
        x0 = torch.zeros(6, dtype=torch.float64)
        if not self.config.search.enabled:
            return [x0]
        s = self.config.search
        best, _ = self.log(simulated_annealing(self.objective(self.search_level), x0, self.ranges,
                                               torch.Generator().manual_seed(self.config.seed), steps=s.steps,
                                               candidates=s.candidates, report=self.report))
        separation = self.config.ranking.separation * torch.cat([self.ranges[:5], self.box[5:]])
        return _search_starts(self.stages[-1].candidates, best, separation, self.config.ranking)

    def depth_scan(self, x, index: int, label: str = "", name: str = "depth scan"):
        scan = self.config.depth_scan
        return self.log(line_search(self.level_objective(index), x, 5, scan.half_width_mm, points=scan.points,
                                    report=self.report, name=f"{label}{name} {self.levels[index].size[1]}px"), index)

    def refine(self, x, index: int, label: str = "", scan: bool = True):
        """Adam at pyramid level ``index`` (after a depth scan when ``scan`` and enabled), from one
        start x (6,), or from K starts (K, 6) refined as one batch (then losses are (K,))."""
        scan_here = self.levels[index].pixel_mm >= self.config.depth_scan.min_pixel_mm * 0.999
        if scan and index > 0 and self.config.depth_scan.enabled and scan_here:
            if x.dim() == 1:
                x, _ = self.depth_scan(x, index, label)
            else:
                x = torch.stack([self.depth_scan(row, index, label)[0] for row in x])
        return self.log(adam_refine(self.level_objective(index), x, self.scales,
                                    iterations=self.levels[index].iterations,
                                    lr=self.config.pyramid.learning_rate, patience=self.config.pyramid.patience,
                                    bounds=(-self.box, self.box),
                                    report=self.report, name=f"{label}refine {self.levels[index].size[1]}px"), index)

    def tilt_probe(self, x, name: str):
        """Best pose on a grid over both out-of-plane rotations at the ranking level."""
        offsets = _probe_offsets(self.config.tilt_probe)
        return self.log(grid_search(self.level_objective(self.rank_level), x, (0, 1), offsets, report=self.report,
                                    name=f"{name} {self.levels[self.rank_level].size[1]}px"), self.rank_level)

    def axial_probe(self, x):
        """Best turn about the bone's long axis at the ranking level."""
        long_axis = _long_axis(self.bone)
        if long_axis is None:
            return None
        axis = self.par.pose(x)[:3, :3] @ long_axis
        return self.log(rotation_scan(self.level_objective(self.rank_level), x, axis,
                                      _probe_offsets(self.config.axial_probe), report=self.report,
                                      name=f"axial probe {self.levels[self.rank_level].size[1]}px"), self.rank_level)

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
            x, loss = self.refine(x, index, scan=index > first or first == 0)
            if index == first == self.rank_level and index > 0:
                # once the rest of the pose has settled, probe the out-of-plane rotations and the turn
                # about the bone's long axis again, and refine from a better one, until none helps (at
                # most three times)
                for _ in range(3):
                    probed = self.probes(x)
                    if probed is None or probed[1] >= loss - 1e-4:
                        break
                    x, loss = self.refine(probed[0], index, scan=False)
        return x


def register_bone(bone: RenderVolume, frame: torch.Tensor, camera: Camera, initial: torch.Tensor,
                  mask: torch.Tensor | None = None, field: torch.Tensor | None = None,
                  config: RegistrationConfig | None = None, progress=None, cancel=None) -> BoneResult:
    """Register one bone. Shapes: frame, mask, field (1, 1, H, W) on the camera's grid; initial (4, 4).

    ``progress(stage, iteration, similarity, pose)`` is called every iteration (pose: (4, 4));
    ``cancel()`` returning True stops with :class:`Cancelled`.
    """
    config = config or RegistrationConfig()
    if config.device is not None:
        if str(config.device).startswith("cuda") and not torch.cuda.is_available():
            raise FluoroRegError(f"device {config.device} asked for but CUDA is not available; use device='cpu'")
        bone = bone.to(device=config.device)
    frame = frame.cpu()
    mask = None if mask is None else mask.cpu()
    field = None if field is None else field.cpu()
    camera.check_frame(frame.shape[-2], frame.shape[-1])
    camera, frame, mask, field = _undistort(camera, frame, mask, field)
    initial = initial.to(torch.float64).cpu()
    _check_in_view(bone, camera, initial)
    t0 = time.perf_counter()
    job = None

    def report(stage, iteration, loss, x):
        if cancel is not None and cancel():
            raise Cancelled(f"registration of {bone.name} cancelled during {stage}")
        if progress is not None:
            progress(stage, iteration, 1.0 - loss, job.par.pose(x.detach()))

    job = _BoneRegistration(bone, frame, camera, initial, mask, field, config, report)
    x = job.run()
    with torch.no_grad():
        final_loss = float(job.level_objective(len(job.levels) - 1)(x[None])[0])
    stages = job.stages
    pose = job.par.pose(x).detach()
    status = judge(evidence(bone, camera, pose, 1.0 - final_loss, field, x.detach(), job.box, mask, config.similarity,
                            initial), config.checks)
    return BoneResult(bone.name, pose, initial, 1.0 - final_loss,
                      sum(s.iterations for s in stages), time.perf_counter() - t0,
                      stages[-1].stop_reason if stages else "no stage", [v for s in stages for v in s.losses], stages,
                      status)


def register(bones: dict[str, RenderVolume], frame: torch.Tensor, camera: Camera,
             initial_poses: dict[str, torch.Tensor], masks: dict[str, torch.Tensor] | None = None,
             field: torch.Tensor | None = None, config: RegistrationConfig | None = None, progress=None,
             cancel=None) -> RegistrationResult:
    """Register every bone in ``bones`` (name -> render volume) to one prepared frame.

    The core under :func:`~FluoroRegistrationLib.register.register_frame`, which reads files, converts
    the frame, finds the field and makes the masks; call that unless the inputs are already prepared.

    Args:
        bones: the bones' render volumes (``registration_volumes``), each drawn alone at its own pose.
        frame: (1, 1, H, W) or (H, W) attenuation-like frame (bone bright), H x W = camera.rows x cols.
        camera: the calibration.
        initial_poses: bone -> (4, 4) ``camera_from_volume`` start.
        masks: optional bone -> (1, 1, H, W) or (H, W) weights in [0, 1] (the bone's 2D region).
        field: optional (1, 1, H, W) bool, the collimated field.
        config: :class:`RegistrationConfig`.
        progress: ``progress(stage, iteration, similarity, pose)``, stage names the bone.
        cancel: ``cancel() -> bool``; True stops with :class:`Cancelled`.
    Returns:
        :class:`RegistrationResult` with one :class:`BoneResult` per bone.
    """
    config = config or RegistrationConfig()
    frame = _as_image(frame, "frame")
    if not torch.isfinite(frame).all():
        raise FluoroRegError("the frame contains NaN or infinite values; fix or crop the frame")
    masks = {b: _as_image(m, f"mask of {b}") for b, m in (masks or {}).items()}
    unknown = [b for b in masks if b not in bones]
    if unknown:
        raise FluoroRegError(f"mask given for {', '.join(unknown)} but no such bone is registered ({', '.join(bones)})")
    missing = [b for b in bones if b not in initial_poses]
    if missing:
        raise FluoroRegError(f"no initial pose for {', '.join(missing)}; add it to the initial poses")
    result = RegistrationResult(config=config)
    t0 = time.perf_counter()
    for name, bone in bones.items():
        bone_progress = None if progress is None else (
            lambda stage, it, sim, pose, name=name: progress(f"{name}: {stage}", it, sim, pose))
        result.bones[name] = register_bone(bone, frame, camera, initial_poses[name], masks.get(name), field,
                                           config, bone_progress, cancel)
    result.seconds = time.perf_counter() - t0
    return result


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
