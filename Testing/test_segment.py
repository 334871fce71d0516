"""Bone segmentation: training data, model files, training, prediction and the commands.

No accuracy is asserted here (that is `benchmarks/segment.py`'s job); what is checked: the fast
training simulator against the exact one, label-preserving augmentation, the loss falling, weights
round-tripping through safetensors and the JSON, pickles refused, shapes and files of prediction,
and one-line errors.
"""

import json
from dataclasses import replace

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from FluoroRegistrationLib.cli import main
from FluoroRegistrationLib.errors import FluoroRegError
from FluoroRegistrationLib.geometry import Camera, lateral_view
from FluoroRegistrationLib.phantom import make_knee_phantom, write_phantom
from FluoroRegistrationLib.segment import (BoneSegmenter, ModelInfo, TrainOptions, dice, hd95, load_model,
                                           predict_files, predict_masks, predict_probabilities, save_model,
                                           train_segmenter)
from FluoroRegistrationLib.segment.data import augment, random_realism
from FluoroRegistrationLib.segment.model import init_from, preprocess, read_weights
from FluoroRegistrationLib.segment.train import _Prefetch, resolve_precision, segmentation_loss
from FluoroRegistrationLib.simulate.frames import PRESETS, FrameSimulator
from FluoroRegistrationLib.simulate.scene import knee_poses


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """A small untrained model folder (shapes and files do not need a trained network)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    save_model(folder, BoneSegmenter(bones=["femur", "tibia"]), ModelInfo(bones=["femur", "tibia"], size=64))
    return folder


def test_fast_training_simulator_matches_the_exact_one(knee):
    ph, ct, labels = knee
    realism = replace(PRESETS["low"], detector=replace(PRESETS["low"].detector, photons_per_pixel=None,
                                                       electronic_noise=0.0))
    cam = Camera(1000.0, 48, 48, 5.0, 5.0)
    T = lateral_view(ph.knee_centre_mm, 700.0)
    poses = knee_poses(ph.knee_centre_mm, T, 40.0, 2.0, 3.0, bones=list(ph.label_names))
    exact = FrameSimulator(ct, labels, ph.label_names, realism, interpolation="linear", render_factor=1)
    fast = FrameSimulator(ct, labels, ph.label_names, realism, render_factor=1, renderer="fast")
    a, b = exact.line_integrals(cam, poses), fast.line_integrals(cam, poses)
    bone = list(exact.materials).index("cortical_bone")
    # bone on the full grid: the same trilinear integrals up to sampling; soft tissue on a 2x grid
    rel_bone = (a["areal"][0, bone] - b["areal"][0, bone]).abs().sum() / a["areal"][0, bone].abs().sum()
    rel_all = (a["areal"][0, 1:].sum(0) - b["areal"][0, 1:].sum(0)).abs().sum() / a["areal"][0, 1:].sum(0).sum()
    assert rel_bone < 0.03 and rel_all < 0.05, (float(rel_bone), float(rel_all))
    g = torch.Generator().manual_seed(0)
    ta = exact.detect(cam, a, g)["transmission"]
    tb = fast.detect(cam, b, torch.Generator().manual_seed(0))["transmission"]
    diff = (ta - tb).abs()  # the skin's edge is where a coarse soft-tissue grid differs most
    assert diff.mean() < 0.01 and torch.quantile(diff.flatten(), 0.95) < 0.05, (float(diff.mean()),)
    for bone_name in ("femur", "tibia"):
        ma, mb = a["thickness"][bone_name] > 0.5, b["thickness"][bone_name] > 0.5
        assert dice(ma.numpy(), mb.numpy()) > 0.9


def test_random_realism_gives_valid_frames_and_inputs(knee):
    ph, ct, labels = knee
    sim = FrameSimulator(ct, labels, ph.label_names, "medium", render_factor=1, renderer="fast")
    cam = Camera(1000.0, 40, 40, 6.0, 6.0)
    T = lateral_view(ph.knee_centre_mm, 700.0)
    li = sim.line_integrals(cam, knee_poses(ph.knee_centre_mm, T, 30.0, bones=list(ph.label_names)))
    g = torch.Generator().manual_seed(1)
    for _ in range(12):
        realism = random_realism(g, strength=1.5)
        out = sim.detect(cam, li, g, realism)
        assert out["image"].shape == (40, 40) and torch.isfinite(out["image"]).all()
        x, field = preprocess(out["image"].numpy(), 32)
        assert x.shape == (1, 1, 32, 32) and torch.isfinite(x).all() and field.shape == (40, 40)
        assert out["masks"]["femur"].any() and out["masks"]["tibia"].any()


def test_augment_moves_masks_with_the_image():
    S = 32
    y = torch.zeros(1, S, S)
    y[0, 8:20, 2:10] = 1  # off-centre: a flip moves it
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        x, ya = augment(y.clone() * 2.0, y.clone(), g)
        fg = x[0][ya[0] > 0].mean()  # the labelled region stays the bright one (erasing aside)
        other = x[0][ya[0].flip(-1) > 0].mean()
        assert ya.sum() == y.sum() and fg > other


def test_loss_falls_when_training_a_small_model():
    torch.manual_seed(0)
    model = BoneSegmenter(bones=["femur"])
    y = torch.zeros(2, 1, 64, 64)
    y[0, 0, 10:40, 12:30] = 1
    y[1, 0, 30:60, 20:50] = 1
    x = (y * 2.0 - 0.5) + 0.1 * torch.randn(2, 1, 64, 64)
    opt = torch.optim.AdamW(model.parameters(), 2e-3)
    losses = []
    for _ in range(8):
        loss = segmentation_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    model.eval()  # the running statistics follow the batches (BatchNorm momentum 0.1, not 0.01)
    with torch.no_grad():
        assert segmentation_loss(model(x), y).item() < losses[0]
    assert model(x).shape == (2, 2, 64, 64)  # background + one bone


def test_train_writes_a_model_that_round_trips(knee, tmp_path):
    ph, ct, labels = knee
    opts = TrainOptions(size=64, epochs=2, steps_per_epoch=1, batch=2, bank=2, renew=1, val_frames=2)
    result = train_segmenter(ct, labels, ph.label_names, tmp_path, opts, camera=Camera(1000.0, 64, 64, 4.0, 4.0),
                             progress=False)
    assert len(result["history"]) == 2 and set(result["val_dice"]) == {"femur", "tibia"}
    for name in ("model.safetensors", "model.json", "history.json", "training_curve.png"):
        assert (tmp_path / name).is_file()
    info = json.loads((tmp_path / "model.json").read_text())
    assert info["bones"] == ["femur", "tibia"] and info["size"] == 64
    assert info["arch"] == "deeplabv3_mobilenet_v3_large" and "normalise" in info["preprocessing"]
    assert info["training"]["seconds"] > 0 and info["training"]["best_epoch"] in (1, 2)
    # the options are recorded as resolved: "auto" becomes the precision that ran
    assert info["training"]["options"]["precision"] == resolve_precision("auto") == info["training"]["precision"]
    assert info["training"]["options"]["steps_per_epoch"] == 1
    model, loaded = load_model(tmp_path)
    assert loaded.classes == ["background", "femur", "tibia"]
    again, _ = load_model(tmp_path / "model.json")
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    weights = read_weights(tmp_path / "model.safetensors")
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_bf16_autocast_training_lowers_the_loss():
    """The fast path (bf16 autocast, channels-last) learns like fp32: the loss falls, the weights
    stay fp32 and finite, and its outputs agree with fp32 to bf16's precision."""
    torch.manual_seed(0)
    model = BoneSegmenter(bones=["femur"]).to(memory_format=torch.channels_last)
    y = torch.zeros(2, 1, 64, 64)
    y[0, 0, 10:40, 12:30] = 1
    y[1, 0, 30:60, 20:50] = 1
    x = ((y * 2.0 - 0.5) + 0.1 * torch.randn(2, 1, 64, 64)).contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 2e-3)
    losses = []
    for _ in range(8):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
        assert logits.dtype == torch.bfloat16
        loss = segmentation_loss(logits.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        full = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x).float()
    assert (full - half).abs().max() < 0.05 * full.abs().max() + 0.05


def test_precision_is_resolved_and_checked():
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    assert resolve_precision("auto") in ("fp32", "bf16")
    with pytest.raises(FluoroRegError, match="precision"):
        TrainOptions(precision="fp16").check()


def test_prefetched_batches_come_in_order_and_stop():
    made = []

    def make():
        made.append(len(made))
        return made[-1]

    batches = _Prefetch(make, True)
    got = [batches.next(more=i + 1 < 5) for i in range(5)]
    batches.close()
    assert got == [0, 1, 2, 3, 4] and made == [0, 1, 2, 3, 4]  # nothing made past the last one asked for
    plain = _Prefetch(lambda: "x", False)
    assert plain.next(more=True) == "x" and plain.pending is None


def test_training_with_prefetch_is_reproducible(knee, tmp_path):
    """The prefetching thread draws from the same generator in the same order: two runs of the same
    seed give the same weights, and the same as without prefetching."""
    ph, ct, labels = knee
    cam = Camera(1000.0, 64, 64, 4.0, 4.0)
    weights = []
    for i, prefetch in enumerate((True, True, False)):
        opts = TrainOptions(size=64, epochs=2, steps_per_epoch=3, batch=2, bank=2, renew=1, val_frames=2,
                            precision="fp32", prefetch=prefetch, clutter="heavy")
        train_segmenter(ct, labels, ph.label_names, tmp_path / str(i), opts, camera=cam, progress=False)
        weights.append(read_weights(tmp_path / str(i) / "model.safetensors"))
    for other in weights[1:]:
        assert all(torch.equal(weights[0][k], other[k]) for k in weights[0])


def test_default_batches_per_epoch_follow_the_precision(knee, tmp_path, monkeypatch):
    """No --steps: the number of batches is the resolved precision's (sized to the time budget)."""
    from FluoroRegistrationLib.segment import train

    assert TrainOptions().steps_per_epoch is None and train.DEFAULT_STEPS == {"bf16": 75, "fp32": 60}
    monkeypatch.setattr(train, "DEFAULT_STEPS", {"bf16": 2, "fp32": 3})
    counted = []
    real = train.segmentation_loss
    monkeypatch.setattr(train, "segmentation_loss", lambda *a: counted.append(1) or real(*a))
    ph, ct, labels = knee
    opts = TrainOptions(size=64, epochs=1, batch=2, bank=2, renew=1, val_frames=2, precision="fp32")
    train_segmenter(ct, labels, ph.label_names, tmp_path, opts, camera=Camera(1000.0, 64, 64, 4.0, 4.0),
                    progress=False)
    assert len(counted) == 3
    info = json.loads((tmp_path / "model.json").read_text())
    assert info["training"]["options"]["steps_per_epoch"] == 3
    with pytest.raises(FluoroRegError, match="steps_per_epoch"):
        TrainOptions(steps_per_epoch=0).check()


class Payload:
    """Stands for code a pickle would run on load."""


def test_weights_files_are_tensors_only(tmp_path, untrained):
    bad = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "code": Payload()}, bad)
    with pytest.raises(FluoroRegError, match="weights_only=True"):
        read_weights(bad)
    # a plain state dict is fine, and fine-tuning copies what fits (here all but the last layer)
    model, _ = load_model(untrained)
    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    other = BoneSegmenter(bones=["femur", "tibia", "patella"])
    skipped = init_from(other, plain)
    assert skipped and all(k.startswith("fuse.9.") for k in skipped)  # the decoder's last layer
    assert torch.equal(other.state_dict()["net.backbone.0.0.weight"], model.state_dict()["net.backbone.0.0.weight"])
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.json").write_text(json.dumps({"arch": "deeplabv3_mobilenet_v3_large",
                                                           "bones": ["femur"], "size": 64}))
    (tmp_path / "m" / "model.safetensors").write_bytes((untrained / "model.safetensors").read_bytes())
    with pytest.raises(FluoroRegError, match="different models"):
        load_model(tmp_path / "m")


def test_dice_and_hd95_on_known_shapes():
    a = np.zeros((40, 40), bool)
    b = np.zeros((40, 40), bool)
    a[10:20, 10:20] = True
    b[10:20, 13:23] = True  # the same square moved 3 px
    assert dice(a, b) == pytest.approx(0.7)
    assert hd95(a, b) == pytest.approx(3.0)
    assert hd95(a, b, spacing=0.5) == pytest.approx(1.5)
    assert dice(a, a) == 1.0 and hd95(a, a) == 0.0
    assert hd95(a, np.zeros_like(a)) == float("inf")


def test_predict_masks_on_the_frame_grid_and_files(untrained, tmp_path):
    model, info = load_model(untrained)
    raw = np.full((80, 96), 3000.0)
    raw[20:60, 30:70] = 1000.0  # a dark "bone" in a bright field
    masks = predict_masks(model, info, raw)
    assert set(masks) == {"femur", "tibia"} and all(m.shape == (80, 96) and m.dtype == bool for m in masks.values())
    with pytest.raises(FluoroRegError, match="segments femur, tibia, not patella"):
        predict_masks(model, info, raw, bones=["patella"])
    with pytest.raises(FluoroRegError, match="NaN"):
        predict_masks(model, info, np.full((8, 8), np.nan))
    frame = tmp_path / "f.png"
    sitk.WriteImage(sitk.GetImageFromArray(raw.astype(np.uint16)), str(frame))
    records = predict_files(untrained, [frame], tmp_path / "out", progress=False)
    files = records[0]["files"]
    overlay = sitk.GetArrayFromImage(sitk.ReadImage(files["overlay"]))
    assert overlay.shape == (80, 96, 3)
    assert sitk.GetArrayFromImage(sitk.ReadImage(files["femur"])).shape == (80, 96)
    stack = tmp_path / "seq.npy"  # a sequence: every frame is segmented, each decoded on its own
    np.save(stack, np.stack([raw, raw[::-1].copy(), raw[:, ::-1].copy()]).astype(np.float32))
    records = predict_files(untrained, [stack], tmp_path / "seq", progress=False)
    assert [r["frame"] for r in records] == [f"{stack}[{i}]" for i in range(3)]
    assert [Path(r["files"]["femur"]).name for r in records] == [f"seq_{i:04d}_femur.png" for i in range(3)]
    first = predict_masks(*load_model(untrained), raw[::-1].copy())["femur"]
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(records[1]["files"]["femur"])) > 0, first)


def test_flip_averaged_prediction_is_mirror_equivariant(untrained):
    """The default prediction averages the logits of the frame and of its mirror image: the mirrored
    frame's probabilities are the frame's mirrored (exactly, up to float), which the network alone
    is not; and the logits are the mean of the two single passes."""
    _, info = load_model(untrained)
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 3, 5, padding=2).eval()  # a network that is not mirror-symmetric
    rng = np.random.default_rng(0)
    raw = 3000.0 - 1500.0 * ndimage.gaussian_filter(rng.random((80, 96)), 4) * 4
    raw[30:50, 10:40] -= 800.0  # something asymmetric
    both = predict_probabilities(model, info, raw)
    both_mirrored = predict_probabilities(model, info, raw[:, ::-1].copy())
    one = predict_probabilities(model, info, raw, flip=False)
    one_mirrored = predict_probabilities(model, info, raw[:, ::-1].copy(), flip=False)
    logit = lambda p: np.log(p) - np.log1p(-p)
    for b in info.bones:
        np.testing.assert_allclose(both_mirrored[b], both[b][:, ::-1], atol=2e-5)
        assert np.abs(one_mirrored[b] - one[b][:, ::-1]).max() > 1e-3  # the network alone is not symmetric
        inside = (both[b] > 0) & (one[b] > 0)
        np.testing.assert_allclose(logit(both[b][inside]),
                                   0.5 * (logit(one[b]) + logit(one_mirrored[b][:, ::-1]))[inside], atol=1e-3)


def test_segment_and_register_commands(untrained, tmp_path, capsys):
    ph = make_knee_phantom(spacing_mm=4.0, flexion_deg=0.0, seed=0)
    paths = write_phantom(ph, tmp_path / "ph")
    raw = np.full((64, 64), 3000, np.uint16)
    raw[20:44, 20:44] = 1000
    frame = tmp_path / "frame.png"
    sitk.WriteImage(sitk.GetImageFromArray(raw), str(frame))
    assert main(["segment", "predict", "--model", str(untrained), "--frame", str(frame), "--out",
                 str(tmp_path / "pred")]) == 0
    assert (tmp_path / "pred" / "frame_femur.png").is_file() and (tmp_path / "pred" / "frame_overlay.png").is_file()
    capsys.readouterr()
    calib = tmp_path / "calib.json"
    Camera(1000.0, 64, 64, 4.0, 4.0).to_json(calib)
    base = ["register", "--ct", paths["ct"], "--labels", paths["labels"], "--bone", "femur", "--frame", str(frame),
            "--calib", str(calib), "--init", str(tmp_path / "none.json"), "--out", str(tmp_path / "r.json")]
    cases = [
        (["segment", "predict", "--model", str(tmp_path / "nope"), "--frame", str(frame), "--out", str(tmp_path)],
         "no model.json in"),
        (["segment", "train", "--ct", paths["ct"], "--labels", paths["labels"], "--out", str(tmp_path / "m"),
          "--bones", "femur,kneecap"], "no kneecap in the labelmap"),
        (["segment", "train", "--ct", paths["ct"], "--labels", paths["labels"], "--out", str(tmp_path / "m"),
          "--size", "100"], "multiple of 16"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    # register's mask options are checked before any work
    from FluoroRegistrationLib.files import write_poses

    write_poses(tmp_path / "none.json", {"femur": lateral_view(ph.knee_centre_mm, 700.0)})
    for extra, message in [(["--mask", "auto"], "--mask auto needs --model"),
                           (["--model", str(untrained)], "--model is used with --mask auto"),
                           (["--mask-dilation", "3,500"], "MaskFocus.fine_dilation_mm = 500.0 is out of range"),
                           (["--mask-dilation", "0.02,x"], "--mask-dilation must be 2")]:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_predicted_masks_are_one_more_evaluation_condition(untrained, tmp_path):
    from FluoroRegistrationLib.evaluate.config import experiment_from_dict
    from FluoroRegistrationLib.evaluate.runner import _predicted

    base = {"frames": {"folder": "x"}, "starts": {"mtre_bins_mm": [0, 2]}}
    exp = experiment_from_dict({**base, "conditions": [{"name": "p", "mask": "predicted", "model": str(untrained)}]})
    assert exp.conditions[0].model == str(untrained)
    with pytest.raises(FluoroRegError, match="mask predicted needs model: FOLDER"):
        experiment_from_dict({**base, "conditions": [{"name": "p", "mask": "predicted"}]})
    (tmp_path / "frames").mkdir()
    raw = np.full((48, 56), 3000, np.uint16)
    raw[10:30, 10:40] = 900
    sitk.WriteImage(sitk.GetImageFromArray(raw), str(tmp_path / "frames" / "0000.png"))
    masks = _predicted(str(tmp_path), "0000", str(untrained), ("femur", "tibia"))
    assert set(masks) == {"femur", "tibia"} and masks["femur"].shape == (48, 56) and masks["femur"].dtype == torch.bool


def test_users_labelled_frames_are_read_and_mixed_in(tmp_path):
    from FluoroRegistrationLib.segment.data import make_batch, read_labelled_folder

    (tmp_path / "frames").mkdir()
    (tmp_path / "masks").mkdir()
    raw = np.full((60, 80), 3000, np.uint16)
    raw[10:40, 20:50] = 800
    sitk.WriteImage(sitk.GetImageFromArray(raw), str(tmp_path / "frames" / "a.png"))
    femur = np.zeros((60, 80), np.uint8)
    femur[10:40, 20:50] = 255
    sitk.WriteImage(sitk.GetImageFromArray(femur), str(tmp_path / "masks" / "a_femur.png"))
    with pytest.raises(FluoroRegError, match="no mask .*a_tibia.png for frame a.png"):
        read_labelled_folder(tmp_path, ["femur", "tibia"], 32)
    items = read_labelled_folder(tmp_path, ["femur"], 32)
    x, y = items[0]
    assert x.shape == (1, 32, 32) and y.shape == (1, 32, 32) and y.dtype == torch.bool
    assert y[0, 10, 16] and not y[0, 28, 4]  # the box, resized with the frame
    xb, yb = make_batch(None, None, ["femur"], 3, torch.Generator().manual_seed(0), items, labelled_fraction=1.0)
    assert xb.shape == (3, 1, 32, 32) and yb.shape == (3, 1, 32, 32)
