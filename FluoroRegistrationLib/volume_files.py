"""Reading volume files so that damage is found: truncated or corrupt NIfTI / MetaImage / NRRD files,
NaN and Inf that SimpleITK's NIfTI reader would turn into 0, DICOM series with missing, duplicate or
unreadable slices, and SimpleITK's C++ messages turned into one line (:func:`read_sitk`)."""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import sys
import tempfile
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np

from . import errors
from .errors import FluoroRegError
from .limits import check_allocation

_TRUNCATION_MARKERS = ("not read completely", "fread got only", "but received", "unexpected end", "premature end",
                       "truncated", "data read error", "uncompress failed")
_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype codes whose NaN / Inf SimpleITK's reader sets to 0
_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}
_CHUNK = 1 << 24
_stderr_lock = threading.RLock()


def _truncated(path, what: str, detail: str) -> FluoroRegError:
    return FluoroRegError(f"{what} {path} is truncated or corrupt: {detail}; re-export it")


def non_finite(path, what: str) -> FluoroRegError:
    return FluoroRegError(f"{what} {path} contains NaN or infinite values; fix or mask them before registration")


class _CapturedStderr:
    """Collects what C++ code (ITK, GDCM, MetaIO) prints on file descriptor 2 inside the ``with``
    block into ``self.text``, instead of letting it reach the terminal as several lines."""

    def __enter__(self):
        self.text, self._saved, self._file = "", None, None
        _stderr_lock.acquire()
        try:
            sys.stderr.flush()
            self._file = tempfile.TemporaryFile()
            saved = os.dup(2)
            try:
                os.dup2(self._file.fileno(), 2)
            except OSError:
                os.close(saved)
                raise
            self._saved = saved
        except (OSError, ValueError, AttributeError):  # no usable descriptor 2: leave it as it is
            pass
        return self

    def __exit__(self, *exc):
        try:
            if self._saved is not None:
                os.dup2(self._saved, 2)
                os.close(self._saved)
                self._file.seek(0)
                self.text = self._file.read().decode("utf-8", "replace")
        finally:
            if self._file is not None:
                self._file.close()
            _stderr_lock.release()
        return False


def _itk_message(text: str) -> str:
    """The informative part of an ITK / GDCM / MetaIO message, on one line: its last two lines, less
    the 'WARNING: In file, line N' banners and the 'Class (0x...):' prefixes."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    lines = [ln for ln in lines if not re.match(r"(WARNING|ERROR|Exception thrown)\b.*\b[Ii]n\b", ln)] or lines
    message = re.sub(r"(ITK ERROR: )?\b\w+ ?\(0x[0-9a-fA-F]+\): ", "", " ".join(lines[-2:]))
    return " ".join(message.split())[:160] or "unknown reason"


def _pixel_bytes(pixel_id: int) -> int:
    """Bytes per component of a SimpleITK pixel type (8 when it cannot tell)."""
    import SimpleITK as sitk

    name = sitk.GetPixelIDValueAsString(pixel_id)
    bits = re.search(r"(\d+)-bit", name)
    return (int(bits.group(1)) // 8 if bits else 8) * (2 if "complex" in name else 1)


def _check_header(path, what: str, size, components: int, pixel_id: int) -> None:
    """Before the pixels are read: a 3D scalar volume of at least 2 voxels a side that fits the memory
    budget (read, copied to numpy, converted to 32 bits)."""
    shape = "x".join(map(str, size))
    if len(size) == 2:
        raise FluoroRegError(f"{what} {path} is a 2D image ({shape} pixels); a 3D volume is needed")
    if len(size) != 3:
        raise FluoroRegError(f"{what} {path} has {len(size)} dimensions ({shape}); a 3D volume is needed "
                             "(split a 4D series into 3D volumes)")
    if min(size) == 0:
        raise FluoroRegError(f"{what} {path} is empty ({shape} voxels); pass a volume with data")
    if min(size) < 2:
        raise FluoroRegError(f"{what} {path} is a single slice ({shape} voxels); a 3D volume is needed")
    if components != 1:
        raise FluoroRegError(f"{what} {path} has {components} components per voxel (a vector or RGB volume); "
                             "a scalar volume is needed")
    item = _pixel_bytes(pixel_id)
    check_allocation(float(np.prod(size, dtype=float)) * (2 * item + 4), f"reading {what} {path} ({shape} voxels)",
                     "crop or downsample it first")


def _nifti_header(path: Path):
    """(shape, datatype, bitpix, vox_offset, byte order, version 1 or 2) of a NIfTI file; None if not one."""
    try:
        with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as f:
            raw = f.read(540)
    except (OSError, EOFError, zlib.error):
        return None
    for order in "<>":
        if len(raw) >= 348 and struct.unpack(order + "i", raw[:4])[0] == 348:
            dim = struct.unpack(order + "8h", raw[40:56])
            datatype, bitpix = struct.unpack(order + "2h", raw[70:74])
            offset, version = struct.unpack(order + "f", raw[108:112])[0], 1
            break
        if len(raw) >= 540 and struct.unpack(order + "i", raw[:4])[0] == 540:
            datatype, bitpix = struct.unpack(order + "2h", raw[12:16])
            dim = struct.unpack(order + "8q", raw[16:80])
            offset, version = struct.unpack(order + "q", raw[168:176])[0], 2
            break
    else:
        return None
    if not 1 <= dim[0] <= 7 or not math.isfinite(offset) or bitpix <= 0:
        return None
    return tuple(dim[1:dim[0] + 1]), datatype, bitpix, max(int(offset), 0), order, version


def _gzip_chunks(path: Path):
    """The decompressed bytes of a gzip file, every member, in pieces of at most 16 MiB. Raises
    zlib.error (bad data or checksum) or EOFError (the stream stops early)."""
    d = zlib.decompressobj(31)
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            while block:
                if d.eof:
                    if not block.strip(b"\0"):  # zero padding after the last member
                        break
                    d = zlib.decompressobj(31)
                yield d.decompress(block, _CHUNK)
                block = d.unused_data if d.eof else d.unconsumed_tail
    if not d.eof:
        raise EOFError("the file ends inside its gzip stream")


def _gzip_failure(err: Exception) -> str:
    return str(err) if isinstance(err, EOFError) else f"its gzip data are damaged ({err})"


def _file_chunks(path: Path):
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            yield block


def _scan(chunks, offset: int, nbytes: int, dtype) -> int:
    """Bytes in ``chunks``; with a float ``dtype``, raises ValueError at the first NaN / Inf among the
    ``nbytes`` of data after ``offset``."""
    total, pending = 0, b""
    for chunk in chunks:
        lo, hi = max(offset - total, 0), min(offset + nbytes - total, len(chunk))
        total += len(chunk)
        if dtype is None or lo >= hi:
            continue
        data = pending + chunk[lo:hi]
        usable = len(data) - len(data) % dtype.itemsize
        if not np.isfinite(np.frombuffer(data, dtype, usable // dtype.itemsize)).all():
            raise ValueError("non-finite")
        pending = data[usable:]
    return total


def _check_nifti(path: Path, what: str) -> None:
    """Truncation, corruption and NaN / Inf of a NIfTI file, which SimpleITK reads as zeros. An
    integer .nii.gz whose gzip trailer gives the expected size is taken as whole (the cheap case);
    otherwise the data are read once more, in 16 MiB pieces."""
    header = _nifti_header(path)
    if header is None:
        return
    shape, datatype, bitpix, offset, order, _ = header
    gz = path.name.lower().endswith(".gz")
    if gz and path.with_name(path.name[:-3]).exists():
        raise FluoroRegError(f"{what} {path} has a sibling {path.name[:-3]}, which SimpleITK reads in its place; "
                             "move or rename one of them")
    if min(shape) <= 0:
        raise FluoroRegError(f"{what} {path} is empty ({'x'.join(map(str, shape))} voxels); pass a volume with data")
    nbytes = int(np.prod(shape, dtype=np.int64)) * bitpix // 8
    dtype = np.dtype(order + _NIFTI_FLOATS[datatype]) if datatype in _NIFTI_FLOATS else None
    if not gz and path.stat().st_size < offset + nbytes:
        raise _truncated(path, what, f"{path.stat().st_size} bytes where its header needs {offset + nbytes}")
    if dtype is None and (not gz or _gzip_size_field(path) == (offset + nbytes) % 2 ** 32):
        return
    try:
        total = _scan(_gzip_chunks(path) if gz else _file_chunks(path), offset, nbytes, dtype)
    except ValueError:
        raise non_finite(path, what) from None
    except (zlib.error, EOFError) as err:
        raise _truncated(path, what, _gzip_failure(err)) from None
    if total < offset + nbytes:
        raise _truncated(path, what, f"{total} bytes unpacked where its header needs {offset + nbytes}")


def _gzip_size_field(path: Path) -> int:
    """The gzip trailer's uncompressed size (mod 2**32) of the last member."""
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        return struct.unpack("<I", f.read(4))[0]


def _metaimage_header(path: Path):
    """({key: value}, byte offset after the header) of a MetaImage header; None if not one."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    fields, end = {}, 0
    for line in head.split(b"\n"):
        end += len(line) + 1
        key, sep, value = line.decode("latin-1").partition("=")
        if not sep:
            return None
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            return fields, end
    return None


def _check_metaimage(path: Path, what: str) -> None:
    """Truncation of a MetaImage's data (SimpleITK then fails with 'No such file or directory' and
    prints two lines to stderr; a missing data file of a .mhd likewise)."""
    parsed = _metaimage_header(path)
    if parsed is None:
        return
    fields, end = parsed
    source = fields["ElementDataFile"]
    try:
        need = int(np.prod([int(v) for v in fields["DimSize"].split()], dtype=np.int64)) \
            * _MET_BYTES[fields["ElementType"]] * int(fields.get("ElementNumberOfChannels", 1))
        if fields.get("CompressedData", "false").lower() == "true":
            need = int(fields["CompressedDataSize"])
        skip = max(int(fields.get("HeaderSize", 0)), 0)
    except (KeyError, ValueError):
        return
    if source.upper() == "LOCAL":
        data, start = path, end
    elif "%" in source or source.upper().startswith("LIST") or " " in source:
        return
    else:
        data, start = path.parent / source, skip
        if not data.is_file():
            raise FluoroRegError(f"{what} {path} names data file {source}, which is missing; keep it beside the header")
    have = data.stat().st_size - start
    if have < need:
        raise _truncated(path, what, f"{max(have, 0)} data bytes where its header needs {need}")


def _check_file_data(path: Path, what: str) -> None:
    """What SimpleITK does not report on its own: empty files, short or damaged data, NIfTI NaN."""
    if path.stat().st_size == 0:
        raise FluoroRegError(f"{what} {path} is an empty file (0 bytes); re-export it")
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        _check_nifti(path, what)
    elif name.endswith((".mha", ".mhd")):
        _check_metaimage(path, what)


def _read_file(path: Path, what: str):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    _check_file_data(path, what)
    reader.ReadImageInformation()
    _check_header(path, what, reader.GetSize(), reader.GetNumberOfComponents(), reader.GetPixelID())
    return reader.Execute()


def _floats_tag(text: str, n: int):
    try:
        values = np.array([float(v) for v in text.strip().split("\\")])
    except ValueError:
        return None
    return values if values.size == n and np.isfinite(values).all() else None


def _check_unreadable_slices(folder: Path, files, what: str) -> None:
    """Raise for a slice file the series left out because it cannot be read (a truncated or damaged
    .dcm, or any file holding the DICM marker): GDCM drops it silently, leaving a gap. Files that
    are readable but not slices of this series (a dose report, another series) are left alone."""
    used = {Path(f).resolve() for f in files}
    series = _series_uid(Path(files[0])) if files else None
    bad = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.resolve() in used or p.name.upper() == "DICOMDIR":
            continue
        if p.suffix.lower() not in (".dcm", ".ima", ".dicom") and not _starts_with(p, b"DICM", 128):
            continue
        if _dropped_slice(p, series):
            bad.append(p.name)
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise FluoroRegError(f"DICOM {what} in {folder}: slice file(s) {', '.join(bad[:3])}{more} cannot be read "
                             "(truncated or corrupt); re-export the complete series")


def _series_uid(path: Path):
    import pydicom

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True).get("SeriesInstanceUID")
    except Exception:  # noqa: BLE001 (the series itself was read by GDCM; no UID to compare then)
        return None


def _dropped_slice(path: Path, series) -> bool:
    """True if ``path`` is a damaged file, or a file of ``series`` that the reader left out; False for
    a valid DICOM file of another series or without pixels in no series (a dose report)."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
    except Exception:  # noqa: BLE001 (any parse failure: a damaged file)
        return True
    uid = ds.get("SeriesInstanceUID")
    if series is not None and uid is not None and uid != series:
        return False  # another series (a dose report, a localiser)
    return "PixelData" in ds or uid is not None  # a slice of this series that could not be read, or cut short


def _check_slice_positions(folder: Path, files, positions, orientations, what: str) -> None:
    """Raise unless the slices lie evenly along the slice normal (ImagePositionPatient . normal):
    a missing or unreadable slice leaves a gap and a copy a zero step, which SimpleITK reads as one
    averaged spacing. ``positions``, ``orientations``: the 0020|0032 and 0020|0037 tag texts."""
    ipp = [_floats_tag(t, 3) for t in positions]
    iop = [_floats_tag(t, 6) for t in orientations]
    if any(v is None for v in ipp + iop):
        errors.warn(f"DICOM {what} in {folder} lacks slice positions or orientations; slice spacing is not checked")
        return
    if not all(np.allclose(o, iop[0], atol=1e-3) for o in iop):
        raise FluoroRegError(f"DICOM {what} in {folder} mixes slice orientations; export one stack per series")
    normal = np.cross(iop[0][:3], iop[0][3:])
    z = np.array(ipp) @ normal
    names = [Path(f).name for f in files]
    order = np.argsort(z, kind="stable")
    gaps = np.diff(z[order])
    step = float(np.median(gaps))
    if step <= 1e-6:
        raise FluoroRegError(f"DICOM {what} in {folder} has most of its slices at shared positions ({names[0]}, ...); "
                             "re-export the series as one stack")
    problems = []
    for i in np.flatnonzero(np.abs(gaps - step) > 0.1 * step):  # 10 %: far above scanner round-off
        a, b = names[order[i]], names[order[i + 1]]
        problems.append(f"{a} and {b} are both at {z[order[i]]:.4g} mm (a duplicate slice)" if gaps[i] < 0.1 * step
                        else f"{a} -> {b} is {gaps[i]:.4g} mm (a missing slice)")
    if problems:
        more = f" (and {len(problems) - 2} more)" if len(problems) > 2 else ""
        raise FluoroRegError(f"DICOM {what} in {folder} has uneven slice positions: {'; '.join(problems[:2])}{more}, "
                             f"where the others are {step:.4g} mm apart; re-export the complete series")
    if not (np.all(np.diff(z) > 0) or np.all(np.diff(z) < 0)):
        raise FluoroRegError(f"DICOM {what} in {folder} reads its slices out of order; re-export the series")


def _read_dicom(folder: Path, what: str):
    """One DICOM series from a folder, its slices checked (unreadable files, gaps, duplicates)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise FluoroRegError(f"no DICOM series found in folder {folder}; pass a folder of .dcm files or a volume file")
    if len(series) > 1:
        counts = ", ".join(f"{uid}: {len(reader.GetGDCMSeriesFileNames(str(folder), uid))} files" for uid in series[:3])
        raise FluoroRegError(f"DICOM folder {folder} holds {len(series)} series ({counts}); "
                             "put the CT series in a folder of its own")
    files = reader.GetGDCMSeriesFileNames(str(folder), series[0])
    _check_unreadable_slices(folder, files, what)
    if len(files) == 1:  # one file: a multi-frame volume, or a single slice
        return _read_file(Path(files[0]), what)
    first = sitk.ImageFileReader()
    first.SetFileName(files[0])
    first.ReadImageInformation()
    _check_header(folder, what, tuple(first.GetSize()[:2]) + (len(files),), first.GetNumberOfComponents(),
                  first.GetPixelID())
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    image = reader.Execute()
    tags = [[reader.GetMetaData(i, key) if reader.HasMetaDataKey(i, key) else "" for i in range(len(files))]
            for key in ("0020|0032", "0020|0037")]
    _check_slice_positions(folder, files, tags[0], tags[1], what)
    return image


def _starts_with(path: Path, magic: bytes, at: int = 0) -> bool:
    with open(path, "rb") as f:
        return f.read(at + len(magic))[at:] == magic


def _read_error(path: Path, what: str, err: str, noise: str) -> FluoroRegError:
    """The one-line error for a SimpleITK read that failed with ``err`` after printing ``noise``."""
    if any(m in (err + noise).lower() for m in _TRUNCATION_MARKERS):
        return _truncated(path, what, _itk_message(noise if any(m in noise.lower() for m in _TRUNCATION_MARKERS)
                                                    else err))
    header = _nifti_header(path) if path.name.lower().endswith((".nii", ".nii.gz")) else None
    if header is not None and header[5] == 2:
        return FluoroRegError(f"{what} {path} is NIfTI-2, which SimpleITK cannot read; save it as NIfTI-1 "
                              "(e.g. nibabel.Nifti1Image) or NRRD")
    if path.is_file() and path.name.lower().endswith(".gz") and _starts_with(path, b"\x1f\x8b"):
        try:
            _scan(_gzip_chunks(path), 0, 0, None)
        except (zlib.error, EOFError, OSError) as gz_err:
            return _truncated(path, what, _gzip_failure(gz_err))
    return FluoroRegError(f"cannot read {what} {path} ({_itk_message(err)[:120]}); use NIfTI, NRRD, MetaImage "
                          "or a DICOM folder")


def read_sitk(path: Path, what: str):
    """Read with SimpleITK, its C++ messages captured: a failure becomes one error line, and messages
    of a read that worked become a truncation error or one warning line. Python warnings raised
    meanwhile are held back until descriptor 2 is restored, so they are shown, not captured."""
    with warnings.catch_warnings(record=True) as held, _CapturedStderr() as captured:
        warnings.simplefilter("always")
        try:
            image, failure = (_read_dicom(path, what) if path.is_dir() else _read_file(path, what)), None
        except RuntimeError as err:
            image, failure = None, str(err)
    for w in held:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if failure is not None:
        raise _read_error(path, what, failure, captured.text)
    if any(m in captured.text.lower() for m in _TRUNCATION_MARKERS):
        raise _truncated(path, what, _itk_message(captured.text))
    if captured.text.strip():
        errors.warn(f"reading {what} {path}: {_itk_message(captured.text)}")
    return image
