"""Reading fluoroscopy frame files (docs/CONVENTIONS.md, "Frames"): PNG, TIFF (multi-page), DICOM
(single and multi-frame; uncompressed, RLE, JPEG, JPEG Lossless, JPEG-LS, JPEG 2000) and ``.npy``,
one frame decoded at a time, with the DICOM modality's values (Rescale Slope/Intercept and
MONOCHROME1, each applied once) and its pixel spacing tag. :mod:`~FluoroRegistrationLib.frame`
turns what is read here into a registration-ready :class:`~FluoroRegistrationLib.frame.Frame`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import FluoroRegError

def _gray(a: np.ndarray, vector: bool) -> np.ndarray:
    """Colour (last axis 2-4 when ``vector``) -> luminance (ITU-R BT.601), alpha dropped."""
    if not vector:
        return a
    if a.shape[-1] >= 3:
        return a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114
    return a[..., 0]


@dataclass
class FrameFile:
    """One frame read from a file: values (H, W) float64, the pixel spacing tag (row, col) in mm or
    None, and the stored dtype (a bool file holds a mask, not a frame)."""
    array: np.ndarray
    spacing_mm: tuple[float, float] | None = None
    dtype: np.dtype | None = None


def _frame_index(path, index: int, count: int, stack: bool) -> int:
    """``index`` checked against a file of ``count`` frames (negative counts from the end in a stack)."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise FluoroRegError(f"frame index {index!r} of {path} must be a whole number")
    if not stack:
        if index != 0:
            raise FluoroRegError(f"frame {path} holds a single frame; index {index} is out of range, use 0")
        return 0
    if not -count <= index < count:
        raise FluoroRegError(f"frame {path} holds {count} frame(s); index {index} is out of range, "
                             f"use 0 to {count - 1}")
    return index % count


def _npy(path: Path) -> np.ndarray:
    """A .npy file memory-mapped (nothing decoded yet); numeric or bool dtypes only."""
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, TypeError, EOFError):
        a = None
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
        what = f" (dtype {a.dtype})" if isinstance(a, np.ndarray) else ""
        raise FluoroRegError(f"cannot read frame {path}: not a numeric .npy array{what}; save it with "
                             "np.save(path, array.astype(np.float32))")
    return a


def _npy_is_stack(a: np.ndarray) -> bool:
    """A 3D .npy is a stack (N, H, W) unless it looks like (H, W, C) grey(+alpha)/RGB(A)."""
    return a.ndim == 3 and not a.shape[-1] <= 4 < min(a.shape[:2])


def _read_npy(path: Path, index: int) -> FrameFile:
    a = _npy(path)
    if _npy_is_stack(a):
        a = np.asarray(a[_frame_index(path, index, a.shape[0], True)])  # only this frame is read
    else:
        _frame_index(path, index, 1, False)
        a = _gray(np.asarray(a), a.ndim == 3)
    return FrameFile(a.astype(np.float64), None, a.dtype)


def _is_dicom(path: Path) -> bool:
    from pydicom.misc import is_dicom

    return path.suffix.lower() in (".dcm", ".dicom") or is_dicom(path)


def _dicom_header(path: Path):
    """The DICOM data set with its pixel data deferred (read only when asked for)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, defer_size=4096, force=True)
        known = any(k in ds for k in ("SOPClassUID", "Modality", "Rows", "PixelData"))
    except Exception:  # a damaged file raises whatever the parser met (EOF, struct, value errors)
        known = False
    if not known:
        raise FluoroRegError(f"cannot read frame {path}: not a readable DICOM file; re-export it "
                             "(or convert it to PNG/TIFF)")
    return ds


def _dicom_item(ds, keyword: str, macro: str):
    """``keyword`` from the data set, else from the shared functional groups' ``macro`` (enhanced
    multi-frame objects); None if absent or empty."""
    value = ds.get(keyword)
    if value in (None, ""):
        try:
            value = ds.SharedFunctionalGroupsSequence[0][macro][0].get(keyword)
        except (AttributeError, IndexError, KeyError, TypeError):
            value = None
    return None if value in (None, "") else value


def _dicom_spacing(ds) -> tuple[float, float] | None:
    """(row, col) pixel spacing in mm: ImagerPixelSpacing (0018,1164) (at the detector, what the
    calibration's pitch is), else PixelSpacing (0028,0030); None if absent, zero or malformed."""
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        try:
            row, col = (float(v) for v in _dicom_item(ds, keyword, "PixelMeasuresSequence"))
        except (TypeError, ValueError):
            continue
        if np.isfinite([row, col]).all() and row > 0 and col > 0:
            return row, col
    return None


def _dicom_values(a: np.ndarray, ds, path: Path) -> np.ndarray:
    """Stored values -> the modality's values as MONOCHROME2 (larger is brighter), float64.

    MONOCHROME1 is inverted exactly once, within the stored range (``2^BitsStored - 1 - v``, or
    ``-1 - v`` for signed data; float data: ``max + min - v``), then Rescale Slope/Intercept are
    applied (the same as inverting the rescaled values within their range). A Modality LUT
    Sequence is applied first and its output inverted within the LUT's range.
    """
    from pydicom.pixels import apply_modality_lut

    mono1 = str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1"
    if ds.get("ModalityLUTSequence"):
        out = np.asarray(apply_modality_lut(a, ds), np.float64)
        return (2.0 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1) - out if mono1 else out
    out = a.astype(np.float64)
    if mono1 and a.dtype.kind == "f":
        out = out.max() + out.min() - out
    elif mono1:
        bits = int(ds.get("BitsStored") or a.dtype.itemsize * 8)
        out = -1.0 - out if ds.get("PixelRepresentation") == 1 else (2.0 ** bits - 1) - out
    try:
        slope, intercept = (_dicom_item(ds, k, "PixelValueTransformationSequence")
                            for k in ("RescaleSlope", "RescaleIntercept"))
        slope, intercept = float(1.0 if slope is None else slope), float(0.0 if intercept is None else intercept)
    except (TypeError, ValueError):
        slope = intercept = np.nan
    if not np.isfinite([slope, intercept]).all():
        raise FluoroRegError(f"DICOM file {path}: its rescale slope/intercept (0028,1053)/(0028,1052) are not "
                             "numbers; fix the tags or re-export the file")
    return out * slope + intercept


def _gdcm_frame(ds, index: int, count: int) -> np.ndarray:
    """Decode frame ``index`` of compressed pixel data pydicom cannot (e.g. JPEG Lossless, JPEG-LS)
    with SimpleITK's GDCM: the frame's bytes go alone into a minimal file that has no MONOCHROME1
    and no rescale tags, so GDCM returns the stored values, whatever it does with those tags."""
    import tempfile

    import SimpleITK as sitk
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate, get_frame
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    one = Dataset()
    one.file_meta = FileMetaDataset()
    one.file_meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    one.file_meta.MediaStorageSOPClassUID = one.SOPClassUID = SecondaryCaptureImageStorage
    one.file_meta.MediaStorageSOPInstanceUID = one.SOPInstanceUID = generate_uid()
    for keyword in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored", "HighBit",
                    "PixelRepresentation", "PlanarConfiguration"):
        if keyword in ds:
            setattr(one, keyword, ds[keyword].value)
    pi = str(ds.PhotometricInterpretation).strip()
    one.PhotometricInterpretation = "MONOCHROME2" if pi == "MONOCHROME1" else pi
    one.PixelData = encapsulate([get_frame(ds.PixelData, index, number_of_frames=count)])
    one["PixelData"].VR, one["PixelData"].is_undefined_length = "OB", True
    with tempfile.TemporaryDirectory() as tmp:
        one.save_as(Path(tmp) / "frame.dcm", enforce_file_format=True)
        image = sitk.ReadImage(str(Path(tmp) / "frame.dcm"))
    a = sitk.GetArrayFromImage(image)
    return a.reshape(a.shape[-3:] if image.GetNumberOfComponentsPerPixel() > 1 else a.shape[-2:])


def _compressed(syntax) -> bool:
    try:
        return bool(syntax.is_compressed)
    except ValueError:  # not a known transfer syntax
        return True


def _dicom_pixels(path: Path, ds, index: int, count: int) -> np.ndarray:
    """Frame ``index`` of ``path`` as stored (only that frame is read and decoded): pydicom, else
    (compressions it has no decoder for) SimpleITK's GDCM."""
    from pydicom.pixels import apply_color_lut, pixel_array
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if syntax is None:  # a bare data set (no file meta): its encoding as pydicom read it
        implicit, little = getattr(ds, "original_encoding", (True, True))
        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    try:
        a = pixel_array(path, index=index, transfer_syntax_uid=syntax)
    except Exception as err:  # the decoders' errors have no common type
        problem = " ".join(str(err).split())[:240] or type(err).__name__
        if not _compressed(syntax):
            raise FluoroRegError(f"cannot read frame {path}: DICOM pixel data unreadable ({problem}); "
                                 "re-export the file") from None
        try:
            a = _gdcm_frame(ds, index, count)
        except Exception:
            raise FluoroRegError(f"cannot decode frame {path}: {syntax.name} pixel data ({problem}); "
                                 "convert it to uncompressed DICOM (e.g. gdcmconv --raw) or PNG/TIFF") from None
    if str(ds.get("PhotometricInterpretation", "")).strip() == "PALETTE COLOR":
        a = apply_color_lut(a, ds)
    return a


def _dicom_count(path: Path, ds) -> int:
    """Number of Frames (0028,0008) of an image object; 1 if absent."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise FluoroRegError(f"DICOM file {path} holds no pixel data (not an image object); export the "
                             "X-ray image itself")
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        raise FluoroRegError(f"DICOM file {path} has a malformed Number of Frames "
                             f"{ds.get('NumberOfFrames')!r}; re-export the file") from None


def _read_dicom(path: Path, index: int) -> FrameFile:
    ds = _dicom_header(path)
    count = _dicom_count(path, ds)
    i = _frame_index(path, index, count, "NumberOfFrames" in ds and count > 1)
    a = _dicom_pixels(path, ds, i, count)
    colour = int(ds.get("SamplesPerPixel") or 1) > 1 or a.ndim == 3
    a = _gray(a.astype(np.float64), True) if colour else _dicom_values(a, ds, path)
    return FrameFile(a, _dicom_spacing(ds))


def _pil_page(path: Path, index: int) -> FrameFile | None:
    """Page ``index`` of a (multi-page) image with Pillow, decoding only that page; None where
    Pillow would lose precision (colour over 8 bits per sample) or cannot read it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            count = getattr(im, "n_frames", 1)
            i = _frame_index(path, index, count, count > 1)
            im.seek(i)
            bits = getattr(im, "tag_v2", {}).get(258, (8,))
            if len(im.getbands()) > 1 and max(np.atleast_1d(bits)) > 8:
                return None
            page = im.convert("RGB") if im.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV") else im
            a = np.asarray(page)
    except FluoroRegError:
        raise
    except Exception:  # Pillow's decoders raise many types; SimpleITK gets its turn
        return None
    return FrameFile(_gray(a.astype(np.float64), a.ndim == 3), None, a.dtype)


def _sitk_page(path: Path, index: int) -> FrameFile | None:
    """Page ``index`` of an image with SimpleITK (a 3D image's slice ``index``); None if unreadable."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        size = reader.GetSize()
        count = size[2] if len(size) == 3 else 1
        i = _frame_index(path, index, count, len(size) == 3 and count > 1)
        if len(size) == 3:
            reader.SetExtractIndex([0, 0, i])
            reader.SetExtractSize([size[0], size[1], 0])
        img = reader.Execute()
    except RuntimeError:
        return None
    a = sitk.GetArrayFromImage(img)
    return FrameFile(_gray(a.astype(np.float64), img.GetNumberOfComponentsPerPixel() > 1), None, a.dtype)


def _read_image_file(path: Path, index: int = 0) -> FrameFile:
    """Frame ``index`` of a PNG/TIFF/DICOM/... file: DICOM through pydicom (:func:`_read_dicom`),
    TIFF pages through Pillow, other images through SimpleITK, each with the other as a fallback."""
    if _is_dicom(path):
        return _read_dicom(path, index)
    readers = (_pil_page, _sitk_page) if path.suffix.lower() in (".tif", ".tiff") else (_sitk_page, _pil_page)
    for reader in readers:
        frame = reader(path, index)
        if frame is not None:
            return frame
    raise FluoroRegError(f"cannot read frame {path}: not a readable image; use PNG, TIFF, DICOM or .npy")


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FluoroRegError(f"frame file not found: {path}; check the path")
    if path.stat().st_size == 0:
        raise FluoroRegError(f"cannot read frame {path}: the file is empty (0 bytes); re-export it")
    return path


def frame_count(path) -> int:
    """How many frames ``path`` holds (1 for a 2D image), from its header only: the largest valid
    ``index`` is ``frame_count(path) - 1``."""
    path = _existing(path)
    if path.suffix.lower() == ".npy":
        a = _npy(path)
        return a.shape[0] if _npy_is_stack(a) else 1
    if _is_dicom(path):
        return _dicom_count(path, _dicom_header(path))
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(getattr(im, "n_frames", 1))
    except (OSError, ValueError, SyntaxError):  # not an image Pillow knows: SimpleITK's turn
        return _sitk_count(path)


def _sitk_count(path: Path) -> int:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise FluoroRegError(f"cannot read frame {path}: not a readable image; use PNG, TIFF, DICOM or "
                             ".npy") from None
    size = reader.GetSize()
    return size[2] if len(size) == 3 else 1


def read_frame(path, index: int = 0) -> FrameFile:
    """:func:`read_frame_array` with the file's pixel spacing tag and stored dtype."""
    path = _existing(path)
    frame = _read_npy(path, index) if path.suffix.lower() == ".npy" else _read_image_file(path, index)
    check_plane(frame.array, path)
    return frame


def check_plane(a: np.ndarray, path) -> None:
    """Raise unless ``a`` is a 2D array of at least 2x2 finite values (a frame or a mask)."""
    if a.ndim != 2:
        raise FluoroRegError(f"frame {path} has shape {a.shape}, not a 2D image or a 3D (N, H, W) stack; "
                             "save one 2D frame (rows, cols) per file or an (N, H, W) stack")
    if min(a.shape) < 2:
        raise FluoroRegError(f"frame {path} is {a.shape[0]}x{a.shape[1]} pixels; a frame needs at least 2x2")
    if not np.isfinite(a).all():
        raise FluoroRegError(f"frame {path} contains NaN or infinite values; replace them (e.g. np.nan_to_num) "
                             "before registration")


def read_frame_array(path, index: int = 0) -> np.ndarray:
    """The values of frame ``index`` of ``path``: (H, W) float64.

    As stored, except DICOM, which gives the modality's values: MONOCHROME1 inverted to
    MONOCHROME2 (larger always brighter) and Rescale Slope/Intercept applied, each exactly once.
    A stack (.npy (N, H, W), multi-page TIFF, multi-frame DICOM) gives its frame ``index`` (only that
    frame is decoded; see :func:`frame_count`); a 2D file accepts only ``index=0``. Compressed DICOM
    (JPEG, JPEG Lossless, JPEG-LS, JPEG 2000, RLE) is decoded by pydicom or SimpleITK's GDCM. Raises
    FluoroRegError for a missing, empty or unreadable file, data that is not 2D (after the frame is
    picked), frames under 2x2 pixels, or NaN/inf values.
    """
    return read_frame(path, index).array
