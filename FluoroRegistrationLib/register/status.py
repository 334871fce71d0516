"""Is a registration to be trusted? ``ok | check | failed`` with the reasons (docs/CONVENTIONS.md,
"Result status").

A registration always returns a pose; this module says whether a person should believe it. The
measurements (:class:`Evidence`) are taken at the result by :func:`evidence`; :func:`judge` turns
them into a :class:`Status` by the thresholds of :class:`~.config.Checks`. Tracking's per-frame
confidence builds on the same evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..geometry import Camera, transform_points
from ..volume import RenderVolume
from .config import Checks

STATUSES = ("ok", "check", "failed")


@dataclass(frozen=True)
class Evidence:
    """What is measured at a result.

    similarity: the similarity at the finest level (1 = identical); similarity_name: which one.
    in_field: fraction of the bone's sampled voxels that project inside the detector and its field,
        at the result; in_field_start: the same at the initial pose (a knee field shows part of a
        long bone: what counts is how much of that part is still in view).
    depth_fraction: the bone centre's distance from the source over the source-to-detector distance.
    box_edge: names of the pose parameters that ended on the search box's edge.
    mask_coverage: how well the bone's projection and the given 2D mask overlap: the larger of the
        fraction of the mask it covers and the fraction of it inside the mask (None: no mask).
    """

    similarity: float
    in_field: float
    depth_fraction: float
    box_edge: tuple = ()
    mask_coverage: float | None = None
    similarity_name: str = "patch-gncc"
    in_field_start: float = 1.0


@dataclass(frozen=True)
class Status:
    """``flag`` in :data:`STATUSES`; ``reasons``: one short sentence per finding (empty when ok)."""

    flag: str = "ok"
    reasons: tuple = field(default_factory=tuple)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


_PARAMETERS = ("rotation x", "rotation y", "rotation z", "translation x", "translation y", "depth")


def in_field_fraction(bone: RenderVolume, camera: Camera, pose: torch.Tensor, field=None) -> float:
    """Fraction of ``bone.points`` (or its centroid) that project in front of the source, inside the
    detector and, when given, inside ``field`` ((1, 1, H, W) or (H, W) bool)."""
    points = bone.points if bone.points is not None and len(bone.points) else bone.centroid[None]
    cam = transform_points(pose.to(torch.float64).cpu(), points.to(torch.float64).cpu())
    uv = camera.project(cam)
    col, row = uv[:, 0].round().long(), uv[:, 1].round().long()
    inside = (cam[:, 2] > 0) & (col >= 0) & (col < camera.cols) & (row >= 0) & (row < camera.rows)
    if field is not None and inside.any():
        f = torch.as_tensor(field).reshape(camera.rows, camera.cols).bool().cpu()
        kept = inside.clone()
        kept[inside] = f[row[inside], col[inside]]
        inside = kept
    return float(inside.double().mean())


def mask_coverage(bone: RenderVolume, camera: Camera, pose: torch.Tensor, mask) -> float | None:
    """How well the bone's projection at ``pose`` and ``mask`` ((1, 1, H, W) or (H, W), inside where
    > 0.5) overlap: the larger of the fraction of the mask the projection covers and the fraction of
    the projection inside the mask; None without a mask or a bone label. A right pose scores about 1
    either way round: a mask of the visible part of the bone lies inside its projection, and a CT
    that holds only part of the bone projects inside a mask of the whole bone."""
    from ..render import project_label

    if mask is None or (bone.label_mask is None and not hasattr(bone, "silhouette")):
        return None
    inside = torch.as_tensor(mask).reshape(camera.rows, camera.cols).cpu() > 0.5
    if not inside.any():
        return None
    with torch.no_grad():
        silhouette = project_label(bone, camera, pose.to(bone.dtype)[None].to(bone.device))[0, 0].cpu() > 0.5
    both = float((silhouette & inside).sum())
    return max(both / float(inside.sum()), both / max(float(silhouette.sum()), 1.0))


def evidence(bone: RenderVolume, camera: Camera, pose: torch.Tensor, similarity: float, field=None,
             x: torch.Tensor | None = None, box: torch.Tensor | None = None, mask=None,
             similarity_name: str = "patch-gncc", initial: torch.Tensor | None = None) -> Evidence:
    """Measure a result: ``pose`` (4, 4) camera_from_volume; ``x`` (6,) its parameters about the
    initial pose and ``box`` (6,) the search box's half-widths in the same units (optional);
    ``mask`` the bone's 2D mask the registration was given (optional); ``initial`` (4, 4) the start
    (optional: without it the whole bone is taken to have been in view)."""
    centre = transform_points(pose.to(torch.float64).cpu(), bone.centroid[None].to(torch.float64).cpu())[0]
    edge = ()
    if x is not None and box is not None:
        at_edge = (x.abs().cpu() >= 0.98 * box.cpu()) & (box.cpu() > 0)
        edge = tuple(name for name, hit in zip(_PARAMETERS, at_edge.tolist()) if hit)
    start = 1.0 if initial is None else in_field_fraction(bone, camera, initial, field)
    return Evidence(float(similarity), in_field_fraction(bone, camera, pose, field),
                    float(centre[2]) / camera.sdd_mm, edge, mask_coverage(bone, camera, pose, mask),
                    similarity_name, start)


def judge(ev: Evidence, checks: Checks | None = None) -> Status:
    """The status of a result from its :class:`Evidence` (thresholds: :class:`~.config.Checks`)."""
    checks = checks or Checks()
    failed, check = [], []
    if not math.isfinite(ev.similarity):
        failed.append(f"similarity is {ev.similarity}")
    elif ev.similarity_name == checks.similarity_name and ev.similarity < checks.fail_similarity:
        failed.append(f"similarity {ev.similarity:.3f}: no sign of the bone in the frame")
    elif ev.similarity_name == checks.similarity_name and ev.similarity < checks.check_similarity:
        check.append(f"similarity {ev.similarity:.3f} is low (good fits score >= {checks.check_similarity:g})")
    low, high = checks.depth_fraction
    if not low <= ev.depth_fraction <= high:
        failed.append(f"the bone lies at {ev.depth_fraction:.2f} of the source-to-detector distance, outside the "
                      f"physical range {low:g}-{high:g}")
    kept = ev.in_field / ev.in_field_start if ev.in_field_start > 0 else 1.0
    if kept < checks.fail_in_field:
        failed.append(f"the bone left the field ({100 * ev.in_field:.0f} % of it in view, "
                      f"{100 * ev.in_field_start:.0f} % at the start)")
    elif kept < checks.check_in_field:
        check.append(f"the bone moved out of the field ({100 * ev.in_field:.0f} % of it in view, "
                     f"{100 * ev.in_field_start:.0f} % at the start)")
    if ev.mask_coverage is not None and ev.mask_coverage < checks.fail_mask_coverage:
        failed.append(f"the bone and its mask overlap {100 * ev.mask_coverage:.0f} %")
    elif ev.mask_coverage is not None and ev.mask_coverage < checks.check_mask_coverage:
        check.append(f"the bone and its mask overlap {100 * ev.mask_coverage:.0f} %")
    if ev.box_edge:
        check.append(f"{', '.join(ev.box_edge)} ended on the search box's edge (start closer, or widen the search)")
    if failed:
        return Status("failed", tuple(failed + check))
    return Status("check", tuple(check)) if check else Status("ok", ())


def judge_joint_similarity(similarity: float, similarity_name: str, checks: Checks | None = None) -> Status:
    """Several views' joint similarity (their weighted mean) judged against ``check_similarity``
    (each view's own is judged only against ``fail_similarity``: :func:`judge` with the check
    threshold lowered to it); ``ok`` for a similarity the thresholds were not measured for."""
    checks = checks or Checks()
    if similarity_name != checks.similarity_name or not similarity < checks.check_similarity:
        return Status("ok", ())
    return Status("check", (f"the views' joint similarity {similarity:.3f} is low (good fits score >= "
                            f"{checks.check_similarity:g})",))


UNPINNED = "the frame pins the turn about"  # how judge_tilt's finding begins (a frame's limit, not a search's)


def judge_tilt(status: Status, sd_deg: float, axis: tuple, checks: Checks | None = None) -> Status:
    """``status`` with a ``check`` (an ``ok`` raised; a worse flag kept) when a rotation across the
    beam is pinned no better than ``checks.tilt_sd_deg`` (None: not judged): ``sd_deg`` its standard
    deviation, ``axis`` (3,) its axis in the bone's own frame (register/depth.py)."""
    checks = checks or Checks()
    if checks.tilt_sd_deg is None or not sd_deg > checks.tilt_sd_deg:
        return status
    spread = "not at all" if not math.isfinite(sd_deg) else f"only to +-{sd_deg:.1f} deg (1 sd)"
    reason = (f"{UNPINNED} the bone's ({', '.join(f'{a:.2f}' for a in axis)}) axis {spread}: it looks alike "
              "turned either way; add a view (or one at another angle), or check the overlay")
    return Status("check" if status.flag == "ok" else status.flag, status.reasons + (reason,))


def overall(statuses) -> str:
    """The worst flag of several results (``ok`` for none)."""
    flags = [s.flag for s in statuses]
    return max(flags, key=STATUSES.index) if flags else "ok"
