"""A registration read out of the scene: plain tensors, safe to run on a worker thread (no MRML inside)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import FluoroRegError
from ..geometry import Camera, Rig
from ..frame import Frame
from ..register import Registration, RegistrationResult

DEVICES = ("cpu", "cuda")


def resolve_device(device: str | None) -> torch.device:
    """None -> CUDA when available, else CPU; "cuda" without a GPU is an error naming the fix."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = str(device)
    if name.split(":")[0] not in DEVICES:
        raise FluoroRegError(f"unknown device {name!r}; use one of {', '.join(DEVICES)} (or None for the best one)")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FluoroRegError("device cuda asked for but this PyTorch sees no CUDA GPU; use cpu or install a CUDA "
                             "build of PyTorch (PyTorch extension)")
    return torch.device(name)


@dataclass
class RegistrationJob:
    """Everything the one registration path (:meth:`Registration.register`) needs, read out of the scene.

    Attributes:
        registration: the bones' volumes and the configuration (:class:`Registration`).
        frame: the prepared frame (:func:`~FluoroRegistrationLib.register.prepare_frame`: field, polarity),
            or one per view of a rig.
        camera: the calibration (with its distortion), or a :class:`~FluoroRegistrationLib.geometry.Rig`.
        initial: bone -> (4, 4) float64 ``camera_from_volume``.
        masks: None, or bone -> (rows, cols) mask (each through the one mask rule); one per view with a rig.
        device: "cpu", "cuda" or None (CUDA when available).
    """

    registration: Registration
    frame: Frame | list
    camera: Camera | Rig
    initial: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor] | list | None
    device: str | None = None

    @property
    def bones(self) -> dict:
        return self.registration.volumes

    def run(self, progress=None, cancel=None) -> RegistrationResult:
        """Run the registration on the job's device; poses come back on the CPU (float64)."""
        device = resolve_device(self.device)
        config = replace(self.registration.config, device=str(device))
        registration = Registration(self.registration.volumes, config, self.registration.label_ids)
        result = registration.register(self.frame, self.camera, self.initial, masks=self.masks or None,
                                       progress=progress, cancel=cancel)
        for bone in result.bones.values():
            bone.camera_from_volume = bone.camera_from_volume.detach().cpu()
            bone.initial = bone.initial.detach().cpu()
        return result
