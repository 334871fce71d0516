"""A corpus of bad (and a few good) inputs to every command, and the rule they are judged by.

Each :class:`Case` is a ``fluororeg`` command line built on a small scene this module writes (the
phantom at 4 mm, a 256 px lateral frame rendered at a known pose, its mask, calibration and start),
with one thing broken. Expected outcomes:

- ``error``: exit status 2 and exactly one stderr line, ``error: ...`` (containing ``match``);
- ``flag``: the command ran but says the result is not to be trusted (exit 3, or a bone reported
  ``failed`` / ``check``);
- ``ok``: exit 0 (for registrations, every bone ``ok``).

:func:`judge` classes what happened as ``clean`` (as expected), ``traceback`` (an exception escaped,
or an internal error), ``silent`` (exit 0 where an error or a flag was due: a silently wrong
answer), ``message`` (a clean error without the expected words), ``wrong`` (a good input refused or
flagged) or ``crash`` (killed, e.g. by memory). Used by ``Testing/test_bad_inputs.py`` and
``benchmarks/bad_inputs.py`` (which also runs them in subprocesses against older versions).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

QUICK = {"search": {"enabled": False}, "ranking": {"level": 0}, "pyramid": {"pixel_mm": [2.8, 0.7], "iterations": [20, 20]},
         "axial_probe": {"enabled": False}, "tilt_probe": {"enabled": False}, "depth_scan": {"enabled": False}}
GOOD_CALIB = {"sdd_mm": 1000.0, "rows": 256, "cols": 256, "row_spacing_mm": 1.0, "col_spacing_mm": 1.0}


@dataclass
class Case:
    name: str  # "command: what is broken"
    argv: list
    expect: str = "error"  # error | flag | ok
    match: str = ""  # words the error line must hold (case-insensitive)
    check: object = None  # for "ok": a callable returning what is wrong with the answer, or None


@dataclass
class Outcome:
    kind: str  # clean | traceback | silent | message | wrong | crash
    code: int
    detail: str


# ------------------------------------------------------------------------------------ the scene
def make_scene(root: Path) -> dict:
    """Write the good inputs into ``root``; returns their paths (and the truth)."""
    import torch

    from FluoroRegistrationLib.files import write_poses
    from FluoroRegistrationLib.geometry import Camera, CentredParameterization, lateral_view
    from FluoroRegistrationLib.phantom import make_knee_phantom, write_phantom
    from FluoroRegistrationLib.render import project_label, render
    from FluoroRegistrationLib.volume import ImageVolume, registration_volumes, whole_volume

    root.mkdir(parents=True, exist_ok=True)
    ph = make_knee_phantom(spacing_mm=4.0, flexion_deg=20.0, seed=0)
    paths = write_phantom(ph, root)
    ct = ImageVolume.from_spacing(ph.hu.astype(np.float32), ph.spacing_mm, ph.origin_mm)
    labels = ImageVolume.from_spacing(ph.labels.astype(np.int32), ph.spacing_mm, ph.origin_mm)
    femur = registration_volumes(ct, labels, ph.label_names, ["femur"])["femur"]
    camera = Camera.from_dict(GOOD_CALIB)
    truth = lateral_view(ph.knee_centre_mm, 700.0)
    with torch.no_grad():
        drr = render(whole_volume(ct), camera, truth.float(), "fast")[0, 0].numpy()
        mask = project_label(femur, camera, truth.float())[0, 0].numpy() > 0.5
    detected = np.exp(-drr)  # a detector's image: bright in air, dark over bone
    np.save(root / "frame.npy", detected.astype(np.float32))
    np.save(root / "mask.npy", mask)
    start = CentredParameterization(femur.centroid, truth).pose(
        torch.tensor([math.radians(2), 0.0, math.radians(-2), 3.0, -2.0, 4.0], dtype=torch.float64))
    write_poses(root / "init.json", {"femur": start})
    write_poses(root / "truth.json", {"femur": truth})
    (root / "calib.json").write_text(json.dumps(GOOD_CALIB))
    (root / "quick.json").write_text(json.dumps(QUICK))
    return dict(root=root, ct=paths["ct"], labels=paths["labels"], names=root / "labels.json",
                frame=root / "frame.npy", mask=root / "mask.npy", calib=root / "calib.json",
                init=root / "init.json", truth=truth, start=start, detected=detected, config=root / "quick.json",
                spacing=ph.spacing_mm, origin=ph.origin_mm, hu=ph.hu)


def _write(root: Path, name: str, content) -> Path:
    path = root / "bad" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, (dict, list)) or content is None or isinstance(content, (int, float)):
        path.write_text(json.dumps(content))
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, np.ndarray):
        np.save(path, content, allow_pickle=content.dtype == object)
    else:
        path.write_text(content)
    return path


def _calib(**changes) -> dict:
    out = dict(GOOD_CALIB)
    out.update(changes)
    return {k: v for k, v in out.items() if v is not ...}


def _volume(root: Path, name: str, array, spacing=(4.0, 4.0, 4.0), origin=(0.0, 0.0, 0.0), vector=False) -> Path:
    import SimpleITK as sitk

    path = root / "bad" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(array, isVector=vector)
    n = img.GetDimension()
    img.SetSpacing(tuple(float(v) for v in (tuple(spacing) + (1.0,))[:n]))
    img.SetOrigin(tuple(float(v) for v in (tuple(origin) + (0.0,))[:n]))
    sitk.WriteImage(img, str(path))
    return path


def _truncated(src, root: Path, name: str, keep: float = 0.6) -> Path:
    data = Path(src).read_bytes()
    return _write(root, name, data[: int(len(data) * keep)])


def _png(root: Path, name: str, image: np.ndarray) -> Path:
    import SimpleITK as sitk

    path = root / "bad" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(image), str(path))
    return path


def _monochrome1_dicom(root: Path, detected: np.ndarray) -> Path:
    """The frame as a computed radiograph: MONOCHROME1 (stored small = white), 12 bits, with the
    pixel spacing tag at the calibration's pitch."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ComputedRadiographyImageStorage as CRImageStorage
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    bright = detected / detected.max()  # display values: air white
    stored = np.round((1.0 - bright) * 4095).astype(np.uint16)  # MONOCHROME1: air stored small
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CRImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = root / "bad" / "cr_monochrome1.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CRImageStorage, meta.MediaStorageSOPInstanceUID, "CR"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagerPixelSpacing = [GOOD_CALIB["row_spacing_mm"], GOOD_CALIB["col_spacing_mm"]]
    ds.PixelData = stored.tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def register_cases(s: dict) -> list[Case]:
    """``fluororeg register`` with one input broken at a time."""
    root = s["root"]
    base = {"--ct": s["ct"], "--labels": s["labels"], "--bone": "femur", "--frame": s["frame"],
            "--calib": s["calib"], "--init": s["init"], "--mask": f"femur={s['mask']}", "--config": s["config"],
            "--out": root / "out" / "result.json"}

    def case(name, expect="error", match="", **changes):
        args = dict(base)
        out = Path(changes.get("out", base["--out"]))
        for key, value in changes.items():
            flag = "--" + key.replace("_", "-")
            if value is None:
                args.pop(flag, None)
            else:
                args[flag] = value
        argv = ["register"] + [str(v) for kv in args.items() for v in kv]
        return Case(f"register: {name}", argv, expect, match, (lambda: _pose_error(out, s["truth"])) if
                    expect == "ok" else None)

    frame = np.load(s["frame"])
    hu, sp, org = s["hu"], s["spacing"], s["origin"]
    cal = lambda name, **ch: _write(root, f"calib_{name}.json", _calib(**ch))  # noqa: E731
    return [
        case("good inputs", "ok"),
        case("CT missing", match="not found", ct=root / "nope.nii.gz"),
        case("CT empty file", match="empty", ct=_write(root, "empty.nii.gz", b"")),
        case("CT is text", match="cannot read", ct=_write(root, "text.nii.gz", "not a volume")),
        case("CT truncated .nii.gz", match="truncat", ct=_truncated(s["ct"], root, "cut.nii.gz")),
        case("CT truncated .nii", match="truncat", ct=_truncated(_volume(root, "whole.nii", hu, sp, org), root,
                                                                  "cut_plain.nii", 0.7)),
        case("CT with NaN (NIfTI)", match="nan", ct=_volume(root, "nan.nii.gz", np.where(
            hu > 500, np.nan, hu).astype(np.float32), sp, org)),
        case("CT with Inf (NIfTI)", match="inf", ct=_volume(root, "inf.nii.gz", np.where(
            hu > 500, np.inf, hu).astype(np.float32), sp, org)),
        case("CT with NaN (NRRD)", match="nan", ct=_volume(root, "nan.nrrd", np.where(
            hu > 500, np.nan, hu).astype(np.float32), sp, org)),
        case("CT is 2D", match="2D", ct=_volume(root, "flat.nii.gz", hu[10].astype(np.int16), sp, org)),
        case("CT is 4D", match="4 dimensions", ct=_volume(root, "four.nii.gz", np.stack([hu, hu]).astype(np.int16), sp, org)),
        case("CT is RGB", match="components", ct=_volume(root, "rgb.nii.gz", np.stack([hu] * 3, -1).astype(np.int16), sp, org,
                                     vector=True)),
        case("CT constant", match="constant", ct=_volume(root, "const.nii.gz", np.zeros_like(hu), sp, org)),
        case("CT spacing 1e-6 mm", match="spacing", ct=_volume(root, "tiny.nii.gz", hu, (1e-6,) * 3, org)),
        case("CT spacing 1e4 mm", match="spacing", ct=_volume(root, "huge.nii.gz", hu, (1e4,) * 3, org)),
        case("labels missing", match="not found", labels=root / "nope_labels.nii.gz"),
        case("labels on another grid", match="grid", labels=_volume(root, "lab_grid.nii.gz", np.zeros((5, 6, 7), np.uint8))),
        case("labels non-integer 1.7", match="integer", labels=_volume(root, "lab17.nii.gz", np.where(
            hu > 300, 1.7, 0).astype(np.float32), sp, org), label_names=_write(root, "n.json", {"femur": 1})),
        case("labels all zero", match="no labels", labels=_volume(root, "lab0.nii.gz", np.zeros(hu.shape, np.uint8), sp, org),
             label_names=_write(root, "n0.json", {"femur": 1})),
        case("labels truncated", match="truncat", labels=_truncated(s["labels"], root, "labcut.nii.gz")),
        case("label names a list", match="object", label_names=_write(root, "names_list.json", ["femur", "tibia"])),
        case("label names id 1.7", match="integer", label_names=_write(root, "names17.json", {"femur": 1.7})),
        case("label names id text", label_names=_write(root, "names_txt.json", {"femur": "one"})),
        case("label names bad JSON", label_names=_write(root, "names_bad.json", "{femur: 1")),
        case("label names without the bone", match="femur", label_names=_write(root, "names_t.json", {"tibia": 2})),
        case("label names spec garbage", label_names="femur:1;tibia"),
        case("bone unknown", match="kneecap", bone="kneecap"),
        case("bone empty", bone=","),
        case("frame missing", match="not found", frame=root / "nope.png"),
        case("frame empty file", match="empty", frame=_write(root, "empty.png", b"")),
        case("frame is text", frame=_write(root, "text.png", "hello")),
        case("frame PNG truncated", frame=_truncated(_png(root, "good.png", (frame / frame.max() * 65535).astype(
            np.uint16)), root, "cut.png", 0.5)),
        case("frame .npy of objects", frame=_write(root, "obj.npy", np.array([{"a": 1}] * 4, dtype=object))),
        case("frame 1x1", match="2x2", frame=_write(root, "one.npy", np.ones((1, 1), np.float32))),
        case("frame 1x5000", match="2x2", frame=_write(root, "line.npy", np.ones((1, 5000), np.float32))),
        case("frame 4D", frame=_write(root, "f4.npy", np.ones((2, 2, 256, 256), np.float32))),
        case("frame with NaN", match="nan", frame=_write(root, "fnan.npy", np.where(frame < 0.5, np.nan, frame))),
        case("frame constant", match="constant", frame=_write(root, "fconst.npy", np.full((256, 256), 0.5, np.float32))),
        case("frame of noise", "flag", frame=_write(root, "noise.npy", np.random.default_rng(0).random((256, 256)))),
        case("frame bool", match="True/False", frame=_write(root, "fbool.npy", frame > 0.5)),
        case("frame size differs from calibration", match="calibration", frame=_write(
            root, "f32.npy", frame[:128, :128].copy())),
        case("frame index out of range", match="index", index=3),
        case("frame index on a stack", "ok", frame=_write(root, "stack.npy", np.stack([frame * 0.5, frame])),
             index=1),
        case("frame MONOCHROME1 DICOM", "ok", frame=_monochrome1_dicom(root, s["detected"])),
        case("calibration missing", match="not found", calib=root / "nope.json"),
        case("calibration bad JSON", calib=_write(root, "cal_bad.json", "{sdd_mm: 1000")),
        case("calibration a list", calib=_write(root, "cal_list.json", [1000, 64, 64])),
        case("calibration missing key", match="sdd_mm", calib=cal("nokey", sdd_mm=...)),
        case("calibration sdd 1 mm (metres typed)", match="sdd_mm", calib=cal("sdd1", sdd_mm=1)),
        case("calibration sdd 3 mm", match="sdd_mm", calib=cal("sdd3", sdd_mm=3)),
        case("calibration sdd as text", match="sdd_mm", calib=cal("sddtxt", sdd_mm="1000")),
        case("calibration sdd negative", match="sdd_mm", calib=cal("sddneg", sdd_mm=-1000)),
        case("calibration sdd NaN", match="sdd_mm", calib=_write(root, "cal_nan.json",
                                                                   json.dumps(_calib(sdd_mm=math.nan)))),
        case("calibration rows 64.5", match="rows", calib=cal("rows", rows=64.5)),
        case("calibration rows true", match="rows", calib=cal("rowsbool", rows=True)),
        case("calibration pixel 0", match="spacing", calib=cal("px0", row_spacing_mm=0)),
        case("calibration pixel 100 mm", match="spacing", calib=cal("px100", row_spacing_mm=100)),
        case("calibration principal point list", match="principal_point",
             calib=cal("pplist", principal_point=[127.5, 127.5])),
        case("calibration principal point text", match="principal_point", calib=cal("pptxt", principal_point="c")),
        case("calibration principal point outside", match="principal point",
             calib=cal("ppout", principal_point={"col": 5000, "row": 127.5})),
        case("calibration distortion text", match="distortion", calib=cal("dtxt", distortion="radial")),
        case("calibration distortion k 50", match="distortion", calib=cal("d50", distortion={"k": 50})),
        case("calibration distortion unknown model", match="model",
             calib=cal("dmodel", distortion={"model": "brown", "k": 0.1})),
        case("calibration sdd 500 mm off", "flag", calib=cal("off500", sdd_mm=1500)),
        case("init missing", match="not found", init=root / "nope_init.json"),
        case("init bad JSON", init=_write(root, "init_bad.json", "{")),
        case("init a list", init=_write(root, "init_list.json", [[1, 0, 0, 0]])),
        case("init not rigid", match="rigid", init=_write(root, "init_scale.json", {
            "femur": {"camera_from_volume": [[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 700], [0, 0, 0, 1]]}})),
        case("init NaN", init=_write(root, "init_nan.json", json.dumps({"femur": {"camera_from_volume": [
            [1, 0, 0, math.nan], [0, 1, 0, 0], [0, 0, 1, 700], [0, 0, 0, 1]]}}))),
        case("init without the bone", match="femur", init=_write(root, "init_tibia.json", {
            "tibia": {"camera_from_volume": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 700], [0, 0, 0, 1]]}})),
        case("init behind the source", init=_shifted(root, s, "behind", 0, 0, -1500)),
        case("init 200 mm along the beam", "flag", init=_shifted(root, s, "deep", 0, 0, 200)),
        case("init 60 mm sideways", "flag", init=_shifted(root, s, "side", 60, 0, 0)),
        case("mask missing", match="not found", mask=f"femur={root / 'nope_mask.png'}"),
        case("mask wrong shape", match="pixel grid", mask=f"femur={_write(root, 'm32.npy', np.ones((128, 128), bool))}"),
        case("mask empty", match="empty", mask=f"femur={_write(root, 'm0.npy', np.zeros((256, 256), bool))}"),
        case("mask NaN", mask=f"femur={_write(root, 'mnan.npy', np.full((256, 256), np.nan, np.float32))}"),
        case("mask for an unknown bone", mask=f"kneecap={s['mask']}"),
        case("mask label map without the bone", mask=str(_write(root, "lm.npy", np.zeros((256, 256), np.int16)))),
        case("mask auto without a model", match="--model", mask="auto"),
        case("model folder missing", mask="auto", model=root / "nope_model"),
        case("model.json a list", mask="auto", model=_model(root, "mlist", [1, 2], b"")),
        case("model weights empty", match="safetensors", mask="auto", model=_model(root, "mempty", {"bones": ["femur"]}, b"")),
        case("model weights corrupt", match="safetensors", mask="auto", model=_model(root, "mbad", {"bones": ["femur"]}, b"\x08" * 64)),
        case("model weights a .pt", mask="auto", model=_model(root, "mpt", {"bones": ["femur"]}, None)),
        case("config missing", match="not found", config=root / "nope.yaml"),
        case("config bad YAML", config=_write(root, "bad.yaml", "search: [1, 2")),
        case("config a list", match="mapping", config=_write(root, "list.yaml", "- 1\n- 2\n")),
        case("config unknown key", match="unknown", config=_write(root, "unk.yaml", "serach: {}\n")),
        case("config iterations fast", match="iterations", config=_write(root, "fast.yaml",
                                                                           "pyramid: {iterations: fast}\n")),
        case("config negative learning rate", match="learning_rate", config=_write(
            root, "lr.yaml", "pyramid: {learning_rate: -1}\n")),
        case("config levels and iterations differ", match="iterations", config=_write(
            root, "lv.yaml", "pyramid: {pixel_mm: [2.8, 1.4], iterations: [5]}\n")),
        case("config device tpu", match="device", config=_write(root, "dev.yaml", "device: tpu\n")),
        case("polarity unknown", polarity="sideways"),
        case("out is a folder", out=root),
        case("out in a missing folder", "ok", out=root / "new" / "deeper" / "r.json"),
    ]


def _pose_error(result: Path, truth) -> str | None:
    """What is wrong with a registration's answer: its femur more than 2 mm (in the image plane) or 2
    deg from the truth (a frame read upside down converges elsewhere), else None."""
    import torch

    from FluoroRegistrationLib.files import read_poses

    pose = read_poses(result)["femur"]
    shift = float((pose[:2, 3] - truth[:2, 3]).norm())
    turn = math.degrees(float(torch.arccos(((pose[:3, :3].T @ truth[:3, :3]).trace() - 1).clamp(-2, 2) / 2)))
    return None if shift < 2.0 and turn < 2.0 else f"answer {shift:.1f} mm / {turn:.1f} deg from the truth"


def _shifted(root: Path, s: dict, name: str, dx: float, dy: float, dz: float) -> Path:
    """The start moved by (dx, dy, dz) mm in the camera frame."""
    from FluoroRegistrationLib.files import write_poses

    pose = s["start"].clone()
    pose[:3, 3] += pose.new_tensor([dx, dy, dz])
    path = root / "bad" / f"init_{name}.json"
    write_poses(path, {"femur": pose})
    return path


def _model(root: Path, name: str, info, weights) -> Path:
    folder = root / "bad" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.json").write_text(json.dumps(info))
    if weights is None:
        (folder / "model.pt").write_bytes(b"not a torch file")
    else:
        (folder / "model.safetensors").write_bytes(weights)
    return folder


def other_cases(s: dict) -> list[Case]:
    """render, simulate, phantom, evaluate and segment predict with bad inputs."""
    root = s["root"]
    out = root / "out"
    render = ["render", "--ct", s["ct"], "--labels", s["labels"], "--calib", s["calib"], "--pose", s["init"],
              "--bones", "femur"]
    cal = lambda name, **ch: _write(root, f"calib_{name}.json", _calib(**ch))  # noqa: E731

    def exp(name, text):
        return ["evaluate", "--config", _write(root, f"exp_{name}.yaml", text), "--out", out / f"eval_{name}",
                "--serial"]

    folder = "frames: {folder: " + str(root / "nowhere") + "}\n"
    cases = [
        Case("render: good", render + ["--out", out / "drr.npy"], "ok"),
        Case("render: calibration sdd 1 mm", render + ["--calib", cal("r1", sdd_mm=1), "--out", out / "d.npy"],
             match="sdd_mm"),
        Case("render: pose not rigid", render + ["--pose", _write(root, "pose_scale.json", {
            "femur": {"camera_from_volume": [[3, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 700], [0, 0, 0, 1]]}}),
            "--out", out / "d.npy"], match="rigid"),
        Case("render: output type .jpg", render + ["--out", out / "drr.jpg"], match=".jpg"),
        Case("render: unknown method", render + ["--method", "magic", "--out", out / "d.npy"], match="method"),
        Case("render: bones without labels", ["render", "--ct", s["ct"], "--calib", s["calib"], "--pose", s["init"],
                                              "--bones", "femur", "--out", out / "d.npy"], match="--labels"),
        Case("render: CT truncated", ["render", "--ct", _truncated(s["ct"], root, "rcut.nii.gz", 0.5), "--calib",
                                      s["calib"], "--pose", s["init"], "--out", out / "d.npy"], match="truncat"),
        Case("simulate: zero frames", ["simulate", "--out", out / "sim0", "--frames", "0"], match="--frames"),
        Case("simulate: calibration a list", ["simulate", "--out", out / "sim1", "--calib",
                                              _write(root, "scal.json", [1, 2])]),
        Case("simulate: size 0", ["simulate", "--out", out / "sim2", "--size", "0"], match="--size"),
        Case("simulate: size 100000", ["simulate", "--out", out / "sim3", "--size", "100000"], match="size"),
        Case("simulate: CT without labels", ["simulate", "--out", out / "sim4", "--ct", s["ct"]], match="--labels"),
        Case("simulate: flexion range text", ["simulate", "--out", out / "sim5", "--flexion-range", "a,b"],
             match="--flexion-range"),
        Case("simulate: flexion range reversed", ["simulate", "--out", out / "sim6", "--flexion-range", "90,0"],
             match="flexion"),
        Case("simulate: flexion 1000 deg", ["simulate", "--out", out / "sim7", "--flexion-range", "0,1000"],
             match="flexion"),
        Case("simulate: unknown realism", ["simulate", "--out", out / "sim8", "--realism", "ultra"], match="realism"),
        Case("phantom: spacing 0.1 mm (11 GB)", ["phantom", "--out", out / "ph1", "--spacing", "0.1"],
             match="memory"),
        Case("phantom: spacing nan", ["phantom", "--out", out / "ph2", "--spacing", "nan"], match="spacing"),
        Case("phantom: spacing negative", ["phantom", "--out", out / "ph3", "--spacing", "-1"], match="spacing"),
        Case("phantom: spacing two values", ["phantom", "--out", out / "ph4", "--spacing", "1,2"], match="spacing"),
        Case("phantom: spacing 50 mm", ["phantom", "--out", out / "ph5", "--spacing", "50"], match="spacing"),
        Case("phantom: size 0", ["phantom", "--out", out / "ph6", "--size", "0"], match="size"),
        Case("phantom: size 1e6 mm", ["phantom", "--out", out / "ph7", "--size", "1e6"], match="size"),
        Case("phantom: flexion 400 deg", ["phantom", "--out", out / "ph8", "--flexion", "400"], match="flexion"),
        Case("phantom: flexion nan", ["phantom", "--out", out / "ph9", "--flexion", "nan"], match="flexion"),
        Case("phantom: out is a file", ["phantom", "--out", s["calib"]]),
        Case("evaluate: config missing", ["evaluate", "--config", root / "nope.yaml", "--out", out / "e0"],
             match="not found"),
        Case("evaluate: bad YAML", exp("bad", "name: [x"), match="YAML"),
        Case("evaluate: a list", exp("list", "- 1\n")),
        Case("evaluate: per_bin two", exp("perbin", folder + "starts: {per_bin: two}\n"), match="per_bin"),
        Case("evaluate: iterations fast", exp("iters", folder + "options: {pyramid: {iterations: fast}}\n"),
             match="iterations"),
        Case("evaluate: bins not rising", exp("bins", folder + "starts: {mtre_bins_mm: [0, 5, 3]}\n"),
             match="mtre_bins_mm"),
        Case("evaluate: unknown key", exp("unk", folder + "stars: {}\n"), match="stars"),
        Case("evaluate: condition typo", exp("cond", folder + "conditions: [{name: a, optoins: {}}]\n"),
             match="optoins"),
        Case("evaluate: folder missing", exp("nofolder", folder), match="nowhere"),
        Case("evaluate: calibration maybe", exp("calmaybe", folder + "calibration: maybe\n"), match="calibration"),
        Case("evaluate: simulate camera sdd 1", exp("simcam", "frames: {simulate: {count: 1, camera: {sdd_mm: 1, "
                                                    "rows: 64, cols: 64, row_spacing_mm: 1, col_spacing_mm: 1}}}\n"),
             match="sdd_mm"),
        Case("evaluate: landscape points many", exp("land", folder + "landscape: {points: many}\n"), match="points"),
        Case("evaluate: workers 0", exp("w0", folder)[:-1] + ["--workers", "0"], match="workers"),
        Case("segment predict: model missing", ["segment", "predict", "--model", root / "nope_model", "--frame",
                                                s["frame"], "--out", out / "seg"]),
        Case("segment predict: weights corrupt", ["segment", "predict", "--model", _model(
            root, "pbad", {"bones": ["femur"]}, b"\x08" * 64), "--frame", s["frame"], "--out", out / "seg"]),
        Case("segment predict: frame missing", ["segment", "predict", "--model", _model(
            root, "pbad2", {"bones": ["femur"]}, b"\x08" * 64), "--frame", root / "nope.png", "--out", out / "seg"]),
    ]
    for c in cases:
        c.argv = [str(v) for v in c.argv]
    return cases


def build(root: Path) -> list[Case]:
    """The whole corpus, its inputs written under ``root``."""
    scene = make_scene(Path(root))
    return register_cases(scene) + other_cases(scene)


# ------------------------------------------------------------------------------------ judging
def judge(case: Case, code, stdout: str, stderr: str) -> Outcome:
    """Class one run of ``case`` (see the module's docstring)."""
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    errors = [line for line in lines if line.startswith("error:")]
    last = errors[-1] if errors else (lines[-1] if lines else "")
    flagged = code == 3 or ": failed" in stdout or ": check" in stdout
    if "Traceback" in stderr or code == 1 or code == "exception":
        return Outcome("traceback", -1 if code == "exception" else code, last or stderr[-300:])
    if code not in (0, 2, 3):
        return Outcome("crash", code, last)
    if case.expect == "ok":
        good = code == 0 and not flagged
        return Outcome("clean" if good else "wrong", code, last or stdout.strip()[-200:])
    if code == 0 and not (case.expect == "flag" and flagged):
        return Outcome("silent", code, stdout.strip()[-200:])
    if case.expect == "flag" and flagged:
        return Outcome("clean", code, last)
    one_line = code == 2 and len(errors) == 1 and len(lines) == 1
    if not one_line:
        return Outcome("message", code, " | ".join(lines)[-300:])
    if case.match and case.match.lower() not in last.lower():
        return Outcome("message", code, last)
    return Outcome("clean", code, last)


def run_in_process(case: Case) -> Outcome:
    """Run ``case`` through ``cli.main`` in this process (any escaping exception is a traceback)."""
    import traceback

    from FluoroRegistrationLib.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(case.argv)
        except BaseException:  # noqa: BLE001 (counted, never hidden)
            code = "exception"
            err.write(traceback.format_exc())
    return checked(case, judge(case, code, out.getvalue(), err.getvalue()))


def checked(case: Case, outcome: Outcome) -> Outcome:
    """``outcome``, or ``wrong`` when a good input's answer fails its ``check``."""
    if outcome.kind != "clean" or case.check is None:
        return outcome
    problem = case.check()
    return outcome if problem is None else Outcome("wrong", outcome.code, problem)


def cleanup_outputs(root: Path) -> None:
    """Empty ``root/out`` (the cases' output folder), keeping the folder itself: older versions
    that do not make a missing output folder are judged on their answer, not on that."""
    shutil.rmtree(Path(root) / "out", ignore_errors=True)
    (Path(root) / "out").mkdir(parents=True)

