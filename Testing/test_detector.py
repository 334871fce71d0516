"""Detector and source effects of the fluoroscopy simulator (FluoroRegistrationLib.simulate.detector)."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from FluoroRegistrationLib.errors import FluoroRegError
from FluoroRegistrationLib.simulate import detector as det

D = torch.float64
# every effect off, float output: the detected I/I0 itself
OFF = dict(photons_per_pixel=None, window=None, bits=None, output="intensity")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _moments(img):
    """Centroid (u, v) and variances along cols (u) and rows (v) of a non-negative (H, W) image."""
    img = torch.as_tensor(img, dtype=D)
    H, W = img.shape
    v, u = torch.meshgrid(torch.arange(H, dtype=D), torch.arange(W, dtype=D), indexing="ij")
    s = img.sum()
    cu, cv = (img * u).sum() / s, (img * v).sum() / s
    return (float(cu), float(cv), float((img * (u - cu) ** 2).sum() / s),
            float((img * (v - cv) ** 2).sum() / s))


# ---------------------------------------------------------------- noise
def test_quantum_noise_statistics_on_a_flat_field():
    n0 = 1000.0
    flat = torch.ones(256, 256, dtype=D)
    model = det.DetectorModel(photons_per_pixel=n0, window=None, bits=None)
    out = det.detect(flat, 0.3, None, model, _gen(1))
    img = out["image"]
    assert out["levels"] is None and img.dtype == D and img.shape == (256, 256)
    assert torch.equal(img, out["intensity"])
    assert float(img.mean()) * n0 == pytest.approx(n0, rel=0.01)
    assert float(img.var()) * n0 ** 2 == pytest.approx(n0, rel=0.05)
    # counts are integers: I/I0 * N0 is a whole number of quanta
    assert torch.allclose(img * n0, torch.round(img * n0), atol=1e-9)


def test_electronic_noise_adds_its_variance():
    n0, sigma_e = 1000.0, 20.0
    flat = torch.ones(256, 256, dtype=D)
    model = det.DetectorModel(photons_per_pixel=n0, electronic_noise=sigma_e, window=None, bits=None)
    img = det.detect(flat, 0.3, None, model, _gen(2))["image"]
    assert float(img.mean()) * n0 == pytest.approx(n0, rel=0.01)
    assert float(img.var()) * n0 ** 2 == pytest.approx(n0 + sigma_e ** 2, rel=0.05)


def test_noise_variance_follows_the_transmission():
    n0 = 500.0
    t = torch.full((256, 256), 0.25, dtype=D)
    noisy = det.quantum_noise(t, n0, 0.0, _gen(3))
    assert float(noisy.mean()) == pytest.approx(0.25, rel=0.01)
    assert float(noisy.var()) == pytest.approx(0.25 / n0, rel=0.05)  # Poisson: var(N) = mean(N)


def test_same_seed_same_frame_different_seed_different_noise():
    t = torch.rand(64, 80, generator=_gen(0), dtype=D) * 0.8 + 0.1
    model = det.DetectorModel(photons_per_pixel=300.0, electronic_noise=3.0)
    a = det.detect(t, 0.3, None, model, _gen(7))["image"]
    b = det.detect(t, 0.3, None, model, _gen(7))["image"]
    c = det.detect(t, 0.3, None, model, _gen(8))["image"]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # a default generator is deterministic too and never touches the global RNG
    state = torch.get_rng_state()
    d1 = det.detect(t, 0.3, None, model)["image"]
    d2 = det.detect(t, 0.3, None, model)["image"]
    assert torch.equal(d1, d2) and torch.equal(state, torch.get_rng_state())


# ---------------------------------------------------------------- distortion
@pytest.mark.parametrize("k", [0.04, 0.1, -0.05])
def test_distortion_is_radial_with_the_specified_law_and_exactly_invertible(k):
    H, W = 120, 160
    centre = (83.0, 57.5)
    R = det.half_diagonal(H, W)
    assert R == pytest.approx(0.5 * math.hypot(H - 1, W - 1))
    u, v = torch.meshgrid(torch.linspace(0, W - 1, 9, dtype=D), torch.linspace(0, H - 1, 7, dtype=D),
                          indexing="xy")
    p = torch.stack([u, v], -1).reshape(-1, 2)
    q = det.distort_points(p, k, centre, R)
    c = torch.tensor(centre, dtype=D)
    du, dd = p - c, q - c
    ru, rd = du.norm(dim=-1) / R, dd.norm(dim=-1) / R
    assert torch.allclose(rd, ru * (1 + k * ru ** 2), atol=1e-12)
    # angle about the centre preserved: parallel and same direction
    cross = du[:, 0] * dd[:, 1] - du[:, 1] * dd[:, 0]
    assert torch.allclose(cross, torch.zeros_like(cross), atol=1e-9)
    assert bool(((du * dd).sum(-1) >= 0).all())
    back = det.undistort_points(q, k, centre, R)
    assert torch.allclose(back, p, atol=1e-9, rtol=0)
    again = det.distort_points(det.undistort_points(p, k, centre, R), k, centre, R)
    assert torch.allclose(again, p, atol=1e-9, rtol=0)
    # the centre is a fixed point; at the half-diagonal the displacement is k * R pixels
    assert torch.allclose(det.distort_points(c[None], k, centre, R), c[None])
    edge = c + torch.tensor([[R, 0.0]], dtype=D)
    assert float((det.distort_points(edge, k, centre, R) - edge)[0, 0]) == pytest.approx(k * R)


@pytest.mark.parametrize("k,p", [(0.06, (130, 25)), (0.06, (40, 90)), (-0.04, (20, 100))])
def test_distort_image_moves_a_dot_to_its_distorted_position(k, p):
    H, W = 120, 160
    centre = (83.0, 57.5)
    img = torch.zeros(H, W, dtype=D)
    img[p[1], p[0]] = 1.0  # a single bright pixel at (u, v) = p
    out = det.distort_image(img, k, centre)
    expected = det.distort_points(torch.tensor([p], dtype=D), k, centre, det.half_diagonal(H, W))[0]
    cu, cv, _, _ = _moments(out)
    assert abs(cu - float(expected[0])) < 0.1 and abs(cv - float(expected[1])) < 0.1
    assert abs(cu - p[0]) + abs(cv - p[1]) > 0.5  # it did move
    assert det.distort_image(img, 0.0, centre) is img


def test_distort_image_handles_batches():
    imgs = torch.rand(3, 40, 50, generator=_gen(0), dtype=D)
    out = det.distort_image(imgs, 0.05)
    assert out.shape == imgs.shape
    assert torch.allclose(out[1], det.distort_image(imgs[1], 0.05))


# ---------------------------------------------------------------- blur and scatter
@pytest.mark.parametrize("sigma", [1.5, 2.5, (1.5, 3.0)])
def test_blur_keeps_the_mean_and_has_the_right_second_moment(sigma):
    sr, sc = sigma if isinstance(sigma, tuple) else (sigma, sigma)
    img = torch.zeros(81, 91, dtype=D)
    img[40, 45] = 1.0
    out = det.apply_blur(img, sigma)
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-12)
    cu, cv, var_u, var_v = _moments(out)
    assert (cu, cv) == (pytest.approx(45.0), pytest.approx(40.0))
    assert var_v == pytest.approx(sr ** 2, rel=0.02) and var_u == pytest.approx(sc ** 2, rel=0.02)
    # a flat field stays flat, and the kernel agrees with scipy's (mirror = torch reflect)
    flat = torch.full((30, 40), 0.37, dtype=D)
    assert torch.allclose(det.apply_blur(flat, sigma), flat, atol=1e-14)
    rnd = torch.rand(50, 60, generator=_gen(5), dtype=D)
    ref = ndimage.gaussian_filter(rnd.numpy(), (sr, sc), mode="mirror", truncate=4.0)
    assert np.allclose(det.apply_blur(rnd, sigma).numpy(), ref, atol=1e-12)


def test_blur_off_and_wide_blur_fallback():
    img = torch.rand(2, 20, 24, generator=_gen(1), dtype=D)
    assert det.apply_blur(img, 0.0) is img
    wide = det.apply_blur(img, 8.0)  # 4 sigma > image: FFT on the mirrored image
    assert wide.shape == img.shape
    assert torch.allclose(wide.mean((-2, -1)), img.mean((-2, -1)), atol=1e-12)


def test_scatter_adds_spr_times_the_mean():
    flat = torch.full((96, 128), 0.7, dtype=D)
    out = det.add_scatter(flat, 0.5, 40.0)
    assert torch.allclose(out, torch.full_like(flat, 0.7 * 1.5), atol=1e-12)
    rnd = torch.rand(96, 128, generator=_gen(2), dtype=D)
    scat = det.add_scatter(rnd, 0.8, (30.0, 50.0)) - rnd
    assert float(scat.mean()) == pytest.approx(0.8 * float(rnd.mean()), rel=1e-12)
    assert float(scat.std()) < 0.1 * float(rnd.std())  # heavily smoothed
    # through detect: scatter sigma in mm on a 0.3 mm grid
    model = det.DetectorModel(scatter_to_primary=0.6, scatter_sigma_mm=30.0, **OFF)
    img = det.detect(torch.ones(64, 64, dtype=D), 0.3, None, model)["image"]
    assert torch.allclose(img, torch.full_like(img, 1.6), atol=1e-12)


def test_focal_spot_and_detector_blur_combine_in_quadrature():
    img = torch.zeros(61, 61, dtype=D)
    img[30, 30] = 1.0
    model = det.DetectorModel(focal_spot_mm=0.5, magnification=1.5, detector_blur_px=1.0, **OFF)
    out = det.detect(img, 0.1, None, model)["image"]
    sigma_fs = 0.5 * 0.5 / 2.355 / 0.1
    _, _, var_u, var_v = _moments(out)
    assert var_u == pytest.approx(sigma_fs ** 2 + 1.0, rel=0.02)
    assert var_v == pytest.approx(sigma_fs ** 2 + 1.0, rel=0.02)


# ---------------------------------------------------------------- heel, vignetting, collimation
@pytest.mark.parametrize("axis", ["rows", "cols"])
def test_heel_change_across_the_field(axis):
    heel = 0.15
    model = det.DetectorModel(heel=heel, heel_axis=axis, **OFF)
    img = det.detect(torch.ones(64, 80, dtype=D), 0.3, None, model)["image"]
    prof = img[:, 0] if axis == "rows" else img[0, :]
    other = img[0, :] if axis == "rows" else img[:, 0]
    assert float(prof[-1] - prof[0]) / float(prof.mean()) == pytest.approx(heel, abs=1e-12)
    assert float(prof[0]) == pytest.approx(1 - heel / 2) and float(prof[-1]) == pytest.approx(1 + heel / 2)
    assert torch.allclose(other, other[0].expand_as(other))  # no change along the other axis
    assert float(img.mean()) == pytest.approx(1.0)


def test_vignetting_at_the_corner_is_one_minus_vignetting():
    H, W, amount = 65, 97, 0.25
    img = det.vignette(torch.ones(H, W, dtype=D), amount)
    for i, j in [(0, 0), (0, W - 1), (H - 1, 0), (H - 1, W - 1)]:
        assert float(img[i, j]) == pytest.approx(1 - amount, abs=1e-12)
    assert float(img[32, 48]) == pytest.approx(1.0)
    r2 = (10 - 48) ** 2 + (5 - 32) ** 2
    assert float(img[5, 10]) == pytest.approx(1 - amount * r2 / det.half_diagonal(H, W) ** 2)
    # through detect, about the principal point
    model = det.DetectorModel(vignetting=amount, **OFF)
    out = det.detect(torch.ones(H, W, dtype=D), 0.3, (20.0, 10.0), model)["image"]
    assert float(out[10, 20]) == pytest.approx(1.0) and float(out[H - 1, W - 1]) < 1 - amount


def test_collimation_zeroes_outside_and_windows_on_the_field_only():
    H, W = 100, 120
    frac, centre = 0.8, (55.0, 52.0)
    mask = det.collimation_mask(H, W, frac, centre)
    r = torch.sqrt((torch.arange(W, dtype=D)[None] - 55.0) ** 2 + (torch.arange(H, dtype=D)[:, None] - 52.0) ** 2)
    assert torch.equal(mask, r <= frac * min(H, W) / 2)
    assert bool(det.collimation_mask(H, W, None).all())
    t = 0.2 + 0.7 * torch.rand(H, W, generator=_gen(4), dtype=D)
    model = det.DetectorModel(photons_per_pixel=800.0, collimation_radius=frac, window=(5.0, 95.0),
                              bits=12, focal_spot_mm=0.4, detector_blur_px=0.8)
    out = det.detect(t, 0.3, centre, model, _gen(9))
    assert torch.equal(out["field"], mask)
    assert bool((out["image"][~mask] == 0).all()) and bool((out["intensity"][~mask] == 0).all())
    inside = out["intensity"][mask].numpy()
    lo, hi = np.percentile(inside, [5, 95])
    assert float(out["window"]["low"]) == pytest.approx(lo, rel=1e-9)
    assert float(out["window"]["high"]) == pytest.approx(hi, rel=1e-9)
    assert lo > 0.1  # the zeros outside the field would have pulled it to 0
    assert float(out["image"][mask].min()) == 0 and float(out["image"][mask].max()) == 4095


# ---------------------------------------------------------------- polarity and quantisation
def _disc_phantom(H=96, W=96, radius=15.0):
    v, u = torch.meshgrid(torch.arange(H, dtype=D), torch.arange(W, dtype=D), indexing="ij")
    disc = ((u - 47.5) ** 2 + (v - 47.5) ** 2) <= radius ** 2
    ring = (((u - 47.5) ** 2 + (v - 47.5) ** 2) >= 25 ** 2) & (((u - 47.5) ** 2 + (v - 47.5) ** 2) <= 35 ** 2)
    return torch.where(disc, torch.tensor(0.15, dtype=D), torch.tensor(0.7, dtype=D)), disc, ring


@pytest.mark.parametrize("output", ["intensity", "log"])
def test_bone_is_dark_in_intensity_and_bright_in_log(output):
    t, disc, ring = _disc_phantom()
    model = det.DetectorModel(photons_per_pixel=1000.0, electronic_noise=2.0, focal_spot_mm=0.5,
                              detector_blur_px=1.0, scatter_to_primary=0.5, heel=0.15,
                              distortion_k=0.04, vignetting=0.2, collimation_radius=0.98,
                              output=output, gamma=0.8, bits=12)
    img = det.detect(t, 0.3, None, model, _gen(3))["image"]
    inside, outside = float(img[disc].mean()), float(img[ring].mean())
    if output == "intensity":
        assert inside < outside - 500
    else:
        assert inside > outside + 500


@pytest.mark.parametrize("bits", [8, 12])
@pytest.mark.parametrize("output", ["intensity", "log"])
def test_quantised_output_is_integer_levels(bits, output):
    t, _, _ = _disc_phantom()
    model = det.DetectorModel(photons_per_pixel=500.0, bits=bits, output=output, gamma=1.3)
    out = det.detect(t, 0.3, None, model, _gen(0))
    img, levels = out["image"], 2 ** bits - 1
    assert out["levels"] == levels
    assert torch.equal(img, torch.round(img))
    assert float(img.min()) == 0 and float(img.max()) == levels


def test_float_window_gamma_and_batches():
    t, disc, _ = _disc_phantom()
    batch = torch.stack([t, 0.5 * t])
    model = det.DetectorModel(photons_per_pixel=None, bits=None, window=(0.0, 100.0), gamma=2.0)
    out = det.detect(batch, 0.3, None, model)
    img = out["image"]
    assert img.shape == batch.shape and out["window"]["low"].shape == (2,)
    assert float(img.min()) == 0 and float(img.max()) == 1  # each frame windowed on its own
    assert torch.allclose(img[0], img[1], atol=1e-12)  # the window removes the 0.5 dose change
    single = det.detect(t, 0.3, None, model)["image"]
    assert torch.allclose(single, img[0])
    # gamma: a windowed value y becomes y ** gamma (a ramp from 0.1 to 0.9 along the columns)
    ramp = (0.1 + 0.8 * torch.arange(11, dtype=D) / 10).expand(8, 11)
    img = det.detect(ramp, 1.0, None, model)["image"]
    assert torch.allclose(img, (torch.arange(11, dtype=D) / 10).expand(8, 11) ** 2, atol=1e-12)
    flat = det.detect(torch.ones(8, 8, dtype=D), 1.0, None, model)["image"]
    assert torch.allclose(flat, torch.full_like(flat, 0.25))  # a flat frame maps to 0.5 ** gamma


def test_bad_parameters_are_refused():
    for bad in [dict(photons_per_pixel=0.0), dict(heel_axis="diag"), dict(output="bone"),
                dict(bits=32), dict(window=(60, 40)), dict(distortion_k=-0.5),
                dict(photons_per_pixel=None, electronic_noise=1.0), dict(vignetting=-0.1)]:
        with pytest.raises(FluoroRegError):
            det.DetectorModel(**bad)
    with pytest.raises(FluoroRegError):
        det.detect(torch.ones(2, 2, 4, 4), 0.3)
