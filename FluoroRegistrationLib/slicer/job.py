"""A registration read out of the scene: plain tensors, safe to run on a worker thread (no MRML inside)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import FluoroRegError
from ..geometry import Camera
from ..register import RegistrationOptions, RegistrationResult, register
from ..volume import RenderVolume

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
    """Everything :func:`~FluoroRegistrationLib.register.register` needs.

    Attributes:
        bones: bone -> RenderVolume (``registration_volumes``).
        frame: (rows, cols) float32 attenuation-like frame (bone bright).
        camera: the calibration.
        initial: bone -> (4, 4) float64 ``camera_from_volume``.
        masks: optional bone -> (rows, cols) float32 mask.
        options: registration options. device: "cpu", "cuda" or None (CUDA when available).
    """

    bones: dict[str, RenderVolume]
    frame: torch.Tensor
    camera: Camera
    initial: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor] | None
    options: RegistrationOptions
    device: str | None = None

    def run(self, progress=None, cancel=None) -> RegistrationResult:
        """Run the core registration on the job's device; poses come back on the CPU (float64)."""
        device = resolve_device(self.device)
        options = replace(self.options, device=str(device))
        bones = {b: v.to(device=device) for b, v in self.bones.items()}
        masks = None if self.masks is None else {b: m.to(device) for b, m in self.masks.items()}
        initial = {b: p.to(device) for b, p in self.initial.items()}
        result = register(bones, self.frame.to(device), self.camera, initial, masks=masks, options=options,
                          progress=progress, cancel=cancel)
        for bone in result.bones.values():
            bone.camera_from_volume = bone.camera_from_volume.detach().cpu()
            bone.initial = bone.initial.detach().cpu()
        return result
