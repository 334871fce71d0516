"""FluoroRegistration in a Slicer scene: the logic behind the module and the console API.

Imports ``vtk`` and MRML (Slicer's, or the PyPI package ``slicer-core``) lazily, inside functions;
the rest of FluoroRegistrationLib never imports them. See docs/CONVENTIONS.md, "In a Slicer scene".
"""

from .geometry import LPS_FROM_RAS, as_camera, frame_ijk_to_ras, pose_from_to_parent, to_parent_from_pose
from .demo_scene import DEMO_CAMERA, PhantomScene, phantom_scene
from .job import RegistrationJob, resolve_device
from .scene_logic import FluoroRegistrationLogic

__all__ = ["DEMO_CAMERA", "LPS_FROM_RAS", "PhantomScene", "phantom_scene", "FluoroRegistrationLogic", "RegistrationJob", "as_camera", "frame_ijk_to_ras",
           "pose_from_to_parent", "resolve_device", "to_parent_from_pose"]
