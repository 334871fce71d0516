"""An implant component as registration draws it: a closed mesh of one material, beside the bones.

:class:`ImplantBody` offers what the registration pipeline asks of a bone's
:class:`~..volume.RenderVolume` (a name, a centre, points for errors, a device and dtype, its
drawing at a pyramid level, its silhouette) and draws itself with the exact ray-mesh renderer, so
``render``, ``project_label`` and every registration stage take it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..errors import FluoroRegError
from .mesh import ImplantMesh

MATERIAL_HINT = "cobalt_chrome, titanium_alloy, polyethylene, or mu=<1/mm>"


@dataclass(frozen=True)
class ImplantBody:
    """A component: ``mesh`` (its own frame, mm) of uniform attenuation ``mu_per_mm`` (1/mm).

    Attributes:
        centroid: (3,) float64, the solid's centre of volume (the pose's rotation centre).
        points: (N, 3) float64, up to 2000 surface vertices (the points mTRE is measured on).
        dtype: the dtype it renders in (float32 by default; registration's gradients need no more).
    """

    mesh: ImplantMesh
    mu_per_mm: float
    name: str
    material: str = ""
    dtype: torch.dtype = torch.float32
    _levels: dict = field(default_factory=dict, compare=False, repr=False)  # pixel size -> coarser body

    @property
    def centroid(self) -> torch.Tensor:
        return self.mesh.centroid

    @property
    def points(self) -> torch.Tensor:
        v = self.mesh.vertices
        step = max(1, len(v) // 2000)
        return v[::step]

    surface = points

    @property
    def device(self) -> torch.device:
        return self.mesh.vertices.device

    label_mask = None  # its silhouette is drawn exactly (silhouette below), not from a label grid

    def to(self, device=None, dtype=None) -> "ImplantBody":
        mesh = ImplantMesh(self.mesh.vertices.to(device=device), self.mesh.faces.to(device=device), self.mesh.name)
        return replace(self, mesh=mesh, dtype=dtype or self.dtype, _levels={})

    def for_pixel_mm(self, pixel_mm: float) -> "ImplantBody":
        """As a pyramid level whose pixels span ``pixel_mm`` at the component draws it: the surface
        simplified to faces about half a pixel across (a CAD or marching-cubes mesh of 10^5 faces
        costs the coarse levels' batches of poses 10-20x more and shows them nothing more), kept
        only while it is still one closed solid; the full mesh when that saves little."""
        key = round(float(pixel_mm), 3)
        if key not in self._levels:
            self._levels[key] = self._simplified(key)
        return self._levels[key]

    def _simplified(self, pixel_mm: float) -> "ImplantBody":
        area = float(_face_areas(self.mesh).sum())
        faces = int(area / (0.5 * pixel_mm) ** 2 * 2)  # two triangles per half-pixel square
        if faces > 0.5 * len(self.mesh.faces):
            return self
        try:
            import trimesh

            from .mesh import mesh_problems

            full = trimesh.Trimesh(self.mesh.vertices.cpu().numpy(), self.mesh.faces.cpu().numpy(), process=False)
            for target in (faces, 2 * faces, 4 * faces):
                if target > 0.5 * len(self.mesh.faces):
                    break
                coarse = full.simplify_quadric_decimation(face_count=max(target, 500))
                if not mesh_problems(coarse):
                    mesh = ImplantMesh(torch.as_tensor(coarse.vertices, dtype=torch.float64).to(self.device),
                                       torch.as_tensor(coarse.faces, dtype=torch.int64).to(self.device), self.mesh.name)
                    return replace(self, mesh=mesh, _levels={})
        except ImportError:  # fast_simplification (the decimation backend) missing: draw the full mesh
            pass
        return self

    def draw(self, camera, poses: torch.Tensor, region=None) -> torch.Tensor:
        """(B, 1, rows, cols) line integrals at ``poses`` (B, 4, 4) or (4, 4) (see render_mesh)."""
        from ..render.mesh import render_mesh

        poses = poses.to(torch.float64) if poses.dtype != torch.float64 else poses
        return render_mesh(self.mesh, camera, poses, self.mu_per_mm, region=region).to(self.dtype)

    def silhouette(self, camera, poses: torch.Tensor, region=None) -> torch.Tensor:
        """(B, 1, rows, cols) path length (mm) through the component: > 0 where it projects."""
        return self.draw(camera, poses, region) / self.mu_per_mm


def _face_areas(mesh: ImplantMesh) -> torch.Tensor:
    a, b, c = mesh.corners()
    return 0.5 * torch.linalg.cross(b - a, c - a).norm(dim=-1)


def material_mu(material: str, energy_kev: float = 60.0) -> tuple[str, float]:
    """(name, mu in 1/mm) of a component's material: a simulate.materials name (at ``energy_kev``,
    the effective energy of a fluoroscopy beam) or ``mu=<value>`` given directly."""
    from ..simulate.materials import MATERIALS, linear_attenuation_per_mm

    text = str(material).strip()
    if text.startswith("mu="):
        try:
            mu = float(text[3:])
        except ValueError:
            mu = float("nan")
        if not 0 < mu < 100:
            raise FluoroRegError(f"implant material {text!r}: mu must be a positive attenuation in 1/mm, e.g. mu=1.1")
        return text, mu
    aliases = {"cocr": "cobalt_chrome", "cocrmo": "cobalt_chrome", "ti": "titanium_alloy", "ti6al4v": "titanium_alloy",
               "pe": "polyethylene", "uhmwpe": "polyethylene"}
    name = aliases.get(text.lower(), text.lower())
    if name not in MATERIALS:
        raise FluoroRegError(f"unknown implant material {text!r}; use {MATERIAL_HINT}")
    return name, float(linear_attenuation_per_mm(name, energy_kev))


def implant_body(path, name: str | None = None, material: str = "cobalt_chrome", scale: float = 1.0,
                 repair: bool = False) -> ImplantBody:
    """An :class:`ImplantBody` from a mesh file (see :func:`.mesh.load_mesh`) and a material."""
    from .mesh import load_mesh

    mesh = load_mesh(path, name=name, scale=scale, repair=repair)
    material_name, mu = material_mu(material)
    return ImplantBody(mesh, mu, mesh.name, material_name)
