"""An implant component as registration draws it: a closed mesh of one material, beside the bones.

:class:`ImplantBody` offers what the registration pipeline asks of a bone's
:class:`~..volume.RenderVolume` (a name, a centre, points for errors, a device and dtype, its
drawing at a pyramid level, its silhouette), so ``render``, ``project_label`` and every
registration stage take it unchanged. It draws itself two ways, as ``render``'s method asks:

- ``exact``: the ray-mesh renderer (:mod:`..render.mesh`), exact path lengths; its silhouette is a
  step at the pixel centres, so the pose gets no gradient from where the edge falls.
- ``fast`` (registration's): the volume renderer on the mesh's anti-aliased occupancy grid
  (:mod:`.voxelize`), each sample sharpened by :data:`OCCUPANCY_RAMP`: the silhouette moves
  smoothly with the pose, and it carries the gradients.

A frame shows metal by the share of the beam it stops (saturated inside, scatter-filled), not by its
thickness: :meth:`ImplantBody.appearance` turns a drawn line integral into that opacity,
``1 - exp(-mu L)``, before the similarity compares it with the frame.

Why the ramp: a sample's occupancy is the solid's indicator blurred over about a voxel, and a ray
grazing the surface outside the solid crosses that blur for millimetres (a chord of
``2 sqrt(2 R d)``), so the plain occupancy's opacity draws the silhouette too large: measured on a
simulated cobalt-chrome femoral component, 0.5 mm voxels, the loss along the beam was least 4.5-5 mm
too far from the source. Counting only samples past the surface (occupancy over 0.41, whole from
0.76) removes the grazing blur; centred on 0.5 it left +1.2 to +1.4 mm, starting at 0.5 -1.0 to
-0.6 mm (an eroded silhouette), this ramp +0.2 to +0.4 mm (two frames, finest level, truth = 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import torch

from ..errors import FluoroRegError
from .mesh import ImplantMesh

MATERIAL_HINT = "cobalt_chrome, titanium_alloy, polyethylene, or mu=<1/mm>"
OCCUPANCY_RAMP = (0.4125, 0.7625)  # a sample's occupancy drawn as 0 below, 1 above, linear between


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
    voxel_mm: float = 0.5  # the occupancy grid's spacing (registration's drawing)
    grid: object = field(default=None, compare=False, repr=False)  # its occupancy RenderVolume (built when first drawn)
    grid_ramp: tuple | None = OCCUPANCY_RAMP  # the ramp its samples take; None: the grid holds densities already
    _levels: dict = field(default_factory=dict, compare=False, repr=False)  # pixel size -> coarser body
    level_pixel_mm: float | None = None  # the pyramid level's pixel at the component (None: full detail)
    follows: str | None = None  # a registered body whose pose it takes (not registered itself), or None

    @cached_property
    def centroid(self) -> torch.Tensor:
        return self.mesh.centroid

    @cached_property
    def points(self) -> torch.Tensor:
        v = self.mesh.vertices
        step = max(1, len(v) // 2000)
        return v[::step]

    @property
    def surface(self) -> torch.Tensor:
        return self.points

    @property
    def device(self) -> torch.device:
        return self.mesh.vertices.device

    label_mask = None  # its silhouette is drawn exactly (silhouette below), not from a label grid

    def to(self, device=None, dtype=None) -> "ImplantBody":
        mesh = ImplantMesh(self.mesh.vertices.to(device=device), self.mesh.faces.to(device=device), self.mesh.name)
        grid = None if self.grid is None else self.grid.to(device=device, dtype=dtype)
        return replace(self, mesh=mesh, dtype=dtype or self.dtype, grid=grid, _levels={})

    def occupancy(self):
        """The mesh's occupancy grid (:func:`.voxelize.occupancy_grid` at ``voxel_mm``) as a
        :class:`~..volume.RenderVolume` whose values are inside fractions (built once)."""
        if self.grid is None:
            from ..volume import RenderVolume
            from .voxelize import occupancy_grid

            occ, volume_from_index = occupancy_grid(self.mesh, self.voxel_mm)
            grid = RenderVolume(occ.to(device=self.device, dtype=self.dtype), volume_from_index.to(self.device), self.name,
                                self.centroid, self.points, self.points, None)
            object.__setattr__(self, "grid", grid)  # a cache: the body's value is its mesh and material
        return self.grid

    def appearance(self, line_integral: torch.Tensor) -> torch.Tensor:
        """What a frame shows of the drawn ``line_integral`` (mu L, any shape): the share of the beam
        the component stops, ``1 - exp(-mu L)`` (metal saturates: its inside carries no thickness)."""
        return -torch.expm1(-line_integral)

    def for_pixel_mm(self, pixel_mm: float) -> "ImplantBody":
        """As a pyramid level whose pixels span ``pixel_mm`` at the component draws it: the occupancy
        grid coarsened to the pixel (what registration draws), and for an exact drawing
        (:attr:`exact_mesh`) the surface simplified to the pixel, made only if one is asked for."""
        key = round(float(pixel_mm), 3)
        if key not in self._levels:
            factor = max(1, int(key / self.voxel_mm))
            if factor == 1:
                grid, ramp = self.occupancy(), self.grid_ramp
            else:  # sharpen first, then average: a thin plate's block means would fall under the ramp and vanish
                grid, ramp = self._densities().coarsened(factor), None
            self._levels[key] = replace(self, grid=grid, grid_ramp=ramp, _levels={}, level_pixel_mm=key)
        return self._levels[key]

    @cached_property
    def exact_mesh(self) -> ImplantMesh:
        """The surface ``draw(method="exact")`` traces: the mesh, or at a coarse level the mesh
        simplified to faces about half a pixel across (a CAD or marching-cubes mesh of 10^5 faces
        costs a batch of poses 10-20x more there and shows it nothing more), kept only while it is
        still one closed solid; the full mesh when that saves little. Made when first drawn (1.3 s for
        a 155k-face femoral component; registration draws its levels from the grid)."""
        return self.mesh if self.level_pixel_mm is None else self._simplified(self.level_pixel_mm)

    def _densities(self):
        """The occupancy grid with :data:`OCCUPANCY_RAMP` applied voxel by voxel (what coarse levels average)."""
        from ..render.fast import sharpened
        from ..volume import RenderVolume

        occ = self.occupancy()
        return RenderVolume(sharpened(occ.mu, OCCUPANCY_RAMP), occ.volume_from_index, self.name,
                            occ.centroid, occ.points, occ.surface, None)

    def _simplified(self, pixel_mm: float) -> ImplantMesh:
        area = float(_face_areas(self.mesh).sum())
        faces = int(area / (0.5 * pixel_mm) ** 2 * 2)  # two triangles per half-pixel square
        if faces > 0.5 * len(self.mesh.faces):
            return self.mesh
        try:
            import trimesh

            from .mesh import mesh_problems

            full = trimesh.Trimesh(self.mesh.vertices.cpu().numpy(), self.mesh.faces.cpu().numpy(), process=False)
            for target in (faces, 2 * faces, 4 * faces):
                if target > 0.5 * len(self.mesh.faces):
                    break
                coarse = full.simplify_quadric_decimation(face_count=max(target, 500))
                if not mesh_problems(coarse):
                    return ImplantMesh(torch.as_tensor(coarse.vertices, dtype=torch.float64).to(self.device),
                                       torch.as_tensor(coarse.faces, dtype=torch.int64).to(self.device), self.mesh.name)
        except ImportError:  # fast_simplification (the decimation backend) missing: draw the full mesh
            pass
        return self.mesh

    def draw(self, camera, poses: torch.Tensor, region=None, method: str = "exact") -> torch.Tensor:
        """(B, 1, rows, cols) line integrals mu L at ``poses`` (B, 4, 4) or (4, 4): ``exact`` through
        the mesh (:func:`~..render.mesh.render_mesh`), ``fast`` through the sharpened occupancy grid."""
        if method == "fast":
            from ..render.fast import render_fast

            drawn = render_fast(self.occupancy(), camera, poses, region=region, occupancy_ramp=self.grid_ramp)
            return (self.mu_per_mm * drawn).to(self.dtype)
        from ..render.mesh import render_mesh

        poses = poses.to(torch.float64) if poses.dtype != torch.float64 else poses
        return render_mesh(self.exact_mesh, camera, poses, self.mu_per_mm, region=region).to(self.dtype)

    def silhouette(self, camera, poses: torch.Tensor, region=None) -> torch.Tensor:
        """(B, 1, rows, cols) exact path length (mm) through the component: > 0 where it projects."""
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

    return component_body(load_mesh(path, name=name, scale=scale, repair=repair), material)


def component_body(mesh: ImplantMesh, material: str = "cobalt_chrome") -> ImplantBody:
    """An :class:`ImplantBody` of a checked mesh (named by it) and a material (see :func:`material_mu`)."""
    material_name, mu = material_mu(material)
    return ImplantBody(mesh, mu, mesh.name, material_name)


@dataclass(frozen=True)
class ImplantSpec:
    """A component as the command line names it (``NAME=MESH[,material=M][,mu=V][,scale=S][,repair]
    [,follows=OTHER]``): ``follows`` names a registered component whose pose it takes (its mesh in
    that component's mesh frame, e.g. a polyethylene insert locked in its tray)."""

    name: str
    path: str
    material: str = "cobalt_chrome"
    scale: float = 1.0
    repair: bool = False
    follows: str | None = None


def parse_implant_spec(spec: str) -> ImplantSpec:
    """The :class:`ImplantSpec` of a command line's ``--implant`` value (the mesh is not read)."""
    head, *options = [part.strip() for part in str(spec).split(",")]
    name, _, path = head.partition("=")
    if not name.strip() or not path.strip():
        raise FluoroRegError(f"--implant {spec!r}: give NAME=MESH, e.g. femoral=component.stl,material=cobalt_chrome")
    settings = {"material": "cobalt_chrome", "scale": "1", "repair": False, "follows": None}
    for option in options:
        key, eq, value = option.partition("=")
        if key == "repair" and not eq:
            settings["repair"] = True
        elif key == "mu" and eq:
            settings["material"] = option
        elif key in ("material", "scale", "follows") and eq and value.strip():
            settings[key] = value.strip()
        else:
            raise FluoroRegError(f"--implant {spec!r}: unknown option {option!r}; use material=, scale=, follows= "
                                 "or repair")
    try:
        scale = float(settings["scale"])
    except ValueError:
        raise FluoroRegError(f"--implant {spec!r}: scale {settings['scale']!r} is not a number") from None
    if settings["follows"] == name.strip():
        raise FluoroRegError(f"--implant {spec!r}: a component cannot follow itself; name another, e.g. follows=tray")
    return ImplantSpec(name.strip(), path.strip(), settings["material"], scale, settings["repair"], settings["follows"])


def implant_from_spec(spec: str) -> tuple[str, ImplantBody]:
    """(name, body) from the command line's ``--implant`` value (:func:`parse_implant_spec`)
    (``fluororeg register --implant``, ``fluororeg track --implant``)."""
    s = parse_implant_spec(spec)
    body = implant_body(s.path, s.name, s.material, s.scale, s.repair)
    return s.name, replace(body, follows=s.follows) if s.follows else body
