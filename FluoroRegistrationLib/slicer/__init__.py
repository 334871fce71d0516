"""FluoroRegistration in a Slicer scene: the logic behind the module and the console API.

Imports ``vtk`` and MRML (Slicer's, or the PyPI package ``slicer-core``) lazily, inside functions;
the rest of FluoroRegistrationLib never imports them. See CONVENTIONS.md, "In a Slicer scene".
"""

from .geometry import LPS_FROM_RAS, as_camera, frame_ijk_to_ras, pose_from_to_parent, to_parent_from_pose
from .job import RegistrationJob, resolve_device
from .scene_logic import FluoroRegistrationLogic

__all__ = ["LPS_FROM_RAS", "FluoroRegistrationLogic", "RegistrationJob", "as_camera", "frame_ijk_to_ras",
           "pose_from_to_parent", "resolve_device", "to_parent_from_pose"]
