"""Image similarities: identity, intensity invariance, masking, gradients, broadcasting, errors,
a numpy reference for gradient correlation, and the peak at zero shift."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from FluoroRegistrationLib.errors import FluoroRegError
from FluoroRegistrationLib.similarity import (
    SIMILARITIES, Similarity, get_similarity, gradient_correlation, multiscale_ncc, ncc,
    patch_gradient_ncc, patch_ncc)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny images: OpenMP wake-ups would cost more than the work (badly so on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SIMS = {"ncc": ncc, "gcc": gradient_correlation, "patch-ncc": patch_ncc,
        "multiscale-ncc": multiscale_ncc, "patch-gncc": patch_gradient_ncc}
SMALL = {"patch-ncc": {"patch": 5}, "multiscale-ncc": {"patches": (3, 5)}, "patch-gncc": {"patch": 5}}


def smooth(shape, seed=0, sigma=2.0, dtype=torch.float64):
    """Gaussian-blurred noise (B, 1, H, W), values O(1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    r = int(3 * sigma)
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / sigma) ** 2)
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="circular"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="circular"), k.view(1, 1, -1, 1))
    return (x / x.std()).to(dtype)


def disc_mask(h, w, cy, cx, radius, dtype=torch.float64):
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= radius ** 2).to(dtype)[None, None]


def soft_mask(h, w, dtype=torch.float64):
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    m = torch.exp(-(((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / (0.3 * h * w)))
    return (0.2 + 0.8 * m).to(dtype)[None, None]


@pytest.mark.parametrize("name", SIMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("masked", [False, True])
def test_identical_images_give_one(name, dtype, masked):
    a = smooth((2, 1, 40, 48), dtype=dtype)
    mask = disc_mask(40, 48, 20, 24, 15, dtype) if masked else None
    val = SIMS[name](a, a.clone(), mask)
    assert val.shape == (2,) and val.dtype == dtype
    assert torch.allclose(val, torch.ones_like(val), atol=1e-5), val
    loss = SIMILARITIES[name](a, a.clone(), mask)
    assert torch.allclose(loss, torch.zeros_like(loss), atol=1e-5)


@pytest.mark.parametrize("name", SIMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_positive_affine_intensity_invariance(name, dtype):
    a = smooth((2, 1, 40, 40), seed=1, dtype=dtype)
    b = smooth((2, 1, 40, 40), seed=2, dtype=dtype) + 0.5 * a
    mask = soft_mask(40, 40, dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    for m in (None, mask):
        ref = SIMS[name](a, b, m)
        for alpha, beta in ((3.0, 7.0), (0.01, -2.0), (250.0, 1000.0)):
            val = SIMS[name](a, alpha * b + beta, m)
            assert torch.allclose(val, ref, atol=tol), (alpha, beta, val, ref)


@pytest.mark.parametrize("name", ["ncc", "gcc"])
def test_negative_scale_gives_minus_one(name):
    a = smooth((1, 1, 32, 32), seed=3)
    val = SIMS[name](a, -2.0 * a + 5.0)
    assert torch.allclose(val, -torch.ones_like(val), atol=1e-9)


@pytest.mark.parametrize("name", SIMS)
def test_outside_mask_is_ignored(name):
    h = w = 40
    a = smooth((1, 1, h, w), seed=4)
    b = smooth((1, 1, h, w), seed=5) + 0.3 * a
    mask = disc_mask(h, w, 20, 20, 12) * soft_mask(h, w)
    ref = SIMS[name](a, b, mask)
    # pixels farther than one pixel (the 3x3 stencil) from the mask support: change them wildly
    near = F.max_pool2d((mask > 0).double(), 3, stride=1, padding=1) > 0
    noise = 1e3 * torch.randn(2, 1, h, w, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    a2 = torch.where(near, a, noise[:1])
    b2 = torch.where(near, b, noise[1:])
    assert (a2 != a).sum() > 500
    val = SIMS[name](a2, b2, mask)
    assert torch.allclose(val, ref, atol=1e-6, rtol=0), (val, ref)
    if name in ("ncc", "patch-ncc", "multiscale-ncc"):  # no stencil: even the margin may change
        a3 = torch.where(mask > 0, a, noise[:1])
        assert torch.allclose(SIMS[name](a3, b, mask), SIMS[name](a, b, mask), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", SIMILARITIES)
@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck(name, masked):
    a = smooth((1, 1, 12, 12), seed=6, sigma=1.0).requires_grad_(True)
    b = smooth((1, 1, 12, 12), seed=7, sigma=1.0) + 0.5 * a.detach()
    mask = soft_mask(12, 12) if masked else None
    fn = SIMILARITIES[name]
    kw = SMALL.get(name, {})
    assert torch.autograd.gradcheck(lambda x: fn(x, b, mask, **kw), (a,), eps=1e-6, atol=1e-5)
    b_leaf = b.clone().requires_grad_(True)  # and w.r.t. the frame
    assert torch.autograd.gradcheck(lambda y: fn(a.detach(), y, mask, **kw), (b_leaf,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", SIMS)
def test_broadcasting_matches_loop(name):
    a = smooth((3, 1, 32, 32), seed=8)
    b = smooth((1, 1, 32, 32), seed=9) + 0.4 * a[:1]
    mask = soft_mask(32, 32)
    fn = SIMS[name]
    batched = fn(a, b, mask)
    looped = torch.cat([fn(a[i:i + 1], b, mask) for i in range(3)])
    assert batched.shape == (3,)
    assert torch.allclose(batched, looped, atol=1e-12)
    masks = torch.cat([mask, disc_mask(32, 32, 16, 16, 10), mask * 0.5])  # per-item masks
    batched = fn(a, b, masks)
    looped = torch.cat([fn(a[i:i + 1], b, masks[i:i + 1]) for i in range(3)])
    assert torch.allclose(batched, looped, atol=1e-12)
    assert torch.allclose(fn(b, a), torch.cat([fn(b, a[i:i + 1]) for i in range(3)]), atol=1e-12)


@pytest.mark.parametrize("name", SIMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_image_gives_zero_without_nan(name, dtype):
    b = smooth((1, 1, 24, 24), seed=10, dtype=dtype)
    for c in (0.0, 0.3, 1234.5):
        a = torch.full((1, 1, 24, 24), c, dtype=dtype, requires_grad=True)
        val = SIMS[name](a, b)
        assert torch.isfinite(val).all() and abs(val.item()) < 1e-6, (c, val)
        val.sum().backward()
        assert torch.isfinite(a.grad).all()


def test_errors():
    a = torch.rand(2, 1, 16, 16)
    with pytest.raises(FluoroRegError, match="mask is empty"):
        ncc(a, a, torch.zeros(1, 1, 16, 16))
    with pytest.raises(FluoroRegError, match=r"mask is empty .*batch item\(s\) \[1\]"):
        patch_ncc(a, a, torch.stack([torch.ones(1, 16, 16), torch.zeros(1, 16, 16)]))
    lonely = torch.zeros(1, 1, 16, 16)
    lonely[..., 5, 5:9] = 1  # a line: no pixel has its whole 3x3 neighbourhood inside
    assert torch.isfinite(ncc(a, a, lonely)).all()
    for fn in (gradient_correlation, patch_gradient_ncc):
        with pytest.raises(FluoroRegError, match="mask is empty after shrinking"):
            fn(a, a, lonely)
    with pytest.raises(FluoroRegError, match="image sizes differ"):
        ncc(a, torch.rand(1, 1, 16, 17))
    with pytest.raises(FluoroRegError, match=r"has shape \(16, 16\); pass a \(B, 1, H, W\)"):
        ncc(a, torch.rand(16, 16))
    with pytest.raises(FluoroRegError, match=r"b has shape \(1, 3, 16, 16\)"):
        ncc(a, torch.rand(1, 3, 16, 16))
    with pytest.raises(FluoroRegError, match="do not broadcast"):
        ncc(a, torch.rand(3, 1, 16, 16))
    with pytest.raises(FluoroRegError, match="mask is"):
        ncc(a, a, torch.ones(1, 1, 8, 8))
    bad = a.clone()
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(FluoroRegError, match="b contains NaN"):
        gradient_correlation(a, bad)
    with pytest.raises(FluoroRegError, match="a contains NaN"):
        patch_ncc(bad, a)
    for m in (torch.full((1, 1, 16, 16), 1.5), torch.full((1, 1, 16, 16), -0.1)):
        with pytest.raises(FluoroRegError, match=r"mask weights must lie in \[0, 1\]"):
            ncc(a, a, m)
    with pytest.raises(FluoroRegError, match="dtype"):
        ncc(torch.ones(1, 1, 4, 4, dtype=torch.int64), a)
    for p in (4, 1, 2.0):
        with pytest.raises(FluoroRegError, match="odd integer"):
            patch_ncc(a, a, patch=p)
    with pytest.raises(FluoroRegError, match="too small"):
        gradient_correlation(torch.rand(1, 1, 2, 8), torch.rand(1, 1, 2, 8))
    with pytest.raises(FluoroRegError, match="did you mean 'patch-ncc'"):
        get_similarity("patchncc")
    with pytest.raises(FluoroRegError, match="choose one of gcc, ncc"):
        get_similarity("mutual-information")
    with pytest.raises(FluoroRegError, match="no option"):
        Similarity("ncc", patch=5)
    for fn in SIMS.values():  # every message is a FluoroRegError, so a ValueError too
        with pytest.raises(ValueError):
            fn(a, a, torch.zeros(1, 1, 16, 16))


def _np_gcc(a, b, w):
    """Penney's gradient correlation written out with numpy loops (valid interior)."""
    k = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)
    h, wd = a.shape

    def corr(img, kern):
        out = np.zeros((h - 2, wd - 2))
        for i in range(3):
            for j in range(3):
                out += kern[i, j] * img[i:i + h - 2, j:j + wd - 2]
        return out

    inside = np.ones((h - 2, wd - 2), bool)
    for i in range(3):
        for j in range(3):
            inside &= w[i:i + h - 2, j:j + wd - 2] > 0
    ww = w[1:-1, 1:-1] * inside

    def wncc(x, y):
        mx, my = (ww * x).sum() / ww.sum(), (ww * y).sum() / ww.sum()
        cov = (ww * (x - mx) * (y - my)).sum()
        return cov / np.sqrt((ww * (x - mx) ** 2).sum() * (ww * (y - my) ** 2).sum())

    return 0.5 * (wncc(corr(a, k), corr(b, k)) + wncc(corr(a, k.T), corr(b, k.T)))


def test_gcc_matches_numpy_reference():
    a = smooth((1, 1, 30, 26), seed=11)
    b = smooth((1, 1, 30, 26), seed=12) + 0.6 * a
    mask = disc_mask(30, 26, 14, 12, 10) * soft_mask(30, 26)
    for m in (None, mask):
        mnp = np.ones((30, 26)) if m is None else m[0, 0].numpy()
        ref = _np_gcc(a[0, 0].numpy(), b[0, 0].numpy(), mnp)
        assert abs(gradient_correlation(a, b, m).item() - ref) < 1e-6
        assert abs(1 - Similarity("gcc")(a, b, m).item() - ref) < 1e-6


@pytest.mark.parametrize("name", SIMS)
def test_peak_at_zero_shift(name):
    big = smooth((1, 1, 80, 80), seed=13, sigma=3.0)
    a = big[..., 8:72, 8:72]
    mask = disc_mask(64, 64, 32, 32, 26)
    for m in (None, mask):
        vals = [SIMS[name](a, big[..., 8:72, 8 + k:72 + k], m).item() for k in range(4)]
        assert all(x > y for x, y in zip(vals, vals[1:])), (name, vals)
        assert abs(vals[0] - 1) < 1e-6


def test_module_and_registry():
    a = smooth((2, 1, 24, 24), seed=14, dtype=torch.float32)
    b = smooth((1, 1, 24, 24), seed=15, dtype=torch.float32)
    for name, loss in SIMILARITIES.items():
        assert get_similarity(name) is loss
        mod = Similarity(name)
        assert torch.equal(mod(a, b), loss(a, b))
    assert get_similarity("Patch_NCC") is SIMILARITIES["patch-ncc"]
    mod = Similarity("patch-ncc", patch=7)
    assert "patch=7" in repr(mod)
    assert torch.allclose(mod(a, b), 1 - patch_ncc(a, b, patch=7))
    assert torch.allclose(Similarity()(a, b), 1 - gradient_correlation(a, b))


@pytest.mark.cuda
def test_cuda_matches_cpu():
    a = smooth((2, 1, 32, 32), seed=16, dtype=torch.float32)
    b = smooth((1, 1, 32, 32), seed=17, dtype=torch.float32)
    mask = soft_mask(32, 32, torch.float32)
    for fn in SIMS.values():
        cpu = fn(a, b, mask)
        gpu = fn(a.cuda(), b.cuda(), mask.cuda())
        assert torch.allclose(gpu.cpu(), cpu, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_frame_loss_equals_the_similarity_with_its_gradient(dtype):
    from FluoroRegistrationLib.similarity import SIMILARITIES, FrameLoss, get_similarity

    g = torch.Generator().manual_seed(0)
    frame = torch.rand(1, 1, 40, 50, generator=g, dtype=dtype)
    renders = (frame + 0.3 * torch.rand(4, 1, 40, 50, generator=g, dtype=dtype)).requires_grad_()
    mask = torch.zeros(1, 1, 40, 50, dtype=dtype)
    mask[..., 5:30, 8:40] = 1
    for name in SIMILARITIES:
        for options in ({}, {"patch": 7} if "patch" in name and "multi" not in name else {"eps": 1e-4}):
            reference = get_similarity(name)(renders, frame, mask, **options)
            prepared = FrameLoss(name, frame, mask, **options)(renders)
            (g_ref,) = torch.autograd.grad(reference.sum(), renders)
            (g_pre,) = torch.autograd.grad(prepared.sum(), renders)
            assert torch.equal(prepared, reference) and torch.equal(g_pre, g_ref), (name, options)
    with pytest.raises(FluoroRegError, match="no option"):
        FrameLoss("gcc", frame, mask, patch=5)
    with pytest.raises(FluoroRegError, match="frame of"):
        FrameLoss("gcc", frame, mask)(renders[..., :30, :])
