"""Standard C-arm views of a leg CT, as ``camera_from_volume`` poses."""

from __future__ import annotations

import torch

from .rigid import make_pose

# Lateral view: the beam runs medio-laterally along the volume's +x (towards patient Left), image
# rows run from Superior to Inferior (camera +y = volume -z), columns from Posterior to Anterior
# (camera +x = volume -y). Rows of R are the camera axes written in volume (LPS) coordinates.
_LATERAL = torch.tensor([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)


def lateral_view(centre_volume, depth_mm: float) -> torch.Tensor:
    """(4, 4) pose that puts ``centre_volume`` (LPS mm) on the principal ray at ``depth_mm``."""
    c = torch.as_tensor(centre_volume, dtype=torch.float64)
    t = torch.tensor([0.0, 0.0, float(depth_mm)], dtype=torch.float64) - _LATERAL @ c
    return make_pose(_LATERAL, t)
