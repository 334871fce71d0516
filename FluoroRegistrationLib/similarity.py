"""Image similarities between a rendered DRR and a fluoroscopy frame, for 2D/3D registration.

Images are ``(B, 1, H, W)``; ``mask`` is optional, ``(B, 1, H, W)`` or ``(1, 1, H, W)``, with
weights in [0, 1] (0 = ignore the pixel). Any of ``a``, ``b``, ``mask`` may have batch 1 and is
broadcast (the common case: B candidate renderings against one frame). Every similarity returns
``(B,)`` values with 1 for a perfect match; every ``*_loss`` returns ``1 - similarity`` (minimise
it). All are differentiable in both images, in float32 and float64, on any device.

Notation (w = mask weights; sums over the pixels of one batch item):
``E_w[x] = sum(w x) / sum(w)``, ``x~ = x - E_w[x]``, ``Var_w(x) = E_w[x~^2]``,
``Cov_w(x, y) = E_w[x~ y~]``.
An image whose weighted variance is at rounding level (``Var_w(x) <= (16 eps_mach)^2 E_w[x^2]``)
counts as constant: its centred values are set to exactly 0, so its similarity with anything is 0
(NCC of a constant image is undefined) and no NaN appears, forward or backward.
"""

from __future__ import annotations

import difflib
import functools
import inspect

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import FluoroRegError

__all__ = ["ncc", "gradient_correlation", "patch_ncc", "multiscale_ncc", "patch_gradient_ncc",
           "ncc_loss", "gcc_loss", "patch_ncc_loss", "multiscale_ncc_loss",
           "patch_gradient_ncc_loss", "SIMILARITIES", "get_similarity", "Similarity", "FrameLoss"]


# ------------------------------------------------------------------------------------ checks
def _check_image(name: str, x) -> None:
    if not isinstance(x, Tensor):
        raise FluoroRegError(f"{name} is a {type(x).__name__}, not a torch.Tensor; "
                             "pass a (B, 1, H, W) tensor")
    if x.dim() != 4 or x.shape[1] != 1:
        raise FluoroRegError(f"{name} has shape {tuple(x.shape)}; pass a (B, 1, H, W) tensor "
                             "(add dimensions with x[None, None] or x.unsqueeze(1))")
    if name != "mask" and not x.is_floating_point():
        raise FluoroRegError(f"{name} has dtype {x.dtype}; pass float32 or float64 images")


def _prepare(a: Tensor, b: Tensor, mask, stencil: bool = False):
    """Check the inputs; return ``(a, b, w)``; with ``stencil``, w is the Sobel-shrunk mask."""
    _check_image("a", a)
    _check_image("b", b)
    if a.shape[-2:] != b.shape[-2:]:
        raise FluoroRegError(f"image sizes differ: a is {tuple(a.shape[-2:])} and b is "
                             f"{tuple(b.shape[-2:])} (H, W); render at the frame's size or resample")
    if a.device != b.device:
        raise FluoroRegError(f"a is on {a.device} and b on {b.device}; move both to one device")
    dtype = torch.promote_types(a.dtype, b.dtype)
    sizes = [a.shape[0], b.shape[0]]
    if mask is None:
        w = torch.ones((1, 1) + tuple(a.shape[-2:]), dtype=dtype, device=a.device)
    else:
        _check_image("mask", mask)
        if mask.shape[-2:] != a.shape[-2:]:
            raise FluoroRegError(f"mask is {tuple(mask.shape[-2:])} but the images are "
                                 f"{tuple(a.shape[-2:])} (H, W); pass a mask of the images' size")
        w = mask.to(device=a.device, dtype=dtype)
        sizes.append(w.shape[0])
    batch = max(sizes)
    if any(s not in (1, batch) for s in sizes):
        raise FluoroRegError(f"batch sizes {sizes} (a, b[, mask]) do not broadcast; give each batch B or 1")
    if stencil and min(a.shape[-2:]) < 3:
        raise FluoroRegError(f"images of {tuple(a.shape[-2:])} are too small for the 3x3 Sobel stencil; "
                             "pass images of at least 3x3")
    ws = _shrink(w) if stencil else w
    flags = torch.stack([~torch.isfinite(a).all(), ~torch.isfinite(b).all(),
                         ((w < 0) | (w > 1) | torch.isnan(w)).any(),
                         (ws.sum(dim=(1, 2, 3)) <= 0).any()]).tolist()
    if flags[0] or flags[1]:
        raise FluoroRegError(f"{'a' if flags[0] else 'b'} contains NaN or Inf values; "
                             "fix the image (e.g. torch.nan_to_num) before comparing")
    if flags[2]:
        raise FluoroRegError("mask weights must lie in [0, 1] (and not be NaN); "
                             "clamp or rescale the mask, e.g. mask.clamp(0, 1)")
    if flags[3]:
        items = torch.nonzero(ws.sum(dim=(1, 2, 3)) <= 0).flatten().tolist()
        why = (" after shrinking it to the pixels whose 3x3 Sobel neighbourhood lies inside it"
               if stencil and bool((w.sum(dim=(1, 2, 3)) > 0).all()) else "")
        raise FluoroRegError(f"mask is empty{why} (batch item(s) {items}); "
                             "pass a mask with enough nonzero pixels over the bone")
    return a, b, ws


def _check_patch(patch) -> int:
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 3 or patch % 2 == 0:
        raise FluoroRegError(f"patch size {patch!r} is not an odd integer >= 3; use e.g. patch=11")
    return patch


# ----------------------------------------------------------------------------------- helpers
def _shrink(w: Tensor) -> Tensor:
    """Sobel-valid mask ``(., 1, H-2, W-2)``: ``w(p) [w > 0 on all of p's 3x3 neighbourhood]``."""
    support = (w > 0).to(w.dtype)
    inside = -F.max_pool2d(-support, 3, stride=1)  # 3x3 min, 'valid' (no padding)
    return w[..., 1:-1, 1:-1] * inside


def _sobel(x: Tensor):
    """3x3 Sobel gradients on the valid interior: ``(B, 1, H, W) -> 2 x (B, 1, H-2, W-2)``.

    ``gx = x (*) [[-1,0,1],[-2,0,2],[-1,0,1]] / 8`` (cross-correlation, x = columns), ``gy`` its
    transpose; computed separably with slices (exact, fast in float64, any device).
    """
    dx = x[..., 2:] - x[..., :-2]
    dy = x[..., 2:, :] - x[..., :-2, :]
    gx = (dx[..., :-2, :] + 2 * dx[..., 1:-1, :] + dx[..., 2:, :]) / 8
    gy = (dy[..., :-2] + 2 * dy[..., 1:-1] + dy[..., 2:]) / 8
    return gx, gy


def _box(x: Tensor, patch: int) -> Tensor:
    """Mean over the ``patch x patch`` window at every pixel, zero-padded, same size as ``x``.

    Separable window sums built by doubling (O(log patch) exact slice additions, no prefix-sum
    cancellation); faster than pooling kernels on small images and the same on any device.
    """
    r = patch // 2
    x = F.pad(x, (r, r, r, r))
    for dim in (-1, -2):
        n = x.shape[dim] - patch + 1
        out, part, width, offset, rest = None, x, 1, 0, patch
        while rest:
            if rest & 1:
                piece = part.narrow(dim, offset, n)
                out = piece if out is None else out + piece
                offset += width
            rest >>= 1
            if rest:
                m = part.shape[dim] - width
                part = part.narrow(dim, 0, m) + part.narrow(dim, width, m)
                width *= 2
        x = out
    return x / patch ** 2


def _wsum(x: Tensor) -> Tensor:
    return x.sum(dim=(1, 2, 3))


def _centre(x: Tensor, w: Tensor):
    """``(x~, Var_w(x))`` per batch item; rounding-level (constant) images give exactly zero."""
    mass = _wsum(w)
    mean = _wsum(w * x) / mass
    xc = x - mean.view(-1, 1, 1, 1)
    var = _wsum(w * xc * xc) / mass
    tol = 16 * torch.finfo(x.dtype).eps
    live = (var > tol ** 2 * (_wsum(w * x * x) / mass)).to(x.dtype)
    return xc * live.view(-1, 1, 1, 1), var * live


def _ncc_against(a: Tensor, w: Tensor, b_terms, eps: float) -> Tensor:
    """NCC of ``a`` with the image whose ``_centre(b, w)`` is ``b_terms``."""
    bc, vb = b_terms
    ac, va = _centre(a, w)
    cov = _wsum(w * ac * bc) / _wsum(w)
    return cov / torch.sqrt(va * vb + eps ** 2)


def _standardise(x: Tensor, w: Tensor) -> Tensor:
    xc, var = _centre(x, w)
    return xc * torch.rsqrt(torch.where(var > 0, var, torch.ones_like(var))).view(-1, 1, 1, 1)


def _patch_ncc_terms(b: Tensor, w: Tensor, patch: int):
    """The terms of the patch NCC that depend on ``b`` and ``w`` alone: ``b`` standardised and its
    box-filtered moments (zero-padded: outside the image counts as weight 0), filtered once, not once
    per batch item of ``a`` (a batch of renders against one frame)."""
    b = _standardise(b, w)
    wb = w * b
    w_, wb = torch.broadcast_tensors(w, wb)
    mass, sb, sbb = _box(torch.cat([w_, wb, wb * b], dim=1), patch).split(1, dim=1)
    return b, mass, sb, sbb


def _patch_ncc_against(a: Tensor, w: Tensor, b_terms, patch: int, eps: float) -> Tensor:
    """The patch NCC of ``a`` with ``b`` under ``w``, given ``b_terms = _patch_ncc_terms(b, w, patch)``."""
    b, mass, sb, sbb = b_terms
    a = _standardise(a, w)
    wa = w * a
    sa, saa, sab = _box(torch.cat(torch.broadcast_tensors(wa, wa * a, wa * b), dim=1), patch).split(1, dim=1)
    mass, sb, sbb, sa, saa, sab = torch.broadcast_tensors(mass, sb, sbb, sa, saa, sab)
    valid = mass > 1e-6
    m = torch.where(valid, mass, torch.ones_like(mass))
    ma, mb = sa / m, sb / m
    va = (saa / m - ma * ma).clamp_min(0)
    vb = (sbb / m - mb * mb).clamp_min(0)
    cov = sab / m - ma * mb
    # v = E[x^2] - mu^2 from box sums carries rounding of up to ~tol * E[x^2]: a window where either
    # image is flat (a bone's DRR is exactly 0 off the bone) has a variance of pure rounding, and its
    # "correlation" is noise. Each window's weight fades to 0 as either variance falls to that level,
    # v^4 / (v^4 + f^4) with f = tol E[x^2] (1/2 at v = f, 1e-4 at v = f / 10), so such windows count
    # for nothing however the sums were ordered or cropped.
    tol = 256 * torch.finfo(a.dtype).eps
    fa, fb = tol * (va + ma * ma), tol * (vb + mb * mb)
    local = cov / torch.sqrt(va * vb + fa * fb + eps ** 2)
    tiny = torch.finfo(a.dtype).tiny
    ra, rb = (va / fa.clamp_min(tiny)) ** 2, (vb / fb.clamp_min(tiny)) ** 2
    live = (ra * ra / (ra * ra + 1)) * (rb * rb / (rb * rb + 1))
    weight = torch.where(valid, mass, torch.zeros_like(mass)) * live
    return _wsum(weight * local) / _wsum(weight).clamp_min(torch.finfo(a.dtype).tiny)


# ------------------------------------------- each similarity: the frame's terms, then a render's side
# ``o`` holds the options (eps, patch, patches); the frame's side checks the patch sizes, after _prepare
def _ncc_terms(b, w, o):
    return _centre(b, w)


def _ncc_side(a, w, terms, o):
    return _ncc_against(a, w, terms, o["eps"])


def _gcc_terms(b, w, o):
    return tuple(_centre(g, w) for g in _sobel(b))


def _gcc_side(a, w, terms, o):
    (ax, ay), (tx, ty) = _sobel(a), terms
    return 0.5 * (_ncc_against(ax, w, tx, o["eps"]) + _ncc_against(ay, w, ty, o["eps"]))


def _patch_terms(b, w, o):
    return _patch_ncc_terms(b, w, _check_patch(o["patch"]))


def _patch_side(a, w, terms, o):
    return _patch_ncc_against(a, w, terms, o["patch"], o["eps"])


def _multiscale_terms(b, w, o):
    patches = o["patches"]
    if isinstance(patches, int) or len(patches) == 0:
        raise FluoroRegError(f"patches={patches!r} is not a non-empty sequence of odd sizes; "
                             "use e.g. (5, 11, 23)")
    return _centre(b, w), [_patch_ncc_terms(b, w, _check_patch(p)) for p in patches]


def _multiscale_side(a, w, terms, o):
    total = _ncc_against(a, w, terms[0], 1e-8)
    for p, t in zip(o["patches"], terms[1]):
        total = total + _patch_ncc_against(a, w, t, p, o["eps"])
    return total / (1 + len(o["patches"]))


def _patch_gncc_terms(b, w, o):
    patch = _check_patch(o["patch"])
    return tuple(_patch_ncc_terms(g, w, patch) for g in _sobel(b))


def _patch_gncc_side(a, w, terms, o):
    (ax, ay), (tx, ty) = _sobel(a), terms
    return 0.5 * (_patch_ncc_against(ax, w, tx, o["patch"], o["eps"])
                  + _patch_ncc_against(ay, w, ty, o["patch"], o["eps"]))


# name -> (Sobel stencil?, the frame's terms (b, w, options), the similarity of a render given them)
_SPLIT = {
    "ncc": (False, _ncc_terms, _ncc_side),
    "gcc": (True, _gcc_terms, _gcc_side),
    "patch-ncc": (False, _patch_terms, _patch_side),
    "multiscale-ncc": (False, _multiscale_terms, _multiscale_side),
    "patch-gncc": (True, _patch_gncc_terms, _patch_gncc_side),
}


def _similarity(key: str, a: Tensor, b: Tensor, mask, options: dict) -> Tensor:
    """Similarity ``key`` of ``a`` with ``b``: the inputs checked, then the frame's terms and the render's side."""
    stencil, terms, side = _SPLIT[key]
    a, b, w = _prepare(a, b, mask, stencil=stencil)
    return side(a, w, terms(b, w, options), options)


# ------------------------------------------------------------------------------ similarities
def ncc(a: Tensor, b: Tensor, mask: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """Weighted Pearson correlation ``Cov_w(a, b) / sqrt(Var_w(a) Var_w(b) + eps^2)``.

    Args: a, b: ``(B, 1, H, W)`` (batch 1 broadcasts); mask: ``(B|1, 1, H, W)``, weights in [0, 1].
    Returns: ``(B,)`` in [-1, 1]; 1 for ``b = alpha a + beta`` (alpha > 0), -1 for alpha < 0.
    """
    return _similarity("ncc", a, b, mask, {"eps": eps})


def gradient_correlation(a: Tensor, b: Tensor, mask: Tensor | None = None,
                         eps: float = 1e-8) -> Tensor:
    """Gradient correlation (Penney et al. 1998): ``0.5 (NCC_w'(a_x, b_x) + NCC_w'(a_y, b_y))``.

    ``a_x, a_y`` are the 3x3 Sobel gradients (see ``_sobel``) on the valid interior
    ``(H-2, W-2)``: no padding, so no border artefacts. The mask is shrunk to the Sobel stencil,
    ``w'(p) = w(p) [w > 0 on all of p's 3x3 neighbourhood]``, so a pixel outside the mask cannot
    leak in through a neighbour's gradient. NCC is ``ncc`` above (weighted, mean-centred).

    Args / Returns: as ``ncc``. Needs H, W >= 3 and a non-empty shrunk mask.
    """
    return _similarity("gcc", a, b, mask, {"eps": eps})


def patch_ncc(a: Tensor, b: Tensor, mask: Tensor | None = None, patch: int = 11,
              eps: float = 1e-6) -> Tensor:
    """Weighted mean of local (patch x patch, centred at every pixel) NCCs.

    Each image is first standardised globally, ``x <- x~ / sqrt(Var_w(x))`` (exact for NCC; it
    removes float32 cancellation and makes ``eps`` relative to each image's contrast). With
    ``box`` the mean over the window (zero-padded: outside the image counts as weight 0):
    ``M = box(w)``, ``mu_a = box(w a) / M``, ``v_a = box(w a^2) / M - mu_a^2``,
    ``c = box(w a b) / M - mu_a mu_b``, ``r = c / sqrt(v_a v_b + f_a f_b + eps^2)``;
    value ``= sum(omega r) / sum(omega)`` with ``omega = M [M > 1e-6] g(v_a / f_a) g(v_b / f_b)``,
    ``g(s) = s^4 / (s^4 + 1)``: local mask mass times local contrast presence, so windows with no
    mask weight or a flat image in them drop out; 0 when no window has any (e.g. a constant image).
    ``f_x = 256 eps_mach box(w x^2) / M`` is the rounding level of ``v_x`` (negligible in float64),
    so float32 rounding noise in a flat window never counts as contrast, and the value does not
    depend on how far the image extends beyond the mask's windows.

    Args: as ``ncc``; patch: odd window side >= 3 (pixels). Returns: ``(B,)``.
    """
    return _similarity("patch-ncc", a, b, mask, {"patch": patch, "eps": eps})


def multiscale_ncc(a: Tensor, b: Tensor, mask: Tensor | None = None, patches=(5, 11, 23),
                   eps: float = 1e-6) -> Tensor:
    """``(ncc(a, b) + sum_p patch_ncc(a, b, patch=p)) / (1 + len(patches))`` (``eps``: the patches').

    Args: as ``ncc``; patches: odd window sides >= 3. Returns: ``(B,)``.
    """
    return _similarity("multiscale-ncc", a, b, mask, {"patches": patches, "eps": eps})


def patch_gradient_ncc(a: Tensor, b: Tensor, mask: Tensor | None = None, patch: int = 11,
                       eps: float = 1e-6) -> Tensor:
    """Patch NCC of the Sobel gradient images (xReg's "grad-NCC", patch-wise):
    ``0.5 (patch_ncc_w'(a_x, b_x) + patch_ncc_w'(a_y, b_y))`` on the valid interior with the
    Sobel-shrunk mask ``w'`` exactly as in ``gradient_correlation``.

    Args: as ``patch_ncc``. Returns: ``(B,)``.
    """
    return _similarity("patch-gncc", a, b, mask, {"patch": patch, "eps": eps})


class FrameLoss:
    """``FrameLoss(name, frame, mask, **options)(a)`` equals ``get_similarity(name)(a, frame, mask,
    **options)``, ``(B,)`` losses, for many renders ``a`` against one frame: what depends on the frame
    and the mask alone (the shrunk mask, the frame's gradients, its standardisation and box-filtered
    moments) is computed and checked once, and a call makes no host synchronisation.

    Shapes: frame (1, 1, H, W); mask (1, 1, H, W) or None; a (B, 1, H, W) renders (not checked for
    NaN per call: they come from the renderer, and a NaN loss shows in the optimiser's value).
    """

    def __init__(self, name: str, frame: Tensor, mask: Tensor | None = None, **options):
        self.name = _key(name)
        self.options = _options(get_similarity(name), self.name, options)
        stencil, terms, self._side = _SPLIT[self.name]
        _, b, self.w = _prepare(frame, frame, mask, stencil=stencil)
        self.size = tuple(frame.shape[-2:])
        self.terms = terms(b, self.w, self.options)
        self.frame, self.mask = frame, mask

    def __call__(self, a: Tensor) -> Tensor:
        if tuple(a.shape[-2:]) != self.size or a.dim() != 4:
            raise FluoroRegError(f"render of shape {tuple(a.shape)} against a frame of {self.size}; render at the frame's size")
        return 1 - self._side(a, self.w, self.terms, self.options)

    def reweighted(self, a: Tensor, keep: Tensor) -> Tensor:
        """The loss with each render's weights multiplied by its own ``keep`` ((B, 1, H, W) in [0, 1]):
        the frame's side computed again for each (as ``get_similarity(name)(a, frame, mask * keep)``)."""
        mask = keep if self.mask is None else self.mask * keep
        return 1 - _similarity(self.name, a, self.frame, mask, self.options)


# ------------------------------------------------------------------------------------ losses
def _as_loss(similarity, name: str):
    @functools.wraps(similarity)  # same signature (a, b, mask=None, ...)
    def loss(*args, **kwargs) -> Tensor:
        return 1 - similarity(*args, **kwargs)

    loss.__name__ = loss.__qualname__ = name
    loss.__doc__ = f"``1 - {similarity.__name__}(a, b, mask, ...)``: ``(B,)`` loss to minimise."
    return loss


ncc_loss = _as_loss(ncc, "ncc_loss")
gcc_loss = _as_loss(gradient_correlation, "gcc_loss")
patch_ncc_loss = _as_loss(patch_ncc, "patch_ncc_loss")
multiscale_ncc_loss = _as_loss(multiscale_ncc, "multiscale_ncc_loss")
patch_gradient_ncc_loss = _as_loss(patch_gradient_ncc, "patch_gradient_ncc_loss")

SIMILARITIES = {"gcc": gcc_loss, "ncc": ncc_loss, "patch-ncc": patch_ncc_loss,
                "multiscale-ncc": multiscale_ncc_loss, "patch-gncc": patch_gradient_ncc_loss}


def _key(name) -> str:
    """A similarity's name as SIMILARITIES keys it (case and ``_`` / ``-`` do not matter)."""
    return str(name).strip().lower().replace("_", "-")


def _options(fn, key: str, given: dict) -> dict:
    """The similarity ``fn``'s options: its defaults, overridden by ``given``; an unknown one is an error."""
    defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items() if k not in ("a", "b", "mask")}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise FluoroRegError(f"similarity '{key}' has no option(s) {unknown}; its options are {list(defaults)}")
    return defaults | given


def get_similarity(name: str):
    """The loss registered as ``name`` (case and ``_`` / ``-`` do not matter)."""
    key = _key(name)
    if key not in SIMILARITIES:
        close = difflib.get_close_matches(key, SIMILARITIES, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise FluoroRegError(f"unknown similarity '{name}'; {hint}"
                             f"choose one of {', '.join(SIMILARITIES)}")
    return SIMILARITIES[key]


class Similarity(torch.nn.Module):
    """``Similarity(name, **options)(rendered, frame, mask=None)`` -> ``(B,)`` loss, 1 - similarity.

    ``options`` are the named loss's keyword arguments (e.g. ``patch=11``), checked here.
    """

    def __init__(self, name: str = "gcc", **kwargs):
        super().__init__()
        self.fn = get_similarity(name)
        self.name = _key(name)
        _options(self.fn, self.name, kwargs)
        self.kwargs = kwargs

    def forward(self, rendered: Tensor, frame: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.fn(rendered, frame, mask=mask, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join([repr(self.name)] + [f"{k}={v!r}" for k, v in self.kwargs.items()])
