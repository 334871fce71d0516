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
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..errors import FluoroRegError


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

    @classmethod
    def from_dict(cls, data: dict, source: str = "calibration") -> "Camera":
        """Build from docs/CONVENTIONS.md's calibration object; names missing keys in the error."""
        required = ("sdd_mm", "rows", "cols", "row_spacing_mm", "col_spacing_mm")
        missing = [key for key in required if key not in data]
        if missing:
            raise FluoroRegError(f"{source}: missing key(s) {', '.join(missing)}; expected {', '.join(required)}")
        pp = data.get("principal_point") or {}
        try:
            return cls(
                sdd_mm=float(data["sdd_mm"]), rows=int(data["rows"]), cols=int(data["cols"]),
                row_spacing_mm=float(data["row_spacing_mm"]), col_spacing_mm=float(data["col_spacing_mm"]),
                u0=None if pp.get("col") is None else float(pp["col"]),
                v0=None if pp.get("row") is None else float(pp["row"]),
                distortion_k=float((data.get("distortion") or {}).get("k", 0.0)),
            )
        except (TypeError, ValueError) as err:
            if isinstance(err, FluoroRegError):
                raise FluoroRegError(f"{source}: {str(err).removeprefix('calibration: ')}") from None
            raise FluoroRegError(f"{source}: values must be numbers ({err})") from None

    @classmethod
    def from_json(cls, path) -> "Camera":
        """Read a calibration JSON file (docs/CONVENTIONS.md format)."""
        path = Path(path)
        if not path.is_file():
            raise FluoroRegError(f"calibration file not found: {path}; pass an existing JSON file")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise FluoroRegError(f"calibration {path} is not valid JSON ({err.msg} at line {err.lineno})") from None
        if not isinstance(data, dict):
            raise FluoroRegError(f"calibration {path} must hold a JSON object")
        return cls.from_dict(data, source=f"calibration {path}")

    def to_json(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def check_frame(self, rows: int, cols: int, what: str = "frame") -> None:
        """Raise if a frame of (rows, cols) does not match this calibration."""
        if (rows, cols) != (self.rows, self.cols):
            raise FluoroRegError(
                f"{what} is {rows}x{cols} pixels but the calibration says {self.rows}x{self.cols}; "
                "use the calibration of this frame (or resize the calibration with the frame)"
            )


def as_camera(calibration) -> Camera:
    """A :class:`Camera` from a Camera, a calibration dict (docs/CONVENTIONS.md's JSON object) or a JSON path."""
    if isinstance(calibration, Camera):
        return calibration
    if isinstance(calibration, dict):
        return Camera.from_dict(calibration)
    if isinstance(calibration, (str, Path)):
        return Camera.from_json(calibration)
    raise FluoroRegError(f"calibration must be a Camera, a dict or a JSON file path, got {type(calibration).__name__}; "
                         "pass one of those")
