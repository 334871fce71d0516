"""A registration's loss at one pyramid level: the levels (detector sizes by pixel size at the
bone), the similarity weights (mask and collimated field) and the objective ``loss(x)`` over pose
parameters, for one view (:class:`_Objective`) or several views of one rig (:class:`JointObjective`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import FluoroRegError
from ..geometry import Camera
from ..render import render
from ..volume import RenderVolume
from . import timing


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

    def __init__(self, bone, camera, par, frame, weights, similarity: str, view_from_reference=None):
        from ..similarity import FrameLoss

        self.bone, self.camera, self.par = bone, camera, par
        # the pose's frame to this view's camera frame (None: the view is the reference)
        self.view_from_reference = view_from_reference
        rows, cols = torch.nonzero(weights[0, 0] > 0, as_tuple=True)
        H, W = weights.shape[-2:]
        r0, r1 = max(0, int(rows.min()) - _CROP_MARGIN), min(H, int(rows.max()) + _CROP_MARGIN + 1)
        c0, c1 = max(0, int(cols.min()) - _CROP_MARGIN), min(W, int(cols.max()) + _CROP_MARGIN + 1)
        self.region = (r0, r1, c0, c1)  # the detector rows and columns rendered and compared
        device = bone.device  # render and compare where the bone lives; the optimiser stays on the CPU
        self.frame = frame[..., r0:r1, c0:c1].to(device)
        self.weights = weights[..., r0:r1, c0:c1].to(device)
        self.loss = FrameLoss(similarity, self.frame, self.weights)
        self.appearance = getattr(bone, "appearance", None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        device = self.bone.device
        with timing.part("render", device):
            poses = self.par.pose(x)
            if self.view_from_reference is not None:
                poses = self.view_from_reference @ poses
            poses = poses.to(device=device, dtype=self.bone.dtype)
            drr = render(self.bone, self.camera, poses, "fast", region=self.region)
            if self.appearance is not None:  # what the frame shows of it (an implant's metal: its opacity)
                drr = self.appearance(drr)
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
    return bone.for_pixel_mm(level.pixel_mm)


def _level_objective(bone, frame, camera, par, mask, field, level: Level, dilation_mm: float, coarsen: bool,
                     similarity: str, view_from_reference=None) -> _Objective:
    """The loss at ``level`` (undistorted inputs), the mask dilated by ``dilation_mm`` at the bone;
    ``view_from_reference`` (4, 4): the view's pose in the frame ``par`` works in (None: the same)."""
    level_camera = camera.resized(*level.size)
    drawn = level_volume(bone, level) if coarsen else bone
    dilation_px = round(dilation_mm / level.pixel_mm)
    return _Objective(drawn, level_camera, par, _pool(frame, level.size),
                      _weights(mask, field, level.size, dilation_px), similarity, view_from_reference)


class JointObjective:
    """loss(x) of one bone against several views of a rig: x (B, 6) -> (B,), the weighted mean of
    each view's :class:`_Objective` (``weights``: one positive number per view). With one view it is
    that view's loss, unchanged."""

    def __init__(self, objectives: list, weights=None):
        self.objectives = list(objectives)
        self.view_weights = [1.0] * len(self.objectives) if weights is None else [float(w) for w in weights]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.objectives) == 1:
            return self.objectives[0](x)
        total = sum(w * objective(x) for w, objective in zip(self.view_weights, self.objectives))
        return total / sum(self.view_weights)

    def per_view(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each view's loss, [(B,)] in view order."""
        return [objective(x) for objective in self.objectives]

