"""Pose sliders: six numbers a person can nudge, about the bone's own centre.

A bone's pose (``camera_from_volume``, docs/CONVENTIONS.md) is shown as

- ``x, y, z``: where the bone's centre is in the camera frame (mm; x along the detector's columns,
  y along its rows, z the depth from the source), the pose's own values, not offsets;
- ``rx, ry, rz``: a turn (degrees, rotation vector) about camera axes through the bone's centre,
  from a reference orientation (the start when the data was loaded, or the last result taken as
  the start), so the centre stays put while the bone turns and each slider alone turns about one axis.

The mapping is :class:`~FluoroRegistrationLib.geometry.CentredParameterization` with the translation
read as the absolute centre: ``pose(values(T)) == T`` for every pose (tested). Both faces (the trame
web app and the console) use it; the Slicer module uses Slicer's own transform sliders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..geometry import CentredParameterization

NAMES = ("x", "y", "z", "rx", "ry", "rz")
TURN_RANGE_DEG = 45.0  # each rotation slider spans +-45 deg about the reference orientation


@dataclass
class PoseSliders:
    """Sliders of one bone.

    centre_volume: (3,) the bone's centre in its volume frame (mm), e.g. its centroid.
    reference: (4, 4) float64 pose whose orientation the rotation sliders start from.
    """

    centre_volume: np.ndarray
    reference: np.ndarray

    def _parameterization(self) -> CentredParameterization:
        return CentredParameterization(torch.as_tensor(self.centre_volume, dtype=torch.float64),
                                       torch.as_tensor(self.reference, dtype=torch.float64))

    def centre_camera(self, pose: np.ndarray) -> np.ndarray:
        """(3,) the bone's centre in the camera frame at ``pose``."""
        pose = np.asarray(pose, np.float64)
        return pose[:3, :3] @ np.asarray(self.centre_volume, np.float64) + pose[:3, 3]

    def values(self, pose: np.ndarray) -> dict[str, float]:
        """{x, y, z (mm), rx, ry, rz (deg)} of a (4, 4) pose."""
        params = self._parameterization().params(torch.as_tensor(pose, dtype=torch.float64)).numpy()
        centre = self.centre_camera(pose)
        turn = np.degrees(params[:3])
        return {"x": float(centre[0]), "y": float(centre[1]), "z": float(centre[2]),
                "rx": float(turn[0]), "ry": float(turn[1]), "rz": float(turn[2])}

    def pose(self, values: dict) -> np.ndarray:
        """(4, 4) float64 pose of slider values (any missing key keeps the reference's)."""
        ref = self.values(self.reference)
        v = {k: float(values.get(k, ref[k])) for k in NAMES}
        for k, value in v.items():
            if not math.isfinite(value):
                from ..errors import FluoroRegError

                raise FluoroRegError(f"pose slider {k} is {value}; give a finite number")
        offset = np.array([v["x"], v["y"], v["z"]]) - self.centre_camera(self.reference)
        x = torch.tensor([*np.radians([v["rx"], v["ry"], v["rz"]]), *offset], dtype=torch.float64)
        return self._parameterization().pose(x).numpy()

    def ranges(self, sdd_mm: float, half_width_mm: float) -> dict[str, tuple[float, float]]:
        """Slider limits: x, y across the detector's field at the bone's depth (+-``half_width_mm``
        at the detector, with room), z from 5 % to 98 % of ``sdd_mm``, turns +-TURN_RANGE_DEG."""
        centre = self.centre_camera(self.reference)
        reach = 1.2 * half_width_mm * max(centre[2], 0.1 * sdd_mm) / sdd_mm
        return {"x": (-reach, reach), "y": (-reach, reach), "z": (0.05 * sdd_mm, 0.98 * sdd_mm),
                **{k: (-TURN_RANGE_DEG, TURN_RANGE_DEG) for k in ("rx", "ry", "rz")}}
