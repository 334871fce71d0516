"""Frame files: DICOM (MONOCHROME1, rescale, compressions, multi-frame), multi-page TIFF, pixel
spacing tags, bad files, and the collimated field of CR-like frames (noise, shutters, blur, sizes)."""

import io
import warnings

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)
from scipy import ndimage

from FluoroRegistrationLib.errors import FluoroRegError, FluoroRegWarning
from FluoroRegistrationLib.frame import detect_field, frame_count, frame_from_array, load_frame, read_frame_array
from FluoroRegistrationLib.geometry import Camera

H, W = 64, 80


# ------------------------------------------------------------------------------------------ helpers
def _dataset(pixels, photometric="MONOCHROME2", stored=16, **tags):
    """A CR data set holding ``pixels`` (H, W) or (N, H, W) uint16/uint8 uncompressed."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = stored, stored - 1, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    return ds


def _save(ds, path):
    ds.save_as(path, enforce_file_format=True)
    return path


def _encapsulated(ds, frames, syntax):
    """``ds`` with its pixel data replaced by the compressed ``frames`` (bytes each)."""
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    return ds


def _gdcm_write(pixels, path, compressor):
    """``pixels`` written by SimpleITK's GDCM with its ``compressor`` ("JPEG": JPEG Lossless SV1)."""
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")
    writer.SetUseCompression(True)
    writer.SetCompressor(compressor)
    writer.SetFileName(str(path))
    writer.Execute(sitk.GetImageFromArray(pixels))
    return path


def _smooth(n=3, h=H, w=W, top=4000, seed=0):
    """n distinct smooth uint16 frames (lossy codecs keep them close)."""
    rng = np.random.default_rng(seed)
    out = [ndimage.gaussian_filter(rng.uniform(0, top, (h, w)), 4) for _ in range(n)]
    out = [(o - o.min()) / (o.max() - o.min()) * top * (0.5 + 0.25 * i) for i, o in enumerate(out)]
    return np.round(np.stack(out)).astype(np.uint16)


def _cr_display(h=96, w=120, seed=0):
    """A collimated bone-dark CR frame as displayed (12-bit, larger = brighter): its values, its
    field (shutters left and right) and the masks of the bone, the soft tissue and the air in it."""
    rng = np.random.default_rng(seed)
    rr, cc = np.indices((h, w))
    field = (cc >= 12) & (cc < w - 12)
    soft = np.abs(cc - w / 2) < 0.3 * w
    bone = soft & (np.abs(cc - w / 2) < 0.08 * w) & (np.abs(rr - h / 2) < 0.35 * h)
    img = np.where(soft, 2000.0, 3800.0)
    img[bone] = 800.0
    img[~field] = 40.0
    img = np.clip(np.round(img + rng.normal(0, 3, img.shape)), 0, 4095).astype(np.uint16)
    return img, field, bone, soft & ~bone & field, field & ~soft


# ------------------------------------------------------------------------------------------ MONOCHROME1
def test_monochrome1_and_monochrome2_give_the_same_frame(tmp_path):
    """A MONOCHROME1 file stores 4095 - D for the display D of the MONOCHROME2 file: both read back
    as D (inverted exactly once, although SimpleITK/GDCM inverts MONOCHROME1 itself) and load to the
    same bone-bright image and the same polarity."""
    shown, field, bone, soft, air = _cr_display()
    m2 = _save(_dataset(shown, "MONOCHROME2", 12), tmp_path / "m2.dcm")
    m1 = _save(_dataset((4095 - shown).astype(np.uint16), "MONOCHROME1", 12), tmp_path / "m1.dcm")
    np.testing.assert_array_equal(read_frame_array(m2), shown)
    np.testing.assert_array_equal(read_frame_array(m1), shown)
    f1, f2 = load_frame(m1), load_frame(m2)
    assert f1.polarity == f2.polarity == "bone-dark"
    assert np.array_equal(f1.field.numpy(), f2.field.numpy()) and np.array_equal(f1.image.numpy(), f2.image.numpy())
    att = f1.image[0, 0].numpy()
    assert np.median(att[bone]) > np.median(att[soft]) > np.median(att[air]) + 0.2  # bone bright
    assert (f1.field[0, 0].numpy() == field).all()


def test_rescale_slope_intercept_applied_once(tmp_path):
    """Modality values: slope * stored + intercept; MONOCHROME1 inverted within BitsStored first
    (the same as inverting the rescaled range), signed data too."""
    stored = np.array([[0, 100, 1000], [2000, 3000, 4095]], np.uint16)
    for photometric, want in (("MONOCHROME2", 2.5 * stored - 100), ("MONOCHROME1", 2.5 * (4095 - stored) - 100)):
        ds = _dataset(stored, photometric, 12, RescaleSlope=2.5, RescaleIntercept=-100)
        np.testing.assert_allclose(read_frame_array(_save(ds, tmp_path / f"{photometric}.dcm")), want)
    signed = np.array([[-2048, -1, 0], [1, 100, 2047]], np.int16)
    ds = _dataset(signed.view(np.uint16), "MONOCHROME1", 12, RescaleSlope=1, RescaleIntercept=0)
    ds.PixelRepresentation = 1
    np.testing.assert_array_equal(read_frame_array(_save(ds, tmp_path / "signed.dcm")), -1.0 - signed)
    bad = _save(_dataset(stored, RescaleSlope="9.75", RescaleIntercept=0), tmp_path / "bad_slope.dcm")
    bad.write_bytes(bad.read_bytes().replace(b"9.75", b"abcd"))  # a malformed Decimal String
    with pytest.raises(FluoroRegError, match="rescale slope/intercept .* are not numbers"):
        read_frame_array(bad)


# ------------------------------------------------------------------------------------------ compression
@pytest.mark.parametrize("writer, syntax", [("pydicom", RLELossless), ("JPEG2000", JPEG2000Lossless),
                                             ("JPEG", JPEGLosslessSV1)])
def test_lossless_compressed_dicom_frames(tmp_path, writer, syntax):
    """Each frame of a compressed 3-frame file reads back exactly (RLE written by pydicom, JPEG 2000
    and JPEG Lossless by SimpleITK's GDCM; pydicom decodes RLE and JPEG 2000, GDCM JPEG Lossless)."""
    frames = _smooth()
    path = tmp_path / "c.dcm"
    if writer == "pydicom":
        ds = _dataset(frames, stored=16)
        ds.compress(RLELossless)
        _save(ds, path)
    else:
        _gdcm_write(frames, path, writer)
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    assert frame_count(path) == 3
    for i in range(3):
        np.testing.assert_array_equal(read_frame_array(path, i), frames[i])


def test_jpeg_lossless_monochrome1_is_inverted_once(tmp_path):
    """JPEG Lossless goes through GDCM, which would invert MONOCHROME1 itself: still exactly once."""
    shown = _smooth(1)[0]
    path = _gdcm_write(4095 - shown, tmp_path / "j.dcm", "JPEG")
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation, ds.BitsStored, ds.HighBit = "MONOCHROME1", 12, 11
    ds.RescaleSlope, ds.RescaleIntercept = 2, 10
    ds.save_as(path)
    np.testing.assert_array_equal(read_frame_array(path), 2.0 * shown + 10)


def test_lossy_compressed_dicom_frames(tmp_path):
    """JPEG baseline (8-bit) and lossy JPEG 2000 (16-bit), written by Pillow: close to the original."""
    frames16 = _smooth()
    frames8 = (frames16 // 32).astype(np.uint8)
    jpegs, j2ks = [], []
    for f8, f16 in zip(frames8, frames16):
        Image.fromarray(f8).save(buf := io.BytesIO(), format="JPEG", quality=95)
        jpegs.append(buf.getvalue())
        Image.fromarray(f16).save(buf := io.BytesIO(), format="JPEG2000", irreversible=True,
                                  quality_mode="rates", quality_layers=[8])
        j2ks.append(buf.getvalue())
    jpg = _save(_encapsulated(_dataset(frames8, stored=8), jpegs, JPEGBaseline8Bit), tmp_path / "jpg.dcm")
    j2k = _save(_encapsulated(_dataset(frames16, stored=16), j2ks, JPEG2000), tmp_path / "j2k.dcm")
    for i in range(3):
        assert np.abs(read_frame_array(jpg, i) - frames8[i]).max() <= 4
        assert np.abs(read_frame_array(j2k, i) - frames16[i]).mean() < 0.005 * frames16[i].max()


# ------------------------------------------------------------------------------------------ multi-frame
def test_multiframe_dicom_and_tiff_give_the_requested_frame(tmp_path):
    frames = _smooth()
    dcm = _save(_dataset(frames, stored=16), tmp_path / "xa.dcm")
    Image.fromarray(frames[0]).save(tmp_path / "s.tif", save_all=True,
                                    append_images=[Image.fromarray(f) for f in frames[1:]])
    np.save(tmp_path / "s.npy", frames)
    for path in (dcm, tmp_path / "s.tif", tmp_path / "s.npy"):
        assert frame_count(path) == 3
        for i in range(3):
            np.testing.assert_array_equal(read_frame_array(path, i), frames[i])
        np.testing.assert_array_equal(load_frame(path, index=2).raw, frames[2])
        np.testing.assert_array_equal(read_frame_array(path, -1), frames[2])
        with pytest.raises(FluoroRegError, match=r"holds 3 frame\(s\); index 3 is out of range, use 0 to 2") as info:
            read_frame_array(path, 3)
        assert "\n" not in str(info.value)
    Image.fromarray(frames[0]).save(tmp_path / "one.png")
    assert frame_count(tmp_path / "one.png") == 1
    with pytest.raises(FluoroRegError, match="single frame; index 1 is out of range, use 0"):
        read_frame_array(tmp_path / "one.png", 1)


def test_only_the_requested_frame_is_decoded(tmp_path):
    """Frame 0 broken: frames 1 and 2 still read (they are decoded alone), frame 0 is an error."""
    frames = _smooth()
    ds = _dataset(frames, stored=16)
    ds.compress(RLELossless)
    parts = list(generate_frames(ds.PixelData, number_of_frames=3))
    parts[0] = (15).to_bytes(4, "little") + parts[0][4:]  # an RLE header claiming 15 segments
    ds.PixelData = encapsulate(parts)
    rle = _save(ds, tmp_path / "rle.dcm")
    Image.fromarray(frames[0]).save(tmp_path / "z.tif", save_all=True, compression="tiff_adobe_deflate",
                                    append_images=[Image.fromarray(f) for f in frames[1:]])
    with Image.open(tmp_path / "z.tif") as im:
        start = int(np.atleast_1d(im.tag_v2[273])[0])  # page 0's strip
    data = bytearray((tmp_path / "z.tif").read_bytes())
    data[start + 2:start + 40] = b"\x55" * 38
    (tmp_path / "z.tif").write_bytes(bytes(data))
    for path in (rle, tmp_path / "z.tif"):
        for i in (1, 2):
            np.testing.assert_array_equal(read_frame_array(path, i), frames[i])
        with pytest.raises(FluoroRegError, match="cannot (read|decode) frame"):
            read_frame_array(path, 0)


# ------------------------------------------------------------------------------------------ pixel spacing
def _spaced(tmp_path, name, **tags):
    shown = _cr_display()[0]
    return _save(_dataset(shown, "MONOCHROME2", 12, **tags), tmp_path / name)


def test_pixel_spacing_tags(tmp_path):
    both = _spaced(tmp_path, "both.dcm", ImagerPixelSpacing=[0.15, 0.2], PixelSpacing=[0.1, 0.1])
    assert load_frame(both).pixel_spacing_mm == (0.15, 0.2)  # ImagerPixelSpacing (at the detector) first
    assert load_frame(_spaced(tmp_path, "ps.dcm", PixelSpacing=[0.1, 0.12])).pixel_spacing_mm == (0.1, 0.12)
    assert load_frame(_spaced(tmp_path, "none.dcm")).pixel_spacing_mm is None
    assert load_frame(_spaced(tmp_path, "zero.dcm", PixelSpacing=[0, 0])).pixel_spacing_mm is None
    np.save(tmp_path / "f.npy", _cr_display()[0])
    assert load_frame(tmp_path / "f.npy").pixel_spacing_mm is None


def test_pixel_spacing_mismatch_warns(tmp_path):
    shown = _cr_display()[0]
    h, w = shown.shape
    path = _spaced(tmp_path, "s.dcm", ImagerPixelSpacing=[0.15, 0.2])
    agree = Camera(1000.0, h, w, row_spacing_mm=0.151, col_spacing_mm=0.199)  # within 2 %
    swapped = Camera(1000.0, h, w, row_spacing_mm=0.2, col_spacing_mm=0.15)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FluoroRegWarning)
        assert load_frame(path, camera=agree).pixel_spacing_mm == (0.15, 0.2)
        load_frame(_spaced(tmp_path, "zero.dcm", ImagerPixelSpacing=[0, 0]), camera=swapped)  # 0: ignored
        load_frame(_spaced(tmp_path, "none.dcm"), camera=swapped)
        frame_from_array(shown, agree, pixel_spacing_mm=(0.15, 0.2))
    with pytest.warns(FluoroRegWarning, match=r"pixel spacing tag says 0\.15 x 0\.2 mm .* calibration says "
                                              r"0\.2 x 0\.15 mm") as record:
        load_frame(path, camera=swapped)
    assert len(record) == 1 and "\n" not in str(record[0].message) and "s.dcm" in str(record[0].message)
    with pytest.warns(FluoroRegWarning, match="33 % apart"):
        frame_from_array(shown, swapped, pixel_spacing_mm=(0.15, 0.2), path="f.png")


# ------------------------------------------------------------------------------------------ bad files
def _bad_files(tmp_path):
    """{name: path} of files that must each give a one-line FluoroRegError naming the problem."""
    np.save(tmp_path / "object.npy", np.array([[1, None], [2, 3]], dtype=object), allow_pickle=True)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "empty.dcm").write_bytes(b"")
    good = np.random.default_rng(0).integers(0, 65535, (100, 120)).astype(np.uint16)
    Image.fromarray(good).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[:len(data) // 2])
    (tmp_path / "text.png").write_text("this is not an image\n" * 20)
    (tmp_path / "text.dcm").write_text("this is not a DICOM file\n" * 20)
    ds = _dataset(good)
    del ds.PixelData
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # a report
    _save(ds, tmp_path / "nopixels.dcm")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "1x1.png")
    Image.fromarray(np.arange(5000, dtype=np.uint16)[None] % 251).save(tmp_path / "1x5000.png")
    np.save(tmp_path / "1x5000.npy", np.arange(5000, dtype=np.float32)[None])
    np.save(tmp_path / "complex.npy", np.ones((8, 8), complex))
    return {
        "object.npy": "not a numeric .npy array", "empty.png": r"empty \(0 bytes\)", "empty.dcm": r"empty \(0 bytes\)",
        "truncated.png": "not a readable image", "text.png": "not a readable image",
        "text.dcm": "not a readable DICOM file", "nopixels.dcm": "holds no pixel data",
        "1x1.png": "is 1x1 pixels; a frame needs at least 2x2", "1x5000.png": "is 1x5000 pixels",
        "1x5000.npy": "is 1x5000 pixels", "complex.npy": r"not a numeric .npy array \(dtype complex128\)",
    }


def test_bad_files_are_one_line_errors(tmp_path):
    for name, message in _bad_files(tmp_path).items():
        for read in (read_frame_array, load_frame):
            with pytest.raises(FluoroRegError, match=message) as info:
                read(tmp_path / name)
            assert "\n" not in str(info.value) and name in str(info.value), name


def test_bool_and_constant_frames(tmp_path):
    """A bool image is a mask, not a frame (read_frame_array still reads it, for masks); a constant
    frame cannot be registered: each a one-line error naming the frame."""
    mask = np.zeros((H, W), bool)
    mask[10:30, 20:50] = True
    np.save(tmp_path / "mask.npy", mask)
    np.testing.assert_array_equal(read_frame_array(tmp_path / "mask.npy"), mask.astype(float))
    for load in (lambda: load_frame(tmp_path / "mask.npy"), lambda: frame_from_array(mask, path="mask")):
        with pytest.raises(FluoroRegError, match="mask.* holds True/False values .*masks="):
            load()
    np.save(tmp_path / "flat.npy", np.full((H, W), 7, np.uint16))
    Image.fromarray(np.full((H, W), 9, np.uint8)).save(tmp_path / "flat.png")
    for path, value in ((tmp_path / "flat.npy", 7), (tmp_path / "flat.png", 9)):
        assert np.all(read_frame_array(path) == value)
        with pytest.raises(FluoroRegError, match=f"frame .*{path.name} is constant \\(every pixel is {value}\\)"):
            load_frame(path)
    with pytest.raises(FluoroRegError, match="frame <array> is constant"):
        frame_from_array(np.zeros((H, W)))
    with pytest.raises(FluoroRegError, match="is 1x5000 pixels"):
        frame_from_array(np.ones((1, 5000)))
    with pytest.raises(FluoroRegError, match=r"not a real-valued numeric array \(dtype object\)"):
        frame_from_array(np.array([[1, None], [2, 3]], dtype=object))


# ------------------------------------------------------------------------------------------ field
def _cr_frame(n, shape, sigma, collimated=True, seed=0):
    """A 12-bit bone-dark CR-like frame (n, n + n // 4) and its true field (pixel centres inside).

    The minimum (0) is a lead marker inside the field; a rectangular field has shutters left and
    right whose shadows lie near but above it (60 and 110) at slightly different levels, a circular
    one a shadow at 80; the edge is blurred by a Gaussian of ``sigma`` pixels; noise 3 counts."""
    h, w = n, n + n // 4
    rr, cc = np.indices((h, w)).astype(float)
    y, x = rr / h, cc / w
    img = np.full((h, w), 3800.0)                                           # air
    soft = ((x - 0.5) / 0.32) ** 2 + ((y - 0.5) / 0.7) ** 2 <= 1            # a leg, off the top and bottom
    img[soft] = 2000.0
    img[(np.abs(x - 0.5 - 0.05 * (y - 0.5)) < 0.07) & soft] = 900.0       # bone
    img[(np.abs(x - 0.7) < 0.02) & (np.abs(y - 0.3) < 0.1)] = 0.0          # lead marker
    truth = np.ones((h, w), bool)
    if collimated and shape == "rect":
        left, right = round(0.14 * w), round(0.86 * w)
        truth = (cc >= left) & (cc < right)
        img[:, :left], img[:, right:] = 60.0, 110.0
    elif collimated:
        truth = (rr - (h - 1) / 2) ** 2 + (cc - (w - 1) / 2) ** 2 <= (0.46 * h) ** 2
        img[~truth] = 80.0
    img = ndimage.gaussian_filter(img, sigma, mode="nearest") if sigma else img
    img += np.random.default_rng(seed).normal(0, 3, img.shape)
    return np.clip(np.round(img), 0, 4095).astype(np.uint16), truth


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("n", [256, 768, 1024, 1536])
@pytest.mark.parametrize("shape", ["rect", "disc"])
def test_field_of_cr_frames(n, shape):
    """Shutter shadows near (not at) the minimum, at different levels, with noise; a circular
    field; edges blurred by sigma 0.5 and 1 px: the field is found (IoU >= 0.97) at every size, and
    the frame loads as bone-dark with that field; inverted (a white border, bone bright), as
    bone-bright with that field."""
    for sigma in (0.5, 1.0):
        raw, truth = _cr_frame(n, shape, sigma)
        assert _iou(detect_field(raw), truth) >= 0.97, (n, shape, sigma)
    frame = frame_from_array(raw)
    assert frame.polarity == "bone-dark" and _iou(frame.field[0, 0].numpy(), truth) >= 0.97
    assert _iou(detect_field(4095 - raw, "bright"), truth) >= 0.97
    frame = frame_from_array(4095 - raw)
    assert frame.polarity == "bone-bright" and _iou(frame.field[0, 0].numpy(), truth) >= 0.97


@pytest.mark.parametrize("n", [256, 768, 1024, 1536])
def test_no_collimator_keeps_the_whole_frame(n):
    """Bone-dark (air bright at the border), and inverted: bone-bright, noisy air dark around a leg
    that runs off the frame (a dark border that is not a collimator's: air is noisy)."""
    raw, _ = _cr_frame(n, "rect", 1.0, collimated=False)
    assert detect_field(raw).all()
    frame = frame_from_array(raw)
    assert frame.polarity == "bone-dark" and frame.field.all()
    frame = frame_from_array(4095 - raw)
    assert frame.polarity == "bone-bright" and frame.field.all()
