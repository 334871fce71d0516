"""Scenes for the simulator: the CT cut into moving parts, and plausible knee poses and motions.

Parts. Each bone moves rigidly with its own pose; the soft tissue around it moves with it: every
voxel that is not bone is shared among the bones by its distance to each (a soft Voronoi split,
see :func:`split_parts`), so all the CT's tissue is accounted for once, and at the CT's own relative
poses the parts add up to the CT.

Knee kinematics (in the CT's volume frame, docs/CONVENTIONS.md LPS). The knee frame has its origin at the
knee centre ``c``, x medio-lateral (LPS x), y antero-posterior (LPS y), z along the leg (LPS z);
a CT of a leg is acquired with the leg along z, so these are its axes. Relative to the CT, the
tibia (and fibula) move by ``c + Rx(flexion) Ry(adduction) Rz(rotation) (p - c)``; positive flexion
swings the distal tibia posteriorly (+y), as the built-in phantom does. The patella turns about the
same axis by 0.65 x flexion. The femur's pose is the frame's reference: a lateral view, perturbed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import FluoroRegError
from ..geometry import CentredParameterization, lateral_view, make_pose, rotation_from_rotvec
from ..volume import ImageVolume, RenderVolume

FOLLOWS = {"fibula": "tibia"}  # bones without their own motion model follow another's pose
PATELLA_RATIO = 0.65


@dataclass
class Part:
    """A rigid part of the scene: ``volume`` moves with the pose of bone ``bone``.

    ``volume.mu`` is (C, D, H, W): one channel per material (partial densities, g/cm^3) or a single
    channel of linear attenuation (1/mm) for the idealised model.
    """

    bone: str
    volume: RenderVolume


def split_parts(ct: ImageVolume, labels: ImageVolume, names: dict[str, int], channels: dict[str, np.ndarray],
                margin: int = 1, blend_mm: float = 8.0) -> list[Part]:
    """Cut per-voxel channels (each (Z, Y, X), e.g. material densities) into one part per bone.

    Bone voxels go to their bone. Every other voxel is shared among the bones by weights
    ``softmax(-distance_to_bone / blend_mm)`` (weights under 2 % dropped), so the soft tissue
    between two bones fades from one part into the other instead of ending at a sharp cut when the
    bones move apart; the weights of a voxel sum to 1, so at the CT's own poses the parts add up
    to the CT exactly.
    """
    from scipy import ndimage

    ids = {name: i for name, i in names.items() if (labels.array == i).any()}
    if not ids:
        raise FluoroRegError("no labelled bone in the labelmap; the simulator needs at least one bone label")
    spacing = ct.spacing[::-1]
    bone_mask = np.isin(labels.array, list(ids.values()))
    dist = np.stack([ndimage.distance_transform_edt(labels.array != i, sampling=spacing) for i in ids.values()])
    logits = -(dist - dist.min(0, keepdims=True)) / max(blend_mm, 1e-6)
    weights = np.exp(logits)
    weights /= weights.sum(0, keepdims=True)
    weights[weights < 0.02] = 0.0
    weights /= weights.sum(0, keepdims=True)
    for n, i in enumerate(ids.values()):  # bone voxels belong to their bone alone
        weights[n][bone_mask] = (labels.array[bone_mask] == i)
    stack = np.stack(list(channels.values()))  # (C, Z, Y, X)
    parts = []
    for n, name in enumerate(ids):
        w = weights[n]
        ks, js, is_ = np.nonzero(w > 0)
        lo = np.array([ks.min(), js.min(), is_.min()])
        hi = np.array([ks.max(), js.max(), is_.max()]) + 1
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        data = (stack[(slice(None),) + sl] * w[sl][None]).astype(np.float32)
        data = np.pad(data, [(0, 0)] + [(margin, margin)] * 3)
        shift = np.eye(4)
        shift[:3, 3] = (lo - margin)[::-1]
        parts.append(Part(name, RenderVolume(torch.from_numpy(data), torch.from_numpy(ct.volume_from_index @ shift),
                                             name)))
    return parts


def knee_centre(ct: ImageVolume, labels: ImageVolume, names: dict[str, int]) -> np.ndarray:
    """(3,) LPS point between the femur's distal end and the tibia's proximal end.

    The mean of the lowest 5 % (in z) of the femur's voxels and the highest 5 % of the tibia's.
    """
    for bone in ("femur", "tibia"):
        if bone not in names or not (labels.array == names[bone]).any():
            raise FluoroRegError(f"knee scenes need a '{bone}' label; name it in the label names")

    def end_points(label, lowest):
        ks, js, is_ = np.nonzero(labels.array == label)
        idx = np.stack([is_, js, ks, np.ones_like(ks)], 1).astype(np.float64)
        pts = (idx @ ct.volume_from_index.T)[:, :3]
        z = pts[:, 2]
        cut = np.quantile(z, 0.05 if lowest else 0.95)
        return pts[z <= cut].mean(0) if lowest else pts[z >= cut].mean(0)

    return 0.5 * (end_points(names["femur"], True) + end_points(names["tibia"], False))


def _about(centre: np.ndarray, rotvec) -> torch.Tensor:
    """(4, 4) rotation by ``rotvec`` (rad, volume frame) about the point ``centre``."""
    R = rotation_from_rotvec(torch.as_tensor(rotvec, dtype=torch.float64))
    c = torch.as_tensor(centre, dtype=torch.float64)
    return make_pose(R, c - R @ c)


def knee_relative_poses(centre, flexion_deg: float, adduction_deg: float = 0.0, rotation_deg: float = 0.0,
                        reference_flexion_deg: float = 0.0, rollback_mm: float = 0.0) -> dict[str, torch.Tensor]:
    """Each bone's motion relative to the CT (volume frame, (4, 4)): the knee's kinematic chain.
    ``rollback_mm``: the femur rolled back on the tibia, i.e. the tibia moved anterior (LPS -y) under it."""
    d = math.radians(flexion_deg - reference_flexion_deg)
    tibia = _about(centre, [d, 0, 0]) @ _about(centre, [0, math.radians(adduction_deg), 0]) @ \
        _about(centre, [0, 0, math.radians(rotation_deg)])
    if rollback_mm:
        shift = torch.eye(4, dtype=torch.float64)
        shift[1, 3] = -rollback_mm
        tibia = shift @ tibia
    return {"femur": torch.eye(4, dtype=torch.float64), "tibia": tibia,
            "patella": _about(centre, [PATELLA_RATIO * d, 0, 0])}


def knee_poses(centre, femur_pose: torch.Tensor, flexion_deg: float, adduction_deg: float = 0.0,
               rotation_deg: float = 0.0, reference_flexion_deg: float = 0.0, bones=(),
               rollback_mm: float = 0.0) -> dict[str, torch.Tensor]:
    """``camera_from_volume`` of every bone: the femur's pose composed with each bone's motion."""
    rel = knee_relative_poses(centre, flexion_deg, adduction_deg, rotation_deg, reference_flexion_deg, rollback_mm)
    out = {}
    for bone in bones or rel:
        key = bone if bone in rel else FOLLOWS.get(bone, "femur")
        out[bone] = femur_pose @ rel[key]
    return out


@dataclass(frozen=True)
class KneeState:
    """One frame's knee: femur view perturbation x (6: rad, mm, CentredParameterization) and angles (deg)."""

    femur_params: tuple
    flexion_deg: float
    adduction_deg: float
    rotation_deg: float
    rollback_mm: float = 0.0


def sample_knee_states(n: int, generator: torch.Generator, sequence: str | None = None,
                       flexion_range=(0.0, 120.0)) -> list[KneeState]:
    """Plausible lateral-view knee states: independent draws, or a motion ``sequence``.

    Independent: flexion uniform in ``flexion_range``, adduction N(0, 3 deg), rotation
    N(0, 5 deg), the femur turned by N(0, 4 deg) about each camera axis (10 deg about the beam) and
    moved N(0, 10 mm) in plane, N(0, 20 mm) in depth. ``"flexion"``: one flexion-extension cycle over
    ``flexion_range``; ``"gait"``: a walking cycle (flexion about 5 -> 20 -> 5 -> 60 -> 5 deg); in
    both, rotation follows flexion (screw-home, 5 deg over 90 deg) and the femur drifts smoothly.
    """
    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    lo, hi = flexion_range
    if sequence is None:
        flex = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
        add, rot = 3.0 * randn(n), 5.0 * randn(n)
        scale = torch.tensor([math.radians(4), math.radians(4), math.radians(10), 10.0, 10.0, 20.0],
                             dtype=torch.float64)
        femur = randn(n, 6) * scale
    elif sequence in ("flexion", "gait"):
        t = torch.arange(n, dtype=torch.float64) / max(n, 1)
        if sequence == "flexion":
            flex = lo + (hi - lo) * 0.5 * (1 - torch.cos(2 * math.pi * t))
        else:
            flex = 5 + 15 * torch.exp(-((t - 0.12) / 0.06) ** 2) + 55 * torch.exp(-((t - 0.72) / 0.1) ** 2)
        add = 2.0 * torch.sin(2 * math.pi * t)
        rot = 5.0 * flex / 90.0
        phase = 2 * math.pi * (t[:, None] + torch.rand(1, 6, generator=generator, dtype=torch.float64))
        amp = torch.tensor([math.radians(2), math.radians(2), math.radians(4), 5.0, 5.0, 8.0], dtype=torch.float64)
        femur = amp * torch.sin(phase)
    elif sequence in ("squat", "step-up"):
        return _activity_states(n, sequence, flexion_range, generator)
    else:
        raise FluoroRegError(f"unknown sequence '{sequence}'; choose {', '.join(SEQUENCES)} (or none for independent "
                             "frames)")
    return [KneeState(tuple(femur[i].tolist()), float(flex[i]), float(add[i]), float(rot[i])) for i in range(n)]


SEQUENCES = ("flexion", "gait", "squat", "step-up")
ROLLBACK_MM_PER_90_DEG = 6.0  # the femur's roll-back on the tibia in deep flexion (a few mm, knee studies)


def screw_home_deg(flexion_deg):
    """Tibial internal rotation with flexion: most of it in the first 30 deg (the screw-home mechanism
    run backwards: the tibia turns externally as the knee locks in extension), 8 deg at 90."""
    return 8.0 * (1.0 - torch.exp(-torch.as_tensor(flexion_deg, dtype=torch.float64) / 15.0)) / (1.0 - math.exp(-6.0))


def _activity_states(n: int, sequence: str, flexion_range, generator) -> list[KneeState]:
    """A squat (down, a pause at the bottom, up) or a step-up (from the flexed knee on the step to
    extension): flexion over ``flexion_range``, screw-home rotation, roll-back, a small ab/adduction,
    the thigh inclining in the image as the knee flexes (a lateral view following the knee)."""
    lo, hi = flexion_range
    t = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    if sequence == "squat":
        u = torch.clamp(1.25 * (0.5 - (t - 0.5).abs()) / 0.5, 0, 1)  # 0 -> 1 (bottom, held) -> 0
        u = 0.5 * (1 - torch.cos(math.pi * u))
    else:
        u = 0.5 * (1 + torch.cos(math.pi * t))  # flexed on the step -> extended
    flex = lo + (hi - lo) * u
    add = 1.5 * torch.sin(2 * math.pi * t + float(torch.rand(1, generator=generator, dtype=torch.float64)))
    rot = screw_home_deg(flex)
    rollback = ROLLBACK_MM_PER_90_DEG * flex / 90.0
    femur = torch.zeros(n, 6, dtype=torch.float64)
    femur[:, 2] = torch.deg2rad(-0.35 * (flex - lo))  # the thigh inclines in the image plane
    femur[:, 3] = 0.15 * (flex - lo)  # the knee moves forward and down in the image (mm)
    femur[:, 4] = 0.10 * (flex - lo)
    femur[:, 5] = 5.0 * torch.sin(2 * math.pi * t)  # a little depth drift
    return [KneeState(tuple(femur[i].tolist()), float(flex[i]), float(add[i]), float(rot[i]), float(rollback[i]))
            for i in range(n)]


def femur_pose(centre, state: KneeState, depth_mm: float) -> torch.Tensor:
    """The femur's ``camera_from_volume``: the lateral view of the knee centre, perturbed by the state."""
    view = lateral_view(centre, depth_mm)
    par = CentredParameterization(torch.as_tensor(centre, dtype=torch.float64), view)
    return par.pose(torch.tensor(state.femur_params, dtype=torch.float64))
