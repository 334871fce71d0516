"""docs/CONVENTIONS.md's sentences about frames, asserted one by one."""

import json

import pytest
import torch

from FluoroRegistrationLib import FluoroRegError
from FluoroRegistrationLib.geometry import Camera

CAM = Camera(sdd_mm=1020.0, rows=400, cols=500, row_spacing_mm=0.3, col_spacing_mm=0.25)


def proj(x, y, z, cam=CAM):
    return cam.project(torch.tensor([x, y, z], dtype=torch.float64))


def test_principal_point_defaults_to_image_centre():
    assert CAM.u0 == pytest.approx((500 - 1) / 2) and CAM.v0 == pytest.approx((400 - 1) / 2)


def test_point_on_principal_ray_projects_to_principal_point():
    for z in (300.0, 700.0, 1020.0):
        u, v = proj(0.0, 0.0, z).tolist()
        assert (u, v) == pytest.approx((CAM.u0, CAM.v0))


def test_plus_x_moves_projection_to_larger_columns():
    assert proj(5.0, 0.0, 700.0)[0] > CAM.u0
    assert proj(5.0, 0.0, 700.0)[1] == pytest.approx(CAM.v0)


def test_plus_y_moves_projection_to_larger_rows():
    assert proj(0.0, 5.0, 700.0)[1] > CAM.v0
    assert proj(0.0, 5.0, 700.0)[0] == pytest.approx(CAM.u0)


def test_point_nearer_the_source_projects_larger():
    near = proj(10.0, 10.0, 400.0) - torch.tensor([CAM.u0, CAM.v0], dtype=torch.float64)
    far = proj(10.0, 10.0, 800.0) - torch.tensor([CAM.u0, CAM.v0], dtype=torch.float64)
    assert (near.abs() > far.abs()).all()
    assert near.tolist() == pytest.approx((2 * far).tolist())


def test_focal_lengths_are_sdd_over_pixel_spacing():
    assert CAM.fx == pytest.approx(1020.0 / 0.25) and CAM.fy == pytest.approx(1020.0 / 0.3)
    K = CAM.K()
    assert torch.allclose(K, torch.tensor([[CAM.fx, 0, CAM.u0], [0, CAM.fy, CAM.v0], [0, 0, 1]], dtype=torch.float64))


def test_point_on_detector_plane_projects_by_pixel_spacing():
    # a detector-plane point one column pitch to the right is one pixel to the right
    u, v = proj(0.25, 0.3, 1020.0).tolist()
    assert u == pytest.approx(CAM.u0 + 1) and v == pytest.approx(CAM.v0 + 1)


def test_pixel_grid_is_row_col_with_u_col_v_row():
    uv = CAM.pixel_uv(torch.float64)
    assert uv.shape == (400, 500, 2)
    assert uv[3, 7].tolist() == [7.0, 3.0]


def test_rays_hit_their_own_pixel_centres():
    source, detector = CAM.rays(torch.float64)
    assert source.tolist() == [0.0, 0.0, 0.0]
    assert torch.allclose(detector[..., 2], torch.full((400, 500), 1020.0, dtype=torch.float64))
    back = CAM.project(detector)
    assert torch.allclose(back, CAM.pixel_uv(torch.float64), atol=1e-9)


def test_calibration_json_roundtrip_and_optional_principal_point(tmp_path):
    path = tmp_path / "calib.json"
    path.write_text(json.dumps({"sdd_mm": 1020.0, "rows": 512, "cols": 512, "row_spacing_mm": 0.3,
                                "col_spacing_mm": 0.3}))
    cam = Camera.from_json(path)
    assert (cam.u0, cam.v0) == (255.5, 255.5)
    CAM.to_json(tmp_path / "c2.json")
    assert Camera.from_json(tmp_path / "c2.json") == CAM


@pytest.mark.parametrize("data, message", [
    ({"rows": 512, "cols": 512, "row_spacing_mm": 0.3, "col_spacing_mm": 0.3}, "missing key"),
    ({"sdd_mm": -5, "rows": 512, "cols": 512, "row_spacing_mm": 0.3, "col_spacing_mm": 0.3}, "sdd_mm must be a positive number"),
    ({"sdd_mm": 1000, "rows": 0, "cols": 512, "row_spacing_mm": 0.3, "col_spacing_mm": 0.3}, "rows must be a positive"),
    ({"sdd_mm": "abc", "rows": 512, "cols": 512, "row_spacing_mm": 0.3, "col_spacing_mm": 0.3}, "sdd_mm must be a number"),
])
def test_bad_calibration_gives_one_line_error(tmp_path, data, message):
    path = tmp_path / "calib.json"
    path.write_text(json.dumps(data))
    with pytest.raises(FluoroRegError, match=message) as err:
        Camera.from_json(path)
    assert "\n" not in str(err.value)


def test_missing_and_malformed_calibration_files(tmp_path):
    with pytest.raises(FluoroRegError, match="calibration file not found"):
        Camera.from_json(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(FluoroRegError, match="not valid JSON"):
        Camera.from_json(tmp_path / "bad.json")


def test_calibration_must_match_frame():
    with pytest.raises(FluoroRegError, match="frame is 256x256 pixels but the calibration says 400x500"):
        CAM.check_frame(256, 256)


def test_resized_camera_keeps_the_detector_geometry():
    small = CAM.resized(100, 125)
    point = torch.tensor([12.0, -7.0, 650.0], dtype=torch.float64)
    big_uv, small_uv = CAM.project(point), small.project(point)
    # the same physical detector position: (u + 0.5) scales with the pixel count
    assert ((small_uv + 0.5) * torch.tensor([4.0, 4.0], dtype=torch.float64)).tolist() == pytest.approx(
        (big_uv + 0.5).tolist())


def test_the_conventions_page_lists_every_registration_setting_with_its_default():
    """docs/CONVENTIONS.md's "Registration configuration" table names every field of every stage
    with the default the code has (so the page cannot drift from RegistrationConfig)."""
    import dataclasses
    import re
    from pathlib import Path

    from FluoroRegistrationLib.register import RegistrationConfig

    page = (Path(__file__).resolve().parents[1] / "docs" / "CONVENTIONS.md").read_text()
    rows = {m.group(1): m.group(3) for m in re.finditer(r"^\| `(\w+): (\w+)` \| (.*) \|$", page, re.M)}
    config = RegistrationConfig()
    for stage in dataclasses.fields(config):
        value = getattr(config, stage.name)
        if not dataclasses.is_dataclass(value):
            continue
        assert stage.name in rows, f"no row for {stage.name}"
        for f in dataclasses.fields(value):
            default = getattr(value, f.name)
            assert f"`{f.name}`" in rows[stage.name], (stage.name, f.name)
            shown = "null" if default is None else ("(true)" if default else "(false)") if isinstance(default, bool) else (
                "(" + ", ".join(f"{v:g}" for v in default) + ")" if isinstance(default, tuple) else
                f'"{default}"' if isinstance(default, str) else f"{default:g}")
            assert f"`{f.name}` {shown}" in rows[stage.name] or f"`{f.name}` ({shown[1:-1]})" in rows[stage.name] \
                or shown in rows[stage.name].split(f"`{f.name}`")[1][:40], (stage.name, f.name, shown)
