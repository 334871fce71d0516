"""Pose gradients against finite differences; batching, several bones, chunking, CUDA."""

import pytest
import torch

from analytic import centred_affine
from FluoroRegistrationLib import FluoroRegError
from FluoroRegistrationLib.geometry import Camera, CentredParameterization, pose_from_rotvec
from FluoroRegistrationLib.render import project_label, render
from FluoroRegistrationLib.volume import ImageVolume, RenderVolume, bone_volume, whole_volume

F64 = torch.float64
G = torch.Generator().manual_seed(3)


def smooth_volume(n=10):
    """A tiny smooth random volume (float64) with a zero border."""
    mu = torch.rand(n, n + 1, n + 2, generator=G, dtype=F64)
    mu = torch.nn.functional.avg_pool3d(mu[None, None], 3, 1, 1)[0, 0]
    mu = torch.nn.functional.pad(mu, (1, 1, 1, 1, 1, 1))
    return RenderVolume(mu * 0.05, centred_affine(mu.shape, spacing=2.0), "tiny")


TINY_CAM = Camera(300.0, 9, 8, 4.0, 4.0)
T0 = pose_from_rotvec(torch.tensor([0.35, -0.25, 0.15], dtype=F64), torch.tensor([1.0, -2.0, 150.0], dtype=F64))


@pytest.mark.parametrize("method, kwargs", [("fast", {}), ("exact", {"interpolation": "linear"}),
                                            ("exact", {"interpolation": "nearest"})])
def test_pose_gradients_match_central_finite_differences(method, kwargs):
    vol = smooth_volume()
    par = CentredParameterization(torch.zeros(3, dtype=F64), T0)
    x = (torch.randn(2, 6, generator=G, dtype=F64) * 0.02).requires_grad_()
    fn = lambda x: render(vol, TINY_CAM, par.pose(x), method, **kwargs)
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_fast_gradients_on_a_larger_detector_with_chunking():
    vol = smooth_volume(14)
    cam = Camera(300.0, 20, 18, 2.5, 2.5)
    par = CentredParameterization(torch.zeros(3, dtype=F64), T0)
    x = (torch.randn(1, 6, generator=G, dtype=F64) * 0.02).requires_grad_()
    fn = lambda x: render(vol, cam, par.pose(x), "fast", max_samples=2000, piece_samples=300)  # pieces + recompute
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("method", ["fast", "exact"])
def test_batched_equals_looped(method):
    vol = smooth_volume()
    rot = torch.randn(5, 3, generator=G, dtype=F64) * 0.5
    rot[1] = torch.tensor([0.0, 1.4, 0.0], dtype=F64)  # a pose whose slice axis differs from the others
    poses = pose_from_rotvec(rot, torch.tensor([0.0, 0.0, 150.0], dtype=F64).expand(5, 3))
    batched = render(vol, TINY_CAM, poses, method)
    looped = torch.cat([render(vol, TINY_CAM, p, method) for p in poses])
    assert torch.allclose(batched, looped, atol=1e-12)
    if method == "fast":  # pieces of poses and rows give the same image
        assert torch.allclose(render(vol, TINY_CAM, poses, method, piece_samples=300), looped, atol=1e-12)


def test_chunked_fast_render_equals_unchunked():
    vol = smooth_volume(14)
    cam = Camera(300.0, 40, 36, 1.5, 1.5)
    whole = render(vol, cam, T0, "fast")
    chunked = render(vol, cam, T0, "fast", piece_samples=3000)
    assert whole.abs().max() > 0 and torch.allclose(whole, chunked, atol=1e-12)


def labelled_volume():
    """A 3-label float64 CT-like volume: (ct, labels) ImageVolumes on one grid."""
    g = torch.Generator().manual_seed(11)
    hu = (torch.rand(18, 16, 20, generator=g, dtype=F64) * 1500 - 200).numpy()
    labels = torch.zeros(18, 16, 20, dtype=torch.int32)
    labels[2:8, 3:12, 2:9] = 1
    labels[9:16, 2:10, 5:17] = 2
    labels[3:7, 12:15, 11:18] = 3
    ct = ImageVolume.from_spacing(hu, (1.5, 1.2, 2.0), origin=(-14.0, -9.0, -17.0))
    lab = ImageVolume.from_spacing(labels.numpy(), (1.5, 1.2, 2.0), origin=(-14.0, -9.0, -17.0))
    return ct, lab


@pytest.mark.parametrize("method", ["fast", "exact"])
def test_bones_at_identity_sum_to_the_whole_volume(method):
    ct, lab = labelled_volume()
    bones = [bone_volume(ct, lab, i, f"b{i}").to(dtype=F64) for i in (0, 1, 2, 3)]  # 0 = everything else
    full = whole_volume(ct).to(dtype=F64)
    cam = Camera(500.0, 24, 28, 1.6, 1.6)
    T = pose_from_rotvec(torch.tensor([0.2, 0.5, -0.1], dtype=F64), torch.tensor([2.0, 1.0, 300.0], dtype=F64))
    parts = render(bones, cam, [T] * 4, method)
    assert torch.allclose(parts, render(full, cam, T, method), atol=1e-10)


def test_project_label_gives_thickness_and_mask():
    ct, lab = labelled_volume()
    bone = bone_volume(ct, lab, 1, "b1").to(dtype=F64)
    cam = Camera(500.0, 24, 28, 1.6, 1.6)
    T = pose_from_rotvec(torch.zeros(3, dtype=F64), torch.tensor([0.0, 0.0, 300.0], dtype=F64))
    thickness = project_label(bone, cam, T, "exact", interpolation="nearest")[0, 0]
    # label 1 spans 6 voxels of 2 mm along z (the beam axis): central rays cross 12 mm of it
    assert thickness.max().item() == pytest.approx(12.0, rel=0.02)
    assert (thickness > 0).sum() > 10


def test_bone_behind_the_source_is_a_clear_error():
    vol = smooth_volume()
    T = pose_from_rotvec(torch.zeros(3, dtype=F64), torch.tensor([0.0, 0.0, -50.0], dtype=F64))
    for method in ("fast", "exact"):
        with pytest.raises(FluoroRegError, match="behind or at the X-ray source"):
            render(vol, TINY_CAM, T, method)


def test_nan_pose_is_a_clear_error():
    T = T0.clone()
    T[0, 3] = float("nan")
    with pytest.raises(FluoroRegError, match="NaN"):
        render(smooth_volume(), TINY_CAM, T)


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["fast", "exact"])
def test_cuda_equals_cpu(method):
    vol = smooth_volume(14)
    cam = Camera(300.0, 20, 18, 2.5, 2.5)
    par = CentredParameterization(torch.zeros(3, dtype=F64), T0)
    x = (torch.randn(3, 6, generator=G, dtype=F64) * 0.05)
    cpu_x = x.clone().requires_grad_()
    cpu = render(vol, cam, par.pose(cpu_x), method)
    cpu.square().sum().backward()
    gpu_x = x.cuda().requires_grad_()
    par_gpu = CentredParameterization(torch.zeros(3, dtype=F64, device="cuda"), T0.cuda())
    gpu = render(vol.to("cuda"), cam, par_gpu.pose(gpu_x), method)
    gpu.square().sum().backward()
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-9)
    assert torch.allclose(cpu_x.grad, gpu_x.grad.cpu(), atol=1e-7, rtol=1e-6)


def sparse_volume(n=40):
    """A mostly empty float64 volume: a thin rod along i and a smooth blob in a far corner, so the
    slabs' non-zero boxes differ from slab to slab and from the grid."""
    mu = torch.zeros(n, n, n, dtype=F64)
    mu[18:22, 6:10, 4:36] = 0.03  # [k, j, i]: the rod runs along i
    blob = torch.rand(8, 8, 8, generator=G, dtype=F64)
    mu[28:36, 26:34, 26:34] = torch.nn.functional.avg_pool3d(blob[None, None], 3, 1, 1)[0, 0] * 0.05
    return RenderVolume(mu, centred_affine(mu.shape, spacing=1.5), "sparse")


def test_skipping_empty_space_keeps_the_image_and_gradients_and_halves_the_samples(monkeypatch):
    from FluoroRegistrationLib.render import fast

    vol = sparse_volume()
    cam = Camera(400.0, 48, 44, 1.2, 1.2)
    rot = torch.randn(4, 3, generator=G, dtype=F64) * 0.4
    rot[1] = torch.tensor([0.0, 1.3, 0.0], dtype=F64)  # another slice axis in the same batch
    base = pose_from_rotvec(rot, torch.tensor([2.0, -1.0, 220.0], dtype=F64).expand(4, 3))
    par = CentredParameterization(torch.zeros(3, dtype=F64), torch.eye(4, dtype=F64))
    samples = {}
    march = fast._march

    def counting(slices, H, u, v, ramp=None):
        samples[key] = samples.get(key, 0) + slices.shape[0] * H.shape[0] * len(u) * len(v)
        return march(slices, H, u, v, ramp)

    monkeypatch.setattr(fast, "_march", counting)
    monkeypatch.setattr(fast, "_SKIP_FROM", 0)  # this small a volume is drawn unskipped by default
    out = {}
    for key in (False, True):
        x = (torch.randn(4, 6, generator=torch.Generator().manual_seed(1), dtype=F64) * 0.01).requires_grad_()
        image = fast.render_fast(vol, cam, base @ par.pose(x), region=(3, 45, 2, 40), skip_empty=key)
        weights = torch.randn(image.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
        (image * weights).sum().backward()
        out[key] = (image.detach(), x.grad)
    assert out[False][0].abs().max() > 0.1 and (out[False][0] == 0).float().mean() > 0.2  # the bone and air in the picture
    assert torch.allclose(out[True][0], out[False][0], rtol=0, atol=1e-12)
    assert torch.allclose(out[True][1], out[False][1], rtol=1e-10, atol=1e-10)
    assert samples[True] < 0.5 * samples[False]
