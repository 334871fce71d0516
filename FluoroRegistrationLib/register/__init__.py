"""Registration: poses of bones from one fluoroscopy frame, or from the frames of several views of a
rig at once (global search, then Adam, coarse to fine).

:func:`register_frame` (and :class:`Registration` for many frames of one CT) is the one path every
face calls; :class:`RegistrationConfig` holds its settings, one checked dataclass per stage.
"""

from ..geometry import as_camera
from .api import Registration, binary_mask, prepare_frame, register_frame
from .config import (AxialProbe, Context, DepthScan, GlobalSearch, MaskFocus, Pyramid, Ranking, RegistrationConfig, Steps,
                     TiltProbe, VoxelModel)
from .metrics import calibration_floor, pose_errors
from .optimize import Cancelled, StageLog, adam_refine, distinct_minima, grid_search, line_search, rotation_scan, simulated_annealing
from .pipeline import (BoneResult, Level, RegistrationResult, ViewImage, expected_reports, pyramid_levels, register,
                       register_bone, register_bone_views, register_views, similarity_objective)

__all__ = ["expected_reports", "AxialProbe", "BoneResult", "Cancelled", "Context", "DepthScan", "GlobalSearch", "Level", "MaskFocus", "Pyramid",
           "Ranking", "Registration", "RegistrationConfig", "RegistrationResult", "StageLog", "Steps", "TiltProbe", "VoxelModel",
           "adam_refine", "as_camera", "binary_mask", "calibration_floor", "distinct_minima", "grid_search",
           "line_search", "pose_errors", "prepare_frame", "pyramid_levels", "register", "register_bone",
           "register_frame", "register_bone_views", "register_views", "ViewImage", "rotation_scan", "similarity_objective", "simulated_annealing"]
