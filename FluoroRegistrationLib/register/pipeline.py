"""The registration job: each bone's pose from one frame, by global search then coarse-to-fine Adam.

Swappable parts: the renderer (``render_fast``), the similarity (``options.similarity``, a name in
:data:`~FluoroRegistrationLib.similarity.SIMILARITIES`), the pose parameterisation
(:class:`~FluoroRegistrationLib.geometry.CentredParameterization` about the bone's centroid) and the
optimisers (:func:`simulated_annealing`, :func:`adam_refine`). Only the bone's own labels are
rendered; a 2D mask per bone (ground truth, a file, or a segmentation network's output) restricts
the similarity to the bone's region.

    result = register(bones, frame, camera, initial_poses, masks=..., options=RegistrationOptions())
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
from .optimize import (Cancelled, StageLog, adam_refine, differs, distinct_minima, grid_search, line_search,
                       rotation_scan, simulated_annealing)


@dataclass
class RegistrationOptions:
    """Settings of :func:`register` (units in the names; angles in degrees here, as a person sets them)."""

    similarity: str = "patch-gncc"  # patch gradient-NCC: measured best (benchmarks/REGISTER_RESULTS.md); "gcc" = the study
    global_search: bool = True
    search_range_mm: float = 30.0  # half-width of the global search box, in-plane translation axes
    search_range_depth_mm: float = 0.0  # half-width along the beam (0: depth left to the refinement)
    search_range_deg: float = 25.0  # half-width of the global search box, each rotation axis
    search_level: int = 64  # detector size (longest side) of the global search
    search_steps: int = 30
    search_candidates: int = 48
    starts: int = 4  # distinct minima of the global search refined through the first two levels; the best goes on
    keep_initial: bool = True  # the initial pose is refined and ranked too (when it differs from those minima)
    start_separation: float = 0.2  # minima differ by more than this fraction of the search range on some axis
    levels: tuple = (64, 128, 256, 512)  # detector sizes (longest side) of the refinement pyramid
    iterations: tuple = (60, 50, 40, 30)  # Adam iterations at each level
    learning_rate: float = 0.6  # in units of one step: 1 deg (rotations) and 1 mm (translations)
    rotation_step_deg: float = 1.0  # in-plane rotation (about the beam)
    out_of_plane_rotation_step_deg: float = 2.0  # rotations about the camera's x and y axes
    translation_step_mm: float = 1.0  # in-plane translation
    depth_step_mm: float = 4.0  # translation along the beam (weakly seen in one view: larger unit)
    depth_scan_mm: float = 6.0  # before each refinement level after the first: scan depth +- this (0: off)
    tilt_probe_deg: float = 12.0  # at the second level: grid over both out-of-plane rotations, +- this (0: off)
    tilt_probe_step_deg: float = 4.0
    axial_probe_deg: float = 30.0  # after the second level: turns about the bone's long axis, +- this (0: off)
    axial_probe_step_deg: float = 3.0
    mask_dilation_fraction: float = 0.02  # masks grow by this fraction of the detector size (search, first two levels)
    fine_mask_dilation_fraction: float | None = 0.06  # ... at the finer levels, where depth settles (None: as above)
    coarsen: bool = True  # coarse levels draw the bone from a coarsened grid (RenderVolume.coarsened)
    seed: int = 0
    device: str | None = None  # where bones are drawn ("cuda", "cpu"); None: where the bone volume is


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

    def to_dict(self) -> dict:
        return {"camera_from_volume": self.camera_from_volume.tolist(), "similarity": self.similarity,
                "iterations": self.iterations, "seconds": round(self.seconds, 3), "stop_reason": self.stop_reason,
                "stages": [{"name": s.name, "iterations": s.iterations, "seconds": round(s.seconds, 3),
                            "stop_reason": s.stop_reason, "final_loss": s.losses[-1] if s.losses else None}
                           for s in self.stages]}


@dataclass
class RegistrationResult:
    """Every bone's result, and the options used."""

    bones: dict = field(default_factory=dict)
    options: RegistrationOptions | None = None
    seconds: float = 0.0

    def poses(self) -> dict[str, torch.Tensor]:
        return {b: r.camera_from_volume for b, r in self.bones.items()}

    def to_dict(self) -> dict:
        return {b: r.to_dict() for b, r in self.bones.items()}


def _pool(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return image if tuple(image.shape[-2:]) == size else F.adaptive_avg_pool2d(image, size)


def _level_size(camera: Camera, longest: int) -> tuple[int, int]:
    f = max(1.0, max(camera.rows, camera.cols) / longest)
    return max(8, round(camera.rows / f)), max(8, round(camera.cols / f))


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
    """loss(x) at one pyramid level for one bone: x (B, 6) -> (B,).

    The similarity is evaluated on the bounding box of the weights' support plus ``_CROP_MARGIN``
    pixels: every similarity weights each pixel's terms by the mask, and the patch similarities also
    count pixels whose window (up to 23 pixels wide) reaches into it, after a Sobel stencil (1 pixel),
    so pixels further out cannot change the value, and a bone's box is a fraction of the frame.
    """

    def __init__(self, bone, camera, par, frame, weights, loss_fn):
        self.bone, self.camera, self.par, self.loss_fn = bone, camera, par, loss_fn
        rows, cols = torch.nonzero(weights[0, 0] > 0, as_tuple=True)
        H, W = weights.shape[-2:]
        self.crop = (slice(max(0, int(rows.min()) - _CROP_MARGIN), min(H, int(rows.max()) + _CROP_MARGIN + 1)),
                     slice(max(0, int(cols.min()) - _CROP_MARGIN), min(W, int(cols.max()) + _CROP_MARGIN + 1)))
        device = bone.mu.device  # render and compare where the bone lives; the optimiser stays on the CPU
        self.frame = frame[..., self.crop[0], self.crop[1]].to(device)
        self.weights = weights[..., self.crop[0], self.crop[1]].to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        poses = self.par.pose(x).to(device=self.bone.mu.device, dtype=self.bone.mu.dtype)
        drr = render(self.bone, self.camera, poses, "fast")[..., self.crop[0], self.crop[1]]
        return self.loss_fn(drr, self.frame, self.weights).cpu()


def _weights(mask, field, size, dilation_fraction):
    """Similarity weights at one level: the dilated bone mask inside the collimated field."""
    w = torch.ones(1, 1, *size) if field is None else (_pool(field.float(), size) > 0.999).float()
    if mask is not None:
        m = (_pool(mask.float(), size) > 0.25).float()
        r = max(1, round(dilation_fraction * max(size)))
        m = F.max_pool2d(m, 2 * r + 1, stride=1, padding=r)
        w = w * m
    if w.sum() == 0:
        raise FluoroRegError("the mask is empty inside the collimated field at this level; check the mask image")
    return w


def _level_objective(bone, frame, camera, par, mask, field, options, loss_fn, longest) -> _Objective:
    """The loss at the pyramid level whose longest side is ``longest`` pixels (undistorted inputs)."""
    size = _level_size(camera, longest)
    level_camera = camera.resized(*size)
    # a level whose pixels, seen at the bone, span k voxels draws the bone on a k-times coarser grid
    depth = float(transform_points(par.reference, bone.centroid[None].to(par.reference))[0, 2])
    voxel = float(bone.volume_from_index[:3, :3].norm(dim=0).min())
    pixel_at_bone = min(level_camera.row_spacing_mm, level_camera.col_spacing_mm) * depth / camera.sdd_mm
    drawn = bone.coarsened(max(1, int(pixel_at_bone / voxel))) if options.coarsen else bone
    return _Objective(drawn, level_camera, par, _pool(frame, size),
                      _weights(mask, field, size, _dilation(options, longest)), loss_fn)


def _dilation(options: RegistrationOptions, longest: int) -> float:
    """The mask's dilation (fraction of the detector) at the level of ``longest`` pixels: the search
    and the first two levels keep the mask tight, so the basin is the bone's; the finer levels may
    widen it, so more of the bone's outline and surroundings judge its scale (depth along the beam)."""
    fine = options.fine_mask_dilation_fraction
    if fine is None or len(options.levels) < 3 or longest <= options.levels[1]:
        return options.mask_dilation_fraction
    return fine


def similarity_objective(bone: RenderVolume, frame: torch.Tensor, camera: Camera, reference: torch.Tensor,
                         mask: torch.Tensor | None = None, field: torch.Tensor | None = None,
                         options: RegistrationOptions | None = None, longest: int = 128):
    """The registration's loss about a pose, for landscapes and diagnostics: returns ``loss(x)``,
    (B, 6) -> (B,) (1 - similarity), with ``x`` in :class:`CentredParameterization` units about the
    bone's centroid and ``reference`` (camera axes: rotations in radians, translations in mm), at
    the pyramid level of ``longest`` pixels, exactly as :func:`register_bone` evaluates it.
    Shapes: frame, mask, field (1, 1, H, W) on the camera's grid; reference (4, 4).
    """
    from ..similarity import get_similarity

    options = options or RegistrationOptions()
    camera, frame, mask, field = _undistort(camera, _as_image(frame, "frame"),
                                            None if mask is None else _as_image(mask, "mask"), field)
    par = CentredParameterization(bone.centroid.to(torch.float64).cpu(), reference.to(torch.float64).cpu())
    return _level_objective(bone, frame, camera, par, mask, field, options, get_similarity(options.similarity), longest)


def register_bone(bone: RenderVolume, frame: torch.Tensor, camera: Camera, initial: torch.Tensor,
                  mask: torch.Tensor | None = None, field: torch.Tensor | None = None,
                  options: RegistrationOptions | None = None, progress=None, cancel=None) -> BoneResult:
    """Register one bone. Shapes: frame, mask, field (1, 1, H, W) on the camera's grid; initial (4, 4).

    ``progress(stage, iteration, similarity, pose)`` is called every iteration (pose: (4, 4));
    ``cancel()`` returning True stops with :class:`Cancelled`.
    """
    from ..similarity import get_similarity

    options = options or RegistrationOptions()
    loss_fn = get_similarity(options.similarity)
    if options.device is not None:
        if str(options.device).startswith("cuda") and not torch.cuda.is_available():
            raise FluoroRegError(f"device {options.device} asked for but CUDA is not available; use device='cpu'")
        bone = bone.to(device=options.device)
    frame = frame.cpu()
    mask = None if mask is None else mask.cpu()
    field = None if field is None else field.cpu()
    camera.check_frame(frame.shape[-2], frame.shape[-1])
    camera, frame, mask, field = _undistort(camera, frame, mask, field)
    initial = initial.to(torch.float64).cpu()
    _check_in_view(bone, camera, initial)
    t0 = time.perf_counter()
    par = CentredParameterization(bone.centroid.to(torch.float64).cpu(), initial, depth_along_ray=True)
    generator = torch.Generator().manual_seed(options.seed)
    deg = math.pi / 180
    scales = torch.tensor([options.out_of_plane_rotation_step_deg * deg] * 2 + [options.rotation_step_deg * deg]
                          + [options.translation_step_mm] * 2 + [options.depth_step_mm], dtype=torch.float64)

    def report(stage, iteration, loss, x):
        if cancel is not None and cancel():
            raise Cancelled(f"registration of {bone.name} cancelled during {stage}")
        if progress is not None:
            progress(stage, iteration, 1.0 - loss, par.pose(x.detach()))

    objectives = {}

    def objective_at(longest):
        if longest not in objectives:
            objectives[longest] = _level_objective(bone, frame, camera, par, mask, field, options, loss_fn, longest)
        return objectives[longest]

    stages: list[StageLog] = []
    # the refinement stays inside the search box around the initial pose (depth: the in-plane range),
    # so a weakly constrained parameter cannot run away
    box = torch.tensor([options.search_range_deg * deg] * 3 + [options.search_range_mm] * 3, dtype=torch.float64)
    starts = [torch.zeros(6, dtype=torch.float64)]
    if options.global_search:
        ranges = torch.tensor([options.search_range_deg * deg] * 3 + [options.search_range_mm] * 2
                              + [options.search_range_depth_mm], dtype=torch.float64)
        best, _, log = simulated_annealing(objective_at(options.search_level), starts[0], ranges, generator,
                                           steps=options.search_steps, candidates=options.search_candidates,
                                           report=report)
        stages.append(log)
        separation = options.start_separation * torch.cat([ranges[:5], box[5:]])
        starts = _search_starts(log.candidates, best, separation, options)

    def refine(x, level_index, label="", scan=True):
        longest = options.levels[level_index]
        if scan and level_index > 0 and options.depth_scan_mm > 0:
            x, _, log = line_search(objective_at(longest), x, 5, options.depth_scan_mm, report=report,
                                    name=f"{label}depth scan {longest}px")
            stages.append(log)
        x, loss, log = adam_refine(objective_at(longest), x, scales, iterations=options.iterations[level_index],
                                   lr=options.learning_rate, bounds=(-box, box), report=report,
                                   name=f"{label}refine {longest}px")
        stages.append(log)
        return x, loss

    n_tilt = int(options.tilt_probe_deg // options.tilt_probe_step_deg) if options.tilt_probe_deg > 0 else 0
    tilt_offsets = torch.arange(-n_tilt, n_tilt + 1, dtype=torch.float64) * options.tilt_probe_step_deg * deg

    def tilt_probe(x, name):
        """Best pose on a grid over both out-of-plane rotations at the second level."""
        x, loss, log = grid_search(objective_at(options.levels[1]), x, (0, 1), tilt_offsets, report=report,
                                   name=f"{name} {options.levels[1]}px")
        stages.append(log)
        return x, loss

    long_axis = _long_axis(bone) if options.axial_probe_deg > 0 else None
    n_axial = int(options.axial_probe_deg // options.axial_probe_step_deg) if long_axis is not None else 0
    axial_offsets = torch.arange(-n_axial, n_axial + 1, dtype=torch.float64) * options.axial_probe_step_deg * deg

    def probes(x):
        """The best of the tilt and axial probes about ``x`` at the second level (at least one is on):
        (x, loss)."""
        found = []
        if n_tilt:
            found.append(tilt_probe(x, "tilt re-probe"))
        if n_axial:
            axis = par.pose(x)[:3, :3] @ long_axis
            x2, loss2, log = rotation_scan(objective_at(options.levels[1]), x, axis, axial_offsets, report=report,
                                           name=f"axial probe {options.levels[1]}px")
            stages.append(log)
            found.append((x2, loss2))
        return min(found, key=lambda f: f[1])

    # each distinct start is refined at the first level and ranked at the second (after its depth
    # scan): a coarse level can prefer a wrong out-of-plane rotation that a finer one rejects
    if len(starts) > 1 and len(options.levels) > 1:
        ranked = []
        for k, x in enumerate(starts):
            label = f"start {k + 1}/{len(starts)}: "
            x, _ = refine(x, 0, label)
            x, loss, log = line_search(objective_at(options.levels[1]), x, 5, max(options.depth_scan_mm, 1.0),
                                       report=report, name=f"{label}rank {options.levels[1]}px")
            stages.append(log)
            ranked.append((loss, k, x))
        x = min(ranked)[2]
        first = 1
        if n_tilt:
            x, _ = tilt_probe(x, "tilt probe")
    else:
        x, first = starts[0], 0
    for level_index in range(first, len(options.levels)):
        x, loss = refine(x, level_index, scan=level_index > first or first == 0)
        if level_index == first == 1 and (n_tilt or n_axial):
            # once the rest of the pose has settled, probe the out-of-plane rotations and the turn about
            # the bone's long axis again, and refine again from a better one, until none helps (at
            # most three times)
            for _ in range(3):
                probed, probed_loss = probes(x)
                if probed_loss >= loss - 1e-4:
                    break
                x, loss = refine(probed, level_index, scan=False)
    with torch.no_grad():
        final_loss = float(objective_at(max(options.levels))(x[None])[0])
    history = [v for s in stages for v in s.losses]
    return BoneResult(bone.name, par.pose(x).detach(), initial, 1.0 - final_loss,
                      sum(s.iterations for s in stages), time.perf_counter() - t0,
                      stages[-1].stop_reason if stages else "no stage", history, stages)


def register(bones: dict[str, RenderVolume], frame: torch.Tensor, camera: Camera,
             initial_poses: dict[str, torch.Tensor], masks: dict[str, torch.Tensor] | None = None,
             field: torch.Tensor | None = None, options: RegistrationOptions | None = None, progress=None,
             cancel=None) -> RegistrationResult:
    """Register every bone in ``bones`` (name -> render volume) to one frame.

    Args:
        bones: the bones' render volumes (``bone_volumes``), each drawn alone at its own pose.
        frame: (1, 1, H, W) or (H, W) attenuation-like frame (bone bright), H x W = camera.rows x cols.
        camera: the calibration.
        initial_poses: bone -> (4, 4) ``camera_from_volume`` start.
        masks: optional bone -> (1, 1, H, W) or (H, W) weights in [0, 1] (the bone's 2D region).
        field: optional (1, 1, H, W) bool, the collimated field.
        options: :class:`RegistrationOptions`.
        progress: ``progress(stage, iteration, similarity, pose)``, stage names the bone.
        cancel: ``cancel() -> bool``; True stops with :class:`Cancelled`.
    Returns:
        :class:`RegistrationResult` with one :class:`BoneResult` per bone.
    """
    options = options or RegistrationOptions()
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
    result = RegistrationResult(options=options)
    t0 = time.perf_counter()
    for name, bone in bones.items():
        bone_progress = None if progress is None else (
            lambda stage, it, sim, pose, name=name: progress(f"{name}: {stage}", it, sim, pose))
        result.bones[name] = register_bone(bone, frame, camera, initial_poses[name], masks.get(name), field,
                                           options, bone_progress, cancel)
    result.seconds = time.perf_counter() - t0
    return result


def _search_starts(candidates: tuple, best: torch.Tensor, separation: torch.Tensor,
                   options: RegistrationOptions) -> list[torch.Tensor]:
    """The starts the refinement ranks: up to ``options.starts`` distinct minima of the global search's
    ``candidates`` ((N, 6) poses, (N,) losses), and the initial pose (x = 0) when ``keep_initial`` and
    no minimum lies within ``separation`` (6,) of it: a coarse search can rank the right basin below
    wrong ones, and the user's start is often in it."""
    starts = distinct_minima(*candidates, max(1, options.starts), separation) or [best]
    initial = torch.zeros(6, dtype=torch.float64)
    if options.keep_initial and all(differs(x, initial, separation) for x in starts):
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
