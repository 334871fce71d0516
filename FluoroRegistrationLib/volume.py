"""CT volumes and labelmaps in the LPS volume frame, and the per-bone crops the renderer draws.

Arrays are stored as ITK/SimpleITK give them: shape (Z, Y, X), indexed ``[k, j, i]``; voxel
``(i, j, k)`` has its centre at ``volume_from_index @ (i, j, k, 1)`` in LPS millimetres.
SimpleITK reads NIfTI, NRRD, MetaImage and DICOM into LPS (a NIfTI RAS affine has its first two
rows negated), as docs/CONVENTIONS.md requires.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import FluoroRegError
from .limits import SANE_SPACING_MM, check_allocation, check_spacing, memory_budget  # noqa: F401 (re-exported)
from .volume_files import non_finite, read_sitk

MU_WATER_PER_MM = 0.02  # linear attenuation of water at fluoroscopy energies (about 60 keV), 1/mm
SOFT_TISSUE_HU = 50.0  # the tissue around a bone (muscle, tendon), subtracted from the bone's registration DRR


@dataclass
class ImageVolume:
    """A scalar volume on a grid.

    Attributes:
        array: (Z, Y, X) numpy array, ``[k, j, i]``.
        volume_from_index: (4, 4) float64 numpy affine, index (i, j, k) -> LPS mm.
        path: where it was read from (for messages), or a description.
    """

    array: np.ndarray
    volume_from_index: np.ndarray
    path: str = "<memory>"

    @property
    def spacing(self) -> np.ndarray:
        """(sx, sy, sz) voxel size in mm."""
        return np.linalg.norm(self.volume_from_index[:3, :3], axis=0)

    @classmethod
    def from_spacing(cls, array, spacing, origin=(0.0, 0.0, 0.0), direction=None, path="<memory>"):
        """Build from spacing (sx, sy, sz), origin (voxel 0's centre, LPS) and a 3x3 direction matrix."""
        direction = np.eye(3) if direction is None else np.asarray(direction, float).reshape(3, 3)
        affine = np.eye(4)
        affine[:3, :3] = direction * np.asarray(spacing, float)[None, :]
        affine[:3, 3] = origin
        return cls(np.asarray(array), affine, path)

    def same_grid(self, other: "ImageVolume", tol: float = 1e-3) -> bool:
        return self.array.shape == other.array.shape and np.allclose(
            self.volume_from_index, other.volume_from_index, atol=tol)


# --------------------------------------------------------------------------------------- reading


def read_image(path, what: str = "volume") -> ImageVolume:
    """Read a volume file (NIfTI, NRRD, MetaImage) or a DICOM series folder into the LPS frame.

    Raises FluoroRegError (one line) for a missing, empty, truncated or damaged file, a DICOM series
    with a missing, duplicate or unreadable slice, NaN / Inf in a NIfTI, a volume that is not 3D
    scalar, a voxel spacing outside :data:`SANE_SPACING_MM`, or one over the memory budget.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise FluoroRegError(f"{what} not found: {path}; check the path")
    image = read_sitk(path, what)
    check_spacing(image.GetSpacing(), f"{what} {path}")
    spacing, origin = image.GetSpacing(), image.GetOrigin()
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
    array = sitk.GetArrayFromImage(image)
    del image  # a large CT is held once, not twice, from here on
    return check_not_empty(ImageVolume.from_spacing(array, spacing, origin, direction, str(path)), what)


def check_not_empty(vol: ImageVolume, what: str = "volume") -> ImageVolume:
    """Raise if the volume has no voxels."""
    if vol.array.size == 0:
        raise FluoroRegError(f"{what} {vol.path} is empty (no voxels); pass a volume with data")
    return vol


def write_image(vol: ImageVolume, path) -> None:
    """Write a volume with its LPS geometry (format from the suffix)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(vol.array)
    spacing = vol.spacing
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in vol.volume_from_index[:3, 3]))
    image.SetDirection(tuple(float(d) for d in (vol.volume_from_index[:3, :3] / spacing[None, :]).ravel()))
    sitk.WriteImage(image, str(path), useCompression=True)


def load_ct(path) -> ImageVolume:
    """Read a CT in Hounsfield units; rejects empty, constant or non-finite volumes."""
    ct = read_image(path, "CT")
    ct.array = ct.array.astype(np.float32, copy=False)
    if not np.isfinite(ct.array).all():
        raise non_finite(ct.path, "CT")
    if float(ct.array.max()) == float(ct.array.min()):
        raise FluoroRegError(f"CT {ct.path} is constant ({float(ct.array.min())} everywhere); pass a real CT volume")
    return ct


def load_labels(path, ct: ImageVolume) -> ImageVolume:
    """Read a labelmap: integer ids, some of them non-zero, on the CT's grid."""
    labels = read_image(path, "labelmap")
    return labels_on_ct(labels, ct, labels.path)


def labels_on_ct(labels: ImageVolume, ct: ImageVolume, name: str, how: str = "") -> ImageVolume:
    """A labelmap checked against its CT: on ``ct``'s grid, integer ids, some non-zero
    (:func:`check_label_values`); returns a new ImageVolume of int16 (or int32) ids. ``name`` (a file or node)
    names it in the error, ``how`` says how to resample (optional)."""
    if not labels.same_grid(ct):
        raise FluoroRegError(
            f"labelmap {name} ({'x'.join(map(str, labels.array.shape[::-1]))} voxels) is not on the CT's grid "
            f"({'x'.join(map(str, ct.array.shape[::-1]))}); resample it onto the CT first{how}"
        )
    return ImageVolume(check_label_values(labels.array, name), labels.volume_from_index, labels.path)


def check_label_values(arr: np.ndarray, source: str = "<memory>") -> np.ndarray:
    """A labelmap's (Z, Y, X) array as int16 when its ids fit (a 512 x 512 x 400 labelmap is then
    210 MB, not 420), else int32; raises if it holds non-integer values or no label."""
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            raise FluoroRegError(f"labelmap {source} holds non-integer values (e.g. {arr[bad].flat[0]:.6g}); "
                                 "pass integer label ids")
    if not arr.any():
        raise FluoroRegError(f"labelmap {source} holds no labels (every voxel is 0); pass the bones' segmentation")
    small = arr.dtype in (np.int8, np.uint8, np.int16) or (arr.min() >= -32768 and arr.max() <= 32767)
    return arr.astype(np.int16 if small else np.int32, copy=False)


def default_label_names(labels_path) -> Path:
    """The label names file of a labelmap: ``NAME.json`` beside ``NAME.nii.gz`` (or .nrrd, .mha),
    else ``labels.json`` in its folder."""
    labels_path = Path(labels_path)
    stem = str(labels_path)
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    for candidate in (Path(stem + ".json"), labels_path.parent / "labels.json"):
        if candidate.is_file():
            return candidate
    raise FluoroRegError(f"no label names beside {labels_path}: pass --label-names labels.json (or femur=1,tibia=2)")


def read_label_names(spec) -> dict[str, int]:
    """Label names from a JSON file ``{"femur": 1, ...}``, a dict, or ``"femur=1,tibia=2"``; every id
    a whole number of at least 1."""
    if isinstance(spec, dict):
        names = spec
    elif isinstance(spec, (str, Path)) and Path(spec).suffix.lower() == ".json":
        path = Path(spec)
        if not path.is_file():
            raise FluoroRegError(f"label names file not found: {path}; pass a JSON file like {{\"femur\": 1}}")
        try:
            names = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise FluoroRegError(f"label names {path} is not valid JSON ({getattr(err, 'msg', err)})") from None
        if not isinstance(names, dict):
            raise FluoroRegError(f"label names {path} must hold a JSON object like {{\"femur\": 1, \"tibia\": 2}}")
    else:
        names = {}
        for item in str(spec).split(","):
            if "=" not in item:
                raise FluoroRegError(f"label names '{spec}' must look like femur=1,tibia=2 or be a .json file")
            key, value = item.split("=", 1)
            names[key.strip()] = value.strip()
    return {str(k): _label_id(str(k), v) for k, v in names.items()}


def _label_id(name: str, value) -> int:
    """One label id: a whole number >= 1 (``2``, ``2.0`` and ``"2"`` are; ``1.7``, ``true``, ``0`` are not)."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) \
            or number != int(number):
        raise FluoroRegError(f"label names must map names to integer ids, e.g. {{\"femur\": 1}}; "
                             f"{name} has {value!r}")
    if number < 1:
        raise FluoroRegError(f"label names: {name} has id {int(number)}, but 0 is the background and ids are "
                             "1 or more; use the bone's label id")
    return int(number)


def hu_to_mu(hu, mu_water: float = MU_WATER_PER_MM):
    """CT numbers to linear attenuation (1/mm): mu = mu_water (1 + HU / 1000), clamped at 0."""
    if isinstance(hu, torch.Tensor):
        return (mu_water * (1 + hu / 1000.0)).clamp_min(0)
    return np.clip(mu_water * (1 + np.asarray(hu, np.float32) / 1000.0), 0, None)


# --------------------------------------------------------------------------------------- bones
@dataclass
class RenderVolume:
    """An attenuation grid the renderers draw: one bone's crop, or a whole volume.

    Attributes:
        mu: (D, H, W) tensor of linear attenuation (1/mm), ``[k, j, i]``, with a border of zeros at
            least one voxel wide (so trilinear lookups and exact traversal agree at the edges).
        volume_from_index: (4, 4) float64 tensor, this grid's index (i, j, k) -> LPS mm.
        name: bone name (or "volume").
        centroid: (3,) float64 tensor, centre of the bone's voxels in LPS mm.
        points: (N, 3) float64 tensor, a fixed sample of the bone's voxel centres (LPS mm).
        surface: (M, 3) float64 tensor, a fixed sample of the bone's surface voxel centres (LPS mm).
        label_mask: (D, H, W) bool tensor, the bone's voxels on this grid (for its 2D projection).
        beyond: tuple of (2K, 3) float64 tensors, or None: where a bone the CT's field of view cuts
            continues past the CT's edge (per face of the CT it touches, the corners of a prism over
            its cross-section there, LPS mm; :func:`beyond_prisms`). A frame shows that part, the CT
            does not.
        context: RenderVolume or None: the same bone drawn with the CT around it
            (:func:`context_volume`), for registration's ``Context`` choice.
    """

    mu: torch.Tensor
    volume_from_index: torch.Tensor
    name: str = "volume"
    centroid: torch.Tensor | None = None
    points: torch.Tensor | None = None
    surface: torch.Tensor | None = None
    label_mask: torch.Tensor | None = None
    beyond: tuple | None = None
    context: "RenderVolume | None" = None
    _slices: dict = field(default_factory=dict, repr=False)
    _grids: dict = field(default_factory=dict, repr=False)  # memo: coarsened (by factor) and boxed grids

    @property
    def device(self) -> torch.device:
        return self.mu.device

    @property
    def dtype(self) -> torch.dtype:
        return self.mu.dtype

    def for_pixel_mm(self, pixel_mm: float) -> "RenderVolume":
        """As a pyramid level whose pixels span ``pixel_mm`` at the bone draws it: on a grid k times
        coarser when they span k voxels (``Pyramid.coarsen``)."""
        voxel = float(self.volume_from_index[:3, :3].norm(dim=0).min())
        return self.coarsened(max(1, int(pixel_mm / voxel)))

    def to(self, device=None, dtype=None) -> "RenderVolume":
        move = (lambda t: None if t is None else t.to(device=device))
        return RenderVolume(self.mu.to(device=device, dtype=dtype), move(self.volume_from_index), self.name,
                            move(self.centroid), move(self.points), move(self.surface), move(self.label_mask),
                            self.beyond, None if self.context is None else self.context.to(device, dtype))

    def coarsened(self, factor: int) -> "RenderVolume":
        """The same object on a grid ``factor`` times coarser: each new voxel is the mean of a
        ``factor``^3 block (so line integrals are kept), with a fresh one-voxel border of zeros.
        For coarse pyramid levels, whose pixels seen at the object span several voxels: the render
        cost falls by about ``factor``^3. Memoised; ``factor`` 1 returns ``self``.
        """
        if factor <= 1:
            return self
        if factor not in self._grids:
            f = int(factor)
            mu = self.mu if self.mu.dim() == 4 else self.mu[None]
            D, H, W = mu.shape[-3:]
            out = [mu.shape[0]] + [-(-n // f) + 2 for n in (D, H, W)]
            check_allocation(out, f"the {f}x coarser grid of {self.name}", "check the calibration's sdd_mm and "
                             "pixel spacing", mu.element_size())
            # the block sums over the voxels present, divided by f^3: the mean of the zero-padded block,
            # without allocating the padding (which for f beyond the grid would be f^3 voxels)
            kernel = (min(f, D), min(f, H), min(f, W))
            coarse = torch.nn.functional.avg_pool3d(mu[None], kernel, stride=f, ceil_mode=True,
                                                    divisor_override=f ** 3)[0]
            coarse = torch.nn.functional.pad(coarse, [1, 1] * 3)
            # new index n -> old index f * (n - 1) + (f - 1) / 2, on every axis
            old_from_new = torch.eye(4, dtype=torch.float64, device=self.volume_from_index.device)
            old_from_new[:3, :3] *= f
            old_from_new[:3, 3] = (f - 1) / 2 - f
            self._grids[f] = RenderVolume(
                coarse if self.mu.dim() == 4 else coarse[0], self.volume_from_index @ old_from_new, self.name,
                self.centroid, self.points, self.surface, None, self.beyond)
        return self._grids[factor]

    def thick_axes(self, min_ratio: float) -> tuple:
        """(fx, fy, fz): per grid axis (i, j, k), ``round(spacing / finest spacing)`` where that ratio
        is at least ``min_ratio`` (a thick-slice axis), else 1."""
        spacing = self.volume_from_index[:3, :3].norm(dim=0).tolist()
        finest = min(spacing)
        return tuple(max(1, round(s / finest)) if s >= min_ratio * finest else 1 for s in spacing)

    def boxed(self, min_ratio: float) -> "RenderVolume":
        """The same object with each voxel drawn as a box along its thick axes (:meth:`thick_axes`):
        every such voxel split into ``f`` equal sub-voxels along that axis, so trilinear sampling is
        flat across a slice and steps within one sub-voxel at its faces, as an exact ray tracer that
        treats voxels as boxes (Siddon) draws a thick-slice CT. Line integrals through a slice's
        middle are unchanged. Memoised; ``self`` when no axis is thick.

        Shapes: mu (D, H, W) or (C, D, H, W) -> (fz D, fy H, fx W) likewise."""
        factors = self.thick_axes(min_ratio)
        if factors == (1, 1, 1):
            return self
        key = ("box",) + factors
        if key not in self._grids:
            shape = list(self.mu.shape)
            for dim, f in zip((-1, -2, -3), factors):
                shape[dim] *= f
            check_allocation(shape, f"the box-voxel grid of {self.name}", "register without the box voxel model "
                             "(voxel_model: {choice: linear}) or crop the CT", self.mu.element_size())
            mu, label = self.mu, self.label_mask
            # new index n -> old index (n - (f - 1) / 2) / f along each split axis
            old_from_new = torch.eye(4, dtype=torch.float64, device=self.volume_from_index.device)
            for axis, (dim, f) in enumerate(zip((-1, -2, -3), factors)):
                if f > 1:
                    mu = torch.repeat_interleave(mu, f, dim=dim)
                    label = None if label is None else torch.repeat_interleave(label, f, dim=dim)
                    old_from_new[axis, axis] = 1.0 / f
                    old_from_new[axis, 3] = -(f - 1) / (2.0 * f)
            self._grids[key] = RenderVolume(mu, self.volume_from_index @ old_from_new, self.name, self.centroid,
                                             self.points, self.surface, label, self.beyond)
        return self._grids[key]

    def box_corners_index(self) -> torch.Tensor:
        """(8, 3) corners of the grid's extent (voxel faces) in index coordinates."""
        D, H, W = self.mu.shape[-3:]
        lo, hi = -0.5, torch.tensor([W, H, D], dtype=torch.float64) - 0.5
        corners = [[x, y, z] for z in (lo, hi[2]) for y in (lo, hi[1]) for x in (lo, hi[0])]
        return torch.tensor(corners, dtype=torch.float64, device=self.volume_from_index.device)


def _sample_rows(points: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(points) <= n:
        return points
    rng = np.random.default_rng(seed)
    return points[np.sort(rng.choice(len(points), n, replace=False))]


def bone_volume(ct: ImageVolume, labels: ImageVolume, label_id: int, name: str, margin: int = 2,
                n_points: int = 4096, mu_water: float = MU_WATER_PER_MM, dtype=torch.float32,
                dilate: int = 0, background_hu: float | None = None) -> RenderVolume:
    """The crop of one label: attenuation inside the label, zero outside, box plus ``margin`` voxels.

    ``dilate`` grows the rendered region by that many voxels (not into other labels), so the bone's
    partial-volume rim, which a tight segmentation leaves out, is drawn too; the centroid and the
    point samples stay those of the label itself. ``background_hu``: draw the attenuation in excess
    of tissue of that HU, ``max(mu - mu(background_hu), 0)``. In a radiograph the bone sits in soft
    tissue, so its edge is a step of (bone - tissue), not of bone: rendered alone, the crop's border
    would add a false edge one voxel outside the bone, which makes the bone look larger and biases the
    registered depth away from the source (by about 1.5 mm, measured on the registration benchmark).
    Raises FluoroRegError if the label id is absent.
    """
    label = labels.array == label_id
    if not label.any():
        present = sorted(int(v) for v in np.unique(labels.array) if v != 0)
        raise FluoroRegError(
            f"label {name}={label_id} is not in labelmap {labels.path} (ids present: {present}); fix the label names")
    mask = label
    if dilate > 0:
        from scipy import ndimage

        mask = ndimage.binary_dilation(label, iterations=dilate) & ((labels.array == 0) | label)
    ks, js, is_ = np.nonzero(mask)
    lo = np.array([ks.min(), js.min(), is_.min()]) - margin
    hi = np.array([ks.max(), js.max(), is_.max()]) + margin + 1
    # crop inside the volume, then pad with zeros where the margin leaves it
    clo, chi = np.maximum(lo, 0), np.minimum(hi, mask.shape)
    sl = tuple(slice(a, b) for a, b in zip(clo, chi))
    mu = hu_to_mu(ct.array[sl], mu_water)
    if background_hu is not None:
        mu = np.maximum(mu - hu_to_mu(np.float64(background_hu), mu_water), 0.0)
    mu = np.where(mask[sl], mu, 0.0).astype(np.float32)
    pad = [(int(a - b), int(c - d)) for a, b, c, d in zip(clo, lo, hi, chi)]
    mu = np.pad(mu, pad)
    inside = np.pad(label[sl], pad)
    shift = np.eye(4)
    shift[:3, 3] = lo[::-1]  # (i0, j0, k0)
    affine = ct.volume_from_index @ shift
    ks, js, is_ = np.nonzero(label)
    index_points = np.stack([is_, js, ks, np.ones_like(is_)], 1).astype(np.float64)
    points = (index_points @ ct.volume_from_index.T)[:, :3]
    surface = _surface_points(label, ct.volume_from_index)
    return RenderVolume(
        mu=torch.from_numpy(mu).to(dtype), volume_from_index=torch.from_numpy(affine), name=name,
        centroid=torch.from_numpy(points.mean(0)), points=torch.from_numpy(_sample_rows(points, n_points, label_id)),
        surface=torch.from_numpy(_sample_rows(surface, n_points, label_id + 1)),
        label_mask=torch.from_numpy(inside), beyond=beyond_prisms(label, ct.volume_from_index),
    )


BEYOND_MM = 250.0  # how far a cut bone is taken to continue past the CT's edge (more than a field of view)


def beyond_prisms(label: np.ndarray, volume_from_index: np.ndarray) -> tuple | None:
    """Where a bone cut by the CT's field of view continues: for each face of the grid the label
    touches, a prism over the convex hull of the label's cross-section there, from the face to
    ``BEYOND_MM`` past it, as its (2K, 3) float64 corners in LPS mm (the hull's K corners at the face,
    then the same K at the far end); None when the label touches no face (the CT holds the whole
    bone). The shaft beyond widens or narrows a little: its use (the registration's weights) grows
    its projection.

    Shapes: label (D, H, W) bool, ``[k, j, i]``; volume_from_index (4, 4) index (i, j, k) -> mm."""
    from scipy.spatial import ConvexHull

    affine = np.asarray(volume_from_index, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)  # per index axis (i, j, k)
    prisms = []
    for axis in range(3):  # array axes (k, j, i)
        for side, sign in ((0, -1.0), (label.shape[axis] - 1, 1.0)):
            face = np.take(label, side, axis=axis)
            if not face.any():
                continue
            across = np.argwhere(face).astype(np.float64)  # (N, 2) in the other two array axes
            # the voxels' corners (never collinear: even one voxel gives a square) and their hull
            corners = (across[:, None, :] + np.array([[-.5, -.5], [-.5, .5], [.5, -.5], [.5, .5]])).reshape(-1, 2)
            corners = corners[ConvexHull(corners).vertices]
            ends = []
            for past in (0.5, 0.5 + BEYOND_MM / spacing[2 - axis]):
                kji = np.insert(corners, axis, side + sign * past, axis=1)
                ends.append(np.concatenate([kji[:, ::-1], np.ones((len(kji), 1))], 1) @ affine.T)
            prisms.append(torch.from_numpy(np.concatenate(ends)[:, :3]))
    return tuple(prisms) if prisms else None


def _surface_points(mask: np.ndarray, volume_from_index: np.ndarray) -> np.ndarray:
    """Centres (N, 3) in mm of the label's voxels that have a 6-neighbour outside it."""
    padded = np.pad(mask, 1)
    interior = padded[1:-1, 1:-1, 1:-1].copy()
    for axis in range(3):
        for step in (-1, 1):
            interior &= np.roll(padded, step, axis)[1:-1, 1:-1, 1:-1]
    ks, js, is_ = np.nonzero(mask & ~interior)
    idx = np.stack([is_, js, ks, np.ones_like(is_)], 1).astype(np.float64)
    return (idx @ volume_from_index.T)[:, :3]


def whole_volume(ct: ImageVolume, mu_water: float = MU_WATER_PER_MM, dtype=torch.float32) -> RenderVolume:
    """The whole CT as one render volume (soft tissue included), padded by one voxel of zeros."""
    check_allocation(np.add(ct.array.shape, 2), f"the render volume of CT {ct.path}", "crop or downsample the CT",
                     12)  # float32 attenuation, its clipped copy and the padded copy
    mu = np.pad(hu_to_mu(ct.array, mu_water), 1).astype(np.float32)
    shift = np.eye(4)
    shift[:3, 3] = -1
    affine = ct.volume_from_index @ shift
    D, H, W = ct.array.shape
    centre = ct.volume_from_index @ np.array([(W - 1) / 2, (H - 1) / 2, (D - 1) / 2, 1.0])
    return RenderVolume(torch.from_numpy(mu).to(dtype), torch.from_numpy(affine), "volume",
                        centroid=torch.from_numpy(centre[:3]))


def bone_volumes(ct: ImageVolume, labels: ImageVolume, names: dict[str, int], bones=None,
                 **kwargs) -> dict[str, RenderVolume]:
    """Crops for the named bones (all names when ``bones`` is None), in the order asked."""
    bones = list(names) if bones is None else list(bones)
    unknown = [b for b in bones if b not in names]
    if unknown:
        raise FluoroRegError(f"bone(s) {', '.join(unknown)} not in the label names ({', '.join(names)}); "
                             "use one of those or add it to the label names")
    return {b: bone_volume(ct, labels, names[b], b, **kwargs) for b in bones}


def registration_volumes(ct: ImageVolume, labels: ImageVolume, names: dict[str, int], bones=None,
                         context_mm: float | None = None, **kwargs) -> dict[str, RenderVolume]:
    """The bones as registration draws them: each label grown by one voxel (its partial-volume rim)
    and drawn in excess of the surrounding soft tissue (``SOFT_TISSUE_HU``); see :func:`bone_volume`.
    ``context_mm``: each bone also holds itself drawn with the CT around it (``.context``,
    :func:`context_volume`), which registration draws as its config's ``context`` chooses."""
    kwargs = {"dilate": 1, "background_hu": SOFT_TISSUE_HU, **kwargs}
    volumes = bone_volumes(ct, labels, names, bones, **kwargs)
    if context_mm is not None:
        for b, v in volumes.items():
            v.context = context_volume(ct, labels, v, names[b], context_mm)
    return volumes


def context_volume(ct: ImageVolume, labels: ImageVolume, bone: RenderVolume, label_id: int, margin_mm: float,
                   mu_water: float = MU_WATER_PER_MM) -> RenderVolume:
    """``bone`` drawn with the CT around it: the CT's attenuation (everything it holds, not in excess
    of soft tissue) over the label's box grown by ``margin_mm`` on every side (clipped to the CT),
    padded by one voxel of zeros; the bone's centroid, points, surface, label and cut-edge prisms, so
    poses, errors, masks and checks are the bone's. Shapes: mu (D', H', W') of the crop + 2."""
    label = labels.array == label_id
    spacing_kji = np.linalg.norm(ct.volume_from_index[:3, :3], axis=0)[::-1]
    grow = np.ceil(margin_mm / spacing_kji).astype(int)
    where = np.nonzero(label)
    lo = np.maximum([int(w.min()) for w in where] - grow, 0)
    hi = np.minimum([int(w.max()) + 1 for w in where] + grow, label.shape)
    check_allocation(hi - lo + 2, f"the context of {bone.name} ({margin_mm:g} mm around it)",
                     "lower context.margin_mm", 12)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    corner = np.eye(4)
    corner[:3, 3] = lo[::-1]
    crop = whole_volume(ImageVolume(ct.array[sl], ct.volume_from_index @ corner), mu_water, bone.mu.dtype)
    return RenderVolume(crop.mu, crop.volume_from_index,
                        bone.name, centroid=bone.centroid, points=bone.points, surface=bone.surface,
                        label_mask=torch.from_numpy(np.pad(label[sl], 1)), beyond=bone.beyond)
