"""Scene geometry (docs/CONVENTIONS.md, "In a Slicer scene"): the one place where RAS meets LPS.

Pure NumPy, no Slicer import. The scene's world is the C-arm's camera frame (the X-ray source at
the origin, the detector plane at z = sdd), so a frame volume stays put while each bone moves under
its own transform node.

- ``F = diag(-1, -1, 1, 1)`` maps RAS to LPS and back (``F @ F = I``).
- A bone's transform node has ToParent ``camera_from_volume @ F``: it takes the CT node's RAS
  coordinates into the scene; conversely ``camera_from_volume = ToParent @ F``.
- A CT node's ``IJKToRAS`` gives the core's ``volume_from_index = F @ IJKToRAS`` (LPS).
- A frame (single-slice volume, array ``(1, rows, cols)``) has ``IJKToRAS`` putting pixel
  ``(i = col, j = row)`` at ``((i - u0) col_spacing, (j - v0) row_spacing, sdd)``.
"""

from __future__ import annotations

import json

import numpy as np

from ..errors import FluoroRegError
from ..geometry import Camera, as_camera  # noqa: F401 (as_camera: re-exported for the scene logic)

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # F: its own inverse, so also RAS_FROM_LPS
FRAME_SLICE_THICKNESS_MM = 1.0  # the k spacing of single-slice frame volumes (any positive value works)


def _matrix(m, what: str) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise FluoroRegError(f"{what} must be a finite 4x4 matrix, got shape {m.shape}; pass a 4x4 transform")
    return m


def to_parent_from_pose(camera_from_volume) -> np.ndarray:
    """A bone's transform node matrix: (4, 4) ``camera_from_volume`` (LPS) -> (4, 4) ToParent (RAS in)."""
    return _matrix(camera_from_volume, "camera_from_volume") @ LPS_FROM_RAS


def pose_from_to_parent(to_parent) -> np.ndarray:
    """The inverse of :func:`to_parent_from_pose`: (4, 4) ToParent -> (4, 4) ``camera_from_volume``."""
    return _matrix(to_parent, "transform to parent") @ LPS_FROM_RAS


def volume_from_index(ijk_to_ras) -> np.ndarray:
    """A CT or label node's (4, 4) IJKToRAS -> the core's (4, 4) ``volume_from_index`` (index -> LPS mm)."""
    return LPS_FROM_RAS @ _matrix(ijk_to_ras, "IJKToRAS")


def ijk_to_ras_from_volume(volume_from_index_lps) -> np.ndarray:
    """The inverse of :func:`volume_from_index`: (4, 4) index -> LPS affine to a node's IJKToRAS."""
    return LPS_FROM_RAS @ _matrix(volume_from_index_lps, "volume_from_index")


def frame_ijk_to_ras(camera: Camera) -> np.ndarray:
    """(4, 4) IJKToRAS of a frame volume: pixel (i = col, j = row) to its detector point in the scene."""
    return np.array([
        [camera.col_spacing_mm, 0.0, 0.0, -camera.u0 * camera.col_spacing_mm],
        [0.0, camera.row_spacing_mm, 0.0, -camera.v0 * camera.row_spacing_mm],
        [0.0, 0.0, FRAME_SLICE_THICKNESS_MM, camera.sdd_mm],
        [0.0, 0.0, 0.0, 1.0],
    ])


def source_and_principal_point(camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """Scene positions (3,) of the X-ray source and of the principal point on the detector (mm)."""
    return np.zeros(3), np.array([0.0, 0.0, camera.sdd_mm])


def calibration_text(camera: Camera) -> str:
    """The calibration as JSON text (stored on frame nodes, so a saved scene keeps it)."""
    return json.dumps(camera.to_dict())


def detector_view_orientation() -> np.ndarray:
    """(3, 3) slice-view orientation (columns: screen right, screen up, view normal, in scene axes) that
    shows a frame as a radiograph viewer does: columns left to right, row 0 at the top, seen from the
    source. Slicer's axial view would mirror both axes (it puts R on the screen's left)."""
    return np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])
