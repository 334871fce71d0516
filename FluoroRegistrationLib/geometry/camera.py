"""The C-arm as a pinhole camera (docs/CONVENTIONS.md, "Frames" 2 and 3).

Camera frame: origin at the X-ray source, +z along the principal ray towards the detector,
+x along increasing detector column, +y along increasing detector row (OpenCV's camera).
The detector is the plane z = sdd. Pixel (row i, col j) has its centre at image coordinates
(u = j, v = i). A camera point (X, Y, Z) projects to u = u0 + fx X / Z, v = v0 + fy Y / Z with
fx = sdd / col_spacing and fy = sdd / row_spacing.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..errors import FluoroRegError, warn


@dataclass(frozen=True)
class Camera:
    """Intrinsics of a single-plane C-arm.

    Attributes:
        sdd_mm: source-to-detector distance (mm).
        rows, cols: detector size in pixels (H, W).
        row_spacing_mm, col_spacing_mm: pixel pitch on the detector (mm).
        u0, v0: principal point in pixels (column, row); defaults to the image centre.
        distortion_k: image-intensifier pincushion of the frames, ``r_d = r_u (1 + k r_u^2)`` about
            the principal point, ``r`` in units of the half-diagonal (from a grid calibration);
            0 for flat-panel detectors. Registration undistorts frames with it.
    """

    sdd_mm: float
    rows: int
    cols: int
    row_spacing_mm: float
    col_spacing_mm: float
    u0: float | None = None
    v0: float | None = None
    distortion_k: float = 0.0

    def __post_init__(self):
        for name in ("sdd_mm", "row_spacing_mm", "col_spacing_mm"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise FluoroRegError(f"calibration: {name} must be a positive number, got {value!r}")
        for name in ("rows", "cols"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value > 0):
                raise FluoroRegError(f"calibration: {name} must be a positive integer, got {value!r}")
        if self.u0 is None:
            object.__setattr__(self, "u0", (self.cols - 1) / 2.0)
        if self.v0 is None:
            object.__setattr__(self, "v0", (self.rows - 1) / 2.0)
        for name in ("u0", "v0"):
            if not math.isfinite(getattr(self, name)):
                raise FluoroRegError(f"calibration: principal point {name} must be finite")

    # ----------------------------------------------------------------- derived quantities
    @property
    def fx(self) -> float:
        """Focal length along columns, in pixels."""
        return self.sdd_mm / self.col_spacing_mm

    @property
    def fy(self) -> float:
        """Focal length along rows, in pixels."""
        return self.sdd_mm / self.row_spacing_mm

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) = (rows, cols)."""
        return (self.rows, self.cols)

    def K(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """The 3x3 intrinsic matrix [[fx, 0, u0], [0, fy, v0], [0, 0, 1]]."""
        return torch.tensor(
            [[self.fx, 0.0, self.u0], [0.0, self.fy, self.v0], [0.0, 0.0, 1.0]], dtype=dtype, device=device
        )

    def resized(self, rows: int, cols: int) -> "Camera":
        """The same detector area sampled on a (rows, cols) grid (pyramid levels, quick previews).

        Pixel pitch scales so the detector keeps its physical size; the principal point keeps its
        physical position.
        """
        sr, sc = self.rows / rows, self.cols / cols
        # physical position of the principal point measured from the detector's corner edge
        u0 = (self.u0 + 0.5) / sc - 0.5
        v0 = (self.v0 + 0.5) / sr - 0.5
        return replace(self, rows=rows, cols=cols, row_spacing_mm=self.row_spacing_mm * sr,
                       col_spacing_mm=self.col_spacing_mm * sc, u0=u0, v0=v0)

    # ----------------------------------------------------------------- projections and rays
    def project(self, points_camera: torch.Tensor) -> torch.Tensor:
        """Project camera-frame points (..., 3) in mm to image coordinates (..., 2) = (u, v) pixels."""
        z = points_camera[..., 2]
        u = self.u0 + self.fx * points_camera[..., 0] / z
        v = self.v0 + self.fy * points_camera[..., 1] / z
        return torch.stack([u, v], dim=-1)

    def pixel_uv(self, dtype=torch.float32, device=None) -> torch.Tensor:
        """Image coordinates of every pixel centre, (H, W, 2) = (u = col, v = row)."""
        v, u = torch.meshgrid(
            torch.arange(self.rows, dtype=dtype, device=device),
            torch.arange(self.cols, dtype=dtype, device=device),
            indexing="ij",
        )
        return torch.stack([u, v], dim=-1)

    def directions(self, uv: torch.Tensor) -> torch.Tensor:
        """Ray directions (..., 3) through image points uv (..., 2), scaled so that z = 1.

        The point at depth Z on the ray is Z * direction; the detector point is sdd * direction.
        """
        x = (uv[..., 0] - self.u0) / self.fx
        y = (uv[..., 1] - self.v0) / self.fy
        return torch.stack([x, y, torch.ones_like(x)], dim=-1)

    def rays(self, dtype=torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """One ray per pixel: source (3,) at the origin and detector points (H, W, 3) in mm."""
        detector = self.sdd_mm * self.directions(self.pixel_uv(dtype, device))
        return torch.zeros(3, dtype=dtype, device=device), detector

    # ----------------------------------------------------------------- files
    def to_dict(self) -> dict:
        """The calibration as docs/CONVENTIONS.md's JSON object (plus ``distortion`` when it is non-zero)."""
        out = {
            "sdd_mm": self.sdd_mm, "rows": self.rows, "cols": self.cols,
            "row_spacing_mm": self.row_spacing_mm, "col_spacing_mm": self.col_spacing_mm,
            "principal_point": {"col": self.u0, "row": self.v0},
        }
        if self.distortion_k:
            out["distortion"] = {"model": "radial", "k": self.distortion_k}
        return out

    def check_physical(self, source: str = "calibration") -> "Camera":
        """Raise unless the values are those of a real C-arm (``PHYSICAL``): catches unit slips such
        as metres typed as millimetres before any work (a 1 mm sdd would make the renderer ask for
        tens of GB). Returns self."""
        checks = (("sdd_mm", self.sdd_mm), ("row_spacing_mm", self.row_spacing_mm),
                  ("col_spacing_mm", self.col_spacing_mm), ("rows", self.rows), ("cols", self.cols),
                  ("distortion k", abs(self.distortion_k)))
        for name, value in checks:
            lo, hi, hint = PHYSICAL[name.split()[0]]
            if not lo <= value <= hi:
                raise FluoroRegError(f"{source}: {name} {value:g} is outside the physical range {lo:g}-{hi:g}; "
                                     f"{hint}")
        for name, value, size in (("col", self.u0, self.cols), ("row", self.v0, self.rows)):
            if not -size <= value <= 2 * size:
                raise FluoroRegError(f"{source}: principal point {name} {value:g} is far outside the detector "
                                     f"(0 to {size - 1}); give it in pixels, or leave it out for the centre")
            if not -0.5 <= value <= size - 0.5:
                warn(f"{source}: principal point {name} {value:g} is outside the detector (0 to {size - 1}); "
                     "right for a cropped frame, else check the calibration")
        return self

    @classmethod
    def from_dict(cls, data: dict, source: str = "calibration") -> "Camera":
        """Build from docs/CONVENTIONS.md's calibration object and check it is physical
        (:meth:`check_physical`); names the missing or wrong key in the error."""
        if not isinstance(data, dict):
            raise FluoroRegError(f"{source} must be an object with sdd_mm, rows, cols, row_spacing_mm, col_spacing_mm")
        required = ("sdd_mm", "rows", "cols", "row_spacing_mm", "col_spacing_mm")
        missing = [key for key in required if key not in data]
        if missing:
            raise FluoroRegError(f"{source}: missing key(s) {', '.join(missing)}; expected {', '.join(required)}")
        pp = _section(data, "principal_point", source, '{"col": 255.5, "row": 255.5}')
        distortion = _section(data, "distortion", source, '{"model": "radial", "k": 0.05}')
        if distortion.get("model", "radial") != "radial":
            raise FluoroRegError(f"{source}: distortion model {distortion['model']!r} is not supported; use "
                                 '"radial" (r_d = r_u (1 + k r_u^2)) or undistort the frames first')
        camera = cls(
            sdd_mm=_number(data["sdd_mm"], "sdd_mm", source), rows=_count(data["rows"], "rows", source),
            cols=_count(data["cols"], "cols", source),
            row_spacing_mm=_number(data["row_spacing_mm"], "row_spacing_mm", source),
            col_spacing_mm=_number(data["col_spacing_mm"], "col_spacing_mm", source),
            u0=None if pp.get("col") is None else _number(pp["col"], "principal_point.col", source),
            v0=None if pp.get("row") is None else _number(pp["row"], "principal_point.row", source),
            distortion_k=_number(distortion.get("k", 0.0), "distortion.k", source),
        )
        return camera.check_physical(source)

    @classmethod
    def from_json(cls, path) -> "Camera":
        """Read a calibration JSON file (docs/CONVENTIONS.md format)."""
        return cls.from_dict(read_calibration_json(path), source=f"calibration {path}")

    def to_json(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def check_frame(self, rows: int, cols: int, what: str = "frame") -> None:
        """Raise if a frame of (rows, cols) does not match this calibration."""
        if (rows, cols) != (self.rows, self.cols):
            raise FluoroRegError(
                f"{what} is {rows}x{cols} pixels but the calibration says {self.rows}x{self.cols}; "
                "use the calibration of this frame (or resize the calibration with the frame)"
            )


def read_calibration_json(path) -> dict:
    """The JSON object of a calibration (or rig) file; a missing file, bad JSON or a non-object is
    one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FluoroRegError(f"calibration file not found: {path}; pass an existing JSON file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise FluoroRegError(f"calibration {path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict):
        raise FluoroRegError(f"calibration {path} must hold a JSON object")
    return data


# physical ranges of a calibration: (low, high, fix)
PHYSICAL = {
    "sdd_mm": (300.0, 3000.0, "sdd_mm is the source-to-detector distance in millimetres (C-arms: 900-1300)"),
    "row_spacing_mm": (0.05, 5.0, "pixel spacing is in millimetres (detectors: 0.1-1.5)"),
    "col_spacing_mm": (0.05, 5.0, "pixel spacing is in millimetres (detectors: 0.1-1.5)"),
    "rows": (8, 16384, "rows and cols are the frame's size in pixels"),
    "cols": (8, 16384, "rows and cols are the frame's size in pixels"),
    "distortion": (0.0, 0.5, "k is the radial coefficient per half-diagonal squared (image intensifiers: 0.01-0.2)"),
}


def _number(value, name: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FluoroRegError(f"{source}: {name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise FluoroRegError(f"{source}: {name} must be finite, got {value!r}")
    return float(value)


def _count(value, name: str, source: str) -> int:
    number = _number(value, name, source)
    if number != int(number):
        raise FluoroRegError(f"{source}: {name} must be a whole number of pixels, got {value!r}")
    return int(number)


def _section(data: dict, key: str, source: str, example: str) -> dict:
    """An optional nested object of a calibration ({} when absent or null)."""
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FluoroRegError(f"{source}: {key} must be an object like {example}, got {value!r}")
    return value


def as_camera(calibration) -> Camera:
    """A :class:`Camera` from a Camera, a calibration dict (docs/CONVENTIONS.md's JSON object) or a JSON
    path, checked to be physical (:meth:`Camera.check_physical`)."""
    if isinstance(calibration, Camera):
        return calibration.check_physical()
    if isinstance(calibration, dict):
        return Camera.from_dict(calibration)
    if isinstance(calibration, (str, Path)):
        return Camera.from_json(calibration)
    raise FluoroRegError(f"calibration must be a Camera, a dict or a JSON file path, got {type(calibration).__name__}; "
                         "pass one of those")
