"""Volume reading into LPS, labelmaps, label names, HU -> mu, crops, and the errors for bad input."""

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from FluoroRegistrationLib import FluoroRegError
from FluoroRegistrationLib.volume import (
    ImageVolume, bone_volume, bone_volumes, hu_to_mu, load_ct, load_labels, read_image, read_label_names,
    whole_volume, write_image)


def make_pair(tmp_path, suffix=".nii.gz"):
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1000, 1500, (12, 10, 14)).astype(np.int16)
    labels = np.zeros_like(hu, dtype=np.uint8)
    labels[3:7, 2:6, 4:10] = 1
    labels[8:11, 5:9, 1:5] = 2
    direction = np.array([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]])  # a rotated grid, to exercise the affine
    ct = ImageVolume.from_spacing(hu, (0.8, 0.9, 1.5), origin=(10.0, -20.0, 5.0), direction=direction)
    lab = ImageVolume.from_spacing(labels, (0.8, 0.9, 1.5), origin=(10.0, -20.0, 5.0), direction=direction)
    write_image(ct, tmp_path / f"ct{suffix}")
    write_image(lab, tmp_path / f"labels{suffix}")
    return ct, lab


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_volume_formats_roundtrip_in_lps(tmp_path, suffix):
    ct, _ = make_pair(tmp_path, suffix)
    back = load_ct(tmp_path / f"ct{suffix}")
    assert np.array_equal(back.array, ct.array.astype(np.float32))
    assert np.allclose(back.volume_from_index, ct.volume_from_index, atol=1e-5)


def test_nifti_ras_affine_becomes_lps(tmp_path):
    # a NIfTI whose sform says: voxel (i, j, k) -> RAS (i, j, k) mm; in LPS that is (-i, -j, k)
    nib = pytest.importorskip("nibabel")
    data = np.zeros((4, 5, 6), np.int16)  # nibabel arrays are (i, j, k)
    data[1, 2, 3] = 1000
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "ras.nii.gz"))
    vol = read_image(tmp_path / "ras.nii.gz")
    point = vol.volume_from_index @ np.array([1, 2, 3, 1.0])
    assert point[:3].tolist() == pytest.approx([-1.0, -2.0, 3.0])
    assert vol.array[3, 2, 1] == 1000


def test_dicom_series_folder(tmp_path):
    hu = (np.arange(4 * 6 * 5).reshape(4, 6, 5) * 10 - 500).astype(np.int16)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((0.7, 0.7, 2.0))
    image.SetOrigin((-5.0, 3.0, 100.0))
    folder = tmp_path / "dicom"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(hu.shape[0]):
        sl = image[:, :, k]
        sl.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")  # series uid
        sl.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))))
        sl.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        sl.SetMetaData("0020|0013", str(k))
        sl.SetMetaData("0008|0060", "CT")
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(sl)
    vol = load_ct(folder)
    assert vol.array.shape == (4, 6, 5)
    assert np.array_equal(vol.array, hu.astype(np.float32))
    assert vol.volume_from_index[:3, 3].tolist() == pytest.approx([-5.0, 3.0, 100.0])
    assert vol.spacing.tolist() == pytest.approx([0.7, 0.7, 2.0])


def test_hu_to_mu():
    assert hu_to_mu(np.array([-1000.0, 0.0, 1000.0, -2000.0])).tolist() == pytest.approx([0, 0.02, 0.04, 0])
    assert hu_to_mu(torch.tensor([0.0]), mu_water=0.03).item() == pytest.approx(0.03)


def test_label_names_from_json_dict_and_string(tmp_path):
    (tmp_path / "labels.json").write_text(json.dumps({"femur": 1, "tibia": "2"}))
    assert read_label_names(tmp_path / "labels.json") == {"femur": 1, "tibia": 2}
    assert read_label_names("femur=1, tibia=2") == {"femur": 1, "tibia": 2}
    assert read_label_names({"patella": 3}) == {"patella": 3}


def test_bone_crop_centroid_points_and_mask(tmp_path):
    ct, lab = make_pair(tmp_path)
    bone = bone_volume(ct, lab, 1, "femur", margin=2)
    assert bone.mu.shape == (4 + 4, 4 + 4, 6 + 4)
    inside = lab.array == 1
    ks, js, is_ = np.nonzero(inside)
    idx = np.stack([is_, js, ks, np.ones_like(is_)], 1)
    expected = (idx @ ct.volume_from_index.T)[:, :3].mean(0)
    assert bone.centroid.tolist() == pytest.approx(expected.tolist())
    assert int(bone.label_mask.sum()) == int(inside.sum())
    # the crop's affine puts its voxels where the CT's are
    p = bone.volume_from_index.numpy() @ np.array([2, 2, 2, 1.0])  # crop voxel (2,2,2) = CT (4,2,3)
    assert p[:3].tolist() == pytest.approx((ct.volume_from_index @ np.array([4, 2, 3, 1.0]))[:3].tolist())
    assert bone.mu[2, 2, 2].item() == pytest.approx(float(hu_to_mu(ct.array[3, 2, 4])), rel=1e-6)
    assert (bone.mu[0] == 0).all() and (bone.mu[-1] == 0).all()  # zero border
    assert len(bone.points) == int(inside.sum()) and len(bone.surface) > 0


def test_whole_volume_is_padded():
    ct = ImageVolume.from_spacing(np.zeros((3, 4, 5), np.float32), (1, 1, 1))
    vol = whole_volume(ct)
    assert vol.mu.shape == (5, 6, 7)
    assert vol.mu[1, 1, 1].item() == pytest.approx(0.02)


# ------------------------------------------------------------------ errors, one line each
def one_line(excinfo):
    assert "\n" not in str(excinfo.value)
    return str(excinfo.value)


def test_missing_path(tmp_path):
    with pytest.raises(FluoroRegError, match="CT not found") as e:
        load_ct(tmp_path / "nope.nii.gz")
    one_line(e)


def test_unreadable_file(tmp_path):
    (tmp_path / "junk.nii.gz").write_bytes(b"this is not a volume")
    with pytest.raises(FluoroRegError, match="cannot read CT") as e:
        load_ct(tmp_path / "junk.nii.gz")
    one_line(e)


def test_labelmap_on_another_grid(tmp_path):
    ct, lab = make_pair(tmp_path)
    other = ImageVolume.from_spacing(lab.array[:, :, :-1], (0.8, 0.9, 1.5), origin=(10.0, -20.0, 5.0))
    write_image(other, tmp_path / "other.nii.gz")
    with pytest.raises(FluoroRegError, match="not on the CT's grid .*; resample it onto the CT") as e:
        load_labels(tmp_path / "other.nii.gz", load_ct(tmp_path / "ct.nii.gz"))
    one_line(e)


def test_label_not_present(tmp_path):
    ct, lab = make_pair(tmp_path)
    with pytest.raises(FluoroRegError, match=r"label patella=3 is not in labelmap .*ids present: \[1, 2\]") as e:
        bone_volume(ct, lab, 3, "patella")
    one_line(e)
    with pytest.raises(FluoroRegError, match="bone\\(s\\) fibula not in the label names"):
        bone_volumes(ct, lab, {"femur": 1}, ["fibula"])


def test_empty_and_constant_volumes(tmp_path):
    write_image(ImageVolume.from_spacing(np.zeros((4, 4, 4), np.int16), (1, 1, 1)), tmp_path / "zero.nii.gz")
    with pytest.raises(FluoroRegError, match="is constant") as e:
        load_ct(tmp_path / "zero.nii.gz")
    one_line(e)
    with pytest.raises(FluoroRegError, match="is empty"):
        read_image_empty = ImageVolume.from_spacing(np.zeros((0, 4, 4), np.int16), (1, 1, 1))
        from FluoroRegistrationLib.volume import check_not_empty
        check_not_empty(read_image_empty)


def test_nan_ct(tmp_path):
    arr = np.zeros((4, 4, 4), np.float32)
    arr[1, 1, 1] = np.nan
    arr[2, 2, 2] = 100
    write_image(ImageVolume.from_spacing(arr, (1, 1, 1)), tmp_path / "nan.mha")
    with pytest.raises(FluoroRegError, match="NaN"):
        load_ct(tmp_path / "nan.mha")


def test_bad_label_names(tmp_path):
    with pytest.raises(FluoroRegError, match="femur=1,tibia=2"):
        read_label_names("femur")
    with pytest.raises(FluoroRegError, match="integer ids"):
        read_label_names({"femur": "one"})
    with pytest.raises(FluoroRegError, match="label names file not found"):
        read_label_names(tmp_path / "missing.json")


def test_label_ids_are_held_in_int16_when_they_fit_else_int32():
    from FluoroRegistrationLib.volume import check_label_values

    small = np.zeros((4, 4, 4), np.int64)
    small[1, 1, 1] = 300
    assert check_label_values(small).dtype == np.int16
    assert check_label_values(small.astype(np.float32)).dtype == np.int16
    big = small.copy()
    big[2, 2, 2] = 40000
    out = check_label_values(big)
    assert out.dtype == np.int32 and int(out[2, 2, 2]) == 40000


def _thick_slice_volume(content):
    """A 40 x 40 x 24 grid of 1 x 1 x 3 mm voxels (i, j, k) centred on the origin, ``content``
    (D, H, W) inside a one-voxel border of zeros."""
    from FluoroRegistrationLib.volume import RenderVolume

    mu = torch.zeros(24, 40, 40, dtype=torch.float64)
    mu[1:-1, 1:-1, 1:-1] = content
    affine = torch.eye(4, dtype=torch.float64)
    affine[2, 2] = 3.0
    affine[:3, 3] = torch.tensor([-19.5, -19.5, -34.5], dtype=torch.float64)
    return RenderVolume(mu, affine)


def test_box_voxels_tile_the_original_boxes_exactly():
    """Each 3 mm voxel split into three 1 mm sub-voxels of the same value: the exact ray tracer with
    box voxels (Siddon) draws the split grid and the original identically, at an oblique pose; an
    isotropic grid is returned as it is."""
    from FluoroRegistrationLib.geometry import Camera, pose_from_rotvec
    from FluoroRegistrationLib.render import render

    g = torch.Generator().manual_seed(0)
    vol = _thick_slice_volume(0.01 + 0.02 * torch.rand(22, 38, 38, generator=g, dtype=torch.float64))
    box = vol.boxed(1.5)
    assert box.mu.shape == (72, 40, 40) and box.thick_axes(1.5) == (1, 1, 1) and vol.thick_axes(1.5) == (1, 1, 3)
    assert torch.allclose(box.volume_from_index[:3, :3], torch.eye(3, dtype=torch.float64))
    assert vol.boxed(1.5) is box and vol.boxed(4.0) is vol and box.boxed(1.5) is box
    camera = Camera(1000.0, 64, 64, 0.8, 0.8)
    pose = pose_from_rotvec(torch.tensor([0.3, 1.4, 0.2], dtype=torch.float64),
                            torch.tensor([1.0, -2.0, 700.0], dtype=torch.float64))
    original = render(vol, camera, pose, "exact", interpolation="nearest")
    split = render(box, camera, pose, "exact", interpolation="nearest")
    assert original.max() > 0.5 and (split - original).abs().max() < 1e-9


def test_box_voxels_drawn_trilinearly_approach_siddons_thick_slices():
    """Slices of random attenuation (constant across each slice) seen from the side: the trilinear
    renderer blends neighbouring slices over 3 mm where the box-voxel ray tracer steps; on the split
    grid it blends over one 1 mm sub-voxel, so its error against the box-voxel truth falls by more
    than half."""
    from FluoroRegistrationLib.geometry import Camera, pose_from_rotvec
    from FluoroRegistrationLib.render import render

    g = torch.Generator().manual_seed(1)
    slices = 0.01 + 0.02 * torch.rand(22, generator=g, dtype=torch.float64)
    vol = _thick_slice_volume(slices[:, None, None].expand(22, 38, 38))
    camera = Camera(1000.0, 64, 64, 0.5, 0.5)
    side = pose_from_rotvec(torch.tensor([0.0, math.pi / 2, 0.0], dtype=torch.float64),
                            torch.tensor([0.0, 0.0, 700.0], dtype=torch.float64))
    truth = render(vol, camera, side, "exact", interpolation="nearest")[0, 0]
    inside = truth > 0.3
    linear_error = (render(vol, camera, side, "fast")[0, 0] - truth).abs()[inside].mean()
    box_error = (render(vol.boxed(1.5), camera, side, "fast")[0, 0] - truth).abs()[inside].mean()
    assert inside.sum() > 1000 and box_error < 0.4 * linear_error, (float(box_error), float(linear_error))


def _rod(length_slices: int, start: int = 20):
    """A 16 mm rod along z (labels (Z, 40, 40), 1 mm) from slice ``start`` to the grid's last slice."""
    z, y, x = np.mgrid[:length_slices, :40, :40]
    label = ((y - 19.5) ** 2 + (x - 19.5) ** 2 <= 64) & (z >= start)
    return ImageVolume.from_spacing(np.where(label, 1000.0, 0.0).astype(np.float32), (1.0, 1.0, 1.0)), \
        ImageVolume.from_spacing(label.astype(np.uint8), (1.0, 1.0, 1.0))


def test_a_bone_cut_by_the_cts_field_of_view_carries_where_it_continues_and_a_whole_one_does_not():
    from FluoroRegistrationLib.geometry import Camera
    from FluoroRegistrationLib.register.objective import beyond_pixels
    from FluoroRegistrationLib.render import project_label
    from FluoroRegistrationLib.volume import BEYOND_MM

    ct, lab = _rod(100)  # the CT cuts the rod at its last slice (z = 99 mm)
    cut = bone_volume(ct, lab, 1, "rod")
    assert cut.beyond is not None and len(cut.beyond) == 1  # one face touched
    corners = cut.beyond[0]
    z = corners[:, 2]
    assert torch.allclose(z[: len(z) // 2], torch.full_like(z[: len(z) // 2], 99.5))  # the face, half a voxel out
    assert torch.allclose(z[len(z) // 2:], torch.full_like(z[: len(z) // 2], 99.5 + BEYOND_MM))
    radius = (corners[:, :2] - 19.5).norm(dim=1)
    assert 8.0 <= float(radius.max()) <= 8.0 + 0.5 * math.sqrt(2) + 1e-9  # the cross-section's hull (voxel corners)
    whole_ct, whole_lab = _rod(100, start=20)
    whole_lab.array[-1] = 0  # ends a slice before the grid's edge
    assert bone_volume(whole_ct, whole_lab, 1, "rod").beyond is None

    # seen from the side, the prism covers every pixel where the real continuation projects (a CT of
    # the whole rod, its part past z = 99.5) and spares the CT's own part away from the cut
    full_ct, full_lab = _rod(200)
    past = full_lab.array.copy()
    past[:100] = 0
    continuation = bone_volume(full_ct, ImageVolume(past, full_lab.volume_from_index), 1, "rest")
    camera = Camera(1000.0, 160, 160, 1.5, 1.5)
    pose = torch.tensor([[0.0, 1, 0, -20], [0, 0, 1, -100], [1, 0, 0, 680], [0, 0, 0, 1]], dtype=torch.float64)
    rows, cols = torch.meshgrid(torch.arange(160.0), torch.arange(160.0), indexing="ij")
    pixels = torch.stack([cols.reshape(-1), rows.reshape(-1)], 1).double()
    # (within a pixel: the renderer's label outline is trilinear, half a voxel soft)
    hit = beyond_pixels(cut.beyond, camera, pose[None], pixels, 1.0)[0].view(160, 160)
    shows = project_label(continuation, camera, pose[None].float())[0, 0] > 0.5
    own = project_label(cut, camera, pose[None].float())[0, 0] > 0.5
    assert shows.sum() > 1000 and bool(hit[shows].all())
    cut_row = int(torch.nonzero(shows.any(1)).min())  # the first image row past the cut
    assert own[: cut_row - 2].sum() > 1000 and not bool(hit[: cut_row - 2].any())
    assert beyond_pixels(cut.beyond, camera, pose[None], pixels[:10], 0.0) is None  # a corner it misses


def test_the_part_of_a_cut_bone_past_the_cts_edge_is_left_out_of_each_poses_similarity():
    """A rod the CT cuts, a frame drawn from the whole rod, a mask of the whole rod: the loss leaves
    out, pose by pose, where the rod continues past the CT's edge (the same value as the similarity
    with those weights zeroed), so the truth is not charged for the shaft the CT lacks."""
    from FluoroRegistrationLib.geometry import Camera
    from FluoroRegistrationLib.register import similarity_objective
    from FluoroRegistrationLib.render import project_label, render
    from FluoroRegistrationLib.similarity import get_similarity

    ct, lab = _rod(100)
    full_ct, full_lab = _rod(200)
    cut, whole = bone_volume(ct, lab, 1, "rod"), bone_volume(full_ct, full_lab, 1, "rod")
    camera = Camera(1000.0, 96, 96, 2.5, 2.5)
    truth = torch.tensor([[0.0, 1, 0, -20], [0, 0, 1, -100], [1, 0, 0, 680], [0, 0, 0, 1]], dtype=torch.float64)
    frame = render(whole, camera, truth[None].float(), "fast")
    mask = project_label(whole, camera, truth[None].float()) > 0.5
    x = torch.tensor([[0.0] * 6, [0.02, -0.01, 0.03, 1.0, -2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 6.0, 0.0]], dtype=torch.float64)
    objective = similarity_objective(cut, frame, camera, truth, mask=mask, pixel_mm=1.75)
    keep = objective.kept(objective.par.pose(x).float())
    assert keep is not None and 0 < float(keep.mean()) < 1 and not torch.equal(keep[0], keep[2])  # it moves with the pose
    with torch.no_grad():
        losses = objective(x)
        one_by_one = torch.cat([objective(x[i:i + 1]) for i in range(3)])
        drr = render(cut, objective.camera, objective.par.pose(x).float(), "fast", region=objective.region)
        direct = get_similarity("patch-gncc")(drr, objective.frame, objective.weights * keep)  # 1 - similarity
        nine = objective(x.repeat(3, 1))  # a search's batch: each pose its own frame side
        objective(x[:1])
        exact = objective.exactly(x[1:2])  # never a row's frame side left from another pose
        weighed = objective.weighed(x[0])
        objective.beyond = None
        charged = objective(x[:1])
    assert torch.allclose(losses.double(), direct.double(), atol=1e-5)  # get_similarity gives the loss
    assert torch.allclose(one_by_one.double(), losses.double(), atol=1e-5)
    assert torch.allclose(nine.double(), direct.double().repeat(3), atol=1e-5)
    assert torch.allclose(exact.double(), direct[1:2].double(), atol=1e-6)
    # what the depth's and tilt's spreads count at a pose: the weighted pixels the exclusion leaves
    assert weighed == int((objective.weights * keep[0:1] > 0).sum()) < int((objective.weights > 0).sum())
    assert float(losses[0]) < float(charged[0]) - 0.02, (losses, charged)  # the missing shaft no longer counts


def test_a_bone_drawn_with_its_context_holds_the_ct_around_it():
    """context_volume: the CT (attenuation as it is) over the label's box grown by the margin, so a
    ray through the bone integrates bone and the tissue around it; the bone's centroid and points
    are kept. A 100 mm cube of water-like tissue (0 HU, mu 0.02 / mm) holding a 10 mm bone cube
    (1000 HU, mu 0.04 / mm) and a second bone 30 mm away, on a 1 mm grid."""
    from FluoroRegistrationLib.geometry import Camera
    from FluoroRegistrationLib.render import render
    from FluoroRegistrationLib.volume import ImageVolume, context_volume, hu_to_mu, registration_volumes

    hu = np.zeros((100, 100, 100), np.float32)
    labels = np.zeros(hu.shape, np.int16)
    hu[45:55, 45:55, 45:55], labels[45:55, 45:55, 45:55] = 1000.0, 1
    hu[45:55, 45:55, 80:90], labels[45:55, 45:55, 80:90] = 1000.0, 2
    ct = ImageVolume.from_spacing(hu, (1.0, 1.0, 1.0), origin=(-49.5, -49.5, -49.5))
    lab = ImageVolume.from_spacing(labels, (1.0, 1.0, 1.0), origin=(-49.5, -49.5, -49.5))
    plain = registration_volumes(ct, lab, {"bone": 1, "other": 2}, ["bone"])["bone"]
    held = registration_volumes(ct, lab, {"bone": 1, "other": 2}, ["bone"], context_mm=20.0)["bone"]
    assert torch.equal(held.mu, plain.mu)  # the bone alone, holding its context beside it
    with_context = held.context
    assert torch.equal(with_context.centroid, plain.centroid) and torch.equal(with_context.points, plain.points)
    # the crop: the label's 10 voxels + 20 on each side (and one voxel of zero padding); the other bone,
    # 25 mm past the label's box, is outside it
    assert tuple(with_context.mu.shape) == (52, 52, 52)
    assert float(with_context.mu[1:-1, 1:-1, 1:-1].min()) == pytest.approx(float(hu_to_mu(np.float32(0.0))))
    assert int(with_context.label_mask.sum()) == 1000
    # a ray along z through the bone's centre, 800 mm from the source: 50 mm of tissue with 10 mm of
    # bone in it, 0.02 * 40 + 0.04 * 10 = 1.2; the bone alone is drawn in excess of soft tissue
    camera = Camera(1000.0, 64, 64, 1.0, 1.0)
    pose = torch.eye(4, dtype=torch.float64)
    pose[2, 3] = 800.0
    centre = (slice(None), 0, 31, 31)
    drawn = render(with_context, camera, pose[None], "exact")
    assert float(drawn[centre].mean()) == pytest.approx(1.2, rel=0.01)
    alone = render(plain, camera, pose[None], "exact")
    expected = 10 * float(hu_to_mu(np.float32(1000.0)) - hu_to_mu(np.float32(50.0)))
    assert float(alone[centre].mean()) == pytest.approx(expected, rel=0.02)
    # a margin reaching past the CT is clipped to it; a margin out of range is refused in one line
    assert tuple(registration_volumes(ct, lab, {"bone": 1}, ["bone"], context_mm=80.0)["bone"].context.mu.shape) == (102,) * 3
    from FluoroRegistrationLib.register import RegistrationConfig

    with pytest.raises(FluoroRegError, match="Context.margin_mm"):
        RegistrationConfig.from_dict({"context": {"choice": "on", "margin_mm": 0}})
    with pytest.raises(FluoroRegError, match="Context.choice"):
        RegistrationConfig.from_dict({"context": {"choice": "sometimes"}})
    assert RegistrationConfig.from_dict({"context": {"choice": "on"}}).context_mm == 60.0
    assert RegistrationConfig.from_dict({"context": {"choice": "off"}}).context_mm is None
