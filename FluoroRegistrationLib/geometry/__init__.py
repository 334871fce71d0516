"""Camera (C-arm intrinsics, projection, rays) and rigid poses (4x4 camera_from_volume)."""

from .camera import Camera, as_camera
from .views import lateral_view
from .rig import Rig, View, as_rig, biplane_rig, crossing_point, perturbed_rig, turned_view
from .rigid import (
    CentredParameterization,
    compose,
    euler_from_pose,
    euler_from_rotation,
    invert,
    make_pose,
    pose_from_euler,
    pose_from_rotvec,
    rotation_angle,
    rotation_from_euler,
    rotation_from_rotvec,
    rotvec_from_pose,
    rotvec_from_rotation,
    transform_points,
)

__all__ = [
    "Camera", "as_camera", "Rig", "View", "as_rig", "biplane_rig", "crossing_point", "perturbed_rig", "turned_view", "CentredParameterization", "lateral_view", "compose", "euler_from_pose", "euler_from_rotation", "invert",
    "make_pose", "pose_from_euler", "pose_from_rotvec", "rotation_angle", "rotation_from_euler",
    "rotation_from_rotvec", "rotvec_from_pose", "rotvec_from_rotation", "transform_points",
]
