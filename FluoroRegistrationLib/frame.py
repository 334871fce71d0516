"""Fluoroscopy frames: collimated field, polarity, attenuation-like image, pyramid (the files are read
by :mod:`~FluoroRegistrationLib.frame_files`).

docs/CONVENTIONS.md ("Intensities", "Files"): a detected X-ray frame is bright where few photons were
stopped (air) and dark over bone ("bone-dark"); registration compares attenuation-like images
("bone-bright", like a DRR). :func:`load_frame` reads a file, finds the collimated field, decides
the polarity (or takes the one given) and returns a :class:`Frame` whose image is attenuation-like.

Formats: 8/16-bit PNG and TIFF (RGB(A) -> luminance), multi-page TIFF and DICOM (single and
multi-frame, uncompressed or JPEG / JPEG Lossless / JPEG-LS / JPEG 2000 / RLE; ``index`` picks the
frame and only that frame is decoded; DICOM gives the modality's values: MONOCHROME1 inverted to
MONOCHROME2 so that larger always means brighter, and Rescale Slope/Intercept applied, each exactly
once), ``.npy`` (2D, or a 3D (N, H, W) stack). Arrays are ``[row, col]``. :func:`frame_count` reads
how many frames a file holds from its header.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .errors import FluoroRegError, warn
from .frame_files import check_plane, frame_count, read_frame, read_frame_array  # noqa: F401 (frame_count, read_frame_array: re-exported)

POLARITIES = ("bone-dark", "bone-bright", "auto")
# How registration converts a bone-dark frame: linear (1 - I / I_ref), not -log(I / I_ref). Measured
# on simulated frames of both realisms and on the clinical detector geometry (docs/EXPERIMENTS.md,
# "Frame conversion"): display-windowed frames hold 0 over the densest bone, which the log maps far
# above any bone, and the gradient similarities compare edges, which both conversions keep.
LOG_CONVERSION = False
MIN_FIELD_FRACTION = 0.2  # a detected field smaller than this is not trusted (all True instead)
STEP = 0.05               # a collimator edge is a step of at least this fraction of the value range
SHADOW_MAX = 0.3          # a collimator's shadow lies in the darkest (brightest) 30 % of the value range
SHADOW_RING = 0.2         # ... covers at least this fraction of the image border
FLAT_TOL = 2e-3           # ... is flat: within its noise (NOISE_K sigma), or this fraction of the range, of its level
NOISE_K = 5.0
SHADOW_CONTRAST = 6.0     # ... and its step up to the field is this many times that tolerance at least (and STEP)
ISLAND = 0.05             # field pieces smaller than this fraction of the largest are noise in the shadow
SPACING_TOL = 0.02        # a pixel spacing tag further than this from the calibration's pitch is warned about


@dataclass
class Frame:
    """A frame ready for registration.

    image: (1, 1, H, W) float32, attenuation-like (bone bright), 0 outside the field; ``-log(I/I_ref)``
        (line-integral-like, about 0..5) for a bone-dark frame with ``log=True``, else in [0, 1].
    field: (1, 1, H, W) bool, pixels inside the collimated field (all True if none was found).
    path: the file read.  polarity: the polarity used, "bone-dark" or "bone-bright".
    log: whether a bone-dark frame was converted by ``-log(I / I_ref)`` (else ``1 - I / I_ref``).
    raw: (H, W) float64, the values as stored (segmentation models read these).
    pixel_spacing_mm: (row, col) pixel spacing from the file's tags (DICOM ImagerPixelSpacing, else
        PixelSpacing), or None (no tag, or an array); the calibration, not this, sets the geometry.
    """
    image: torch.Tensor
    field: torch.Tensor
    path: str
    polarity: str
    log: bool = False
    raw: np.ndarray | None = None
    pixel_spacing_mm: tuple[float, float] | None = None


def _check_polarity(polarity: str) -> None:
    if polarity not in POLARITIES:
        raise FluoroRegError(f"unknown polarity {polarity!r}; use one of {', '.join(POLARITIES)}")


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


def _border_connected(mask: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` connected (4-neighbours) to the image border."""
    labels, n = ndimage.label(mask)
    keep = np.zeros(n + 1, bool)
    keep[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
    keep[0] = False
    return keep[labels]


def _ring(a: np.ndarray) -> list[np.ndarray]:
    """The four sides of the image border of ``a``, each in order along it."""
    return [a[0], a[-1], a[:, 0], a[:, -1]]


def _shadow_level(x: np.ndarray, taken: np.ndarray, top: float, noisy: bool = True):
    """(level, tolerance) of the darkest shadow among the image border's pixels not yet ``taken``
    (bool (H, W)), or None if fewer than ``SHADOW_RING`` of the border is left.

    level: the 10th percentile of those pixels. tolerance: ``NOISE_K`` times their noise (robust
    sigma of the differences of neighbours along the border, both below level + ``top``), at least
    ``FLAT_TOL`` of the image's value range (a noiseless shadow; only that if not ``noisy``)."""
    sides, free = _ring(x), _ring(~taken)
    rest = np.concatenate([s[f] for s, f in zip(sides, free)])
    if rest.size < SHADOW_RING * sum(s.size for s in sides):
        return None
    level = float(np.percentile(rest, 10))
    diffs = np.concatenate([np.diff(s)[f[1:] & f[:-1] & (s[1:] <= level + top) & (s[:-1] <= level + top)]
                            for s, f in zip(sides, free)])
    noise = 1.4826 * float(np.median(np.abs(diffs))) / np.sqrt(2) if diffs.size and noisy else 0.0
    return level, max(NOISE_K * noise, FLAT_TOL * (float(x.max()) - float(x.min())))


def _grow(region: np.ndarray, d: int) -> np.ndarray:
    """``region`` and the pixels up to ``d`` pixels (chessboard distance) from it."""
    return ndimage.maximum_filter(region, size=2 * d + 1)


def _local_mean(x: np.ndarray, mask: np.ndarray, size: int = 5) -> np.ndarray:
    """The mean of ``x`` over the pixels of ``mask`` in each ``size`` x ``size`` window (NaN if none)."""
    total = ndimage.uniform_filter(np.where(mask, x, 0.0), size)
    count = ndimage.uniform_filter(mask.astype(np.float64), size)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 1e-9, total / count, np.nan)


def _below_halfway(x: np.ndarray, shadow: np.ndarray) -> np.ndarray:
    """Pixels within 3 of ``shadow`` less than halfway up from the shadow's local level (its mean
    within 3 pixels) to the field's (the mean within 4 pixels of the pixels 3 or more from the
    shadow, past a blurred edge)."""
    near = _grow(shadow, 3) & ~shadow
    dark = _local_mean(x, shadow, 7)
    field = _local_mean(x, ~_grow(shadow, 2), 9)
    with np.errstate(invalid="ignore"):
        return near & (x - dark < 0.5 * (field - dark))


def _edge_pixels(x: np.ndarray, shadow: np.ndarray, tile: int = 256) -> np.ndarray:
    """The blurred part of a collimator's edge beside ``shadow`` (:func:`_below_halfway`, computed
    tile by tile where the edge is); none if fewer than half the pixels touching the shadow are
    blurred (a sharp edge: those are the field's own, and dark anatomy there, e.g. skin beside
    bone, must not be cut off)."""
    touching, near = _grow(shadow, 1) & ~shadow, _grow(shadow, 3) & ~shadow
    edge = np.zeros(x.shape, bool)
    for r in range(0, x.shape[0], tile):
        for c in range(0, x.shape[1], tile):
            if near[r:r + tile, c:c + tile].any():
                r0, c0 = max(r - 8, 0), max(c - 8, 0)
                part = _below_halfway(x[r0:r + tile + 8, c0:c + tile + 8], shadow[r0:r + tile + 8, c0:c + tile + 8])
                edge[r:r + tile, c:c + tile] = part[r - r0:r - r0 + tile, c - c0:c - c0 + tile]
    return edge if touching.any() and edge[touching].mean() >= 0.5 else np.zeros(x.shape, bool)


def _border_outside(raw: np.ndarray, border: str, noisy: bool = True) -> np.ndarray:
    """The collimator's shadow in a raw frame (H, W) -> bool (H, W), True outside the field (all
    False if there is none). ``border="dark"``: the shadow is dark (detected frames); ``"bright"``:
    bright (inverted frames).

    A shadow is the region connected to the image border within its noise of its level
    (:func:`_shadow_level`: from the border pixels, so it may lie above the image's minimum, and
    noise of a few counts is fine), in the darkest ``SHADOW_MAX`` of the value range, covering at
    least ``SHADOW_RING`` of the border, with a step of at least ``STEP`` of the range up to the
    pixels 2 to 4 pixels beyond it (and ``SHADOW_CONTRAST`` times its tolerance: an iso-line of
    dark anatomy at the border rises gently, a collimator's edge steps up far above the noise). Up
    to four are taken in turn (shutters at different levels, each below halfway up the first's
    step). The edge is then placed halfway up the local step (:func:`_edge_pixels`, a blurred
    edge's true position). Islands of the field under ``ISLAND`` of the largest (noise in the
    shadow) are outside. ``noisy=False``: only a noiseless shadow (within ``FLAT_TOL``) counts."""
    x = np.asarray(raw, np.float64) if border == "dark" else -np.asarray(raw, np.float64)
    lo, span = float(x.min()), float(x.max()) - float(x.min())
    outside, base, field_level = np.zeros(x.shape, bool), None, None
    for _ in range(4):
        found = _shadow_level(x, outside, STEP * span, noisy)
        if found is None or found[0] > (lo + SHADOW_MAX * span if base is None else (base + field_level) / 2):
            break
        region = _border_connected(x <= found[0] + found[1]) | outside
        new = _ring(region & ~outside)
        beside = _grow(region, 4) & ~_grow(region, 1) & _grow(region & ~outside, 6)
        share = SHADOW_RING if base is None else SHADOW_RING / 2
        if sum(s.sum() for s in new) < share * sum(s.size for s in new) or not beside.any():
            break
        step = float(np.median(x[beside])) - found[0]
        if step < max(STEP * span, SHADOW_CONTRAST * found[1]):
            break
        outside, base = region, (found[0] if base is None else base)
        field_level = step + found[0] if field_level is None else field_level
    if base is None:
        return outside
    outside = _border_connected(outside | _edge_pixels(x, outside))
    labels, n = ndimage.label(~outside)
    if n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        outside |= np.isin(labels, 1 + np.flatnonzero(sizes < ISLAND * sizes.max()))
    return outside


def _field_from_outside(raw: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """Convex hull of the pixels off the border's shadow ``outside``, if it is a collimated field:
    at least ``MIN_FIELD_FRACTION`` of the image, and a step at its edge (the median of the field's
    pixels next to the shadow differs from the shadow's by ``STEP`` of the value range; a body's
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

    Outside is the collimator's shadow (:func:`_border_outside`): a region connected to the image
    border, in the darkest ``SHADOW_MAX`` of the value range (``border="dark"``: few photons reach
    the detector behind the collimator; ``"bright"``: an inverted frame), flat up to its noise (it
    may lie a little above the minimum, and shutters may differ a little), with a step of at least
    ``STEP`` of the range up to the field; its edge lies halfway up that step (a blurred edge's true
    position). Collimators (circle, rectangle, shutters) have convex fields, so the field is the
    convex hull of the rest: dark bone touching the collimator edge cannot bite into it (this also
    fills holes). All True if nothing is outside, if the field covers less than
    ``MIN_FIELD_FRACTION`` of the image, or if there is no step at its edge (``STEP``: the body's
    edge in a DRR's air fades out; a collimator's does not).
    """
    if border not in ("dark", "bright"):
        raise FluoroRegError(f"unknown border {border!r}; use 'dark' or 'bright'")
    raw = np.asarray(raw, dtype=np.float64)
    return _field_from_outside(raw, _border_outside(raw, border))


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
        outside = _border_outside(raw, border)
        if not outside.any() or (~outside).mean() < MIN_FIELD_FRACTION:
            continue
        # judged on the pixels off the flat border (not its hull): a DRR's body in air gives skin
        # in the ring and bone in the centre, whatever shape the body has
        pol = guess_polarity(raw, ~outside) if polarity == "auto" else polarity
        guess = guess or pol
        field = _field_from_outside(raw, outside)
        if pol == "bone-bright" and border == "dark" and not field.all():  # air, or a blanked collimator:
            field = _field_from_outside(raw, _border_outside(raw, border, noisy=False))  # only noiseless
        # a dark flat border of a detected (bone-dark) frame is the collimator; a bright one there is
        # saturated air. In a bone-bright image a dark flat border may be air around the body, so
        # a flat border only counts if it is noiseless (blanked) and its field is shaped like a
        # collimator (disc or rectangle).
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
    """Read frame ``index`` of ``path`` (:func:`read_frame_array`), check its size (and its pixel
    spacing tag, if any) against ``camera`` and convert it (:func:`frame_from_array`)."""
    _check_polarity(polarity)
    frame = read_frame(path, index)
    if frame.dtype == np.bool_:
        _not_a_mask(path)
    return frame_from_array(frame.array, camera, polarity, log, floor, path=str(path),
                            pixel_spacing_mm=frame.spacing_mm)


def _check_spacing(path: str, spacing, camera) -> tuple[float, float] | None:
    """The (row, col) spacing as floats (None if absent or not two positive numbers); warns if it
    differs from ``camera``'s pixel pitch by more than ``SPACING_TOL``."""
    try:
        row, col = (float(v) for v in spacing)
    except (TypeError, ValueError):
        return None
    if not (np.isfinite([row, col]).all() and row > 0 and col > 0):
        return None
    if camera is not None:
        want = (camera.row_spacing_mm, camera.col_spacing_mm)
        off = max(abs(row / want[0] - 1), abs(col / want[1] - 1))
        if off > SPACING_TOL:
            warn(f"{path}: its pixel spacing tag says {row:.4g} x {col:.4g} mm (row x col) but the calibration "
                 f"says {want[0]:.4g} x {want[1]:.4g} mm ({100 * off:.0f} % apart); check that the calibration "
                 "is this detector's at this binning (registration uses the calibration)", stacklevel=3)
    return row, col


def _not_a_mask(path) -> None:
    raise FluoroRegError(f"frame {path} holds True/False values (a mask?), not X-ray intensities; give the "
                         "frame itself (masks go in masks=)")


def _check_frame_values(raw, path: str) -> np.ndarray:
    """``raw`` as a 2D float64 frame with finite, not all equal values of a numeric dtype, else a
    FluoroRegError naming the frame and the fix."""
    kind = np.asarray(raw).dtype.kind
    if kind == "b":
        _not_a_mask(path)
    if kind not in "iuf":
        raise FluoroRegError(f"frame {path} is not a real-valued numeric array (dtype "
                             f"{np.asarray(raw).dtype}); give the frame's values as an (H, W) float array")
    raw = np.asarray(raw, dtype=np.float64)
    check_plane(raw, path)
    if raw.max() == raw.min():
        raise FluoroRegError(f"frame {path} is constant (every pixel is {raw.flat[0]:g}); check the file and the "
                             "frame index: a blank frame cannot be registered")
    return raw


def frame_from_array(raw, camera=None, polarity: str = "auto", log: bool = LOG_CONVERSION, floor: float = 1e-4,
                     path: str = "<array>", pixel_spacing_mm=None) -> Frame:
    """A raw frame (H, W), values as stored, -> :class:`Frame`: size checked against ``camera``,
    field found, polarity resolved, converted to attenuation-like.

    The field: a dark border (detected frames) or bright border (inverted frames) around a convex
    field, see :func:`detect_field`. With ``polarity="auto"`` the polarity is guessed inside
    that field; a dark border is kept for a bone-dark frame, and for a bone-bright one only if it is
    noiseless (blanked) and the field is a disc or rectangle (air around the leg, noisy or a DRR's,
    is not a collimator); a bright border is kept only for a bone-bright frame with such a field (in
    a bone-dark one it is saturated air).
    The polarity is judged on the pixels off the border. ``log``, ``floor``: see
    :func:`to_attenuation`. ``pixel_spacing_mm``: (row, col) from the file's tags (None: unknown);
    a FluoroRegWarning if it differs from ``camera``'s pitch by more than ``SPACING_TOL`` (2 %).
    Raises FluoroRegError for a bool, non-numeric, non-2D, under 2x2, non-finite or constant frame.
    """
    _check_polarity(polarity)
    raw = _check_frame_values(raw, path)
    if camera is not None:
        try:
            camera.check_frame(*raw.shape)
        except FluoroRegError as err:
            raise FluoroRegError(f"{path}: {err}") from None
    spacing = None if pixel_spacing_mm is None else _check_spacing(path, pixel_spacing_mm, camera)
    att, field, pol = _convert(raw, polarity, None, log, floor)
    return Frame(image=torch.from_numpy(att).float()[None, None].contiguous(),
                 field=torch.from_numpy(field)[None, None].contiguous(), path=path, polarity=pol, log=log,
                 raw=raw, pixel_spacing_mm=spacing)


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
