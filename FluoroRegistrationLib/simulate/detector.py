"""Detector and source effects of a fluoroscopy chain (image intensifier or flat panel), in torch.

Input is the primary transmission ``I/I0`` (energy-integrated, from the physics) on the detector
grid; :func:`detect` turns it into a frame that looks like a real one, applying in order:
heel effect -> scatter (added) -> focal-spot + detector blur -> quantum + electronic noise ->
pincushion distortion -> vignetting -> collimation -> display mapping (log or intensity, window,
gamma, quantisation). Every step is also a function of its own.

Conventions (``docs/CONVENTIONS.md``): images are ``(..., H, W)`` tensors indexed ``[row, col]``;
pixel ``(row i, col j)`` has its centre at ``(u = j, v = i)``; the principal point ``(u0, v0)``
defaults to ``((W - 1) / 2, (H - 1) / 2)``. Point arrays are ``(..., 2)`` holding ``(u, v)``.
Radii "in units of the half-diagonal" use ``R = hypot(H - 1, W - 1) / 2``, the distance from the
image centre to a corner pixel's centre. Lengths are in mm, blur widths on the grid in pixels.
Randomness comes only from the ``torch.Generator`` passed in (``None``: a fresh one seeded 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..errors import FluoroRegError

Pair = Union[float, Tuple[float, float]]


@dataclass(frozen=True)
class DetectorModel:
    """Parameters of the detector and source effects; 0 (or ``None``) switches an effect off.

    Typical values are for image-intensifier fluoroscopy of a knee at 60-70 kVp.

    - ``photons_per_pixel``: mean detected quanta per pixel of the unattenuated (flat) field, the
      dose per frame; sets the quantum (Poisson) noise. 1e2 (low-dose pulsed) to 1e4 per frame.
      ``None``: no quantum noise.
    - ``electronic_noise``: std of the additive Gaussian readout/camera noise, in quanta (0-10).
    - ``focal_spot_mm``: focal spot size (FWHM, mm), 0.3-0.6 mm. Its penumbra on the detector is a
      Gaussian of sigma ``focal_spot_mm * (magnification - 1) / 2.355`` mm.
    - ``magnification``: source-to-detector over source-to-object distance of the object plane,
      1.2-1.6 (used only for the focal-spot blur).
    - ``detector_blur_px``: Gaussian sigma (pixels) of the detector / II point spread, 0.5-1.5.
    - ``scatter_to_primary``: scatter-to-primary ratio (SPR) with no grid, 0.3-1.0 for a knee.
      Scatter is modelled as ``SPR * G(primary)``, ``G`` a mean-preserving wide Gaussian blur.
    - ``scatter_sigma_mm``: sigma of that scatter kernel on the detector, 20-50 mm.
    - ``heel``: relative intensity change across the field along the anode-cathode axis (heel
      effect), 0.1-0.2; ``0.15`` means a factor from 0.925 (first row/col) to 1.075 (last);
      negative values put the anode at the other end.
    - ``heel_axis``: ``"rows"`` (intensity varies with the row index) or ``"cols"``.
    - ``distortion_k``: II pincushion coefficient, ``r_d = r_u (1 + k r_u^2)`` with radii in units
      of the half-diagonal about the principal point; a displacement of k (2-6 %) at the corner.
      Negative k gives barrel distortion (keep ``k > -1/3``).
    - ``vignetting``: fractional brightness loss at the half-diagonal, factor
      ``1 - vignetting (r / R)^2`` about the principal point, 0.1-0.3.
    - ``collimation_radius``: radius of the circular collimated field as a fraction of
      ``min(H, W) / 2`` about the principal point (0.9-1.0 on a round II); outside it there is no
      signal (the output is 0). ``None``: the whole frame.
    - ``output``: ``"intensity"`` (bone dark, as real frames) or ``"log"`` (``-log(I/I0)``, bone
      bright, attenuation-like).
    - ``gamma``: display gamma applied to the windowed values in [0, 1] (``y ** gamma``).
    - ``window``: (low, high) percentiles of the values inside the field mapped to 0 and 1
      (auto-window); ``None``: no windowing (values used as they are).
    - ``bits``: quantisation to ``2**bits - 1`` integer levels (8 or 12 typical; 1-16 accepted);
      ``None``: float output.
    """

    photons_per_pixel: Optional[float] = 2000.0
    electronic_noise: float = 0.0
    focal_spot_mm: float = 0.0
    magnification: float = 1.4
    detector_blur_px: float = 0.0
    scatter_to_primary: float = 0.0
    scatter_sigma_mm: float = 30.0
    heel: float = 0.0
    heel_axis: str = "rows"
    distortion_k: float = 0.0
    vignetting: float = 0.0
    collimation_radius: Optional[float] = None
    output: str = "intensity"
    gamma: float = 1.0
    window: Optional[Tuple[float, float]] = (0.5, 99.5)
    bits: Optional[int] = 12

    def __post_init__(self):
        if self.photons_per_pixel is not None and not self.photons_per_pixel > 0:
            raise FluoroRegError("photons_per_pixel must be > 0 (or None for no quantum noise)")
        for name in ("electronic_noise", "focal_spot_mm", "detector_blur_px",
                     "scatter_to_primary", "vignetting"):
            if not getattr(self, name) >= 0:
                raise FluoroRegError(f"{name} must be >= 0 (0 switches the effect off)")
        if self.electronic_noise > 0 and self.photons_per_pixel is None:
            raise FluoroRegError("electronic_noise is in quanta: set photons_per_pixel too")
        if not (self.magnification >= 1 and self.scatter_sigma_mm > 0 and self.gamma > 0
                and -2 < self.heel < 2 and self.heel_axis in ("rows", "cols")
                and self.distortion_k > -1 / 3):
            raise FluoroRegError("need magnification >= 1, scatter_sigma_mm > 0, gamma > 0, heel in "
                                 "(-2, 2), heel_axis 'rows' or 'cols' and distortion_k > -1/3")
        if self.collimation_radius is not None and not self.collimation_radius > 0:
            raise FluoroRegError("collimation_radius must be > 0 (or None for no collimation)")
        if self.output not in ("intensity", "log"):
            raise FluoroRegError(f"output must be 'intensity' or 'log', not {self.output!r}")
        if self.window is not None and not (len(self.window) == 2
                                            and 0 <= self.window[0] < self.window[1] <= 100):
            raise FluoroRegError("window must be (low, high) percentiles with 0 <= low < high <= 100")
        if self.bits is not None and not (isinstance(self.bits, int) and 1 <= self.bits <= 16):
            raise FluoroRegError("bits must be an integer from 1 to 16 (8 or 12 typical), or None")


def _pair(x: Pair) -> Tuple[float, float]:
    """A scalar or a (row, col) pair -> (row, col) floats."""
    return (float(x[0]), float(x[1])) if isinstance(x, (tuple, list)) else (float(x), float(x))


def image_centre(H: int, W: int) -> Tuple[float, float]:
    """Default principal point ``(u0, v0) = ((W - 1) / 2, (H - 1) / 2)`` in pixels."""
    return (W - 1) / 2.0, (H - 1) / 2.0


def half_diagonal(H: int, W: int) -> float:
    """``R = hypot(H - 1, W - 1) / 2`` pixels: image centre to a corner pixel's centre."""
    return 0.5 * math.hypot(H - 1, W - 1)


def _radius(H, W, centre, dtype, device):
    """(H, W) distance (pixels) of each pixel centre from ``centre = (u0, v0)``."""
    u0, v0 = image_centre(H, W) if centre is None else centre
    v = torch.arange(H, dtype=dtype, device=device)[:, None] - v0
    u = torch.arange(W, dtype=dtype, device=device)[None, :] - u0
    return torch.sqrt(u * u + v * v)


def apply_heel(intensity: torch.Tensor, heel: float, axis: str = "rows") -> torch.Tensor:
    """Heel effect: ``(..., H, W)`` intensity times ``1 + heel (t - 1/2)``, ``t`` going 0 -> 1 from
    the first to the last row (``axis="rows"``) or column (``"cols"``); the factor's mean is 1 and
    its change across the field is ``heel``."""
    if heel == 0:
        return intensity
    n = intensity.shape[-2] if axis == "rows" else intensity.shape[-1]
    t = torch.linspace(0, 1, n, dtype=intensity.dtype, device=intensity.device)
    f = 1 + heel * (t - 0.5)
    return intensity * (f[:, None] if axis == "rows" else f[None, :])


def _gauss_kernel(sigma: float, dtype, device) -> torch.Tensor:
    r = max(1, math.ceil(4 * sigma))
    x = torch.arange(-r, r + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _fft_blur(image: torch.Tensor, sigma_px: Pair) -> torch.Tensor:
    """Gaussian blur by FFT of the mirror-extended image (symmetric boundary). The transfer function
    is 1 at DC and the extension stays mirror-symmetric, so the image's mean is kept exactly."""
    sr, sc = _pair(sigma_px)
    H, W = image.shape[-2:]
    ext = torch.cat([image, image.flip(-2)], dim=-2)
    ext = torch.cat([ext, ext.flip(-1)], dim=-1)
    fr = torch.fft.fftfreq(2 * H, dtype=image.dtype, device=image.device)[:, None]
    fc = torch.fft.rfftfreq(2 * W, dtype=image.dtype, device=image.device)[None, :]
    tf = torch.exp(-2 * math.pi ** 2 * ((sr * fr) ** 2 + (sc * fc) ** 2))
    out = torch.fft.irfft2(torch.fft.rfft2(ext) * tf, s=(2 * H, 2 * W))
    return out[..., :H, :W]


def apply_blur(image: torch.Tensor, sigma_px: Pair) -> torch.Tensor:
    """Separable Gaussian blur of ``(..., H, W)``; ``sigma_px`` is one sigma or (row, col) sigmas in
    pixels, <= 0 meaning no blur along that axis. Normalised sampled kernels of radius
    ``ceil(4 sigma)`` (a 3-sigma cut would lose 2.7 % of the variance) with reflect padding; a
    kernel wider than the image falls back to the mirror-extended FFT blur."""
    sr, sc = _pair(sigma_px)
    if sr <= 0 and sc <= 0:
        return image
    H, W = image.shape[-2:]
    if math.ceil(4 * sr) >= H or math.ceil(4 * sc) >= W:
        return _fft_blur(image, (max(sr, 0.0), max(sc, 0.0)))
    x = image.reshape(-1, 1, H, W)
    for sigma, rows in ((sr, True), (sc, False)):
        if sigma > 0:
            k = _gauss_kernel(sigma, x.dtype, x.device)
            r = k.numel() // 2
            pad, shape = ((0, 0, r, r), (1, 1, -1, 1)) if rows else ((r, r, 0, 0), (1, 1, 1, -1))
            x = F.conv2d(F.pad(x, pad, mode="reflect"), k.view(shape))
    return x.reshape(image.shape)


def add_scatter(primary: torch.Tensor, spr: float, sigma_px: Pair) -> torch.Tensor:
    """``primary + spr * G(primary)``: ``G`` a mean-preserving Gaussian of sigma ``sigma_px``
    (pixels, or a (row, col) pair), so the scatter's mean is ``spr`` times the primary's."""
    if spr == 0:
        return primary
    return primary + spr * _fft_blur(primary, sigma_px)


def distort_points(uv: torch.Tensor, k: float, centre: Sequence[float],
                   half_diagonal: float) -> torch.Tensor:
    """Pincushion: undistorted ``(..., 2)`` pixel points ``(u, v)`` -> distorted, moved radially
    about ``centre = (u0, v0)`` so that ``r_d = r_u (1 + k r_u^2)``, radii in units of
    ``half_diagonal`` (pixels). Angles about the centre are kept."""
    c = torch.as_tensor(centre, dtype=uv.dtype, device=uv.device)
    d = uv - c
    r2 = (d * d).sum(-1, keepdim=True) / half_diagonal ** 2
    return c + d * (1 + k * r2)


def undistort_points(uv: torch.Tensor, k: float, centre: Sequence[float],
                     half_diagonal: float) -> torch.Tensor:
    """Exact inverse of :func:`distort_points`: solves ``r_u + k r_u^3 = r_d`` by Newton's method in
    float64 (monotone convergence from ``r_u = r_d``) to 1e-13 relative, needs ``k > -1/3`` and
    ``r_d`` within the fold-free range when ``k < 0``."""
    if k == 0:
        return uv.clone()
    c = torch.as_tensor(centre, dtype=torch.float64, device=uv.device)
    d = uv.to(torch.float64) - c
    rd = torch.linalg.vector_norm(d, dim=-1, keepdim=True) / half_diagonal
    ru = rd.clone()
    for _ in range(100):
        step = (ru + k * ru ** 3 - rd) / (1 + 3 * k * ru ** 2)
        ru = ru - step
        if step.numel() == 0 or float(step.abs().max()) <= 1e-13 * (1 + float(rd.max())):
            break
    scale = torch.where(rd > 0, ru / torch.where(rd > 0, rd, torch.ones_like(rd)),
                        torch.ones_like(rd))
    return (c + d * scale).to(uv.dtype)


def distort_image(image: torch.Tensor, k: float, centre: Optional[Sequence[float]] = None,
                  half_diagonal_px: Optional[float] = None, inverse: bool = False) -> torch.Tensor:
    """Resample ``(..., H, W)`` so that the output pixel at a distorted position shows the content of
    its undistorted position (bilinear; positions outside the input take the edge value).
    ``inverse=True`` undoes it: the output pixel at an undistorted position shows the input at its
    distorted position (what a registration does to a distorted frame).
    ``centre`` defaults to the image centre, ``half_diagonal_px`` to :func:`half_diagonal`."""
    if k == 0:
        return image
    H, W = image.shape[-2:]
    centre = image_centre(H, W) if centre is None else centre
    R = half_diagonal(H, W) if half_diagonal_px is None else half_diagonal_px
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64, device=image.device),
                          torch.arange(W, dtype=torch.float64, device=image.device), indexing="ij")
    src = (distort_points if inverse else undistort_points)(torch.stack([u, v], -1), k, centre, R)
    grid = torch.stack([2 * src[..., 0] / max(W - 1, 1) - 1, 2 * src[..., 1] / max(H - 1, 1) - 1], -1)
    x = image.reshape(-1, 1, H, W)
    grid = grid.to(x.dtype).unsqueeze(0).expand(x.shape[0], H, W, 2)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.reshape(image.shape)


def vignette(image: torch.Tensor, amount: float, centre: Optional[Sequence[float]] = None,
             half_diagonal_px: Optional[float] = None) -> torch.Tensor:
    """``(..., H, W)`` image times ``max(0, 1 - amount (r / R)^2)``, ``r`` the distance (pixels) from
    ``centre`` (default the image centre), ``R`` the half-diagonal (:func:`half_diagonal`)."""
    if amount == 0:
        return image
    H, W = image.shape[-2:]
    R = half_diagonal(H, W) if half_diagonal_px is None else half_diagonal_px
    r = _radius(H, W, centre, image.dtype, image.device)
    return image * (1 - amount * (r / R) ** 2).clamp(min=0)


def collimation_mask(H: int, W: int, radius_frac: Optional[float],
                     centre: Optional[Sequence[float]] = None, device=None) -> torch.Tensor:
    """(H, W) bool mask of the circular field: pixel centres within ``radius_frac * min(H, W) / 2``
    pixels of ``centre`` (default the image centre); ``radius_frac=None``: all True."""
    if radius_frac is None:
        return torch.ones(H, W, dtype=torch.bool, device=device)
    return _radius(H, W, centre, torch.float64, device) <= radius_frac * min(H, W) / 2


def quantum_noise(intensity_rel: torch.Tensor, photons_per_pixel: Optional[float],
                  electronic_noise: float = 0.0,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Noisy ``I/I0``: ``(Poisson(N0 * I/I0) + Normal(0, electronic_noise)) / N0`` with ``N0`` the
    flat-field quanta per pixel; so the variance of I/I0 is ``(I/I0) / N0 + (sigma_e / N0)^2``.
    ``photons_per_pixel=None``: returned unchanged (no noise)."""
    if photons_per_pixel is None:
        if electronic_noise > 0:
            raise FluoroRegError("electronic_noise is in quanta: set photons_per_pixel too")
        return intensity_rel
    if generator is None:
        generator = torch.Generator(device=intensity_rel.device).manual_seed(0)
    n = torch.poisson(intensity_rel.clamp(min=0) * photons_per_pixel, generator=generator)
    if electronic_noise > 0:
        n = n + electronic_noise * torch.randn(n.shape, generator=generator, dtype=n.dtype,
                                               device=n.device)
    return n / photons_per_pixel


def to_display(intensity_rel: torch.Tensor, model: DetectorModel,
               field_mask: Optional[torch.Tensor] = None,
               window_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, dict]:
    """Map ``(..., H, W)`` I/I0 to the output image: ``-log(I/I0)`` for ``output="log"`` (I/I0
    clamped at ``0.5 / photons_per_pixel``, or 1e-6), then per frame the window (the
    ``model.window`` percentiles of the values inside ``field_mask``) to [0, 1] (a flat field
    gives 0.5), ``gamma``, and ``bits`` quantisation to integer levels (float tensor in
    ``[0, 2**bits - 1]``). Outside the field the image is 0. Returns the image and
    ``{"low", "high"}`` (per-frame window bounds in the pre-window unit, ``None`` when no window),
    ``"percentiles"``, ``"levels"`` (``2**bits - 1`` or ``None``) and ``"output"``.
    ``window_mask`` (H, W), when given, restricts the window's percentiles further (for example to
    the anatomy, so that air around it burns out to white as under automatic brightness control)."""
    x = intensity_rel
    H, W = x.shape[-2:]
    field = (torch.ones(H, W, dtype=torch.bool, device=x.device) if field_mask is None
             else field_mask.to(device=x.device, dtype=torch.bool))
    if model.output == "log":
        floor = 0.5 / model.photons_per_pixel if model.photons_per_pixel else 1e-6
        x = -torch.log(x.clamp(min=floor))
    lo = hi = None
    if model.window is not None:
        chosen = field if window_mask is None else field & window_mask.to(device=x.device, dtype=torch.bool)
        if not chosen.any():
            chosen = field
        vals = torch.where(chosen, x, torch.full_like(x, float("nan"))).reshape(*x.shape[:-2], -1)
        q = torch.tensor([model.window[0] / 100, model.window[1] / 100], dtype=x.dtype,
                         device=x.device)
        qs = torch.nanquantile(vals, q, dim=-1)  # (2, ...)
        lo, hi = qs[0], qs[1]
        span = (hi - lo)[..., None, None]
        y = torch.where(span > 0, (x - lo[..., None, None]) / span.clamp(min=1e-300),
                        torch.full_like(x, 0.5)).clamp(0, 1)
    else:
        y = x
    if model.gamma != 1:
        y = y.clamp(min=0) ** model.gamma
    levels = None if model.bits is None else 2 ** model.bits - 1
    if levels is not None:
        y = torch.round(y.clamp(0, 1) * levels)
    y = torch.where(field, y, torch.zeros_like(y))
    return y, {"low": lo, "high": hi, "percentiles": model.window, "levels": levels,
               "output": model.output}


def detect(transmission: torch.Tensor, pixel_spacing_mm: Pair = 1.0,
           principal_point: Optional[Sequence[float]] = None, model: Optional[DetectorModel] = None,
           generator: Optional[torch.Generator] = None, window_mask: Optional[torch.Tensor] = None) -> dict:
    """Turn the primary transmission ``I/I0`` ((H, W) or (B, H, W), energy-integrated, in [0, 1])
    into a detected frame: heel -> scatter (added) -> focal spot + detector blur -> quantum +
    electronic noise -> distortion -> vignetting -> collimation -> display mapping.

    ``pixel_spacing_mm``: detector pixel size (mm; one value or (row, col)), converting the
    focal-spot and scatter widths to pixels. ``principal_point``: ``(u0, v0)`` pixels, centre of
    distortion, vignetting and collimation (default the image centre). ``model``: the effects
    (default :class:`DetectorModel()`). ``generator``: the only source of randomness.

    Returns ``{"image"}``: (H, W) / (B, H, W) output, floats in [0, 1] or integer levels stored as
    floats; ``"levels"``: ``2**bits - 1`` or ``None``; ``"intensity"``: the noisy, distorted,
    vignetted and collimated I/I0 that enters the display mapping; ``"field"``: (H, W) bool
    collimation mask; ``"window"``: the window used (see :func:`to_display`).
    """
    model = DetectorModel() if model is None else model
    t = torch.as_tensor(transmission)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if t.dim() not in (2, 3):
        raise FluoroRegError(f"transmission must be (H, W) or (B, H, W), got shape {tuple(t.shape)}")
    H, W = t.shape[-2:]
    sy, sx = _pair(pixel_spacing_mm)
    if not (sy > 0 and sx > 0):
        raise FluoroRegError("pixel_spacing_mm must be > 0")
    centre = image_centre(H, W) if principal_point is None else tuple(map(float, principal_point))

    x = apply_heel(t, model.heel, model.heel_axis)
    x = add_scatter(x, model.scatter_to_primary,
                    (model.scatter_sigma_mm / sy, model.scatter_sigma_mm / sx))
    fs_mm = model.focal_spot_mm * (model.magnification - 1) / 2.355
    sig = [math.sqrt((fs_mm / s) ** 2 + model.detector_blur_px ** 2) for s in (sy, sx)]
    x = apply_blur(x, tuple(sig))
    x = quantum_noise(x, model.photons_per_pixel, model.electronic_noise, generator)
    x = distort_image(x, model.distortion_k, centre)
    x = vignette(x, model.vignetting, centre)
    field = collimation_mask(H, W, model.collimation_radius, centre, device=x.device)
    x = torch.where(field, x, torch.zeros_like(x))
    if window_mask is not None and model.distortion_k:
        window_mask = distort_image(window_mask.to(x.dtype), model.distortion_k, centre) > 0.5
    image, window = to_display(x, model, field, window_mask)
    return {"image": image, "levels": window["levels"], "intensity": x, "field": field,
            "window": window}
