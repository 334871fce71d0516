"""Registration: poses of bones from one fluoroscopy frame (global search, then Adam, coarse to fine)."""

from .metrics import calibration_floor, pose_errors
from .optimize import Cancelled, StageLog, adam_refine, distinct_minima, grid_search, line_search, rotation_scan, simulated_annealing
from .pipeline import BoneResult, RegistrationOptions, RegistrationResult, register, register_bone, similarity_objective

__all__ = ["BoneResult", "calibration_floor", "Cancelled", "RegistrationOptions", "RegistrationResult", "StageLog", "adam_refine",
           "distinct_minima", "grid_search", "line_search", "pose_errors", "rotation_scan", "register", "register_bone", "similarity_objective", "simulated_annealing"]
