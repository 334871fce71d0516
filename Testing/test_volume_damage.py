"""Damaged and unusable volumes: each is one error line (and exit status 2 from the CLI), never a
read that silently fills in zeros, drops NaN, skips a slice or runs out of memory.

Measured with SimpleITK 2.5.7 (ITK 5.4): a truncated .nii / .nii.gz reads with the missing voxels as
0 and no message; NaN / Inf in a float NIfTI read as 0 (niftilib's nifti_read_buffer replaces
non-finite floats); a truncated .mha / .mhd fails with "No such file or directory" after printing
two lines to stderr; a truncated .nrrd / .nhdr fails naming the short read; a DICOM series whose
slice is missing or unreadable reads with an averaged slice spacing and a multi-line ITK warning.
"""

import gzip
import json
import os
import re
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from FluoroRegistrationLib import FluoroRegError
from FluoroRegistrationLib.cli import main
from FluoroRegistrationLib.errors import FluoroRegWarning
from FluoroRegistrationLib.geometry import Camera
from FluoroRegistrationLib.phantom import make_knee_phantom
from FluoroRegistrationLib.volume import (
    ImageVolume, RenderVolume, check_allocation, check_label_values, load_ct, load_labels, memory_budget,
    read_image, read_label_names, write_image)

RNG = np.random.default_rng(0)
HU = RNG.uniform(-1000, 1500, (20, 12, 10)).astype(np.int16)  # (Z, Y, X), random: compresses poorly


@pytest.fixture(autouse=True)
def _default_budget(monkeypatch):
    monkeypatch.delenv("FLUOROREG_MEMORY_GB", raising=False)


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def write(array, path, compress=True, spacing=(0.8, 0.9, 1.5)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path), compress)
    return path


def cut(path, keep=0.6):
    """Truncate a file to ``keep`` of its length (a download or copy cut short)."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


def cli(capsys, *args):
    """Run the command line; returns (exit status, stderr lines)."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def render_args(tmp_path, ct):
    Camera(1000.0, 32, 32, 2.0, 2.0).to_json(tmp_path / "calib.json")
    pose = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 800], [0, 0, 0, 1]]
    (tmp_path / "pose.json").write_text(json.dumps({"volume": {"camera_from_volume": pose}}))
    return ["render", "--ct", ct, "--calib", tmp_path / "calib.json", "--pose", tmp_path / "pose.json",
            "--out", tmp_path / "drr.npy"]


# ------------------------------------------------------------------ truncated / corrupt files
# (file written, file to cut short): detached headers keep their data in a second file
FORMATS = [("ct.nii.gz", "ct.nii.gz", True), ("ct.nii", "ct.nii", False), ("ct.nrrd", "ct.nrrd", True),
           ("ct.nrrd", "ct.nrrd", False), ("ct.nhdr", "ct.raw", False), ("ct.mha", "ct.mha", True),
           ("ct.mha", "ct.mha", False), ("ct.mhd", "ct.raw", False)]


@pytest.mark.parametrize("name,data,compress", FORMATS)
@pytest.mark.parametrize("keep", [0.6, 0.999])
def test_truncated_volume_is_one_line(tmp_path, capfd, name, data, compress, keep):
    write(HU, tmp_path / name, compress)
    assert np.array_equal(load_ct(tmp_path / name).array, HU)  # whole, it reads
    cut(tmp_path / data, keep)
    with pytest.raises(FluoroRegError, match=r"^CT .* is truncated or corrupt: .*; re-export it$") as e:
        load_ct(tmp_path / name)
    one_line(e)
    assert capfd.readouterr().err == ""  # SimpleITK's own messages do not leak to the terminal


def test_truncated_nifti_through_the_cli(tmp_path, capsys):
    write(HU, tmp_path / "ct.nii.gz")
    cut(tmp_path / "ct.nii.gz")
    code, err = cli(capsys, *render_args(tmp_path, tmp_path / "ct.nii.gz"))
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: CT ") and "is truncated or corrupt" in err[0]


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_corrupt_nifti_gz(tmp_path, dtype):
    path = write(HU.astype(dtype), tmp_path / "ct.nii.gz")
    with open(path, "r+b") as f:  # a few bytes flipped inside the deflate stream
        f.seek(os.path.getsize(path) // 2)
        f.write(b"\xff\x13\x77\x00\x00")
    with pytest.raises(FluoroRegError, match="is truncated or corrupt: its gzip data are damaged") as e:
        load_ct(path)
    one_line(e)


def test_missing_detached_data_file(tmp_path):
    write(HU, tmp_path / "ct.mhd", False)
    (tmp_path / "ct.raw").unlink()
    with pytest.raises(FluoroRegError, match="names data file ct.raw, which is missing") as e:
        load_ct(tmp_path / "ct.mhd")
    one_line(e)


def test_nifti_gz_beside_a_nii_of_the_same_name(tmp_path):
    # SimpleITK asked for ct.nii.gz reads ct.nii when both exist (measured): a silent wrong volume
    write(HU, tmp_path / "ct.nii.gz")
    write(HU[::-1].copy(), tmp_path / "ct.nii")
    with pytest.raises(FluoroRegError, match="has a sibling ct.nii, which SimpleITK reads in its place") as e:
        load_ct(tmp_path / "ct.nii.gz")
    one_line(e)
    assert np.array_equal(load_ct(tmp_path / "ct.nii").array, HU[::-1])


# ------------------------------------------------------------------ NaN / Inf in NIfTI
@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii", "ct.nrrd", "ct.mha"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_ct_is_the_same_error_in_every_format(tmp_path, name, bad, dtype):
    arr = HU.astype(dtype)
    arr[7, 3, 4] = bad
    write(arr, tmp_path / name)
    with pytest.raises(FluoroRegError, match=r"^CT .* contains NaN or infinite values; fix or mask them") as e:
        load_ct(tmp_path / name)
    one_line(e)


def test_nan_in_nibabel_nifti(tmp_path):
    # nibabel writes scl_slope = NaN ("no scaling") for float data, and may write big-endian
    nib = pytest.importorskip("nibabel")
    data = HU.T.astype(">f4")
    data[1, 2, 3] = np.nan
    image = nib.Nifti1Image(data, np.eye(4))
    image.header.set_data_dtype(">f4")
    nib.save(image, str(tmp_path / "ct.nii.gz"))
    assert np.isnan(nib.load(str(tmp_path / "ct.nii.gz")).get_fdata()).sum() == 1
    with pytest.raises(FluoroRegError, match="contains NaN or infinite values"):
        load_ct(tmp_path / "ct.nii.gz")
    data[1, 2, 3] = 5.0  # and the same file without NaN reads, values intact
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "ok.nii"))
    assert np.array_equal(load_ct(tmp_path / "ok.nii").array, data.T)


def test_multi_member_gzip_reads_and_nifti2_is_named(tmp_path):
    nib = pytest.importorskip("nibabel")
    write(HU, tmp_path / "ct.nii", False)
    raw = (tmp_path / "ct.nii").read_bytes()
    with open(tmp_path / "multi.nii.gz", "wb") as f:  # two gzip members, as pigz or concatenation give
        f.write(gzip.compress(raw[:3000]) + gzip.compress(raw[3000:]))
    assert np.array_equal(load_ct(tmp_path / "multi.nii.gz").array, HU)
    nib.save(nib.Nifti2Image(HU.T.astype(np.float32), np.eye(4)), str(tmp_path / "ct2.nii"))
    with pytest.raises(FluoroRegError, match="is NIfTI-2, which SimpleITK cannot read; save it as NIfTI-1") as e:
        load_ct(tmp_path / "ct2.nii")
    one_line(e)


# ------------------------------------------------------------------ DICOM series
def write_series(folder, n=8, spacing=2.0, jitter=None):
    """A (n, 6, 5) CT as n axial DICOM slices with proper ImagePositionPatient (each slice moved
    along z by ``jitter[k]`` mm when given); returns the array."""
    hu = (np.arange(n * 30).reshape(n, 6, 5) * 7 - 500).astype(np.int16)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((0.7, 0.7, spacing))
    image.SetOrigin((-5.0, 3.0, 100.0))
    folder.mkdir(exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(n):
        sl = image[:, :, k]
        sl.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.7")  # series instance uid
        x, y, z = image.TransformIndexToPhysicalPoint((0, 0, k))
        sl.SetMetaData("0020|0032", f"{x}\\{y}\\{z + (jitter[k] if jitter is not None else 0.0)}")
        sl.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        sl.SetMetaData("0020|0013", str(k))
        sl.SetMetaData("0008|0060", "CT")
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(sl)
    return hu


def test_dicom_series_intact_reads_quietly(tmp_path, capfd):
    hu = write_series(tmp_path / "dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vol = load_ct(tmp_path / "dcm")
    assert np.array_equal(vol.array, hu) and vol.spacing.tolist() == pytest.approx([0.7, 0.7, 2.0])
    assert capfd.readouterr().err == ""


def test_dicom_small_jitter_reads_with_one_warning_line(tmp_path, capfd):
    # 0.06 mm off on a 2 mm step: within the 10 % this library accepts, but ITK warns (several lines)
    hu = write_series(tmp_path / "dcm", jitter=[0, 0, 0, 0.06, 0, 0, 0, 0])
    with pytest.warns(FluoroRegWarning, match="^reading CT .*: Non uniform sampling or missing slices detected") as w:
        vol = load_ct(tmp_path / "dcm")
    assert len(w) == 1 and "\n" not in str(w[0].message)
    assert np.array_equal(vol.array, hu)
    assert capfd.readouterr().err == ""


def test_dicom_missing_slice_names_the_gap(tmp_path, capfd):
    write_series(tmp_path / "dcm")
    (tmp_path / "dcm" / "004.dcm").unlink()
    with pytest.raises(FluoroRegError, match=r"uneven slice positions: 003.dcm -> 005.dcm is 4 mm \(a missing "
                       r"slice\), where the others are 2 mm apart; re-export the complete series") as e:
        load_ct(tmp_path / "dcm")
    one_line(e)
    assert capfd.readouterr().err == ""  # ITK's "Non uniform sampling" warning does not leak


def test_dicom_duplicate_slice(tmp_path):
    write_series(tmp_path / "dcm")
    (tmp_path / "dcm" / "004b.dcm").write_bytes((tmp_path / "dcm" / "004.dcm").read_bytes())
    with pytest.raises(FluoroRegError, match=r"004b?.dcm and 004b?.dcm are both at .* \(a duplicate slice\)") as e:
        load_ct(tmp_path / "dcm")
    one_line(e)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_dicom_unreadable_slice_is_named(tmp_path, capsys, damage):
    write_series(tmp_path / "dcm")
    path = tmp_path / "dcm" / "004.dcm"
    if damage == "garbage":
        path.write_bytes(np.random.default_rng(1).bytes(600))
    elif damage == "truncated":
        cut(path, 0.8)
    else:
        path.write_bytes(b"")
    with pytest.raises(FluoroRegError, match=r"slice file\(s\) 004.dcm cannot be read \(truncated or corrupt\); "
                       "re-export the complete series") as e:
        load_ct(tmp_path / "dcm")
    one_line(e)
    code, err = cli(capsys, *render_args(tmp_path, tmp_path / "dcm"))
    assert code == 2 and len(err) == 1 and err[0].startswith("error: DICOM CT in ")


def test_dicom_folder_of_one_slice(tmp_path):
    write_series(tmp_path / "dcm", n=1)
    with pytest.raises(FluoroRegError, match=r"is a single slice \(5x6x1 voxels\); a 3D volume is needed") as e:
        load_ct(tmp_path / "dcm")
    one_line(e)


def test_dicom_folder_with_two_series(tmp_path):
    write_series(tmp_path / "dcm")
    image = sitk.GetImageFromArray(np.zeros((1, 6, 5), np.int16))[:, :, 0]
    image.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.8")
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(tmp_path / "dcm" / "scout.dcm"))
    writer.Execute(image)
    with pytest.raises(FluoroRegError, match="holds 2 series .*; put the CT series in a folder of its own") as e:
        load_ct(tmp_path / "dcm")
    one_line(e)


# ------------------------------------------------------------------ label ids
def test_labelmap_with_fractional_ids(tmp_path):
    write(HU, tmp_path / "ct.nrrd")
    labels = np.zeros(HU.shape, np.float32)
    labels[2:5, 2:5, 2:5] = 1.7
    write(labels, tmp_path / "labels.nrrd")
    with pytest.raises(FluoroRegError, match=r"holds non-integer values \(e.g. 1.7\); pass integer label ids") as e:
        load_labels(tmp_path / "labels.nrrd", load_ct(tmp_path / "ct.nrrd"))
    one_line(e)


def test_labelmap_with_scaled_integer_ids(tmp_path):
    # an int16 NIfTI with scl_slope 0.1 holds 17 -> SimpleITK returns 1.7 (float)
    nib = pytest.importorskip("nibabel")
    write(HU, tmp_path / "ct.nii.gz", spacing=(1.0, 1.0, 1.0))
    data = np.zeros(HU.T.shape, np.int16)
    data[2:5, 2:5, 2:5] = 17
    image = nib.Nifti1Image(data, np.diag([-1.0, -1.0, 1.0, 1.0]))
    image.header.set_slope_inter(0.1, 0)
    nib.save(image, str(tmp_path / "labels.nii.gz"))
    with pytest.raises(FluoroRegError, match="non-integer values"):
        load_labels(tmp_path / "labels.nii.gz", load_ct(tmp_path / "ct.nii.gz"))


@pytest.mark.parametrize("spec,shown", [({"femur": 1.7}, "1.7"), ({"femur": True}, "True"), ("femur=1.7", "'1.7'"),
                                        ({"femur": None}, "None"), ({"femur": float("nan")}, "nan")])
def test_label_names_with_non_integer_ids(tmp_path, spec, shown):
    if isinstance(spec, dict):
        (tmp_path / "labels.json").write_text(json.dumps(spec))
        spec = tmp_path / "labels.json"
    with pytest.raises(FluoroRegError, match=f"integer ids.*; femur has {shown}$") as e:
        read_label_names(spec)
    one_line(e)


def test_label_names_zero_and_not_an_object(tmp_path):
    with pytest.raises(FluoroRegError, match="femur has id 0, but 0 is the background"):
        read_label_names({"femur": 0})
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(FluoroRegError, match="must hold a JSON object"):
        read_label_names(tmp_path / "list.json")
    assert read_label_names({"femur": 2.0, "tibia": "3"}) == {"femur": 2, "tibia": 3}


def test_label_names_with_fractional_id_through_the_cli(tmp_path, capsys):
    (tmp_path / "names.json").write_text(json.dumps({"femur": 1.7}))
    write(HU, tmp_path / "ct.nii.gz")
    labels = np.zeros(HU.shape, np.uint8)
    labels[2:5, 2:5, 2:5] = 1
    write(labels, tmp_path / "labels.nii.gz")
    code, err = cli(capsys, "register", "--ct", tmp_path / "ct.nii.gz", "--labels", tmp_path / "labels.nii.gz",
                    "--label-names", tmp_path / "names.json", "--bone", "femur", "--frame", tmp_path / "f.png",
                    "--calib", tmp_path / "c.json", "--init", tmp_path / "i.json", "--out", tmp_path / "r.json")
    assert code == 2 and len(err) == 1 and err[0].startswith("error: label names must map names to integer ids")


# ------------------------------------------------------------------ memory budget and spacing
def test_memory_budget_default_and_override(monkeypatch):
    assert 0 < memory_budget() <= 16 * 2 ** 30
    monkeypatch.setenv("FLUOROREG_MEMORY_GB", "0.5")
    assert memory_budget() == 2 ** 29
    with pytest.raises(FluoroRegError, match=r"a big grid needs 1 GiB, over the memory budget of 0.5 GiB; "
                       "shrink it \\(or set FLUOROREG_MEMORY_GB\\)") as e:
        check_allocation((1024, 1024, 256), "a big grid", "shrink it", 4)
    one_line(e)
    for bad in ("lots", "-1", "nan", "0"):
        monkeypatch.setenv("FLUOROREG_MEMORY_GB", bad)
        with pytest.raises(FluoroRegError, match="FLUOROREG_MEMORY_GB must be a positive number"):
            memory_budget()


def test_reader_checks_the_budget_before_reading(tmp_path, monkeypatch):
    write(HU, tmp_path / "ct.nrrd")
    monkeypatch.setenv("FLUOROREG_MEMORY_GB", str(HU.size * 4 / 2 ** 30))  # less than int16 + copy + float32
    with pytest.raises(FluoroRegError, match=r"reading CT .* \(10x12x20 voxels\) needs 18.8 KiB, over the memory "
                       "budget of 9.38 KiB; crop or downsample it first") as e:
        load_ct(tmp_path / "ct.nrrd")
    one_line(e)


@pytest.mark.parametrize("spacing", ["0.1", "0.02,0.02,1"])
def test_phantom_too_fine_for_memory(tmp_path, capsys, spacing):
    code, err = cli(capsys, "phantom", "--out", tmp_path / "ph", "--spacing", spacing)
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: a ") and "knee phantom" in err[0] and "over the memory budget" in err[0]
    assert not (tmp_path / "ph").exists()


@pytest.mark.parametrize("spacing", ["nan", "inf", "1e-6", "1e4", "1,1,nan"])
def test_phantom_spacing_out_of_range(tmp_path, capsys, spacing):
    code, err = cli(capsys, "phantom", "--out", tmp_path / "ph", "--spacing", spacing)
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: the phantom has voxel spacing (") and "outside the sane range 0.01-20 mm" in err[0]


def test_phantom_size_not_finite(tmp_path, capsys):
    code, err = cli(capsys, "phantom", "--out", tmp_path / "ph", "--size", "nan")
    assert code == 2 and len(err) == 1 and "phantom size (nan, nan, nan) mm must be positive and finite" in err[0]
    with pytest.raises(ValueError, match="side must be"):  # FluoroRegError is a ValueError
        make_knee_phantom(spacing_mm=4.0, side="middle")


@pytest.mark.parametrize("spacing", [(1e-6, 1e-6, 1e-6), (1.0, 1.0, 1e4), (0.001, 0.8, 0.8)])
def test_ct_header_spacing_out_of_range(tmp_path, capsys, spacing):
    write(HU, tmp_path / "ct.nrrd", spacing=spacing)
    with pytest.raises(FluoroRegError, match=r"^CT .* has voxel spacing \(.*\) mm, outside the sane range "
                       r"0.01-20 mm; fix the spacing in its header \(millimetres\)$") as e:
        load_ct(tmp_path / "ct.nrrd")
    one_line(e)


def _coarsened_padded(mu, f):
    """The coarsening as it was: zero-pad to a multiple of f, then average f^3 blocks."""
    m = mu if mu.dim() == 4 else mu[None]
    D, H, W = m.shape[-3:]
    pad = [0, -W % f, 0, -H % f, 0, -D % f]
    out = torch.nn.functional.avg_pool3d(torch.nn.functional.pad(m[None], pad), f)[0]
    out = torch.nn.functional.pad(out, [1, 1] * 3)
    return out if mu.dim() == 4 else out[0]


@pytest.mark.parametrize("shape", [(9, 13, 30), (2, 9, 13, 30)])
def test_coarsening_unchanged_and_bounded(shape, monkeypatch):
    mu = torch.rand(*shape)
    vol = RenderVolume(mu, torch.eye(4, dtype=torch.float64), "femur")
    for f in (2, 3, 7, 10, 31, 64):
        assert torch.allclose(vol.coarsened(f).mu, _coarsened_padded(mu, f), atol=1e-7)
    # a factor far beyond the grid (a calibration with sdd_mm 1) no longer allocates f^3 voxels
    huge = vol.coarsened(3000)
    assert huge.mu.shape[-3:] == (3, 3, 3)
    assert huge.mu.sum() * 3000 ** 3 == pytest.approx(float(mu.sum()), rel=1e-4)
    monkeypatch.setenv("FLUOROREG_MEMORY_GB", "1e-9")
    with pytest.raises(FluoroRegError, match="the 2x coarser grid of femur needs .* over the memory budget"):
        RenderVolume(mu, torch.eye(4, dtype=torch.float64), "femur").coarsened(2)


# ------------------------------------------------------------------ not a usable 3D scalar CT
def nib_save(tmp_path, name, data):
    nib = pytest.importorskip("nibabel")
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / name))
    return tmp_path / name


@pytest.mark.parametrize("case,message", [
    ("2d.nii.gz", r"is a 2D image \(5x6 pixels\); a 3D volume is needed"),
    ("2d.png", r"is a 2D image \(5x6 pixels\); a 3D volume is needed"),
    ("4d.nii.gz", r"has 4 dimensions \(5x6x7x3\); a 3D volume is needed"),
    ("rgb.mha", r"has 3 components per voxel \(a vector or RGB volume\); a scalar volume is needed"),
    ("zero.nii.gz", r"is an empty file \(0 bytes\); re-export it"),
    ("novox.nii.gz", r"is empty \(5x6x0 voxels\); pass a volume with data"),
    ("slice.nii.gz", r"is a single slice \(5x6x1 voxels\); a 3D volume is needed"),
    ("junk.nrrd", r"cannot read CT .*; use NIfTI, NRRD, MetaImage or a DICOM folder"),
])
def test_not_a_3d_scalar_ct(tmp_path, capsys, case, message):
    ones = np.ones((5, 6, 7), np.int16)  # nibabel arrays are (i, j, k)
    if case == "2d.nii.gz":
        nib_save(tmp_path, case, ones[:, :, 0])
    elif case == "2d.png":
        sitk.WriteImage(sitk.GetImageFromArray(np.ones((6, 5), np.uint8)), str(tmp_path / case))
    elif case == "4d.nii.gz":
        nib_save(tmp_path, case, np.ones((5, 6, 7, 3), np.int16))
    elif case == "rgb.mha":
        sitk.WriteImage(sitk.Image([5, 6, 7], sitk.sitkVectorUInt8, 3), str(tmp_path / case))
    elif case == "zero.nii.gz":
        (tmp_path / case).write_bytes(b"")
    elif case == "novox.nii.gz":
        nib_save(tmp_path, case, ones[:, :, :0])
    elif case == "slice.nii.gz":
        nib_save(tmp_path, case, ones[:, :, :1])
    else:
        (tmp_path / case).write_bytes(b"NRRD0004\nthis is not a header\n")
    with pytest.raises(FluoroRegError, match=message) as e:
        load_ct(tmp_path / case)
    one_line(e)
    code, err = cli(capsys, *render_args(tmp_path, tmp_path / case))
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")


def test_labelmap_wrong_size_all_zero_and_absent_bone(tmp_path, capsys):
    ct = ImageVolume.from_spacing(HU, (1.0, 1.0, 1.0))
    write_image(ct, tmp_path / "ct.nii.gz")
    labels = np.zeros(HU.shape, np.uint8)
    write_image(ImageVolume.from_spacing(labels, (1.0, 1.0, 1.0)), tmp_path / "zero.nii.gz")
    write_image(ImageVolume.from_spacing(labels[:-1], (1.0, 1.0, 1.0)), tmp_path / "small.nii.gz")
    labels[2:5, 2:5, 2:5] = 1
    write_image(ImageVolume.from_spacing(labels, (1.0, 1.0, 1.0)), tmp_path / "labels.nii.gz")
    loaded = load_ct(tmp_path / "ct.nii.gz")
    with pytest.raises(FluoroRegError, match=r"\(10x12x19 voxels\) is not on the CT's grid \(10x12x20\); resample"):
        load_labels(tmp_path / "small.nii.gz", loaded)
    with pytest.raises(FluoroRegError, match=r"holds no labels \(every voxel is 0\); pass the bones' segmentation"):
        load_labels(tmp_path / "zero.nii.gz", loaded)
    with pytest.raises(FluoroRegError, match="holds no labels"):
        check_label_values(np.zeros((3, 3, 3), np.float32))
    Camera(1000.0, 32, 32, 2.0, 2.0).to_json(tmp_path / "calib.json")
    pose = {"camera_from_volume": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 800], [0, 0, 0, 1]]}
    (tmp_path / "pose.json").write_text(json.dumps({"femur": pose, "tibia": pose}))
    for labelmap, names, expected in [
            ("zero.nii.gz", "femur=1", "holds no labels"),
            ("small.nii.gz", "femur=1", "is not on the CT's grid"),
            ("labels.nii.gz", "femur=1,tibia=2", r"label tibia=2 is not in labelmap .*ids present: \[1\]")]:
        code, err = cli(capsys, "render", "--ct", tmp_path / "ct.nii.gz", "--labels", tmp_path / labelmap,
                        "--label-names", names, "--bones", "femur,tibia", "--calib", tmp_path / "calib.json",
                        "--pose", tmp_path / "pose.json", "--out", tmp_path / "drr.npy")
        assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (labelmap, err)
        assert re.search(expected, err[0]), err[0]


def test_quiet_reads_warn_nothing(tmp_path, capfd):
    write(HU, tmp_path / "ct.nii.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FluoroRegWarning)
        read_image(tmp_path / "ct.nii.gz", "CT")
    assert capfd.readouterr().err == ""


def test_dicom_folder_with_a_dose_report_reads(tmp_path):
    """A valid DICOM file of another series without pixels (a dose report) is not a damaged slice."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    write_series(tmp_path / "dcm")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"  # X-Ray Radiation Dose SR
    meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID = generate_uid(), ExplicitVRLittleEndian
    report = FileDataset(str(tmp_path / "dcm" / "dose.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    report.SOPClassUID, report.SeriesInstanceUID, report.Modality = meta.MediaStorageSOPClassUID, generate_uid(), "SR"
    report.save_as(str(tmp_path / "dcm" / "dose.dcm"), enforce_file_format=True)
    assert load_ct(tmp_path / "dcm").array.shape == load_ct_without(tmp_path, "dose.dcm").array.shape


def load_ct_without(tmp_path, name):
    import shutil

    clean = tmp_path / "clean"
    shutil.copytree(tmp_path / "dcm", clean)
    (clean / name).unlink()
    return load_ct(clean)
