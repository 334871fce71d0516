"""Simulated fluoroscopy frames with exact ground truth, and the folder ``fluororeg simulate`` writes.

A frame is made by physics the registration does not use: the CT's materials (``physics.py``)
projected by the *exact* renderer (every moving part at its own pose), a polyenergetic beam, then
the detector chain (``detector.py``). Realism presets:

- ``off``: monoenergetic, the registration's own linear HU model, no detector effect, output
  ``-log(I/I0)``: equal to the exact DRR (the tests use it to check the chain);
- ``low`` / ``medium`` / ``high``: material decomposition, a 65-70 kVp tungsten spectrum, scatter,
  focal-spot and detector blur, quantum and electronic noise, heel effect, image-intensifier
  pincushion distortion and vignetting, circular collimation, gamma, 12- or 8-bit output, and a
  calibration error between the simulated C-arm and the nominal calibration handed on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch

from ..errors import FluoroRegError
from ..geometry import Camera
from ..render import project_label, render
from ..limits import check_allocation
from ..volume import MU_WATER_PER_MM, ImageVolume, RenderVolume, bone_volumes
from .clutter import solid_integrals
from .detector import DetectorModel, detect, distort_image
from .physics import MATERIAL_ORDER, decompose, mono_mu, transmission
from .scene import Part, split_parts
from .spectrum import Spectrum, monoenergetic, tube_spectrum


IMPLANT_SUPERSAMPLE = 3  # rays per pixel side through an implant component (the pixel's area, not its centre)


@dataclass(frozen=True)
class Realism:
    """Everything that makes a frame realistic, with physical parameters."""

    name: str
    polyenergetic: bool
    kvp: float = 70.0
    filtration_mm_al: float = 3.0
    detector: DetectorModel = field(default_factory=DetectorModel)
    sdd_error_mm: float = 0.0  # std of the true sdd's error against the nominal calibration
    principal_point_error_px: float = 0.0  # std of the true principal point's error (each axis)


PRESETS = {
    "off": Realism("off", polyenergetic=False, detector=DetectorModel(
        photons_per_pixel=None, output="log", window=None, bits=None)),
    "low": Realism("low", polyenergetic=True, kvp=70.0, detector=DetectorModel(
        photons_per_pixel=8000.0, electronic_noise=2.0, focal_spot_mm=0.3, detector_blur_px=0.5,
        scatter_to_primary=0.2, heel=0.06, distortion_k=0.01, vignetting=0.1, collimation_radius=0.98,
        gamma=0.6, bits=12), sdd_error_mm=2.0, principal_point_error_px=1.0),
    "medium": Realism("medium", polyenergetic=True, kvp=68.0, detector=DetectorModel(
        photons_per_pixel=2000.0, electronic_noise=5.0, focal_spot_mm=0.6, detector_blur_px=0.8,
        scatter_to_primary=0.5, heel=0.12, distortion_k=0.03, vignetting=0.2, collimation_radius=0.95,
        gamma=0.5, bits=12), sdd_error_mm=5.0, principal_point_error_px=2.0),
    "high": Realism("high", polyenergetic=True, kvp=65.0, filtration_mm_al=3.5, detector=DetectorModel(
        photons_per_pixel=500.0, electronic_noise=8.0, focal_spot_mm=0.6, detector_blur_px=1.2,
        scatter_to_primary=0.8, heel=0.18, distortion_k=0.05, vignetting=0.3, collimation_radius=0.92,
        gamma=0.45, bits=8), sdd_error_mm=10.0, principal_point_error_px=4.0),
}


def get_realism(name: str) -> Realism:
    try:
        return PRESETS[name]
    except KeyError:
        raise FluoroRegError(f"unknown realism '{name}'; choose one of {', '.join(PRESETS)}") from None


def perturbed_camera(camera: Camera, sdd_error_mm: float, principal_point_error_px: float,
                     generator: torch.Generator) -> Camera:
    """``camera`` with its sdd moved by N(0, sdd_error_mm) and each principal-point coordinate by
    N(0, principal_point_error_px) (three normal draws from ``generator``, whatever the errors)."""
    e = torch.randn(3, generator=generator, dtype=torch.float64).tolist()
    return replace(camera, sdd_mm=camera.sdd_mm + sdd_error_mm * e[0],
                   u0=camera.u0 + principal_point_error_px * e[1], v0=camera.v0 + principal_point_error_px * e[2])


class FrameSimulator:
    """Holds the CT cut into moving parts (materials per voxel) and makes frames at given poses.

    Args:
        ct, labels: the CT (HU) and its labelmap on the same grid.
        names: label names -> ids.
        realism: a :class:`Realism` (or a preset name).
        interpolation: the exact renderer's voxel model: "nearest" (Siddon, voxels as boxes; the
            default, a different discretisation from the registration's trilinear one) or "linear".
        render_factor: line integrals are computed on a detector grid this many times coarser and
            resampled (bilinear) to the frame; "auto" picks the largest factor whose pixels, seen at
            the object (0.7 x sdd), stay under 1/1.4 of the CT's smallest voxel, so nothing the CT
            resolves is lost. 1 renders every pixel.
        renderer: "exact" (the default: the exact traversal above) or "fast" (the registration's
            trilinear renderer, one material channel at a time, far faster: for training data,
            where many frames matter more than an independent discretisation).
        implants: {component: (ImplantMesh in the CT's frame, bone it is fixed to, material)}: each
            drawn at its bone's pose with exact path lengths, in a material channel of its own
            (cobalt-chrome and titanium alloy saturate the detector, polyethylene barely shows).
    """

    def __init__(self, ct: ImageVolume, labels: ImageVolume, names: dict[str, int], realism="medium",
                 interpolation: str = "nearest", mu_water: float = MU_WATER_PER_MM, render_factor="auto",
                 renderer: str = "exact", implants: dict | None = None):
        if renderer not in ("exact", "fast"):
            raise FluoroRegError(f"unknown simulator renderer '{renderer}'; choose exact or fast")
        self.realism = get_realism(realism) if isinstance(realism, str) else realism
        self.renderer = renderer
        self.interpolation = interpolation
        self.render_factor = render_factor
        self.voxel_mm = float(min(ct.spacing))
        if self.realism.polyenergetic:
            check_allocation(ct.array.size * 4 * (len(MATERIAL_ORDER) + 2), f"the material channels of CT {ct.path}",
                             "crop or downsample the CT")
            self.materials = MATERIAL_ORDER
            channels = decompose(ct.array)
            self.spectrum: Spectrum = tube_spectrum(self.realism.kvp, self.realism.filtration_mm_al)
        else:
            self.materials = ("mu",)
            channels = {"mu": mono_mu(ct.array, mu_water)}
            self.spectrum = monoenergetic(70.0)
        self.implants = dict(implants or {})
        unknown = [b for _, b, _ in self.implants.values() if b not in names]
        if unknown:
            raise FluoroRegError(f"implant fixed to {', '.join(unknown)}, which the label map does not name")
        if self.realism.polyenergetic:
            self.materials = self.materials + tuple(dict.fromkeys(m for _, _, m in self.implants.values()))
        self.parts: list[Part] = split_parts(ct, labels, names, channels)
        self.bones = bone_volumes(ct, labels, names, [p.bone for p in self.parts])
        self._spectra = {(self.realism.kvp, self.realism.filtration_mm_al): self.spectrum}
        self._channels = None
        if renderer == "fast":
            self._channels = [_fast_channels(p, self.materials) for p in self.parts]

    def true_camera(self, nominal: Camera, generator: torch.Generator) -> Camera:
        """The C-arm actually simulated: the nominal calibration with the preset's errors drawn."""
        return perturbed_camera(nominal, self.realism.sdd_error_mm, self.realism.principal_point_error_px, generator)

    def frame(self, camera: Camera, poses: dict[str, torch.Tensor], generator: torch.Generator,
              realism: Realism | None = None, clutter=None) -> dict:
        """One frame at ``poses`` ({bone: (4, 4) camera_from_volume}) seen by ``camera``.

        Returns {"image": (H, W) float (quantised levels, or -log(I/I0) when realism is off),
        "levels": max level or None, "transmission": (H, W) noiseless primary I/I0,
        "masks": {bone: (H, W) bool}, "thickness": {bone: (H, W) mm through the bone}}; masks and
        image share the detector's distortion. ``realism``: another beam and detector for this
        frame (the material model, polyenergetic or not, stays the simulator's own); ``clutter``: a
        :class:`~.clutter.ClutterScene` in the beam (see :meth:`line_integrals`).
        """
        return self.detect(camera, self.line_integrals(camera, poses, clutter), generator, realism)

    def line_integrals(self, camera: Camera, poses: dict[str, torch.Tensor], clutter=None) -> dict:
        """The costly, realism-free part of a frame: {"areal": (1, M, H, W) line integrals of each
        material (or of mu), "thickness": {bone: (H, W) mm}}, both at the camera's full size.
        ``clutter``: a :class:`~.clutter.ClutterScene` added to the areal (not to the thickness:
        masks stay the registered leg's); its other leg on a grid twice as coarse."""
        missing = [p.bone for p in self.parts if p.bone not in poses]
        if missing:
            raise FluoroRegError(f"no pose for {', '.join(missing)}; the simulator moves every labelled bone")
        if clutter is not None and clutter.other_leg:
            missing = [p.bone for p in self.parts if p.bone not in clutter.other_leg]
            if missing:
                raise FluoroRegError(f"the other leg has no pose for {', '.join(missing)}; draw it with "
                                     "sample_clutter(..., bones=[p.bone for p in sim.parts])")
        factor = self._factor(camera)
        coarse = camera if factor == 1 else camera.resized(max(1, round(camera.rows / factor)),
                                                              max(1, round(camera.cols / factor)))

        def resample(img, shape):  # (B, C, h, w) -> (B, C, *shape)
            if tuple(img.shape[-2:]) == tuple(shape):
                return img
            return torch.nn.functional.interpolate(img, size=shape, mode="bilinear", align_corners=False)

        fast = self.renderer == "fast"
        with torch.no_grad():
            areal = self._areal(coarse, poses)
            if clutter is not None and clutter.other_leg:
                half = coarse.resized(max(1, coarse.rows // 2), max(1, coarse.cols // 2))
                areal = areal + resample(self._areal(half, clutter.other_leg), coarse.shape).to(areal.dtype)
            if areal.shape[1] < len(self.materials):  # the implants' channels (the CT holds none of their materials)
                areal = torch.nn.functional.pad(areal, (0, 0, 0, 0, 0, len(self.materials) - areal.shape[1]))
            areal = resample(areal, camera.shape)
            if clutter is not None and clutter.solids:
                areal = areal + solid_integrals(clutter.solids, camera, self.materials).to(areal.dtype)
            thickness = {b: resample(project_label(v, coarse, poses[b], "fast") if fast else
                                     project_label(v, coarse, poses[b], "exact", interpolation="nearest"),
                                     camera.shape)[0, 0].double()
                         for b, v in self.bones.items()}
            for name, path in self._implant_paths(camera, poses).items():
                areal = areal + self._implant_areal(name, path).to(areal.dtype)
                thickness[name] = path
        return {"areal": areal, "thickness": thickness}

    def _implant_paths(self, camera: Camera, poses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{component: (H, W) mm through it} at its bone's pose, exact for every ray. A detector's pixel
        integrates the transmitted intensity over its area, so with realism each pixel's path is the
        one that transmits the mean of ``IMPLANT_SUPERSAMPLE``^2 rays spread over it, at the material's
        attenuation at 60 keV: ``-log(mean(exp(-mu L_i))) / mu`` (a metal edge across half a pixel
        leaves it half bright; the mean path would darken it nearly fully and widen the silhouette);
        without realism one ray through its centre (analytic checks)."""
        from ..implant.body import material_mu
        from ..render.mesh import render_mesh

        s = 1 if self.realism.name == "off" else IMPLANT_SUPERSAMPLE
        fine = camera.resized(camera.rows * s, camera.cols * s)
        paths = {}
        for name, (mesh, bone, material) in self.implants.items():
            path = render_mesh(mesh, fine, poses[bone].to(torch.float64))
            if s > 1:
                mu = material_mu(material)[1]
                path = -torch.log(torch.nn.functional.avg_pool2d(torch.exp(-mu * path), s)) / mu
            paths[name] = path[0, 0]
        return paths

    def _implant_areal(self, name: str, path: torch.Tensor) -> torch.Tensor:
        """(1, M, H, W): the component's areal density (g/cm^3 x mm) in its material's channel, or
        its mu (70 keV) x path without a polyenergetic model."""
        from .materials import density, linear_attenuation_per_mm

        material = self.implants[name][2]
        out = torch.zeros(1, len(self.materials), *path.shape, dtype=torch.float64)
        if self.realism.polyenergetic:
            out[0, self.materials.index(material)] = density(material) * path
        else:
            out[0, 0] = float(linear_attenuation_per_mm(material, 70.0)) * path
        return out

    def _areal(self, camera: Camera, poses: dict[str, torch.Tensor]) -> torch.Tensor:
        """(1, M, H, W) line integrals of every part at its bone's pose, summed."""
        areal = None
        for n, part in enumerate(self.parts):
            pose = poses[part.bone]
            if self.renderer != "fast":
                img = render(part.volume, camera, pose, "exact", interpolation=self.interpolation)
            else:
                img = torch.zeros(1, len(self.materials), camera.rows, camera.cols, dtype=part.volume.mu.dtype)
                for m, vol in self._channels[n]:
                    img[:, m:m + 1] = render(vol, camera, pose, "fast").to(img.dtype)
            areal = img if areal is None else areal + img
        return areal

    def detect(self, camera: Camera, integrals: dict, generator: torch.Generator,
               realism: Realism | None = None) -> dict:
        """The beam and the detector applied to :meth:`line_integrals`; returns as :meth:`frame`."""
        realism = realism or self.realism
        with torch.no_grad():
            areal = integrals["areal"]
            if self.realism.polyenergetic:
                primary = transmission(areal.double(), self.materials, self._spectrum(realism))[0]
            else:
                primary = torch.exp(-areal[0, 0].double())
            exposure, anatomy = self._exposure(primary)
            out = detect(exposure, (camera.row_spacing_mm, camera.col_spacing_mm), (camera.u0, camera.v0),
                         realism.detector, generator, window_mask=anatomy)
        thickness = integrals["thickness"]
        k = realism.detector.distortion_k
        if k:
            thickness = {b: distort_image(t, k, (camera.u0, camera.v0)) for b, t in thickness.items()}
        field_mask = out["field"]
        masks = {b: (t > 0.5) & field_mask for b, t in thickness.items()}
        return {"image": out["image"], "levels": out["levels"], "transmission": primary, "masks": masks,
                "thickness": thickness}

    def _spectrum(self, realism: Realism) -> Spectrum:
        key = (realism.kvp, realism.filtration_mm_al)
        if key not in self._spectra:
            self._spectra[key] = tube_spectrum(*key)
        return self._spectra[key]

    def _exposure(self, primary: torch.Tensor):
        """Automatic brightness control: scale I/I0 so the anatomy's median pixel receives the preset
        quanta, and window on the anatomy (air burns out). Realism "off" keeps I/I0 as it is."""
        if not self.realism.polyenergetic:
            return primary, None
        anatomy = primary < 0.7 * primary.max()
        if not anatomy.any():
            return primary, None
        return primary / primary[anatomy].median(), anatomy

    def _factor(self, camera: Camera) -> int:
        if self.render_factor != "auto":
            return max(1, int(self.render_factor))
        pixel_at_object = 0.7 * min(camera.row_spacing_mm, camera.col_spacing_mm)
        return max(1, int(self.voxel_mm / (1.4 * pixel_at_object)))


def _fast_channels(part: Part, materials: tuple[str, ...]) -> list[tuple[int, RenderVolume]]:
    """The fast renderer's share of a part: (channel, single-channel volume) per material present,
    each cropped to where it is non-zero; soft tissue on a grid twice as coarse (block means keep
    its line integrals; it has no edges a 2 mm grid loses) and air left out (under 0.5 % of a knee's
    attenuation). About 10x cheaper than every channel on the full grid."""
    out = []
    for m, name in enumerate(materials):
        data = part.volume.mu[m] if part.volume.mu.dim() == 4 else part.volume.mu
        if name == "air" or not bool(data.any()):
            continue
        nz = torch.nonzero(data)
        lo = (nz.min(0).values - 1).clamp(min=0)
        hi = nz.max(0).values + 2
        crop = torch.nn.functional.pad(data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], [1, 1] * 3).contiguous()
        shift = torch.eye(4, dtype=torch.float64)
        shift[:3, 3] = (lo.flip(0) - 1).double()  # index (i, j, k) of the crop -> of the part
        vol = RenderVolume(crop, part.volume.volume_from_index @ shift, part.bone)
        out.append((m, vol if name in ("cortical_bone", "titanium") else vol.coarsened(2)))
    return out


def occlusion_masks(thickness: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> dict:
    """Where bones overlap: per bone the pixels it alone covers (``visible``), and a label image of
    the bone with the largest thickness at each pixel (0 = none; ids in the order of ``thickness``)."""
    names = list(thickness)
    stack = torch.stack([thickness[b] * masks[b] for b in names])
    count = torch.stack([masks[b] for b in names]).sum(0)
    dominant = torch.where(stack.amax(0) > 0, stack.argmax(0) + 1, torch.zeros_like(count))
    visible = {b: masks[b] & (count == 1) for b in names}
    return {"visible": visible, "dominant": dominant, "ids": {b: i + 1 for i, b in enumerate(names)}}


def realism_description(realism: Realism, spectrum: Spectrum) -> dict:
    """A JSON-able record of the physics and detector parameters used."""
    d = asdict(realism)
    d["spectrum"] = {"kvp": spectrum.kvp, "filtration_mm_al": spectrum.filtration_mm_al,
                     "mean_energy_kev": round(spectrum.mean_energy_kev, 2)}
    return d
