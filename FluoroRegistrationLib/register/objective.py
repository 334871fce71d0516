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
from ..similarity import _shrink
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


_KEPT_ROWS = 8  # batches up to this size (a refinement's starts) keep each row's reweighted frame side
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

    def __init__(self, bone, camera, par, frame, weights, similarity: str, view_from_reference=None,
                 beyond_px: int = 0):
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
        # a bone the CT's field of view cuts: where it continues past the CT's edge (LPS mm), left out
        # of each pose's weights, grown by beyond_px pixels
        self.beyond = getattr(bone, "beyond", None)
        self.beyond_px = beyond_px
        self._support = None  # (flat index, (u, v)) of the pixels with weight, made when first needed
        self._kept = {}  # batch row -> (keep, FrameLoss) when that row's keep last changed (_loss_for)
        self._weights_cpu = self.weights.detach().cpu().float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        device = self.bone.device
        with timing.part("render", device):
            poses = self.view_poses(x).to(device=device, dtype=self.bone.dtype)
            drr = render(self.bone, self.camera, poses, "fast", region=self.region)
            if self.appearance is not None:  # what the frame shows of it (an implant's metal: its opacity)
                drr = self.appearance(drr)
        with timing.part("similarity", device):
            keep = None if self.beyond is None else self.kept(poses)
            if keep is None:
                return self.loss(drr).cpu()
            if len(keep) <= _KEPT_ROWS:  # a refinement's pose, or its batch of starts: row by row
                return torch.cat([self._loss_for(k, keep[k:k + 1])(drr[k:k + 1]) for k in range(len(keep))]).cpu()
            return self.loss.reweighted(drr, keep.to(device=device, dtype=drr.dtype)).cpu()

    def view_poses(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 4, 4) camera_from_volume in this view's camera frame for parameters ``x`` (B, 6)."""
        poses = self.par.pose(x)
        return poses if self.view_from_reference is None else self.view_from_reference @ poses

    def weighed(self, x: torch.Tensor) -> int:
        """How many pixels the similarity weighs at the pose ``x`` ((6,) or (1, 6)): those with
        weight, less what a cut bone's continuation covers there (:meth:`kept`)."""
        if self.beyond is None:
            return int((self._weights_cpu > 0).sum())
        keep = self.kept(self.view_poses(x.reshape(1, 6)))
        return int((self._weights_cpu * (1.0 if keep is None else keep) > 0).sum())

    def exactly(self, x: torch.Tensor) -> torch.Tensor:
        """``self(x)`` with every row's frame side computed for its own pose (no row reused within
        the 1 % of :meth:`_loss_for`): for a result's similarity and status, which must not depend
        on the poses evaluated before."""
        self._kept.clear()
        return self(x)

    def _loss_for(self, row: int, keep: torch.Tensor):
        """The frame's side for batch row ``row``'s ``keep`` ((1, 1, h, w)), kept while that row's
        next poses differ from it in under 1 % of the weighted pixels (a refinement moves a fraction
        of a pixel per step): the frame's statistics are computed again only when the left-out part
        has moved. An approximation within that 1 % (a restart can inherit a row's weights from
        another start as close): :meth:`exactly` has none."""
        from ..similarity import FrameLoss

        weights = self._weights_cpu
        if row in self._kept:
            kept, loss = self._kept[row]
            if float((weights * (kept != keep)).sum()) < 0.01 * self._weight_sum:
                return loss
        loss = FrameLoss(self.loss.name, self.frame, (weights * keep).to(self.frame.device, self.frame.dtype))
        self._kept[row] = (keep, loss)
        return loss

    def kept(self, poses: torch.Tensor) -> torch.Tensor | None:
        """(B, 1, h, w) float over the rendered region, per pose ((B, 4, 4) camera_from_volume): 0
        where the bone continues past the CT's edge (:func:`beyond_pixels`, on the pixels that have
        weight), else 1; None when that misses them at every pose. A pose whose weights it would all
        but empty (under 5 % of what a gradient similarity counts) keeps them all."""
        if self._support is None:
            r0, _, c0, _ = self.region
            rows, cols = torch.nonzero(self._weights_cpu[0, 0] > 0, as_tuple=True)
            self._support = (rows * self.weights.shape[-1] + cols,
                             torch.stack([cols + c0, rows + r0], 1).to(torch.float64))  # flat index, (u, v)
            self._weight_sum = float(self._weights_cpu.sum())
            # what a pose's weights must keep after the exclusion (else it keeps them all): 5 % of what
            # a gradient similarity counts (its Sobel stencil inside), at least 9 pixels
            self._fewest_kept = max(0.05 * float(_shrink(self._weights_cpu).sum()), 9.0)
        index, pixels = self._support
        hit = beyond_pixels(self.beyond, self.camera, poses, pixels, self.beyond_px)
        if hit is None:
            return None
        keep = torch.ones(len(hit), self.weights[0, 0].numel())
        keep[:, index] = 1.0 - hit.float()
        keep = keep.view(len(hit), 1, *self.weights.shape[-2:])
        weights = self._weights_cpu
        emptied = _shrink(weights * keep).sum(dim=(1, 2, 3)) < self._fewest_kept
        keep[emptied] = 1.0
        return keep


def beyond_pixels(prisms, camera: Camera, poses: torch.Tensor, pixels: torch.Tensor, pad_px: float) -> torch.Tensor | None:
    """(B, N) bool: which of ``pixels`` ((N, 2) as (u, v) of ``camera``) any of ``prisms``
    (:attr:`RenderVolume.beyond`, LPS mm) covers at each pose ((B, 4, 4) camera_from_volume), grown
    by ``pad_px`` (the convex hull of its projected corners, each edge moved out by the pad); None
    when it covers none at any pose."""
    from scipy.spatial import ConvexHull, QhullError

    T = poses.detach().to(device="cpu", dtype=torch.float64)
    lo_px, hi_px = pixels.amin(0), pixels.amax(0)
    hit = None
    for corners in prisms:
        p = torch.einsum("bij,pj->bpi", T[:, :3, :3], corners.to(torch.float64).cpu()) + T[:, None, :3, 3]
        front = (p[..., 2] > 1e-6).all(1)  # a prism reaching behind the source is left alone
        uv = camera.project(p)  # (B, 2K, 2)
        lo, hi = uv.amin(1) - pad_px, uv.amax(1) + pad_px
        near = front & (lo <= hi_px).all(1) & (hi >= lo_px).all(1)
        for b in torch.nonzero(near).flatten().tolist():
            try:
                ring = uv[b, torch.from_numpy(ConvexHull(uv[b].numpy()).vertices)]  # counter-clockwise
            except QhullError:  # a degenerate (edge-on) outline: nothing to leave out
                continue
            edge = torch.roll(ring, -1, 0) - ring
            normal = torch.stack([edge[:, 1], -edge[:, 0]], 1) / edge.norm(dim=1, keepdim=True).clamp_min(1e-12)
            # each pixel's largest signed distance past an edge: inside the grown hull when <= the pad
            inside = (pixels @ normal.T - (ring * normal).sum(1)).amax(1) <= pad_px
            if bool(inside.any()):
                hit = torch.zeros(len(T), len(pixels), dtype=torch.bool) if hit is None else hit
                hit[b] |= inside
    return hit


def _dilated(m: torch.Tensor, px: int) -> torch.Tensor:
    """(B, 1, H, W) 0/1 grown by ``px`` pixels: a square's dilation as a row's then a column's
    maximum (2k, not k^2, per pixel)."""
    if px <= 0:
        return m
    k = 2 * px + 1
    m = F.max_pool2d(m, (1, k), stride=1, padding=(0, px))
    return F.max_pool2d(m, (k, 1), stride=1, padding=(px, 0))


def _weights(mask, field, size, dilation_px: int):
    """Similarity weights at one level: the bone mask dilated by ``dilation_px`` pixels, inside the
    collimated field."""
    w = torch.ones(1, 1, *size) if field is None else (_pool(field.float(), size) > 0.999).float()
    if mask is not None:
        w = w * _dilated((_pool(mask.float(), size) > 0.25).float(), dilation_px)
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
                      _weights(mask, field, level.size, dilation_px), similarity, view_from_reference,
                      beyond_px=dilation_px + round(BEYOND_MARGIN_MM / level.pixel_mm))


# a cut bone's continuation past the CT's edge is left out grown by the mask's dilation and this much
# more: the prism of its cut cross-section only approximates the shaft
BEYOND_MARGIN_MM = 2.0


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
        """Each view's loss, [(B,)] in view order, each computed exactly (:meth:`_Objective.exactly`)."""
        return [objective.exactly(x) for objective in self.objectives]

