"""Input checks shared by the renderers: pose shapes, finiteness, the bone in front of the source."""

from __future__ import annotations

import torch

from ..errors import FluoroRegError
from ..geometry import Camera, transform_points
from ..volume import RenderVolume


def check_poses(camera_from_volume: torch.Tensor) -> torch.Tensor:
    """Accept (4, 4) or (B, 4, 4); return (B, 4, 4). Raise on a bad shape or non-finite values."""
    if not isinstance(camera_from_volume, torch.Tensor):
        camera_from_volume = torch.as_tensor(camera_from_volume, dtype=torch.float64)
    if camera_from_volume.dim() == 2:
        camera_from_volume = camera_from_volume[None]
    if camera_from_volume.dim() != 3 or camera_from_volume.shape[-2:] != (4, 4):
        raise FluoroRegError(f"poses must have shape (B, 4, 4) or (4, 4), got {tuple(camera_from_volume.shape)}")
    if not torch.isfinite(camera_from_volume.detach()).all():
        raise FluoroRegError("pose contains NaN or infinite values; check the initial pose or the optimiser settings")
    return camera_from_volume


def box_corners_camera(volume: RenderVolume, camera_from_volume: torch.Tensor) -> torch.Tensor:
    """(B, 8, 3) camera-frame corners of the volume's grid box at each pose (float64, no grad)."""
    camera_from_index = camera_from_volume.detach().to(torch.float64) @ volume.volume_from_index.to(
        camera_from_volume.device)
    return transform_points(camera_from_index, volume.box_corners_index().to(camera_from_volume.device))


def check_in_front(volume: RenderVolume, camera: Camera, camera_from_volume: torch.Tensor) -> torch.Tensor:
    """Raise unless the whole grid box lies in front of the source at every pose; return the corners."""
    corners = box_corners_camera(volume, camera_from_volume)
    min_depth = corners[..., 2].amin()
    if min_depth <= 1.0:
        raise FluoroRegError(
            f"{volume.name} is behind or at the X-ray source at this pose (nearest depth {float(min_depth):.1f} mm); "
            f"put it between source and detector (depth about 0.5-0.9 x sdd = {camera.sdd_mm:g} mm)")
    return corners
