"""Differentiable DRR renderers sharing one interface.

``render(volumes, camera, poses, method)`` draws one or several render volumes (bones), each at
its own pose, summed into one image per batch element:

- ``method="fast"``: trilinear samples, one per slice along the dominant axis (registration);
- ``method="exact"``: exact voxel-grid line integrals (Siddon), the reference.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import FluoroRegError
from ..geometry import Camera
from ..volume import RenderVolume
from .exact import render_exact
from .fast import render_fast

RENDERERS = {"fast": render_fast, "exact": render_exact}


def get_renderer(method: str):
    """The render function for a method name; the error suggests the valid names."""
    try:
        return RENDERERS[method]
    except KeyError:
        raise FluoroRegError(f"unknown renderer '{method}'; choose one of {', '.join(RENDERERS)}") from None


def render(volumes: RenderVolume | Sequence[RenderVolume], camera: Camera, poses, method: str = "fast",
           **kwargs) -> torch.Tensor:
    """DRR of one or more volumes, each at its own poses, summed.

    Args:
        volumes: a RenderVolume (or an implant's ImplantBody: from its mesh, or its occupancy grid for "fast"), or a
            sequence of them (one per bone or component).
        camera: the C-arm intrinsics.
        poses: for one volume a (B, 4, 4) or (4, 4) tensor; for a sequence, a sequence of those
            (one per volume, same B).
        method: "fast" or "exact".
    Returns:
        (B, 1, rows, cols) line integrals of attenuation.
    """
    fn = get_renderer(method)
    if not isinstance(volumes, Sequence):
        return _draw(fn, volumes, camera, poses, method, **kwargs)
    volumes = list(volumes)
    if isinstance(poses, torch.Tensor):
        raise FluoroRegError("several volumes need one pose tensor each (a list); got a single tensor")
    poses = list(poses)
    if len(poses) != len(volumes):
        raise FluoroRegError(f"got {len(volumes)} volumes but {len(poses)} poses; pass one pose per volume")
    images = [_draw(fn, v, camera, p, method, **kwargs) for v, p in zip(volumes, poses)]
    if len({img.shape[0] for img in images}) != 1:
        raise FluoroRegError("every volume's poses must have the same batch size")
    return torch.stack(images, 0).sum(0)


def _draw(fn, volume, camera: Camera, poses, method: str, **kwargs) -> torch.Tensor:
    """One volume's image: a body that draws itself (an implant: ``method`` picks its exact mesh or
    its occupancy grid) does; a render volume goes through ``fn``."""
    draw = getattr(volume, "draw", None)
    if draw is not None:
        return draw(camera, poses, region=kwargs.get("region"), method=method)
    return fn(volume, camera, poses, **kwargs)


def project_label(volume: RenderVolume, camera: Camera, poses, method: str = "fast", **kwargs) -> torch.Tensor:
    """Where and how thickly a bone projects: (B, 1, rows, cols) chord length in mm through its label
    (an implant: through its mesh, exactly).

    ``> 0`` marks the pixels the bone projects to (its 2D mask); the value is the bone's thickness
    along each ray.
    """
    silhouette = getattr(volume, "silhouette", None)
    if silhouette is not None:
        return silhouette(camera, poses, region=kwargs.get("region"))
    if volume.label_mask is None:
        raise FluoroRegError(f"{volume.name} has no label mask; build it with bone_volume()")
    indicator = RenderVolume(volume.label_mask.to(volume.mu.dtype), volume.volume_from_index, volume.name)
    return get_renderer(method)(indicator, camera, poses, **kwargs)


__all__ = ["RENDERERS", "get_renderer", "project_label", "render", "render_exact", "render_fast"]
