"""Frames: formats, collimated field, polarity, Beer-Lambert conversion, size checks, pyramid."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from FluoroRegistrationLib.errors import FluoroRegError
from FluoroRegistrationLib.frame import (POLARITIES, Frame, detect_field, guess_polarity, load_frame, pyramid,
                                         read_frame_array, to_attenuation)
from FluoroRegistrationLib.geometry import Camera

H, W = 96, 128


def _write(array, path, vector=False):
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=vector), str(path))
    return path


def _disc(h=H, w=W, radius=44.0, centre=None):
    cy, cx = centre if centre is not None else ((h - 1) / 2, (w - 1) / 2)
    rr, cc = np.indices((h, w))
    return (rr - cy) ** 2 + (cc - cx) ** 2 <= radius ** 2


def _phantom(noise=True):
    """Line integrals L of a bone-dark scene: air 0, soft tissue band 0.6, bone disc 0.6 + 1.2."""
    rr, cc = np.indices((H, W))
    L = np.zeros((H, W))
    band = np.abs(rr - (H - 1) / 2) < 18
    bone = _disc(radius=12)
    L[band] = 0.6
    L[bone] += 1.2
    if noise:
        L += np.random.default_rng(0).normal(0, 0.01, L.shape)
    return L, band & ~bone, bone


def _detected(L, field):
    """16-bit detector frame of L: bright air, black (0) outside the collimated field."""
    return np.where(field, np.round(60000 * np.exp(-np.clip(L, 0, None))), 0).astype(np.uint16)


def _ordering(att, soft, bone, air):
    assert np.median(att[bone]) > np.median(att[soft]) > np.median(att[air]) + 0.1
    assert np.median(att[air]) < 0.05


# ------------------------------------------------------------------------------------------ formats
def test_formats_read_the_same_array(tmp_path):
    rng = np.random.default_rng(1)
    a16 = rng.integers(0, 65536, (H, W)).astype(np.uint16)
    a8 = rng.integers(0, 256, (H, W)).astype(np.uint8)
    stack = np.stack([a16 // 2, a16, a16 // 3])
    want16, want8 = a16.astype(np.float64), a8.astype(np.float64)
    # 16-bit: PNG (SimpleITK and Pillow), TIFF, multi-page TIFF, DICOM single and multi-frame, .npy 2D and 3D
    np.testing.assert_array_equal(read_frame_array(_write(a16, tmp_path / "a.png")), want16)
    Image.fromarray(a16).save(tmp_path / "pil.png")
    np.testing.assert_array_equal(read_frame_array(tmp_path / "pil.png"), want16)
    np.testing.assert_array_equal(read_frame_array(_write(a16, tmp_path / "a.tif")), want16)
    np.testing.assert_array_equal(read_frame_array(_write(stack, tmp_path / "s.tif"), index=1), want16)
    np.testing.assert_array_equal(read_frame_array(_write(a16, tmp_path / "a.dcm")), want16)
    np.testing.assert_array_equal(read_frame_array(_write(stack, tmp_path / "s.dcm"), index=1), want16)
    np.save(tmp_path / "a.npy", a16.astype(np.float32))
    np.testing.assert_array_equal(read_frame_array(tmp_path / "a.npy"), want16)
    np.save(tmp_path / "s.npy", stack.astype(np.float32))
    np.testing.assert_array_equal(read_frame_array(tmp_path / "s.npy", index=1), want16)
    np.testing.assert_array_equal(read_frame_array(tmp_path / "s.npy", index=-1), stack[2].astype(float))
    # 8-bit: PNG, TIFF; RGB and RGBA grey -> luminance equals the grey level
    np.testing.assert_array_equal(read_frame_array(_write(a8, tmp_path / "b.png")), want8)
    np.testing.assert_array_equal(read_frame_array(_write(a8, tmp_path / "b.tif")), want8)
    rgb = np.repeat(a8[..., None], 3, axis=-1)
    np.testing.assert_allclose(read_frame_array(_write(rgb, tmp_path / "rgb.png", True)), want8, atol=1e-9)
    rgba = np.concatenate([rgb, np.full((H, W, 1), 255, np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_allclose(read_frame_array(tmp_path / "rgba.png"), want8, atol=1e-9)


def test_read_errors(tmp_path):
    with pytest.raises(FluoroRegError, match="not found"):
        read_frame_array(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(FluoroRegError, match="cannot read"):
        read_frame_array(tmp_path / "junk.png")
    bad = np.ones((H, W), np.float32)
    bad[3, 4] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(FluoroRegError, match="NaN"):
        load_frame(tmp_path / "nan.npy")
    np.save(tmp_path / "s.npy", np.ones((3, H, W), np.float32))
    with pytest.raises(FluoroRegError, match="holds 3 frame.*out of range"):
        read_frame_array(tmp_path / "s.npy", index=3)
    np.save(tmp_path / "4d.npy", np.ones((2, 3, H, W), np.float32))
    with pytest.raises(FluoroRegError, match="not a 2D image"):
        read_frame_array(tmp_path / "4d.npy")
    with pytest.raises(FluoroRegError, match="expected a 2D frame"):
        to_attenuation(np.ones((3, H, W)))  # a stack given where one frame is expected
    np.save(tmp_path / "1d.npy", np.ones(H, np.float32))
    with pytest.raises(FluoroRegError, match="not a 2D image"):
        read_frame_array(tmp_path / "1d.npy")
    with pytest.raises(FluoroRegError, match="single frame"):
        read_frame_array(_write(np.ones((H, W), np.uint8), tmp_path / "one.png"), index=1)


def test_errors_are_one_line_and_name_the_fix(tmp_path):
    np.save(tmp_path / "f.npy", _detected(_phantom()[0], _disc()).astype(np.float32))
    cam = Camera(sdd_mm=1000.0, rows=64, cols=64, row_spacing_mm=0.5, col_spacing_mm=0.5)
    with pytest.raises(FluoroRegError, match=f"frame is {H}x{W} pixels but the calibration says 64x64") as info:
        load_frame(tmp_path / "f.npy", camera=cam)
    assert "\n" not in str(info.value) and "f.npy" in str(info.value)
    frame = load_frame(tmp_path / "f.npy", camera=Camera(1000.0, H, W, 0.5, 0.5))
    assert isinstance(frame, Frame) and frame.image.shape == (1, 1, H, W) and frame.field.dtype == torch.bool
    with pytest.raises(FluoroRegError, match="unknown polarity 'dark'; use one of bone-dark, bone-bright, auto"):
        load_frame(tmp_path / "f.npy", polarity="dark")
    with pytest.raises(FluoroRegError, match="bone-dark, bone-bright, auto"):
        to_attenuation(np.ones((H, W)), polarity="inverted")
    assert POLARITIES == ("bone-dark", "bone-bright", "auto")


# ------------------------------------------------------------------------------------------ field
def test_detect_field_circle_and_none():
    truth = _disc(radius=44.0, centre=(50.0, 60.0))
    raw = _detected(_phantom()[0], truth)
    field = detect_field(raw)
    iou = (field & truth).sum() / (field | truth).sum()
    assert iou > 0.98
    assert detect_field(_detected(_phantom()[0], np.ones((H, W), bool))).all()  # no collimation
    assert detect_field(np.full((H, W), 7.0)).all()  # flat image


def test_field_survives_dark_bone_at_collimator_edge():
    """Pixels at the minimum inside the field that touch its edge stay inside (convex field)."""
    truth = _disc()
    raw = _detected(_phantom()[0], truth).astype(np.float64)
    raw[40:56, 10:40] = 0  # black "bone" reaching the collimator edge (clipped by a display window)
    field = detect_field(raw)
    assert (field & truth).sum() / (field | truth).sum() > 0.98


def test_rectangular_shutters_and_saturated_air(tmp_path):
    L, soft, bone = _phantom()
    rect = np.zeros((H, W), bool)
    rect[:, 20:110] = True  # shutters left and right
    assert (detect_field(_detected(L, rect)) == rect).all()
    # no collimation, air saturated at the maximum along the image border: a flat bright border, but
    # in a bone-dark frame it is air, not a collimator, so the whole frame is kept
    sat = np.minimum(_detected(L, np.ones((H, W), bool)), 50000).astype(np.uint16)
    assert not detect_field(sat, "bright").all()
    np.save(tmp_path / "sat.npy", sat)
    frame = load_frame(tmp_path / "sat.npy")
    assert frame.polarity == "bone-dark" and frame.field.all()
    att = frame.image[0, 0].numpy()
    assert np.median(att[bone]) > np.median(att[soft]) > 0.3 and att[~soft & ~bone].max() < 0.05


# ------------------------------------------------------------------------------------------ polarity
def test_polarity_bone_dark_and_inverted(tmp_path):
    L, soft, bone = _phantom()
    field = _disc()
    air = field & ~soft & ~bone & (np.abs(np.indices((H, W))[0] - (H - 1) / 2) > 22)
    raw = _detected(L, field)
    for pol in ("auto", "bone-dark"):
        att = to_attenuation(raw, pol)
        _ordering(att, soft, bone, air)
        assert (att[~field] == 0).all()
    assert guess_polarity(raw, field) == "bone-dark"
    _write(raw, tmp_path / "dark.png")
    frame = load_frame(tmp_path / "dark.png")
    assert frame.polarity == "bone-dark"
    assert (frame.field[0, 0].numpy() == field).all()
    _ordering(frame.image[0, 0].numpy(), soft, bone, air)
    # the same data inverted (bone bright): with a white border (everything inverted) and a black one
    white = (65535 - raw.astype(np.int64)).astype(np.uint16)
    black = np.where(field, white, 0).astype(np.uint16)
    for inv in (white, black):
        for pol in ("auto", "bone-bright"):
            att = to_attenuation(inv, pol)
            _ordering(att, soft, bone, air)
            assert (att[~field] == 0).all() and att.max() <= 1
        _write(inv, tmp_path / "bright.png")
        frame = load_frame(tmp_path / "bright.png")
        assert frame.polarity == "bone-bright"
        assert (frame.field[0, 0].numpy() == field).all()
    # 8-bit, no collimation: auto still right
    L8 = np.clip(np.round(250 * np.exp(-L)), 0, 255).astype(np.uint8)
    assert guess_polarity(L8) == "bone-dark" and guess_polarity(255 - L8) == "bone-bright"


def test_drr_like_air_is_not_a_collimator():
    """A bone-bright image with air exactly 0 around a non-round body keeps its whole frame."""
    rr, cc = np.indices((H, W))
    leg = (np.abs(cc - 40 - 0.5 * rr) < 14) | ((rr > 60) & (np.abs(cc - 90) < 12))  # bent leg
    drr = np.where(leg, 0.5, 0.0) + np.where(_disc(radius=9, centre=(60, 70)), 1.0, 0.0) * leg
    att = to_attenuation(drr, "auto")
    assert att[~leg].max() == 0 and att.max() == 1  # whole frame kept: air 0, bone 1


def test_beer_lambert_log_is_exact(tmp_path):
    L, _, _ = _phantom(noise=False)
    field = _disc()
    intensity = np.where(field, np.exp(-L), 0.0)  # I_ref = 1 (air inside the field)
    att = to_attenuation(intensity, "bone-dark", log=True)
    np.testing.assert_allclose(att[field], L[field], atol=1e-12)
    assert (att[~field] == 0).all()
    np.save(tmp_path / "i.npy", intensity)
    frame = load_frame(tmp_path / "i.npy", polarity="auto", log=True)
    assert frame.polarity == "bone-dark" and frame.log
    np.testing.assert_allclose(frame.image[0, 0].numpy()[field], L[field], atol=1e-6)
    linear = load_frame(tmp_path / "i.npy", polarity="auto")  # registration's conversion: 1 - I / I_ref
    assert not linear.log and np.array_equal(linear.raw, intensity)
    np.testing.assert_allclose(linear.image[0, 0].numpy()[field], 1 - np.exp(-L[field]), atol=1e-6)
    lin = to_attenuation(intensity, "bone-dark", log=False)
    np.testing.assert_allclose(lin[field], 1 - np.exp(-L[field]), atol=1e-12)


# ------------------------------------------------------------------------------------------ pyramid
def test_pyramid_block_means_and_min_pooled_field():
    img = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8) ** 2  # block sums exact in float32
    field = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    field[0, 0, 0, 0] = False
    field[0, 0, 5, 6] = False
    levels = pyramid(img, field, [4, 2, 1])
    assert [tuple(i.shape) for i, _ in levels] == [(1, 1, 2, 2), (1, 1, 4, 4), (1, 1, 8, 8)]
    coarse, cfield = levels[1]
    blocks = img.reshape(1, 1, 4, 2, 4, 2).mean(dim=(3, 5))
    assert torch.equal(coarse, blocks)
    want = torch.ones(4, 4, dtype=torch.bool)
    want[0, 0] = want[2, 3] = False
    assert torch.equal(cfield[0, 0], want) and cfield.dtype == torch.bool
    assert torch.equal(levels[2][0], img) and torch.equal(levels[2][1], field)
    assert tuple(pyramid(torch.zeros(1, 1, 99, 70), torch.ones(1, 1, 99, 70, dtype=torch.bool), [4])[0][0].shape) \
        == (1, 1, 24, 17)
    with pytest.raises(FluoroRegError, match="factor"):
        pyramid(img, field, [0])


def test_pyramid_pairs_with_resized_camera():
    """The coarse pixel's centre (mean of its fine pixels' centres) projects where Camera.resized says."""
    cam = Camera(1000.0, 8, 8, 0.5, 0.5, u0=3.2, v0=4.1)
    coarse = cam.resized(4, 4)
    point = torch.tensor([[3.0, -7.0, 900.0]], dtype=torch.float64)
    u, v = cam.project(point)[0].tolist()
    uc, vc = coarse.project(point)[0].tolist()
    # fine pixel u lies in coarse pixel (u + 0.5) / 2 - 0.5 (block-mean pairing)
    assert abs(uc - ((u + 0.5) / 2 - 0.5)) < 1e-9 and abs(vc - ((v + 0.5) / 2 - 0.5)) < 1e-9
    u_coords = torch.arange(8, dtype=torch.float64).repeat(8, 1)[None, None]
    pooled = pyramid(u_coords, torch.ones_like(u_coords, dtype=torch.bool), [2])[0][0]
    assert torch.allclose(pooled[0, 0, 0], 2 * torch.arange(4, dtype=torch.float64) + 0.5)
