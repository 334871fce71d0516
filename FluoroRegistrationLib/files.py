"""Pose files and image files (docs/CONVENTIONS.md, "Files").

Poses: ``{"femur": {"camera_from_volume": [[...4x4...]]}, ...}``; result files may add keys per bone.
Images: 16-bit PNG (linearly scaled, scale recorded in a sidecar JSON) or ``.npy`` float arrays.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .errors import FluoroRegError


def read_yaml(path, what: str, hint: str = "check the path"):
    """The parsed contents of a YAML (or JSON) file; a missing file or bad syntax is one line
    naming ``what`` and the fix."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FluoroRegError(f"{what} {path} not found; {hint}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise FluoroRegError(f"{what} {path} is not valid YAML ({str(e).splitlines()[0]}); fix its syntax") from None


def read_poses(path) -> dict[str, torch.Tensor]:
    """Read a poses JSON file -> {bone: (4, 4) float64 tensor}; checks each is a rigid 4x4."""
    path = Path(path)
    if not path.is_file():
        raise FluoroRegError(f"pose file not found: {path}; pass a JSON file like "
                             '{"femur": {"camera_from_volume": [[1,0,0,0],[0,1,0,0],[0,0,1,800],[0,0,0,1]]}}')
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise FluoroRegError(f"pose file {path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    return poses_from_mapping(data, f"pose file {path}")


def poses_from_mapping(data, where: str) -> dict[str, torch.Tensor]:
    """{bone: {"camera_from_volume": 4x4}} (parsed JSON) -> {bone: (4, 4) float64}, each checked rigid."""
    if not isinstance(data, dict) or not data:
        raise FluoroRegError(f"{where} must hold an object with one entry per bone")
    poses = {}
    for name, entry in data.items():
        matrix = entry.get("camera_from_volume") if isinstance(entry, dict) else None
        if matrix is None:
            raise FluoroRegError(f"{where}: entry '{name}' has no camera_from_volume 4x4 matrix")
        poses[name] = check_rigid(matrix, f"{where}, '{name}'")
    return poses


def check_rigid(matrix, what: str, name: str = "camera_from_volume") -> torch.Tensor:
    """A (4, 4) float64 tensor from nested lists; raise unless it is a finite rigid transform (the
    messages call the matrix ``name``)."""
    try:
        T = torch.as_tensor(np.asarray(matrix, dtype=np.float64))
    except (TypeError, ValueError):
        raise FluoroRegError(f"{what}: {name} must be a 4x4 array of numbers") from None
    if T.shape != (4, 4):
        raise FluoroRegError(f"{what}: {name} must be 4x4, got shape {tuple(T.shape)}")
    if not torch.isfinite(T).all():
        raise FluoroRegError(f"{what}: {name} contains NaN or infinite values")
    R = T[:3, :3]
    if not torch.allclose(R @ R.T, torch.eye(3, dtype=T.dtype), atol=1e-4) or torch.det(R) < 0 or \
            not torch.allclose(T[3], torch.tensor([0, 0, 0, 1.0], dtype=T.dtype)):
        raise FluoroRegError(f"{what}: {name} is not a rigid transform (rotation must be orthonormal, "
                             "det +1, last row 0 0 0 1)")
    return T


def write_poses(path, poses: dict[str, torch.Tensor], extra: dict[str, dict] | None = None) -> None:
    """Write {bone: (4, 4)} (plus optional per-bone extra keys) as a poses JSON file."""
    out = {}
    for name, T in poses.items():
        out[name] = {"camera_from_volume": [[float(v) for v in row] for row in torch.as_tensor(T).tolist()]}
        out[name].update((extra or {}).get(name, {}))
    Path(path).write_text(json.dumps(out, indent=2) + "\n")


def save_image(image, path, scale: float | None = None) -> dict:
    """Save a 2D float image (H, W): ``.npy`` as float32, ``.png``/``.tif`` as 16-bit scaled to the max.

    Returns a dict describing the stored values (``value = pixel / scale``), also written beside a
    PNG as ``<name>.json``.
    """
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    array = np.squeeze(array)
    if array.ndim != 2:
        raise FluoroRegError(f"can only save 2D images, got shape {array.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".npy":
        np.save(path, array.astype(np.float32))
        return {"scale": 1.0}
    if path.suffix.lower() not in (".png", ".tif", ".tiff"):
        raise FluoroRegError(f"unsupported image type {path.suffix}; use .png, .tif or .npy")
    import SimpleITK as sitk

    peak = float(np.max(array)) if array.size else 0.0
    scale = scale if scale is not None else (65535.0 / peak if peak > 0 else 1.0)
    pixels = np.clip(np.round(array * scale), 0, 65535).astype(np.uint16)
    sitk.WriteImage(sitk.GetImageFromArray(pixels), str(path))
    meta = {"scale": scale, "meaning": "value = pixel / scale (line integral of attenuation, no unit)"}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
