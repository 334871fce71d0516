"""``fluororeg simulate``: frames, masks, poses and calibrations written into a folder.

Layout of ``out``:

- ``frames/NNNN.png``: 16-bit PNG holding the detector's quantised levels (bone dark);
- ``masks/NNNN_<bone>.png``: the bone's projection (0/255); ``masks/NNNN_<bone>_visible.png``:
  where it alone projects; ``masks/NNNN_labels.png``: per pixel the id of the thickest bone there
  (ids as in ``labels.json``);
- ``poses.json``: ``{"NNNN": {"<bone>": {"camera_from_volume": 4x4}}}``; ``poses/NNNN.json``: the same
  for one frame, in the poses format every command reads;
- ``calib.json``: the nominal calibration (what a user would have); ``calib_true.json``: the C-arm
  actually simulated;
- ``frames.json``: per frame its knee angles (and its clutter, when asked for); ``simulation.json``: seed, realism and beam parameters.

With several views (``view_angles_deg``: a biplane or N-view rig, each further C-arm turned about
the vertical through the knee), the folder above is the first view, exactly as a single-plane
simulation with the same seed writes it (so one view and two views are compared on the same
frames), and each further view ``<name>`` adds ``views/<name>/`` with its own ``frames/``,
``masks/``, ``poses/`` (in that view's camera frame), ``calib.json`` and ``calib_true.json``, drawn
with its own detector errors and noise; ``rig.json`` (nominal) and ``rig_true.json`` hold the rig.
Poses in ``poses.json`` and ``poses/`` are in the first view's camera frame, the rig's reference.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..files import write_poses
from ..geometry import Camera, Rig, View, turned_view
from ..errors import FluoroRegError
from ..geometry.rig import check_view_angle
from ..volume import load_ct, load_labels, read_label_names
from .clutter import get_clutter, sample_clutter
from .frames import FrameSimulator, occlusion_masks, realism_description
from .scene import femur_pose, knee_centre, knee_poses, sample_knee_states
from .spine_scene import SPINE_FLEXION_RANGE, body_centres, is_spine, sample_spine_states, spine_poses

KNEE_DEPTH_FRACTION = 0.7  # source-to-knee distance / sdd, as on a mobile C-arm
DEFAULT_CAMERA = Camera(sdd_mm=1000.0, rows=512, cols=512, row_spacing_mm=0.5, col_spacing_mm=0.5)


def _png(array: np.ndarray, path: Path) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


def read_truth_mask(folder, key: str, bone: str) -> torch.Tensor:
    """The ground-truth mask ``masks/<key>_<bone>.png`` of a simulated folder, (H, W) bool."""
    import SimpleITK as sitk

    path = Path(folder) / "masks" / f"{key}_{bone}.png"
    return torch.from_numpy(sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0)


def _write_frame(folder: Path, key: str, result: dict, names: dict):
    """One view's frame into ``folder``: frames/<key>.png (and .npy without realism), the masks.
    Returns the frame's maximum level (None without realism)."""
    image = result["image"].cpu().numpy()
    if result["levels"] is None:  # realism off: float line integrals, kept exactly
        np.save(folder / "frames" / f"{key}.npy", image.astype(np.float32))
        scaled = image / max(float(image.max()), 1e-12) * 65535
    else:
        scaled = image
    _png(np.clip(np.round(scaled), 0, 65535).astype(np.uint16), folder / "frames" / f"{key}.png")
    bones = [b for b in result["thickness"] if b in names]  # implants have masks, not label ids
    occl = occlusion_masks({b: result["thickness"][b] for b in bones}, {b: result["masks"][b] for b in bones})
    for name in result["masks"]:
        if name not in names:
            _png((result["masks"][name].cpu().numpy() * 255).astype(np.uint8), folder / "masks" / f"{key}_{name}.png")
    for bone, mask in ((b, result["masks"][b]) for b in bones):
        _png((mask.cpu().numpy() * 255).astype(np.uint8), folder / "masks" / f"{key}_{bone}.png")
        _png((occl["visible"][bone].cpu().numpy() * 255).astype(np.uint8),
             folder / "masks" / f"{key}_{bone}_visible.png")
    dominant = occl["dominant"].cpu().numpy()
    # a bone outside the field is in occl["ids"] but never dominant: size the table by the ids
    ids = np.zeros(max([int(dominant.max()), *occl["ids"].values()]) + 1, np.uint8)
    for bone, j in occl["ids"].items():
        ids[j] = names[bone]
    _png(ids[dominant], folder / "masks" / f"{key}_labels.png")
    return result["levels"]


def _simulated_rig(camera: Camera, view_angles_deg, sim: FrameSimulator, generator: torch.Generator,
                   seed: int) -> tuple[Rig, Rig, list[torch.Generator]]:
    """The nominal rig, the rig actually simulated (each view's calibration errors drawn; the first
    from ``generator`` as a single-plane simulation draws it, the others from generators of their
    own) and one noise generator per view (the first is ``generator``)."""
    iso = KNEE_DEPTH_FRACTION * camera.sdd_mm
    nominal = [View("A", camera, torch.eye(4, dtype=torch.float64))]
    for k, angle in enumerate(view_angles_deg):
        nominal.append(View(chr(ord("B") + k), camera, turned_view(iso, check_view_angle(float(angle)))))
    generators = [generator] + [torch.Generator().manual_seed(seed + 104729 * (k + 1)) for k in range(len(view_angles_deg))]
    true = [View(v.name, sim.true_camera(v.camera, g), v.camera_from_reference) for v, g in zip(nominal, generators)]
    return Rig(tuple(nominal)), Rig(tuple(true)), generators


def simulate_folder(out, ct_path=None, labels_path=None, label_names=None, frames: int = 8, sequence=None,
                    seed: int = 0, realism: str = "medium", camera: Camera | None = None,
                    reference_flexion_deg: float | None = None, flexion_range=None,
                    interpolation: str = "nearest", clutter=None, view_angles_deg=(), implants=None) -> dict:
    """Simulate ``frames`` frames of a knee into ``out`` (see the module docstring). Returns paths.

    The anatomy comes from the label names: a knee (femur, tibia ...; flexion in ``flexion_range``,
    default 0-120 deg) or a spine (vertebrae L1 ...: lateral views bending through
    ``flexion_range``, default spine_scene.SPINE_FLEXION_RANGE; no clutter, sequences or implants).

    ``clutter``: a preset name of ``simulate/clutter.py`` (none, mixed, heavy) or a ClutterModel;
    drawn anew for every frame from a generator of its own, so the knees and the C-arm are those
    the same seed gives without clutter (the noise is not: Poisson draws depend on the signal).
    ``view_angles_deg``: one angle per further view (biplane: one angle, 40-120 deg typical), each
    view the first C-arm turned by it about the vertical through the knee.
    ``implants``: True puts the procedural total knee in the built-in phantom (written to
    ``out/phantom``: resected CT, STLs, implants.json); a folder holding an implants.json (meshes in
    the CT's frame, see docs/CONVENTIONS.md) puts those in the given CT. Each component moves with
    its bone; its truth is its bone's pose and its mask is masks/<key>_<component>.png."""
    out = Path(out)
    if implants is True and ct_path is not None:
        raise FluoroRegError("the procedural implants fit the built-in phantom only; for your CT give the folder "
                             "of your components' implants.json")
    ct_path, labels_path, label_names, reference_flexion_deg = _inputs(out, ct_path, labels_path, label_names,
                                                                       reference_flexion_deg, seed,
                                                                       implants is True)
    ct = load_ct(ct_path)
    labels = load_labels(labels_path, ct)
    names = read_label_names(label_names)
    camera = camera or DEFAULT_CAMERA
    clutter_model = get_clutter(clutter)
    components = read_implants(out / "phantom" if implants is True else implants) if implants else None
    sim = FrameSimulator(ct, labels, names, realism, interpolation=interpolation, implants=components)
    spine = is_spine(names)
    if spine and (clutter_model is not None or sequence or implants):
        raise FluoroRegError("clutter, sequences and implants are a knee's; simulate a spine without them")
    centre = body_centres(sim.bones, names) if spine else knee_centre(ct, labels, names)
    generator = torch.Generator().manual_seed(seed)
    clutter_generator = torch.Generator().manual_seed(seed + 7919)
    # the nominal calibration knows the intensifier's distortion (as a grid calibration would)
    camera = replace(camera, distortion_k=sim.realism.detector.distortion_k)
    rig, true_rig, generators = _simulated_rig(camera, tuple(view_angles_deg), sim, generator, seed)
    folders = [out] + [out / "views" / v.name for v in rig.views[1:]]
    for folder, v, t in zip(folders, rig.views, true_rig.views):
        for sub in ("frames", "masks", "poses"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        v.camera.to_json(folder / "calib.json")
        t.camera.to_json(folder / "calib_true.json")
    if len(rig) > 1:
        rig.to_json(out / "rig.json")
        true_rig.to_json(out / "rig_true.json")
    bones, depth_mm = [p.bone for p in sim.parts], KNEE_DEPTH_FRACTION * camera.sdd_mm
    if spine:
        states = sample_spine_states(frames, generator, flexion_range or SPINE_FLEXION_RANGE)
    else:
        flexion_range = flexion_range or (0.0, 120.0)
        states = sample_knee_states(frames, generator, sequence, flexion_range)
    all_poses, meta = {}, {}
    for i, state in enumerate(tqdm(states, desc="simulate", unit="frame")):
        key = f"{i:04d}"
        if spine:
            poses, scene = spine_poses(centre, state, depth_mm, bones), None
        else:
            femur = femur_pose(centre, state, depth_mm)
            poses = knee_poses(centre, femur, state.flexion_deg, state.adduction_deg, state.rotation_deg,
                               reference_flexion_deg or 0.0, bones=bones, rollback_mm=state.rollback_mm)
            scene = sample_clutter(clutter_model, centre, femur, true_rig.views[0].camera, clutter_generator,
                                   bones=bones, reference_flexion_deg=reference_flexion_deg or 0.0,
                                   flexion_range=flexion_range)
        levels = []
        for k, (folder, view, g) in enumerate(zip(folders, true_rig.views, generators)):
            view_poses = {b: view.camera_from_reference @ T for b, T in poses.items()} if k else poses
            view_scene = scene.seen_from(view.camera_from_reference) if k else scene
            levels.append(_write_frame(folder, key, sim.frame(view.camera, view_poses, g, clutter=view_scene), names))
            write_poses(folder / "poses" / f"{key}.json", _with_implants(view_poses, sim))
        all_poses[key] = {b: {"camera_from_volume": T.tolist()} for b, T in _with_implants(poses, sim).items()}
        meta[key] = {"flexion_deg": state.flexion_deg, **({} if spine else {
            "adduction_deg": state.adduction_deg, "rotation_deg": state.rotation_deg,
            "rollback_mm": state.rollback_mm}), "levels": levels[0]}
        if clutter_model is not None:
            meta[key]["clutter"] = scene.describe()
    (out / "poses.json").write_text(json.dumps(all_poses, indent=1) + "\n")
    (out / "frames.json").write_text(json.dumps(meta, indent=1) + "\n")
    record = {"seed": seed, "frames": frames, "sequence": sequence, "ct": str(ct_path), "labels": str(labels_path),
              "label_names": names, "anatomy": "spine" if spine else "knee",
              **({"body_centres_mm": {v: [float(c) for c in x] for v, x in centre.items()}} if spine else
                 {"knee_centre_mm": [float(c) for c in centre]}),
              "interpolation": interpolation, "views": rig.names, "view_angles_deg": list(view_angles_deg),
              "clutter": None if clutter_model is None else asdict(clutter_model), "realism": realism_description(sim.realism, sim.spectrum)}
    (out / "simulation.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    return {"out": str(out), "frames": frames, "views": rig.names}


def _with_implants(poses: dict, sim: FrameSimulator) -> dict:
    """The bones' poses and each implant component's (its bone's: its mesh is in the CT's frame)."""
    return {**poses, **{name: poses[bone] for name, (_, bone, _) in sim.implants.items()}}


def read_implants(folder) -> dict:
    """{component: (ImplantMesh, bone, material)} from a folder's implants.json (docs/CONVENTIONS.md)."""
    from ..implant import load_mesh

    index_path = Path(folder) / "implants.json"
    if not index_path.is_file():
        raise FluoroRegError(f"no implants.json in {folder}; write one as fluororeg phantom --implant does")
    try:
        index = json.loads(index_path.read_text())
        return {name: (load_mesh(Path(folder) / c["file"], name), c["bone"], c["material"]) for name, c in index.items()}
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError):
        raise FluoroRegError(f"{index_path} must map each component to {{file, bone, material}}") from None


def _inputs(out: Path, ct_path, labels_path, label_names, reference_flexion_deg, seed: int, implant: bool = False):
    """The CT, labels, names and reference flexion to simulate: the given ones, or the built-in
    phantom written into ``out/phantom`` (reference flexion 0; with ``implant``, resected, and its
    total knee beside it)."""
    if ct_path is not None:
        return ct_path, labels_path, label_names, reference_flexion_deg
    from ..phantom import make_knee_phantom, write_phantom

    phantom = make_knee_phantom(spacing_mm=1.0, flexion_deg=0.0, seed=seed)
    if implant:
        from ..implant.procedural import resect, write_implants

        phantom = resect(phantom)
        write_implants(phantom, out / "phantom")
    paths = write_phantom(phantom, out / "phantom")
    return paths["ct"], paths["labels"], paths["labels_json"], 0.0 if reference_flexion_deg is None else reference_flexion_deg
