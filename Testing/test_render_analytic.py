"""Renderers against analytic line integrals: a uniform box, a uniform ball, a dense blob.

What "exact" can mean here: the exact renderer integrates the *voxel model* exactly (boxes for
``nearest``, the trilinear interpolant for ``linear``). A voxel-aligned box is represented exactly
by both models, so there the renderer must match the analytic chord to rounding. A ball is not:
its voxelised (partial-volume) model differs from the ball by a discretisation error that no
renderer can remove, so the ball tests bound that error instead (second order for ``linear``).
"""

import pytest
import torch

from analytic import ball_chords, ball_volume, blob_volume, box_chords, centred_affine
from FluoroRegistrationLib.geometry import Camera, pose_from_rotvec
from FluoroRegistrationLib.render import render
from FluoroRegistrationLib.volume import RenderVolume

F64 = torch.float64
MU = 0.02
BOX_CAM = Camera(1000.0, 64, 64, 1.5, 1.5)
POSES = [[0.0, 0.0, 0.0], [0.3, 0.2, 0.1], [0.7, -0.3, 0.8]]


def pose(rotvec, t=(3.0, -2.0, 700.0)):
    return pose_from_rotvec(torch.tensor(rotvec, dtype=F64), torch.tensor(t, dtype=F64))


@pytest.fixture(scope="module")
def box():
    mu = torch.zeros(64, 64, 64, dtype=F64)
    mu[20:40, 15:45, 10:50] = MU  # k, j, i
    vol = RenderVolume(mu, centred_affine(mu.shape))
    lo = torch.tensor([9.5, 14.5, 19.5], dtype=F64) - 31.5
    hi = torch.tensor([49.5, 44.5, 39.5], dtype=F64) - 31.5
    return vol, lo, hi


def relative_errors(image, truth, where):
    return (image - truth).abs()[where] / truth[where]


@pytest.mark.parametrize("rotvec", POSES)
@pytest.mark.parametrize("interpolation", ["nearest", "linear"])
def test_exact_renderer_matches_box_chords(box, rotvec, interpolation):
    vol, lo, hi = box
    T = pose(rotvec)
    truth, clean = box_chords(BOX_CAM, T, lo, hi, MU, margin=1.0, ramp=0.5 if interpolation == "linear" else 0.0)
    assert clean.sum() > 500
    image = render(vol, BOX_CAM, T, "exact", interpolation=interpolation)[0, 0]
    err = relative_errors(image, truth, clean)
    assert err.max() < 1e-4, f"max relative error {err.max():.2e}"
    if interpolation == "nearest":  # the voxel model is the box itself: every ray, edges included
        assert (image - truth).abs().max() < 1e-10


@pytest.mark.parametrize("rotvec", POSES[:2])
def test_fast_renderer_matches_box_chords_away_from_edges(box, rotvec):
    vol, lo, hi = box
    T = pose(rotvec)
    truth, clean = box_chords(BOX_CAM, T, lo, hi, MU, margin=1.0, ramp=0.5)
    image = render(vol, BOX_CAM, T, "fast")[0, 0]
    err = relative_errors(image, truth, clean)
    assert err.max() < 0.01, f"max relative error {err.max():.2e}"


@pytest.mark.parametrize("rotvec", POSES)
def test_fast_renderer_is_within_one_percent_of_the_exact_integral(box, rotvec):
    # same voxel model (trilinear): the only difference is the fast renderer's one-voxel step
    vol, _, _ = box
    exact = render(vol, BOX_CAM, pose(rotvec), "exact")
    fast = render(vol, BOX_CAM, pose(rotvec), "fast")
    assert (fast - exact).norm() / exact.norm() < 0.01


@pytest.fixture(scope="module")
def ball():
    return ball_volume(88, 40.0, MU)


BALL_CAM = Camera(1000.0, 72, 72, 1.2, 1.2)


@pytest.mark.parametrize("rotvec", POSES)
def test_renderers_match_ball_chords(ball, rotvec):
    T = pose(rotvec, (5.0, -3.0, 700.0))
    truth, impact = ball_chords(BALL_CAM, T[:3, 3], 40.0, MU)
    inner = impact < 20.0
    assert inner.sum() > 200
    # partial-volume voxelisation limits every voxel renderer (see module docstring)
    limits = {("exact", "linear"): 3e-3, ("exact", "nearest"): 1.5e-2, ("fast", None): 1e-2}
    for (method, interpolation), limit in limits.items():
        kwargs = {} if interpolation is None else {"interpolation": interpolation}
        image = render(ball, BALL_CAM, T, method, **kwargs)[0, 0]
        err = relative_errors(image, truth, inner)
        assert err.max() < limit, f"{method}/{interpolation}: max relative error {err.max():.2e}"


@pytest.mark.parametrize("method", ["fast", "exact"])
def test_small_blob_projects_to_projection_of_its_centroid(method):
    vol = blob_volume(24, (10.3, 12.6, 11.2), sigma_vox=0.8)
    cam = Camera(1000.0, 48, 48, 1.0, 1.0)
    T = pose([0.4, -0.2, 0.3], (1.5, -2.5, 600.0))
    image = render(vol, cam, T, method)[0, 0]
    centre_mm = vol.volume_from_index @ torch.tensor([10.3 + 1, 12.6 + 1, 11.2 + 1, 1.0], dtype=F64)  # +1: padding
    expected = cam.project((T @ centre_mm)[:3])
    uv = cam.pixel_uv(F64)
    weights = image / image.sum()
    centroid = (weights[..., None] * uv).sum((0, 1))
    # perspective shifts an intensity centroid by ~ sigma^2 / depth terms: far below 0.1 px here
    assert (centroid - expected).norm() < 0.1, f"{(centroid - expected).tolist()}"


def test_a_region_of_the_detector_is_that_crop_of_the_whole_image_with_its_gradient(box):
    from FluoroRegistrationLib import FluoroRegError

    volume, camera = box[0], BOX_CAM
    poses = torch.stack([pose([0.1, -0.2, 0.05]), pose([0.3, 0.2, -0.1], (10.0, 5.0, 680.0))]).requires_grad_()
    whole = render(volume, camera, poses, "fast")
    (grad_whole,) = torch.autograd.grad(whole[..., 20:40, 5:30].sum(), poses)
    part = render(volume, camera, poses, "fast", region=(20, 40, 5, 30))
    (grad_part,) = torch.autograd.grad(part.sum(), poses)
    assert part.shape == (2, 1, 20, 25)
    assert torch.allclose(part, whole[..., 20:40, 5:30], rtol=1e-5, atol=1e-6)
    assert torch.allclose(grad_part, grad_whole, rtol=1e-4, atol=1e-6)
    assert float(whole[..., 20:40, 5:30].detach().amax()) > 0 and float(whole[..., 40:, 30:].detach().amax()) > 0  # cuts the box
    corner = render(volume, camera, poses.detach(), "fast", region=(0, 3, 0, 3))  # off the box: zeros
    assert corner.shape == (2, 1, 3, 3) and float(corner.abs().max()) == 0.0
    with pytest.raises(FluoroRegError, match="not inside"):
        render(volume, camera, poses.detach(), "fast", region=(0, camera.rows + 1, 0, 5))
