"""Fluoroscopy frames: reading, collimated field, polarity, attenuation-like image, pyramid.

docs/CONVENTIONS.md ("Intensities", "Files"): a detected X-ray frame is bright where few photons were
stopped (air) and dark over bone ("bone-dark"); registration compares attenuation-like images
("bone-bright", like a DRR). :func:`load_frame` reads a file, finds the collimated field, decides
the polarity (or takes the one given) and returns a :class:`Frame` whose image is attenuation-like.

Formats: 8/16-bit PNG and TIFF (RGB(A) -> luminance), multi-page TIFF and DICOM (single and
multi-frame; ``index`` picks the frame; MONOCHROME1 is inverted to MONOCHROME2 so that larger
always means brighter), ``.npy`` (2D, or a 3D (N, H, W) stack). Arrays are ``[row, col]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .errors import FluoroRegError

POLARITIES = ("bone-dark", "bone-bright", "auto")
# How registration converts a bone-dark frame: linear (1 - I / I_ref), not -log(I / I_ref). Measured
# on simulated frames of both realisms and on the clinical detector geometry (docs/EXPERIMENTS.md,
# "Frame conversion"): display-windowed frames hold 0 over the densest bone, which the log maps far
# above any bone, and the gradient similarities compare edges, which both conversions keep.
LOG_CONVERSION = False
FLAT_TOL = 2e-3          # "equal to the extreme": within this fraction of the image's value range
MIN_FIELD_FRACTION = 0.2  # a detected field smaller than this is not trusted (all True instead)
STEP = 0.05               # a collimator edge is a step of at least this fraction of the value range


@dataclass
class Frame:
    """A frame ready for registration.

    image: (1, 1, H, W) float32, attenuation-like (bone bright), 0 outside the field; ``-log(I/I_ref)``
        (line-integral-like, about 0..5) for a bone-dark frame with ``log=True``, else in [0, 1].
    field: (1, 1, H, W) bool, pixels inside the collimated field (all True if none was found).
    path: the file read.  polarity: the polarity used, "bone-dark" or "bone-bright".
    log: whether a bone-dark frame was converted by ``-log(I / I_ref)`` (else ``1 - I / I_ref``).
    raw: (H, W) float64, the values as stored (segmentation models read these).
    """
    image: torch.Tensor
    field: torch.Tensor
    path: str
    polarity: str
    log: bool = False
    raw: np.ndarray | None = None


def _check_polarity(polarity: str) -> None:
    if polarity not in POLARITIES:
        raise FluoroRegError(f"unknown polarity {polarity!r}; use one of {', '.join(POLARITIES)}")


def _gray(a: np.ndarray, vector: bool) -> np.ndarray:
    """Colour (last axis 2-4 when ``vector``) -> luminance (ITU-R BT.601), alpha dropped."""
    if not vector:
        return a
    if a.shape[-1] >= 3:
        return a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114
    return a[..., 0]


def _read_image_file(path: Path) -> np.ndarray:
    """PNG/TIFF/DICOM/... via SimpleITK (Pillow as a fallback) -> float64 (H, W) or (N, H, W)."""
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
        a = sitk.GetArrayFromImage(img).astype(np.float64)
        a = _gray(a, img.GetNumberOfComponentsPerPixel() > 1)
        if img.HasMetaDataKey("0028|0004") and img.GetMetaData("0028|0004").strip() == "MONOCHROME1":
            a = a.max() + a.min() - a  # MONOCHROME1: smallest value is white
        return a
    except RuntimeError:
        pass
    try:  # formats or compressions SimpleITK does not read
        from PIL import Image, ImageSequence

        with Image.open(path) as im:
            pages = [np.asarray(p.convert("RGB") if p.mode in ("P", "CMYK", "YCbCr") else p,
                                dtype=np.float64) for p in ImageSequence.Iterator(im)]
        pages = [_gray(p, p.ndim == 3) for p in pages]
        return pages[0] if len(pages) == 1 else np.stack(pages)
    except Exception:
        raise FluoroRegError(f"cannot read frame {path}: not a readable image; use PNG, TIFF, DICOM or "
                             ".npy") from None


def read_frame_array(path, index: int = 0) -> np.ndarray:
    """The raw values of frame ``index`` of ``path``: (H, W) float64, as stored (no scaling).

    A 3D stack (.npy (N, H, W), multi-page TIFF, multi-frame DICOM) gives its frame ``index``; a 2D
    file accepts only ``index=0``. Raises FluoroRegError for a missing or unreadable file, data that
    is not 2D (after the frame is picked), frames under 2x2 pixels, or NaN/inf values.
    """
    path = Path(path)
    if not path.is_file():
        raise FluoroRegError(f"frame file not found: {path}; check the path")
    if path.suffix.lower() == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
            a = a.astype(np.float64)
        except (ValueError, OSError, TypeError):
            raise FluoroRegError(f"cannot read frame {path}: not a numeric .npy array; save it with "
                                 "np.save(path, array.astype(np.float32))") from None
        if a.ndim == 3 and a.shape[-1] <= 4 < min(a.shape[:2]):
            a = _gray(a, True)  # (H, W, C): grey(+alpha) or RGB(A), not a stack
    else:
        a = _read_image_file(path)
    if a.ndim == 3:
        if not -a.shape[0] <= index < a.shape[0]:
            raise FluoroRegError(f"frame {path} holds {a.shape[0]} frame(s); index {index} is out of range, "
                                 f"use 0 to {a.shape[0] - 1}")
        a = a[index]
    elif index != 0 and a.ndim == 2:
        raise FluoroRegError(f"frame {path} holds a single frame; index {index} is out of range, use 0")
    if a.ndim != 2:
        raise FluoroRegError(f"frame {path} has shape {a.shape}, not a 2D image or a 3D (N, H, W) stack; "
                             "save one 2D frame (rows, cols) per file or an (N, H, W) stack")
    if min(a.shape) < 2:
        raise FluoroRegError(f"frame {path} is {a.shape[0]}x{a.shape[1]} pixels; a frame needs at least 2x2")
    if not np.isfinite(a).all():
        raise FluoroRegError(f"frame {path} contains NaN or infinite values; replace them (e.g. np.nan_to_num) "
                             "before registration")
    return a


def _convex_fill(mask: np.ndarray) -> np.ndarray:
    """Pixels whose centres lie in the convex hull of ``mask``'s pixel centres."""
    from scipy.spatial import ConvexHull, QhullError

    edge = mask & ~ndimage.binary_erosion(mask)
    pts = np.argwhere(edge).astype(np.float64)
    try:
        hull = ConvexHull(pts)
    except (QhullError, ValueError):  # degenerate (a line): leave as it is
        return mask
    v = pts[hull.vertices]                         # (K, 2) (row, col), in order around the hull
    a, b = v, np.roll(v, -1, axis=0)               # edges a -> b
    y = np.arange(mask.shape[0], dtype=np.float64)[:, None]
    dy = b[:, 0] - a[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (y - a[:, 0]) / dy                     # (H, K) where each row crosses each edge
    x = np.where((t >= -1e-9) & (t <= 1 + 1e-9), a[:, 1] + t * (b[:, 1] - a[:, 1]), np.nan)
    flat = np.where(y == a[:, 0], a[:, 1], np.nan)  # vertices on the row (horizontal edges)
    x = np.concatenate([x, flat], axis=1)
    has = ~np.isnan(x).all(axis=1)
    lo = np.where(has, np.nanmin(np.where(has[:, None], x, 0), axis=1), np.inf)
    hi = np.where(has, np.nanmax(np.where(has[:, None], x, 0), axis=1), -np.inf)
    cols = np.arange(mask.shape[1])[None, :]
    return ((cols >= lo[:, None] - 1e-7) & (cols <= hi[:, None] + 1e-7)) | mask


def _flat_border(raw: np.ndarray, border: str) -> np.ndarray:
    """Pixels at the image minimum ("dark") or maximum ("bright"), within ``FLAT_TOL`` of the value
    range, that are connected to the image border."""
    lo, hi = float(raw.min()), float(raw.max())
    if hi == lo:
        return np.zeros(raw.shape, bool)
    tol = FLAT_TOL * (hi - lo)
    labels, _ = ndimage.label(raw <= lo + tol if border == "dark" else raw >= hi - tol)
    on_border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, on_border[on_border > 0])


def _field_from_outside(raw: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """Convex hull of the pixels off the flat border, if it is a collimated field: at least
    ``MIN_FIELD_FRACTION`` of the image, and a step at its edge (the median of the field's pixels
    next to the border differs from the border's value by ``STEP`` of the value range; a body's
    edge in air fades to the air value instead)."""
    everything = np.ones(outside.shape, bool)
    if not outside.any():
        return everything
    field = _convex_fill(~outside)
    rim = field & ndimage.binary_dilation(outside & ~field)
    if field.mean() < MIN_FIELD_FRACTION or not rim.any():
        return everything
    flat = np.median(raw[outside & ~field])
    step = abs(np.median(raw[rim]) - flat) / (raw.max() - raw.min())
    return field if step >= STEP else everything


def detect_field(raw: np.ndarray, border: str = "dark") -> np.ndarray:
    """The collimated field of a raw frame (H, W) -> bool (H, W), True inside.

    Outside are the pixels equal (within ``FLAT_TOL`` of the value range) to the image minimum
    (``border="dark"``: no photons reach the detector behind the collimator) or maximum
    (``"bright"``: an inverted frame) that are connected to the image border. Collimators (circle,
    rectangle, shutters) have convex fields, so the field is the convex hull of the rest: dark bone
    touching the collimator edge cannot bite into it (this also fills holes). All True if nothing is
    outside, if the field covers less than ``MIN_FIELD_FRACTION`` of the image, or if there is no
    step at its edge (``STEP``: the body's edge in a DRR's air fades out; a collimator's does not).
    """
    if border not in ("dark", "bright"):
        raise FluoroRegError(f"unknown border {border!r}; use 'dark' or 'bright'")
    raw = np.asarray(raw, dtype=np.float64)
    return _field_from_outside(raw, _flat_border(raw, border))


def guess_polarity(raw: np.ndarray, field: np.ndarray | None = None) -> str:
    """'bone-dark' or 'bone-bright' for a raw frame, by where its bright values are.

    A detected frame is brightest in air, which lies at the edge of the field (around the body),
    while the centre of the field holds bone: with d a pixel's distance to the field's edge (the
    image edge counts as one) and dmax its largest value, the rule compares the median of the ring
    d <= max(1, 0.1 dmax) with the median of the centre d >= 0.5 dmax (the means if the medians
    are equal). The ring brighter -> "bone-dark"; darker -> "bone-bright"; equal ->
    "bone-dark" (what detectors give).
    """
    raw = np.asarray(raw, dtype=np.float64)
    field = np.ones(raw.shape, bool) if field is None else np.asarray(field, bool)
    dist = ndimage.distance_transform_edt(np.pad(field, 1))[1:-1, 1:-1]
    dmax = float(dist.max())
    ring = field & (dist <= max(1.0, 0.1 * dmax))
    centre = field & (dist >= 0.5 * dmax)
    if not ring.any() or not centre.any():
        return "bone-dark"
    r, c = np.median(raw[ring]), np.median(raw[centre])
    if r == c:  # e.g. air on both (quantised or exactly 0): the means decide
        r, c = raw[ring].mean(), raw[centre].mean()
    return "bone-bright" if r < c else "bone-dark"


def _collimator_like(field: np.ndarray, min_iou: float = 0.9) -> bool:
    """True if ``field`` looks like a collimated field: a rectangle or a disc (clipped by the image)."""
    rows, cols = np.nonzero(field)
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    if field.sum() / box >= min_iou:
        return True
    H, W = field.shape
    edge = field & ~ndimage.binary_erosion(field)
    edge[0], edge[-1], edge[:, 0], edge[:, -1] = False, False, False, False
    y, x = np.nonzero(edge)
    if len(x) < 10:
        return False
    A = np.stack([x, y, np.ones_like(x)], 1).astype(np.float64)   # Kasa circle fit
    (a, b, c), *_ = np.linalg.lstsq(A, (x * x + y * y).astype(np.float64), rcond=None)
    cx, cy = a / 2, b / 2
    r2 = c + cx * cx + cy * cy
    rms = np.sqrt(np.mean((np.hypot(x - cx, y - cy) - np.sqrt(max(r2, 0))) ** 2))
    if not r2 > 0 or rms > max(1.5, 0.03 * np.sqrt(r2)):
        return False  # the edge is not a circle
    rr, cc = np.indices((H, W))
    disc = (cc - cx) ** 2 + (rr - cy) ** 2 <= r2
    return (field & disc).sum() / max((field | disc).sum(), 1) >= min_iou


def _field_and_polarity(raw: np.ndarray, polarity: str):
    """Find the field and resolve the polarity together (see :func:`load_frame`)."""
    guess = None
    for border in ("dark", "bright"):
        outside = _flat_border(raw, border)
        if not outside.any() or (~outside).mean() < MIN_FIELD_FRACTION:
            continue
        # judged on the pixels off the flat border (not its hull): a DRR's body in air gives skin
        # in the ring and bone in the centre, whatever shape the body has
        pol = guess_polarity(raw, ~outside) if polarity == "auto" else polarity
        guess = guess or pol
        field = _field_from_outside(raw, outside)
        # a dark flat border of a detected (bone-dark) frame is the collimator; a bright one there is
        # saturated air. In a bone-bright image a dark flat border may be air around the body, so
        # a flat border only counts if its field is shaped like a collimator (disc or rectangle).
        if not field.all() and ((pol == "bone-dark" and border == "dark")
                                or (pol == "bone-bright" and _collimator_like(field))):
            return field, pol
    field = np.ones(raw.shape, bool)
    if polarity != "auto":
        return field, polarity
    return field, guess or guess_polarity(raw, field)


def _convert(raw, polarity="auto", field=None, log=True, floor=1e-4):
    _check_polarity(polarity)
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 2:
        raise FluoroRegError(f"expected a 2D frame (rows, cols), got shape {raw.shape}; pick one frame first")
    if field is None:
        field, polarity = _field_and_polarity(raw, polarity)
    else:
        field = np.asarray(field, bool)
        if field.shape != raw.shape or not field.any():
            raise FluoroRegError(f"field must be a non-empty bool mask of the frame's shape {raw.shape}, "
                                 f"got shape {field.shape}")
        polarity = guess_polarity(raw, field) if polarity == "auto" else polarity
    vals = raw[field]
    if polarity == "bone-dark":
        ref = float(np.percentile(vals, 99.5))
        if not ref > 0:
            raise FluoroRegError("frame is black inside its field (bright reference <= 0); check the file, "
                                 "or give polarity bone-bright if it already shows bone bright")
        t = np.clip(raw / ref, floor, 1.0)
        att = -np.log(t) if log else 1.0 - t
    else:
        lo, hi = np.percentile(vals, [0.5, 99.5])
        att = np.clip((raw - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(raw)
    return np.where(field, att, 0.0), field, polarity


def to_attenuation(raw, polarity: str = "auto", field=None, log: bool = True,
                   floor: float = 1e-4) -> np.ndarray:
    """Raw frame (H, W) -> attenuation-like (bone bright) (H, W) float64, 0 outside the field.

    bone-dark: ``I_ref`` = 99.5th percentile inside the field (the unattenuated beam), then
    ``-log(clip(I / I_ref, floor, 1))`` (``log=True``; Beer-Lambert: exact line integrals when
    ``I = I_ref exp(-L)``) or ``clip(1 - I / I_ref, 0, 1)``. Display-windowed frames often hold 0
    over the densest bone (about 0.4 % of the field in our simulator's), which the log maps to
    ``-log(floor)`` (9.2), far above real bone (2-4): raise ``floor`` (e.g. 0.02) or use
    ``log=False``. bone-bright: rescaled to [0, 1] between the 0.5th and 99.5th percentiles inside
    the field (``log`` is not used). auto: :func:`guess_polarity`. ``field=None``: found as in
    :func:`load_frame`.
    """
    return _convert(raw, polarity, field, log, floor)[0]


def load_frame(path, camera=None, polarity: str = "auto", log: bool = LOG_CONVERSION, index: int = 0,
               floor: float = 1e-4) -> Frame:
    """Read frame ``index`` of ``path``, check its size against ``camera`` and convert it
    (:func:`frame_from_array`)."""
    _check_polarity(polarity)
    raw = read_frame_array(path, index)
    return frame_from_array(raw, camera, polarity, log, floor, path=str(path))


def frame_from_array(raw, camera=None, polarity: str = "auto", log: bool = LOG_CONVERSION, floor: float = 1e-4,
                     path: str = "<array>") -> Frame:
    """A raw frame (H, W), values as stored, -> :class:`Frame`: size checked against ``camera``,
    field found, polarity resolved, converted to attenuation-like.

    The field: a flat dark border (detected frames) or flat bright border (inverted frames) around a
    convex field, see :func:`detect_field`. With ``polarity="auto"`` the polarity is guessed inside
    that field; a dark border is kept for a bone-dark frame, and for a bone-bright one only if the
    field is a disc or rectangle (a DRR's air around the leg is not a collimator); a bright border is
    kept only for a bone-bright frame with such a field (in a bone-dark one it is saturated air).
    The polarity is judged on the pixels off the flat border. ``log``, ``floor``: see
    :func:`to_attenuation`.
    """
    _check_polarity(polarity)
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 2:
        raise FluoroRegError(f"{path}: expected a 2D frame (rows, cols), got shape {raw.shape}; pick one frame first")
    if not np.isfinite(raw).all():
        raise FluoroRegError(f"{path} contains NaN or infinite values; replace them (e.g. np.nan_to_num) "
                             "before registration")
    if camera is not None:
        try:
            camera.check_frame(*raw.shape)
        except FluoroRegError as err:
            raise FluoroRegError(f"{path}: {err}") from None
    att, field, pol = _convert(raw, polarity, None, log, floor)
    return Frame(image=torch.from_numpy(att).float()[None, None].contiguous(),
                 field=torch.from_numpy(field)[None, None].contiguous(), path=path, polarity=pol, log=log,
                 raw=raw)


def pyramid(image: torch.Tensor, field: torch.Tensor, levels) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Downsampled copies of (N, C, H, W) ``image`` and bool ``field``, one per factor in ``levels``.

    Level ``f`` has shape (H // f, W // f): the image area-averaged with
    ``adaptive_avg_pool2d``, the field True only where all fine pixels pooled are inside
    (min-pool). Pair level ``f`` with ``camera.resized(H // f, W // f)``. When f divides H and W
    this is exact: coarse pixel i averages fine pixels [f i, f i + f), whose centre
    ``f (i + 0.5) - 0.5`` is the one Camera.resized maps it to. Otherwise coarse pixel i pools
    [floor(i H / h), ceil((i + 1) H / h)) while Camera.resized places its centre at
    ``(i + 0.5) H / h - 0.5``: within half a fine pixel (a sub-pixel approximation).
    """
    if image.ndim != 4 or field.shape != image.shape:
        raise FluoroRegError(f"pyramid needs (N, C, H, W) image and field of the same shape, got "
                             f"{tuple(image.shape)} and {tuple(field.shape)}")
    H, W = image.shape[-2:]
    out = []
    for f in levels:
        if not (isinstance(f, (int, np.integer)) and 1 <= f <= min(H, W)):
            raise FluoroRegError(f"pyramid factor {f!r} must be an integer from 1 to {min(H, W)} "
                                 f"(the frame is {H}x{W}); use e.g. levels=[4, 2, 1]")
        size = (H // int(f), W // int(f))
        img = F.adaptive_avg_pool2d(image, size)
        outside = F.adaptive_max_pool2d((~field.bool()).float(), size)
        out.append((img, outside == 0))
    return out
