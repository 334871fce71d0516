"""The registration's search parts and what they rest on: scans, grids, distinct minima, the cropped
objective, coarsened grids, soft-tissue background and the calibration floor, each against ground truth."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from FluoroRegistrationLib.geometry import (
    Camera, CentredParameterization, lateral_view, rotation_angle, rotation_from_rotvec, transform_points)
from FluoroRegistrationLib.register import (
    Ranking, RegistrationConfig, calibration_floor, distinct_minima, grid_search, line_search, rotation_scan)
from FluoroRegistrationLib.register.optimize import parabola_vertex
from FluoroRegistrationLib.register.pipeline import _BoneRegistration, _BoneView, _long_axis, _Objective, _search_starts, _weights
from FluoroRegistrationLib.render import render
from FluoroRegistrationLib.similarity import get_similarity
from FluoroRegistrationLib.volume import (
    ImageVolume, RenderVolume, SOFT_TISSUE_HU, bone_volume, hu_to_mu, registration_volumes)

F64 = torch.float64


def test_line_search_finds_the_bottom_of_a_shallow_parabola_between_grid_points():
    target = 1.37  # not on the 0.5 grid
    f = lambda x: 0.01 * (x[:, 5] - target) ** 2 + (x[:, :5] ** 2).sum(-1)  # noqa: E731
    x, loss, log = line_search(f, torch.zeros(6, dtype=F64), 5, 6.0, points=25)
    assert x[5] == pytest.approx(target, abs=1e-9) and loss == pytest.approx(0.0, abs=1e-12)
    assert torch.all(x[:5] == 0) and log.iterations == 25 and len(log.losses) == 25


def test_parabola_vertex_of_three_samples_and_none_where_they_do_not_curve_up():
    f = lambda t: 2.0 * (t - 0.3) ** 2 + 5.0  # noqa: E731
    assert parabola_vertex(f(-1.0), f(0.0), f(1.0)) == pytest.approx(0.3, abs=1e-12)
    assert parabola_vertex(1.0, 2.0, 1.5) is None and parabola_vertex(1.0, 1.0, 1.0) is None


def test_grid_search_finds_the_best_grid_point_over_two_axes():
    best = torch.tensor([0.08, -0.04, 0, 0, 0, 0], dtype=F64)
    f = lambda x: ((x - best) ** 2).sum(-1)  # noqa: E731
    offsets = torch.arange(-3, 4, dtype=F64) * 0.04
    x, loss, log = grid_search(f, torch.zeros(6, dtype=F64), (0, 1), offsets)
    assert torch.allclose(x, best) and loss == pytest.approx(0.0, abs=1e-15) and log.iterations == 49


def test_rotation_scan_turns_the_pose_about_an_axis_through_the_centre():
    centre = torch.tensor([10.0, -5.0, 3.0], dtype=F64)
    par = CentredParameterization(centre, lateral_view(centre, 700.0))
    x0 = torch.tensor([0.1, -0.2, 0.3, 2.0, -1.0, 4.0], dtype=F64)
    axis = torch.tensor([1.0, 2.0, -2.0], dtype=F64) / 3.0
    turn = 0.3  # on the grid below
    target = rotation_from_rotvec(turn * axis) @ par.pose(x0)[:3, :3]

    def f(x):  # the angle (rad) between each pose's rotation and the target
        return rotation_angle(par.pose(x)[..., :3, :3] @ target.transpose(-1, -2))

    x, loss, log = rotation_scan(f, x0, axis, torch.arange(-10, 11, dtype=F64) * 0.05)
    assert loss == pytest.approx(0.0, abs=1e-6) and log.iterations == 21
    assert torch.equal(x[3:], x0[3:])  # the centre does not move
    assert torch.allclose(transform_points(par.pose(x), centre[None]), transform_points(par.pose(x0), centre[None]))


def test_the_long_axis_of_an_elongated_bone_is_its_first_principal_direction():
    direction = torch.tensor([2.0, -1.0, 2.0], dtype=F64) / 3.0
    g = torch.Generator().manual_seed(1)
    points = torch.randn(3000, 1, generator=g, dtype=F64) * 40 * direction + torch.randn(3000, 3, generator=g, dtype=F64) * 8
    bone = RenderVolume(torch.zeros(2, 2, 2), torch.eye(4, dtype=F64), "shaft", centroid=torch.zeros(3, dtype=F64),
                        points=points)
    assert abs(float(_long_axis(bone) @ direction)) > 0.999
    assert _long_axis(RenderVolume(torch.zeros(2, 2, 2), torch.eye(4, dtype=F64), "no points")) is None


def test_distinct_minima_keeps_separated_poses_in_order_of_loss():
    x = torch.tensor([[0.0] * 6, [0.01] + [0.0] * 5, [1.0] + [0.0] * 5, [1.02] + [0.0] * 5, [0, 0, 0, 5.0, 0, 0]],
                     dtype=F64)
    loss = torch.tensor([0.1, 0.05, 0.2, 0.3, 0.4], dtype=F64)
    kept = distinct_minima(x, loss, 3, torch.tensor([0.1] * 3 + [1.0] * 3, dtype=F64))
    assert [float(k[0]) for k in kept] == [0.01, 1.0, 0.0] and float(kept[2][3]) == 5.0


def test_the_initial_pose_joins_the_starts_unless_a_minimum_is_near_it():
    separation = torch.tensor([0.1] * 3 + [5.0] * 3, dtype=F64)
    far = torch.tensor([[0.3, 0, 0, 0, 0, 0], [0, 0, 0, 0, 12.0, 0]], dtype=F64)
    loss = torch.tensor([0.2, 0.3], dtype=F64)
    starts = _search_starts((far, loss), far[0], separation, Ranking(starts=4))
    assert len(starts) == 3 and torch.equal(starts[-1], torch.zeros(6, dtype=F64))
    assert len(_search_starts((far, loss), far[0], separation, Ranking(keep_initial=False))) == 2
    near = torch.cat([far, torch.tensor([[0.05, 0, 0, 1.0, 0, 0]], dtype=F64)])
    starts = _search_starts((near, torch.tensor([0.2, 0.3, 0.1], dtype=F64)), near[2], separation, Ranking())
    assert len(starts) == 3 and not any(bool((s == 0).all()) for s in starts)


@pytest.fixture(scope="module")
def box_volume():
    """A 30 x 20 x 10 voxel box of mu 0.03-0.05 (textured, so no image window is flat) on a 1.5 mm
    grid with a zero border, centred at the origin."""
    mu = torch.zeros(14, 24, 34)
    mu[2:12, 2:22, 2:32] = 0.03 + 0.02 * torch.rand(10, 20, 30, generator=torch.Generator().manual_seed(3))
    A = torch.diag(torch.tensor([1.5, 1.5, 1.5, 1.0], dtype=F64))
    A[:3, 3] = -torch.tensor([33, 23, 13], dtype=F64) * 1.5 / 2
    return RenderVolume(mu, A, "box", centroid=torch.zeros(3, dtype=F64))


def test_a_coarsened_grid_keeps_line_integrals_and_position(box_volume):
    camera = Camera(1000.0, 64, 64, 2.0, 2.0)
    pose = lateral_view(torch.zeros(3, dtype=F64), 700.0).float()
    fine = render(box_volume, camera, pose, "fast")
    coarse_volume = box_volume.coarsened(2)
    assert coarse_volume is box_volume.coarsened(2) and box_volume.coarsened(1) is box_volume
    assert float(coarse_volume.mu.sum()) * 8 == pytest.approx(float(box_volume.mu.sum()), rel=1e-6)
    assert torch.all(coarse_volume.mu[0] == 0) and torch.all(coarse_volume.mu[:, :, -1] == 0)
    coarse = render(coarse_volume, camera, pose, "fast")
    # total projected mass (sum of line integrals x pixel area at the object) and its centre agree
    assert float(coarse.sum()) == pytest.approx(float(fine.sum()), rel=0.01)
    v, u = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    centre = lambda img: torch.stack([(img * u).sum(), (img * v).sum()]) / img.sum()  # noqa: E731
    assert torch.allclose(centre(coarse[0, 0]), centre(fine[0, 0]), atol=0.05)


def test_the_objective_on_the_masks_bounding_box_equals_the_whole_image(box_volume):
    # float64, so that the two differently sized sums agree to rounding
    box_volume = box_volume.to(dtype=F64)
    camera = Camera(1000.0, 96, 96, 1.5, 1.5)
    truth = lateral_view(torch.zeros(3, dtype=F64), 700.0)
    frame = render(box_volume, camera, truth, "fast") + 0.01 * torch.rand(
        1, 1, 96, 96, generator=torch.Generator().manual_seed(0), dtype=F64)
    mask = torch.zeros(1, 1, 96, 96, dtype=F64)
    mask[..., 30:60, 25:70] = 1
    par = CentredParameterization(box_volume.centroid, truth)
    x = torch.tensor([[0.02, -0.01, 0.03, 1.0, -2.0, 3.0], [0, 0, 0, 0, 0, 0]], dtype=F64)
    for name in ("patch-gncc", "gcc", "ncc", "patch-ncc", "multiscale-ncc"):
        loss_fn = get_similarity(name)
        weights = _weights(mask, None, (96, 96), 0)
        objective = _Objective(box_volume, camera, par, frame, weights, name)
        assert objective.frame.shape[-1] < 96  # it did crop
        whole = loss_fn(render(box_volume, camera, par.pose(x), "fast"), frame, weights)
        assert torch.allclose(objective(x), whole, atol=1e-10), name


def test_the_mask_grows_by_its_level_s_dilation_tight_for_the_search_and_wider_at_fine_levels():
    mask = torch.zeros(1, 1, 200, 200)
    mask[..., 90:110, 80:120] = 1
    for r in (0, 4, 12):
        w = _weights(mask, None, (200, 200), r)[0, 0]  # a square structuring element of half-width r
        rows, cols = torch.nonzero(w > 0, as_tuple=True)
        assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (90 - r, 109 + r, 80 - r, 119 + r)
        assert int(w.sum()) == (20 + 2 * r) * (40 + 2 * r)


def test_the_dilation_is_in_millimetres_at_the_bone_and_wider_after_the_ranking_level(box_volume):
    camera = Camera(1000.0, 512, 512, 0.5, 0.5)
    truth = lateral_view(box_volume.centroid, 700.0)
    frame = torch.zeros(1, 1, 512, 512)
    mask = torch.zeros(1, 1, 512, 512, dtype=torch.bool)
    mask[..., 200:300, 240:280] = True
    view = _BoneView("A", camera, frame, mask, None, None)
    job = _BoneRegistration(box_volume, [view], truth, RegistrationConfig(), None)
    # 0.5 mm pixels seen 700 mm from the source over 1000 mm: 0.35 mm at the bone; levels 2.8 .. 0.35 mm
    assert [lv.size for (lv,) in job.levels] == [(64, 64), (128, 128), (256, 256), (512, 512)]
    for index, ((level,), dilation_mm) in enumerate(zip(job.levels, (3.6, 3.6, 10.8, 10.8))):
        w = job.level_objective(index).objectives[0].weights[0, 0]
        rows = torch.nonzero(w.sum(1) > 0).flatten()
        grown = (len(rows) - 100 * level.size[0] / 512) / 2  # pixels added on each side
        assert abs(grown - round(dilation_mm / level.pixel_mm)) <= 1, (index, grown)


def test_background_subtraction_draws_the_bone_in_excess_of_soft_tissue():
    hu = np.full((20, 20, 20), SOFT_TISSUE_HU, np.float32)
    hu[8:12, 8:12, 8:12] = 1000.0
    labels = np.zeros((20, 20, 20), np.int32)
    labels[8:12, 8:12, 8:12] = 1
    ct, lab = ImageVolume.from_spacing(hu, (1.0,) * 3), ImageVolume.from_spacing(labels, (1.0,) * 3)
    plain = bone_volume(ct, lab, 1, "bone", dilate=1)
    excess = registration_volumes(ct, lab, {"bone": 1})["bone"]
    # the dilated rim is soft tissue: drawn as mu(50 HU) plainly, as nothing in excess of it
    assert float(plain.mu.max()) == pytest.approx(float(hu_to_mu(np.float32(1000.0))))
    assert float(excess.mu.max()) == pytest.approx(float(hu_to_mu(np.float32(1000.0)) - hu_to_mu(np.float32(SOFT_TISSUE_HU))))
    assert int((plain.mu > 0).sum()) > int((excess.mu > 0).sum()) == 64


def test_calibration_floor_matches_the_geometry_of_the_error():
    camera = Camera(1000.0, 512, 512, 0.5, 0.5)
    centre = torch.tensor([0.0, 0.0, 24.0], dtype=F64)
    truth = lateral_view(centre, 700.0)
    points = torch.randn(2000, 3, generator=torch.Generator().manual_seed(0), dtype=F64) * 30 + centre
    _, same = calibration_floor(truth, centre, points, camera, camera)
    assert same["mtre_mm"] < 1e-6
    depth = float(transform_points(truth, centre[None])[0, 2])
    # sdd off by 5 mm: the bone moves along the beam by 5 x depth / sdd
    _, e = calibration_floor(truth, centre, points, camera, replace(camera, sdd_mm=1005.0))
    assert e["out_of_plane_mm"] == pytest.approx(5 * depth / 1000.0, rel=0.02) and e["in_plane_mm"] < 0.05
    # principal point off by 2 px: the bone shifts across the beam by 2 px x spacing x depth / sdd
    _, e = calibration_floor(truth, centre, points, camera, replace(camera, u0=camera.u0 + 2))
    assert e["in_plane_mm"] == pytest.approx(2 * 0.5 * depth / 1000.0, rel=0.02)


def test_the_default_configuration_ranks_several_starts_in_a_box_that_holds_the_study_s_starts():
    c = RegistrationConfig()
    assert c.ranking.starts > 1 and c.tilt_probe.enabled and c.depth_scan.enabled
    assert len(c.pyramid.pixel_mm) == len(c.pyramid.iterations)
    # the box holds the study's farthest starts (24 mm initial mTRE, up to 32 deg of rotation)
    assert math.isclose(c.search.range_deg, 25.0) and math.isclose(c.search.range_mm, 30.0)
