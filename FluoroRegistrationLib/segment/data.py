"""Training frames made on the fly: the simulator at random knee poses, C-arms and detectors.

The costly part of a frame, its line integrals at a pose (``FrameSimulator.line_integrals``, the
fast renderer, ~0.3 s at 256 px), is kept in a :class:`PoseBank` and renewed a slice at a time;
each use of a pose draws a new beam and detector (:func:`random_realism`, ~30 ms) and new
augmentations (:func:`augment`), so no two training images are alike. Masks are the bones' exact
projections (thickness > 0.5 mm), distorted with the image; clutter (the other leg, metal, a table
edge: ``simulate/clutter.py``) is in the image and not in the masks.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..errors import FluoroRegError
from ..geometry import Camera
from ..simulate.clutter import get_clutter, sample_clutter
from ..simulate.detector import DetectorModel
from ..simulate.frames import FrameSimulator, Realism, get_realism
from ..simulate.scene import femur_pose, knee_centre, knee_poses, sample_knee_states
from ..simulate.writer import DEFAULT_CAMERA, KNEE_DEPTH_FRACTION
from .model import preprocess


def _u(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def random_realism(g: torch.Generator, strength: float = 1.0) -> Realism:
    """A beam and detector drawn around the presets' span (low .. high), widened: dose, scatter,
    blur, heel, distortion, vignetting, collimation, gamma, window, bit depth and polarity.
    ``strength`` scales the degrading effects (1: training; 1.5: harder held-out frames)."""
    s = strength
    photons = math.exp(_u(g, math.log(200.0), math.log(2e4)) - math.log(s))
    detector = DetectorModel(
        photons_per_pixel=photons, electronic_noise=_u(g, 0, 8 * s), focal_spot_mm=_u(g, 0.2, 0.8),
        detector_blur_px=_u(g, 0.2, 1.2 * s), scatter_to_primary=_u(g, 0.05, 0.9 * s),
        scatter_sigma_mm=_u(g, 15, 50), heel=_u(g, -0.2, 0.2) * s, heel_axis="rows" if _u(g, 0, 1) < 0.5 else "cols",
        distortion_k=_u(g, -0.01, 0.05 * s), vignetting=_u(g, 0, 0.35 * s),
        collimation_radius=None if _u(g, 0, 1) < 0.2 else _u(g, 0.8, 1.05),
        output="log" if _u(g, 0, 1) < 0.1 else "intensity", gamma=_u(g, 0.35, 1.3),
        window=(_u(g, 0, 2), _u(g, 98, 100)), bits=[8, 12, None][int(_u(g, 0, 2.999))])
    return Realism("random", polyenergetic=True, kvp=_u(g, 55, 85), filtration_mm_al=_u(g, 2.0, 4.0),
                   detector=detector)


def random_camera(base: Camera, size: int, g: torch.Generator) -> Camera:
    """``base`` resampled to ``size x size`` with its sdd (+-10 %), zoom (pixel pitch x 0.8-1.25)
    and principal point (+-8 % of the frame) varied: other C-arms, other magnifications."""
    cam = base.resized(size, size)
    zoom = _u(g, 0.8, 1.25)
    return replace(cam, sdd_mm=cam.sdd_mm * _u(g, 0.9, 1.1), row_spacing_mm=cam.row_spacing_mm * zoom,
                   col_spacing_mm=cam.col_spacing_mm * zoom, u0=cam.u0 + _u(g, -0.08, 0.08) * size,
                   v0=cam.v0 + _u(g, -0.08, 0.08) * size, distortion_k=0.0)


class PoseBank:
    """Line integrals of the knee at ``capacity`` random poses, renewed ``renew`` at a time.

    Args:
        sim: a FrameSimulator (``renderer="fast"`` for training speed), polyenergetic.
        centre: the knee centre (LPS mm) the kinematics turn about.
        camera: the nominal C-arm; each pose gets a :func:`random_camera` of it.
        size: frame size in pixels; flexion_range: degrees.
        clutter: a :class:`~..simulate.clutter.ClutterModel` (or preset name) drawn into each pose's
            frame (the other leg, metal, a table edge; not in the masks), or None.
    """

    def __init__(self, sim: FrameSimulator, centre, camera: Camera, size: int, capacity: int,
                 generator: torch.Generator, flexion_range=(0.0, 130.0), clutter=None):
        if not sim.realism.polyenergetic:
            raise FluoroRegError("training frames need a polyenergetic simulator (realism low/medium/high)")
        self.sim, self.centre, self.camera, self.size = sim, centre, camera, size
        self.g, self.flexion_range = generator, flexion_range
        self.capacity = capacity
        self.clutter = get_clutter(clutter)
        self.entries: list[dict] = []
        self._next = 0

    def fill(self, progress=None) -> None:
        while len(self.entries) < self.capacity:
            self.entries.append(self._make())
            if progress:
                progress()

    def renew(self, count: int) -> None:
        """Replace the ``count`` oldest entries with new poses."""
        for _ in range(min(count, len(self.entries))):
            self.entries[self._next] = self._make()
            self._next = (self._next + 1) % len(self.entries)

    def _make(self) -> dict:
        state = sample_knee_states(1, self.g, None, self.flexion_range)[0]
        camera = random_camera(self.camera, self.size, self.g)
        femur = femur_pose(self.centre, state, KNEE_DEPTH_FRACTION * camera.sdd_mm)
        poses = knee_poses(self.centre, femur, state.flexion_deg, state.adduction_deg, state.rotation_deg,
                           bones=[p.bone for p in self.sim.parts])
        scene = sample_clutter(self.clutter, self.centre, femur, camera, self.g, bones=[p.bone for p in self.sim.parts],
                               flexion_range=self.flexion_range)
        li = self.sim.line_integrals(camera, poses, scene)
        # masks are kept as 0/1 "thicknesses": after the detector's distortion, > 0.5 is the mask
        return {"camera": camera, "areal": li["areal"].float(),
                "thickness": {b: (t > 0.5).to(torch.float32) for b, t in li["thickness"].items()}}


def simulated_sample(sim: FrameSimulator, entry: dict, bones, size: int, g: torch.Generator,
                     strength: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One frame of a bank entry under a new random detector, as the network sees it: input
    (1, size, size) (:func:`preprocess`) and masks (len(bones), size, size) float."""
    out = sim.detect(entry["camera"], entry, g, random_realism(g, strength))
    return preprocess(out["image"].numpy(), size)[0][0], torch.stack([out["masks"][b] for b in bones]).float()


def augment(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Label-preserving augmentations of one input (1, S, S) and its masks (N, S, S): a horizontal
    flip (a left or a right knee, facing either way), a contrast/brightness jitter, and random
    erasing (0-2 boxes filled with a constant or noise: instruments, markers, plates; the bones
    behind keep their labels)."""
    if _u(g, 0, 1) < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    x = x * _u(g, 0.8, 1.25) + _u(g, -0.3, 0.3)
    S = x.shape[-1]
    for _ in range(int(_u(g, 0, 2.999))):
        h, w = int(_u(g, 0.05, 0.25) * S), int(_u(g, 0.05, 0.25) * S)
        r, c = int(_u(g, 0, S - h)), int(_u(g, 0, S - w))
        if _u(g, 0, 1) < 0.5:
            x[..., r:r + h, c:c + w] = _u(g, -2.0, 2.0)
        else:
            x[..., r:r + h, c:c + w] = torch.randn(h, w, generator=g) * _u(g, 0.1, 1.0)
    return x, y


def make_batch(sim: FrameSimulator, bank: PoseBank, bones, batch: int, g: torch.Generator,
               labelled: list | None = None, labelled_fraction: float = 0.25, train: bool = True,
               strength: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, 1, S, S) inputs and (batch, len(bones), S, S) float targets."""
    xs, ys = [], []
    for _ in range(batch):
        if labelled and _u(g, 0, 1) < labelled_fraction:
            x, y = labelled[int(_u(g, 0, len(labelled) - 1e-9))]
        else:
            entry = bank.entries[int(_u(g, 0, len(bank.entries) - 1e-9))]
            x, y = simulated_sample(sim, entry, bones, bank.size, g, strength)
        x, y = x.clone(), y.float()
        if train:
            x, y = augment(x, y, g)
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.stack(ys)


def fixed_set(sim: FrameSimulator, bank: PoseBank, bones, g: torch.Generator,
              strength: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One frame per bank entry, each with its own detector, no augmentation: a validation set,
    (V, 1, S, S) inputs and (V, N, S, S) float targets."""
    samples = [simulated_sample(sim, entry, bones, bank.size, g, strength) for entry in bank.entries]
    return torch.stack([x for x, _ in samples]), torch.stack([y for _, y in samples])


def read_labelled_folder(folder, bones, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A user's labelled frames in the layout ``fluororeg simulate`` writes: ``frames/<key>.png``
    (or .tif/.dcm/.npy) and ``masks/<key>_<bone>.png`` (non-zero = bone) for every bone; each as
    (input (1, S, S), masks (N, S, S) bool) at the model's size."""
    from ..frame import read_frame_array

    folder = Path(folder)
    frames = sorted(p for p in (folder / "frames").glob("*") if p.suffix.lower() in (".png", ".tif", ".tiff",
                                                                                     ".dcm", ".npy"))
    if not frames:
        raise FluoroRegError(f"no frames in {folder / 'frames'}; labelled frames go in frames/<key>.png with "
                             "masks/<key>_<bone>.png")
    out = []
    for path in frames:
        masks = []
        for bone in bones:
            mpath = folder / "masks" / f"{path.stem}_{bone}.png"
            if not mpath.is_file():
                raise FluoroRegError(f"no mask {mpath} for frame {path.name}; every frame needs one per bone")
            m = read_frame_array(mpath) > 0
            masks.append(torch.from_numpy(m).float())
        raw = read_frame_array(path)
        if raw.shape != masks[0].shape:
            raise FluoroRegError(f"{path.name} is {raw.shape} but its masks are {tuple(masks[0].shape)}")
        x = preprocess(raw, size)[0][0]
        y = torch.nn.functional.interpolate(torch.stack(masks)[None], size=(size, size), mode="bilinear",
                                            align_corners=False)[0] > 0.5
        out.append((x, y))
    return out


def training_simulator(ct, labels, names, bones) -> tuple[FrameSimulator, np.ndarray]:
    """The fast, polyenergetic simulator of a CT and its knee centre, checking the bones exist."""
    sim = FrameSimulator(ct, labels, names, get_realism("medium"), renderer="fast", render_factor=1)
    missing = [b for b in bones if b not in sim.bones]
    if missing:
        raise FluoroRegError(f"no {', '.join(missing)} in the labelmap (it has {', '.join(sim.bones)}); "
                             "choose --bones among those")
    return sim, knee_centre(ct, labels, names)


__all__ = ["PoseBank", "augment", "fixed_set", "make_batch", "random_camera", "random_realism", "read_labelled_folder",
           "simulated_sample", "training_simulator", "DEFAULT_CAMERA"]
