"""``fluororeg``: the command line. Parsing only; the library does the work (heavy imports inside).

Every error from bad input is printed as one line (``error: ...``) with exit status 2; a registration
whose every bone failed its checks writes its result and exits with status 3; warnings are one line
(``warning: ...``).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings as _warnings
from pathlib import Path

from .errors import FluoroRegError

_python_show_warning = _warnings.showwarning


class RegistrationFailed(FluoroRegError):
    """Every bone of a registration failed its checks (exit status 3; the result file is written)."""


CONVENTIONS = (
    "Conventions: volumes in LPS mm; poses are 4x4 camera_from_volume (p_cam = R p_vol + t); camera frame has "
    "the source at the origin, +z towards the detector (z = sdd), +x along columns, +y along rows."
)


def _floats(text: str, n: int, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise FluoroRegError(f"{what} must be {n} comma-separated numbers, got '{text}'") from None
    if len(values) == 1:
        values = values * n
    if len(values) != n:
        raise FluoroRegError(f"{what} must be 1 or {n} comma-separated numbers, got '{text}'")
    return values


def cmd_phantom(args) -> None:
    from .phantom import make_knee_phantom, write_phantom

    spacing = _floats(args.spacing, 3, "--spacing")
    size = _floats(args.size or ("300,240,200" if args.anatomy == "spine" else "160,160,240"), 3, "--size")
    if min(spacing) <= 0 or min(size) <= 0:
        raise FluoroRegError("--spacing and --size must be positive")
    if args.anatomy == "spine":
        _spine_phantom(args, spacing, size)
        return
    phantom = make_knee_phantom(spacing_mm=spacing, flexion_deg=args.flexion, seed=args.seed, size_mm=size,
                                side=args.side)
    implants = ""
    if args.implant:
        from .implant.procedural import resect, write_implants

        phantom = resect(phantom)
        index = write_implants(phantom, args.out)
        parts = ", ".join(f"{name}: {c['material']}" for name, c in index.items())
        implants = (f"; a total knee ({parts}) as STL in the "
                    "CT's frame, implants.json, the bone it replaces removed from the CT")
    paths = write_phantom(phantom, args.out)
    shape = "x".join(map(str, phantom.hu.shape[::-1]))
    print(f"knee phantom ({shape} voxels, flexion {args.flexion:g} deg) -> " + ", ".join(map(str, paths.values()))
          + implants)


def _spine_phantom(args, spacing, size) -> None:
    from .phantom import write_phantom
    from .phantom_spine import make_spine_phantom

    if args.implant or args.flexion or args.side != "right":
        raise FluoroRegError("--implant, --flexion and --side are the knee's; the spine phantom takes --spacing, "
                             "--size and --seed")
    phantom = make_spine_phantom(spacing_mm=spacing, seed=args.seed, size_mm=size)
    paths = write_phantom(phantom, args.out)
    shape = "x".join(map(str, phantom.hu.shape[::-1]))
    print(f"lumbar spine phantom ({shape} voxels; L1-L5, ribs, pelvis) -> " + ", ".join(map(str, paths.values())))


def cmd_render(args) -> None:
    import torch

    from .files import read_poses, save_image
    from .geometry import Camera
    from .render import render
    from .volume import bone_volumes, default_label_names, load_ct, load_labels, read_label_names, whole_volume

    camera = Camera.from_json(args.calib)
    poses = read_poses(args.pose)
    ct = load_ct(args.ct)
    if args.bones:
        if not args.labels:
            raise FluoroRegError("--bones needs --labels (the labelmap of the CT)")
        labels = load_labels(args.labels, ct)
        names = read_label_names(args.label_names or default_label_names(args.labels))
        bones = [b.strip() for b in args.bones.split(",") if b.strip()]
        missing = [b for b in bones if b not in poses]
        if missing:
            raise FluoroRegError(f"no pose for {', '.join(missing)} in {args.pose}; add one per rendered bone")
        vols = list(bone_volumes(ct, labels, names, bones).values())
        pose_list = [poses[b] for b in bones]
    else:
        if len(poses) != 1 and "volume" not in poses:
            raise FluoroRegError(f"{args.pose} holds several poses; pass --bones, or name the whole-CT pose 'volume'")
        vols = [whole_volume(ct)]
        pose_list = [poses.get("volume", next(iter(poses.values())))]
    with torch.no_grad():
        image = render(vols, camera, [p.to(torch.float32) for p in pose_list], args.method)
    meta = save_image(image[0, 0], args.out)
    print(f"DRR {camera.rows}x{camera.cols} ({args.method}) -> {args.out} (pixel = value x {meta['scale']:.6g})")


def cmd_simulate(args) -> None:
    from .geometry import Camera
    from .simulate.writer import DEFAULT_CAMERA, simulate_folder

    if (args.ct is None) != (args.labels is None):
        raise FluoroRegError("pass both --ct and --labels (or neither, for the built-in phantom)")
    camera = Camera.from_json(args.calib) if args.calib else DEFAULT_CAMERA
    if args.size is not None:
        if not 8 <= args.size <= 4096:
            raise FluoroRegError(f"--size {args.size} is outside 8-4096 pixels; give the detector's size in pixels")
        camera = camera.resized(args.size, args.size)
    names = args.label_names
    if args.ct is not None and names is None:
        from .volume import default_label_names

        names = default_label_names(args.labels)
    flex = None if args.flexion_range is None else _floats(args.flexion_range, 2, "--flexion-range")
    from .phantom import check_flexion

    if flex is not None and check_flexion(flex[0], "--flexion-range start") > check_flexion(flex[1], "--flexion-range end"):
        raise FluoroRegError(f"--flexion-range {args.flexion_range} runs backwards; give min,max (e.g. 0,90)")
    simulate_folder(args.out, args.ct, args.labels, names, frames=args.frames,
                    sequence=None if args.sequence == "none" else args.sequence, seed=args.seed,
                    realism=args.realism, camera=camera, flexion_range=flex, interpolation=args.interpolation,
                    clutter=None if args.clutter == "none" else args.clutter, view_angles_deg=tuple(args.view_angle),
                    implants=None if args.implant is None else (True if args.implant == "phantom" else args.implant))
    print(f"{args.frames} simulated frame(s) ({args.realism} realism, clutter {args.clutter}) -> {args.out}/frames, masks, poses.json, "
          "calib.json (nominal), calib_true.json (simulated)"
          + (f"; {len(args.view_angle)} more view(s) in {args.out}/views, the rig in rig.json" if args.view_angle else "")
          + ("; implants drawn (their poses are their bones', masks/<key>_<component>.png)" if args.implant else ""))


def _registration_config(args):
    """The registration settings the flags give, on top of ``--config`` (a YAML / JSON of
    RegistrationConfig's nested fields) or the defaults."""
    from .register import RegistrationConfig

    base = {}
    if args.config:
        base = _read_mapping(args.config, "--config")
    overrides = {"seed": args.seed, "similarity": args.similarity}
    if args.range:
        rng, deg = _floats(args.range, 2, "--range")
        overrides["search"] = {"range_mm": rng, "range_deg": deg}
    if args.no_global_search:
        overrides.setdefault("search", {})["enabled"] = False
    if args.context:
        overrides["context"] = {"choice": args.context}
    if args.mask_dilation:
        coarse, fine = _floats(args.mask_dilation, 2, "--mask-dilation")
        overrides["masks"] = {"dilation_mm": coarse, "fine_dilation_mm": fine}
    return RegistrationConfig.from_dict(base, f"--config {args.config}").merged(
        {k: v for k, v in overrides.items() if v is not None})


def _read_mapping(path, what: str) -> dict:
    from .files import read_yaml

    data = read_yaml(path, what)
    if not isinstance(data, dict):
        raise FluoroRegError(f"{what} {path} must hold a mapping of settings (e.g. search: {{range_mm: 20}})")
    return data


def _masks_argument(items):
    """--mask values -> what register_frame takes: None, "auto", a label map path, or {bone: path}."""
    items = list(items or [])
    if not items:
        return None
    if "auto" in items:
        if len(items) > 1:
            raise FluoroRegError("--mask auto predicts every bone's mask; do not give other --mask values with it")
        return "auto"
    plain = [i for i in items if "=" not in i]
    if plain:
        if len(items) > 1:
            raise FluoroRegError(f"--mask {plain[0]} is a label map of every bone; give it alone, or give "
                                 "bone=FILE for each bone")
        return plain[0]
    masks = {}
    for item in items:
        bone, path = item.split("=", 1)
        masks[bone.strip()] = path.strip()
    return masks


def _rig_masks_argument(items, names: list[str]):
    """--mask values for a rig of views ``names``: None, "auto", or one spec per view (see
    :func:`_masks_argument`), each item prefixed by its view's name (``B:femur=mask.png``)."""
    items = list(items or [])
    if len(names) == 1 or not items or items == ["auto"]:
        return _masks_argument(items)
    per_view = {n: [] for n in names}
    for item in items:
        view, _, spec = item.partition(":")
        if view not in per_view or not spec:
            raise FluoroRegError(f"--mask {item}: with a rig of views {', '.join(names)}, prefix each mask with its "
                                 f"view, e.g. --mask {names[1]}:femur=mask.png (or give --mask auto)")
        per_view[view].append(spec)
    return [_masks_argument(per_view[n]) for n in names]


def _overlay_paths(path: str, names: list[str]) -> list[Path]:
    """One overlay file per view: ``path`` for the first, ``<stem>_<view><suffix>`` for the others."""
    p = Path(path)
    return [p] + [p.with_name(f"{p.stem}_{n}{p.suffix}") for n in names[1:]]


def cmd_register(args) -> None:
    import json

    from tqdm import tqdm

    from .geometry import as_rig
    from .register.overlay import draw_overlay

    config = _registration_config(args)
    reg = _registration(args, config)
    rig = as_rig(args.calib)
    if len(args.frame) != len(rig):
        raise FluoroRegError(f"{len(args.frame)} --frame given but --calib {args.calib} has {len(rig)} view(s) "
                             f"({', '.join(rig.names)}); give one --frame per view, in the views' order")
    masks = _rig_masks_argument(args.mask, rig.names)
    if args.model and masks != "auto":
        raise FluoroRegError("--model is used with --mask auto; add --mask auto (or drop --model)")
    if masks == "auto" and not args.model:
        raise FluoroRegError("--mask auto needs --model DIR (a model from `fluororeg segment train`)")
    bars = []  # made at the first report, so that an input error stays one line
    lines = open(args.progress_file, "a", buffering=1) if args.progress_file else None  # noqa: SIM115

    def progress(stage, iteration, similarity, pose):
        if lines is not None:  # one JSON object per line, for a parent process to follow
            lines.write(json.dumps({"stage": stage, "iteration": iteration, "similarity": similarity,
                                    "pose": pose.tolist()}) + "\n")
            return
        if not bars:
            bars.append(tqdm(desc="register", unit="it"))
        bars[0].set_postfix_str(f"{stage} it {iteration} similarity {similarity:.4f}")
        bars[0].update()

    frames = args.frame if len(rig) > 1 else args.frame[0]
    try:
        result = reg.register(frames, rig, args.init, masks=masks, model=args.model,
                              polarity=args.polarity, index=args.index, progress=progress)
    finally:
        for bar in bars:
            bar.close()
        if lines is not None:
            lines.close()
    result.save(args.out)
    for b, r in result.bones.items():
        views = "".join(f", {v} {s:.4f}" for v, s in r.view_similarity.items())
        depth = f", depth sd {r.depth_sd_mm:.2f} mm" if r.depth_sd_mm is not None and r.depth_sd_mm < 1e3 else ""
        depth += f", tilt sd {r.tilt_sd_deg:.2f} deg" if r.tilt_sd_deg is not None and r.tilt_sd_deg < 1e3 else ""
        depth += ", voxels drawn as boxes" if r.voxel_model == "box" else ""
        depth += ", drawn with the CT around it" if r.context else ""
        print(f"{b}: {r.status.flag}, similarity {r.similarity:.4f}{views}{depth}, {r.iterations} iterations, {r.seconds:.1f} s"
              + (f" ({r.status.reason})" if r.status.reasons else ""))
    print(f"wrote {args.out}")
    if args.overlay:
        from .frame import read_frame_array

        initial = {b: r.initial for b, r in result.bones.items()}
        for path, frame, view in zip(_overlay_paths(args.overlay, rig.names), args.frame, rig.views):
            seen = {b: view.camera_from_reference @ T for b, T in result.poses().items()}
            start = {b: view.camera_from_reference @ T for b, T in initial.items()}
            draw_overlay(path, read_frame_array(frame, args.index), view.camera, reg.volumes, seen, start)
            print(f"wrote {path}")
    if all(r.status.flag == "failed" for r in result.bones.values()):
        raise RegistrationFailed(f"every bone failed ({'; '.join(f'{b}: {r.status.reason}' for b, r in result.bones.items())}); "
                                 f"the poses are in {args.out}, but check the frame, calibration and initial pose")


def _registration(args, config):
    """The bones (--bone, from --ct and --labels) and implant components (--implant) to register."""
    from .register import Registration

    wanted = [b.strip() for b in (args.bone or "").split(",") if b.strip()]
    from .implant.body import implant_from_spec

    implants = dict(implant_from_spec(spec) for spec in args.implant)
    if not wanted and not implants:
        raise FluoroRegError("nothing to register: give --bone (with --ct and --labels) and/or --implant NAME=MESH")
    clash = sorted(set(wanted) & set(implants))
    if clash:
        raise FluoroRegError(f"{', '.join(clash)} is both a bone and an implant; name the component differently")
    if not wanted:
        return Registration(implants, config)
    if not args.ct or not args.labels:
        raise FluoroRegError("--bone needs --ct and --labels (the CT and its labelmap)")
    reg = Registration.from_ct(args.ct, args.labels, wanted, args.label_names, config)
    return Registration({**reg.volumes, **implants}, reg.config, reg.label_ids) if implants else reg


def cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(args.out, spacing_mm=args.spacing)
    if not args.no_register:
        from .demo_register import run_register_demo

        run_register_demo(args.out)


def cmd_track(args) -> None:
    from .track import TrackConfig, track_sequence

    if args.mask == ["auto"] and not args.model:
        raise FluoroRegError("--mask auto needs --model DIR (a model from `fluororeg segment train`)")
    import dataclasses

    config = TrackConfig.from_dict(_read_mapping(args.config, "--config") if args.config else None,
                                   f"--config {args.config}")
    if args.no_recover:
        config = dataclasses.replace(config, recover=False)
    masks = args.mask
    if masks and (len(masks) > 1 or masks[0] != "auto"):
        if len(masks) != len(args.sequence):
            raise FluoroRegError(f"{len(masks)} --mask for {len(args.sequence)} --frames; give one mask folder per "
                                 "view (or --mask auto)")
    masks = None if not masks else ("auto" if masks == ["auto"] else masks if len(masks) > 1 else masks[0])
    sequence = args.sequence if len(args.sequence) > 1 else args.sequence[0]
    bone = args.bone if args.bone is not None else ("" if args.implant else "femur,tibia")
    result = track_sequence(sequence, args.ct, args.labels, args.calib, args.init, args.out,
                            [b.strip() for b in bone.split(",") if b.strip()], args.label_names, masks,
                            args.model, args.keyframe, args.landmarks, args.side, args.fps, args.lowpass,
                            args.workers or 0, args.scheduler, config, args.polarity, animation=not args.no_animation,
                            implants=args.implant, joint=args.joint.split(","))
    frames = sum(r is not None for r in result.records)
    flags = result.flags
    print(f"{frames} frames in {result.seconds:.1f} s ({frames / max(result.seconds, 1e-9):.2f} frames/s): "
          f"{flags['ok']} ok, {flags['check']} check, {flags['failed']} failed")
    for name, path in result.paths.items():
        print(f"wrote {path}")


def cmd_calibrate_rig(args) -> None:
    import torch

    from .geometry import as_rig
    from .geometry.rig_calibration import calibrate_rig, helix_beads
    from .register import prepare_frame

    nominal = as_rig(args.calib)
    if len(args.frame) != len(nominal):
        raise FluoroRegError(f"{len(args.frame)} --frame given but --calib {args.calib} has {len(nominal)} view(s); "
                             "give one bead frame per view, in the rig's order")
    if args.beads:
        data = _read_mapping(args.beads, "--beads")
        beads = torch.as_tensor(data.get("beads_mm", []), dtype=torch.float64)
        if beads.ndim != 2 or beads.shape[1] != 3 or len(beads) < 6:
            raise FluoroRegError(f"--beads {args.beads}: beads_mm must list at least 6 [x, y, z] positions (mm)")
    else:
        beads = helix_beads()
    frames = [prepare_frame(f, v.camera, args.polarity).image[0, 0].numpy() for f, v in zip(args.frame, nominal.views)]
    rig, fits = calibrate_rig(frames, nominal, beads)
    rig.to_json(args.out)
    for v, fit in zip(rig.views, fits):
        print(f"view {v.name}: {fit.matched} beads matched, reprojection rms {fit.rms_px:.3f} px")
    print(f"wrote {args.out} (views {', '.join(rig.names)}; angle between the first two "
          f"{rig.source_angle_deg() if len(rig) > 1 else 0.0:.2f} deg)")


def cmd_gui(args) -> None:
    from .slicer.web_app import serve

    if not 0 <= args.port <= 65535:
        raise FluoroRegError(f"--port {args.port} is not a port number; give 1-65535 (or 0 for any free port)")
    serve(args.data, args.host, args.port, args.open)


def cmd_evaluate(args) -> None:
    from pathlib import Path

    from .evaluate import load_experiment, run_experiment, write_report

    exp = load_experiment(args.config)
    rows = run_experiment(exp, args.out, scheduler=args.scheduler, workers=args.workers, serial=args.serial)
    result = write_report(exp, Path(args.out), rows)
    print((Path(args.out) / "summary.md").read_text())
    print(f"wrote {args.out}/runs.csv ({len(rows)} runs), summary.md, summary.json and plots"
          + (" and landscapes" if "landscapes" in result else ""))


def cmd_zoo(args) -> None:
    import json
    from pathlib import Path

    from .evaluate.zoo import GEOMETRIES, MEMBERS, ZooSettings, run_zoo, zoo_overview, zoo_summary, zoo_table

    def names(text, known):
        return tuple(known) if text == "all" else tuple(t.strip() for t in text.split(",") if t.strip())

    settings = ZooSettings(members=names(args.members, MEMBERS), geometries=names(args.geometries, GEOMETRIES),
                           frames=args.frames, realism=args.realism, per_bin=args.per_bin, seed=args.seed)
    options = _read_mapping(args.config, "--config") if args.config else None
    rows = run_zoo(settings, args.out, workers=args.workers, serial=args.serial, options=options)
    summary = zoo_summary(rows)
    text = zoo_table(summary) + "\n\n" + zoo_overview(rows)
    out = Path(args.out)
    (out / "zoo.md").write_text(text + "\n")
    (out / "zoo.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(text)
    print(f"wrote {out}/zoo.md, zoo.json ({len(rows)} runs)")


def cmd_segment_train(args) -> None:
    from .geometry import Camera
    from .segment import TrainOptions, train_segmenter
    from .volume import default_label_names, load_ct, load_labels, read_label_names

    ct = load_ct(args.ct)
    labels = load_labels(args.labels, ct)
    names = read_label_names(args.label_names or default_label_names(args.labels))
    camera = Camera.from_json(args.calib) if args.calib else None
    given = {"epochs": args.epochs, "steps_per_epoch": args.steps, "batch": args.batch, "lr": args.lr}
    options = TrainOptions(bones=tuple(b.strip() for b in args.bones.split(",") if b.strip()), arch=args.arch,
                           size=args.size, seed=args.seed, init=args.init, labelled=args.labelled,
                           threads=args.threads, clutter=None if args.clutter == "none" else args.clutter,
                           precision=args.precision,
                           **{k: v for k, v in given.items() if v is not None})
    result = train_segmenter(ct, labels, names, args.out, options, camera=camera)
    print(f"trained in {result['seconds'] / 60:.1f} min; best epoch {result['best_epoch']}: validation Dice "
          + ", ".join(f"{b} {d:.4f}" for b, d in result["val_dice"].items()))
    print(f"wrote {args.out}/model.safetensors, model.json, history.json, training_curve.png")


def cmd_segment_predict(args) -> None:
    from .segment import predict_files

    records = predict_files(args.model, args.frame, args.out, polarity=args.polarity, flip=not args.no_flip)
    for r in records:
        print(f"{r['frame']}: " + ", ".join(f"{b} {n} px" for b, n in r["pixels"].items())
              + f" ({r['seconds']:.2f} s)")
    print(f"wrote {len(records)} frame(s) of masks and overlays to {args.out}")


FILE_OUTPUTS = ("render", "register")  # commands whose --out is a file; the others write a folder


def _check_outputs(args) -> None:
    """Make sure ``--out`` (and ``--overlay``) can be written before any work, so that a finished
    result is never lost to a wrong output path: a file output is not a folder, a folder output is
    not a file, and the folder is writable (or can be made: its nearest existing parent is a writable
    folder). Nothing is created here, so a refused command leaves no trace."""
    from pathlib import Path

    outputs = [("--out", getattr(args, "out", None), args.command in FILE_OUTPUTS),
               ("--overlay", getattr(args, "overlay", None), True)]
    for option, path, is_file in outputs:
        if path is None:
            continue
        path = Path(path)
        if is_file and path.is_dir():
            raise FluoroRegError(f"{option} {path} is a folder; give a file name, e.g. {path / 'result.json'}")
        if not is_file and path.exists() and not path.is_dir():
            raise FluoroRegError(f"{option} {path} is a file; give a folder to write into")
        if path.exists() and not os.access(path, os.W_OK):
            raise FluoroRegError(f"{option} {path} cannot be written (permission denied); choose another {option}")
        folder = (path.parent if is_file else path).absolute()
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if not existing.is_dir():
            raise FluoroRegError(f"cannot make the output folder {folder}: {existing} is a file; choose another {option}")
        if not os.access(existing, os.W_OK):
            raise FluoroRegError(f"cannot write into {existing} (permission denied); choose another {option}")


COUNTS = ("workers", "frames", "per_bin", "epochs", "steps", "batch")  # options that count something: >= 1


def _check_counts(args) -> None:
    """Counting options (workers, frames, epochs, threads, ...) are at least 1, a seed is a non-negative
    32-bit number, a learning rate is positive."""
    import math

    for name in COUNTS + ("threads",):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise FluoroRegError(f"--{name.replace('_', '-')} {value} must be at least 1")
    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed < 2 ** 32:
        raise FluoroRegError(f"--seed {seed} must be a whole number from 0 to {2 ** 32 - 1}")
    lr = getattr(args, "lr", None)
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise FluoroRegError(f"--lr {lr} must be a positive number (e.g. 2e-3)")


class _Parser(argparse.ArgumentParser):
    """argparse with the library's one-line errors (``error: ...``, exit status 2) instead of a usage block."""

    def error(self, message):
        print(f"error: {self.prog}: {message}; see `{self.prog} --help`", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fluororeg", description="Differentiable 2D/3D registration of bones "
                                     "to fluoroscopy. " + CONVENTIONS)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("phantom", help="write the built-in procedural knee phantom (CT + labels), or the lumbar spine's")
    p.add_argument("--out", required=True, help="output folder (ct.nii.gz, labels.nii.gz, labels.json)")
    p.add_argument("--anatomy", choices=["knee", "spine"], default="knee",
                   help="knee (femur, tibia, patella, fibula) or spine (L1-L5 among ribs, pelvis, organs, bowel gas)")
    p.add_argument("--spacing", default="1.0", help="voxel size in mm: one value or sx,sy,sz (default 1)")
    p.add_argument("--size", help="extent in mm x,y,z (default 160,160,240 for the knee, 300,240,200 for the spine)")
    p.add_argument("--flexion", type=float, default=0.0, help="knee flexion in degrees (default 0)")
    p.add_argument("--side", choices=["right", "left"], default="right")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--implant", action="store_true",
                   help="also write a cemented total knee fitted to it (femoral component, tibial tray, insert: "
                        "STL in the CT's frame, implants.json) and remove the bone they replace from the CT")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("render", help="render a DRR of a CT (or of some bones) at given poses",
                       epilog=CONVENTIONS)
    p.add_argument("--ct", required=True, help="CT volume (NIfTI, NRRD, MetaImage or DICOM folder)")
    p.add_argument("--labels", help="labelmap on the CT's grid (needed with --bones)")
    p.add_argument("--label-names", help="labels JSON or femur=1,tibia=2 (default: labels.json beside the labels)")
    p.add_argument("--calib", required=True, help="calibration JSON (docs/CONVENTIONS.md)")
    p.add_argument("--pose", required=True, help="poses JSON, one camera_from_volume per bone")
    p.add_argument("--bones", help="comma-separated bones to render, each at its own pose (default: whole CT)")
    p.add_argument("--method", choices=["fast", "exact"], default="fast")
    p.add_argument("--out", required=True, help="output image: .png (16-bit) or .npy (float)")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("simulate", help="realistic fluoroscopy frames of a knee with ground-truth poses and masks",
                       epilog=CONVENTIONS)
    p.add_argument("--ct", help="CT volume (default: the built-in knee phantom)")
    p.add_argument("--labels", help="labelmap on the CT's grid")
    p.add_argument("--label-names", help="labels JSON or femur=1,tibia=2 (default: labels.json beside the labels)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--sequence", choices=["none", "flexion", "gait", "squat", "step-up"], default="none",
                   help="independent random knee poses (none), a flexion-extension cycle, a gait cycle, a squat "
                   "or a step-up (screw-home rotation and roll-back)")
    p.add_argument("--flexion-range", help="min,max flexion in degrees (default 0,120 for a knee; -15,35 over the "
                   "lumbar spine for a spine CT, whose label map names vertebrae L1 ...)")
    p.add_argument("--realism", choices=["off", "low", "medium", "high"], default="medium")
    p.add_argument("--calib", help="nominal calibration JSON (default: 512x512, 0.5 mm pixels, sdd 1000 mm)")
    p.add_argument("--size", type=int, help="resample the detector to size x size pixels")
    p.add_argument("--interpolation", choices=["nearest", "linear"], default="nearest",
                   help="voxel model of the exact renderer used to simulate (default nearest: Siddon)")
    p.add_argument("--view-angle", type=float, action="append", default=[],
                   help="add a view: a second C-arm turned by this many degrees about the vertical through the knee "
                   "(repeatable; biplane: one, e.g. 60); writes views/<name>/ and rig.json")
    p.add_argument("--clutter", choices=["none", "mixed", "heavy"], default="none",
                   help="what else the beam crosses: the other leg, metal (screws, plates, wires), a table edge; "
                        "mixed: in some frames, heavy: all in every frame; drawn anew per frame (default none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--implant", nargs="?", const="phantom", default=None, metavar="FOLDER",
                   help="knee replacement components in the frames: alone, the procedural total knee in the built-in "
                        "phantom; with a FOLDER, the components its implants.json names (meshes in the CT's frame)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("register", help="find each bone's pose from one fluoroscopy frame", epilog=CONVENTIONS)
    p.add_argument("--ct", help="the CT (needed with --bone)")
    p.add_argument("--labels", help="its labelmap (needed with --bone)")
    p.add_argument("--label-names", help="labels JSON or femur=1,tibia=2 (default: labels.json beside the labels)")
    p.add_argument("--bone", help="bone(s) to register, e.g. femur or femur,tibia")
    p.add_argument("--implant", action="append", default=[],
                   help="an implant component to register: NAME=MESH[,material=cobalt_chrome|titanium_alloy|polyethylene|"
                        "mu=<1/mm>][,scale=S][,repair][,follows=OTHER] (STL, OBJ or PLY in mm; repeatable; its initial "
                        "pose keyed NAME in --init, its mask NAME=mask.png; follows=tray: not registered, it takes the "
                        "tray's pose, its mesh in the tray's frame, e.g. a polyethylene insert)")
    p.add_argument("--frame", required=True, action="append",
                   help="fluoroscopy frame (PNG, TIFF, .npy, DICOM); with a rig (biplane), one --frame per view in "
                   "the rig's order")
    p.add_argument("--calib", required=True, help="calibration JSON of the frame, or a rig's JSON ({\"views\": [...]}: "
                   "one calibration and camera_from_reference per view; docs/CONVENTIONS.md)")
    p.add_argument("--init", required=True, help="initial poses JSON (one camera_from_volume per bone; with a rig, "
                   "in the first view's camera frame)")
    p.add_argument("--mask", action="append", help="bone=mask.png: the bone's 2D region (repeatable); "
                   "LABELMAP.png: one image holding each bone's label id; auto: every bone's mask predicted by --model; "
                   "with a rig, prefix each with its view: B:femur=mask.png")
    p.add_argument("--model", help="segmentation model folder (from `fluororeg segment train`) for --mask auto")
    p.add_argument("--polarity", choices=["auto", "bone-dark", "bone-bright"], default="auto")
    p.add_argument("--index", type=int, default=0, help="which frame of a multi-frame file (default 0)")
    p.add_argument("--config", help="registration settings, YAML or JSON: RegistrationConfig's stages, e.g. "
                   "{search: {range_mm: 20}, pyramid: {iterations: [60, 50, 40, 30]}} (docs/CONVENTIONS.md)")
    p.add_argument("--similarity", help="patch-gncc (default), gcc, ncc, patch-ncc, multiscale-ncc")
    p.add_argument("--range", help="global search half-widths: mm,deg (default 30,25)")
    p.add_argument("--no-global-search", action="store_true", help="refine from the initial pose only")
    p.add_argument("--context", choices=["auto", "on", "off"],
                   help="draw each bone with the CT around it (on), alone (off), or whichever fits the frame "
                        "better after the global search (auto, the default)")
    p.add_argument("--mask-dilation",
                   help="masks grow by these millimetres at the bone: search and coarse levels, finer levels "
                        "(default 3.6,10.8)")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument("--overlay", help="PNG of the registered outlines over the frame")
    p.add_argument("--progress-file", help="append each iteration as a JSON line (stage, iteration, similarity, "
                   "pose) to this file instead of drawing a progress bar (for a parent process, e.g. Slicer)")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("evaluate", help="accuracy, success rate, capture range and loss landscapes of the "
                       "registration over many starts (config YAML), on Dask", epilog=CONVENTIONS)
    p.add_argument("--config", required=True, help="experiment YAML (see FluoroRegistrationLib/evaluate/config.py)")
    p.add_argument("--out", required=True, help="output folder; rerunning resumes (finished runs are skipped)")
    p.add_argument("--scheduler", help="address of a running Dask scheduler (default: a local cluster)")
    p.add_argument("--workers", type=int, help="local cluster worker processes (default: the machine's cores)")
    p.add_argument("--serial", action="store_true", help="run in this process, without Dask")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("zoo", help="the validation zoo: registration on many anatomies, CT grids and C-arm "
                       "geometries through the evaluation harness, one table", epilog=CONVENTIONS)
    p.add_argument("--out", required=True, help="output folder; rerunning resumes")
    p.add_argument("--members", default="all", help="comma-separated zoo members (default all; see evaluate/zoo.py)")
    p.add_argument("--geometries", default="all", help="comma-separated detector geometries (default all)")
    p.add_argument("--frames", type=int, default=2, help="frames per member and geometry (default 2)")
    p.add_argument("--per-bin", type=int, default=1, help="starts per frame, bone and mTRE bin 0-6-12 mm (default 1)")
    p.add_argument("--realism", choices=["low", "medium", "high"], default="medium")
    p.add_argument("--config", help="registration settings (YAML) for every run, as in `register --config`")
    p.add_argument("--workers", type=int, help="local Dask workers (default: the machine's cores)")
    p.add_argument("--serial", action="store_true", help="run in this process, without Dask")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_zoo)

    p = sub.add_parser("segment", help="bone masks of fluoroscopy frames: train DeepLabv3 on frames simulated "
                       "from a CT, or predict with a trained model")
    seg = p.add_subparsers(dest="segment_command", required=True)
    q = seg.add_parser("train", help="train a segmentation model on frames simulated from CT + labels")
    q.add_argument("--ct", required=True, help="CT volume (NIfTI, NRRD, MetaImage or DICOM folder)")
    q.add_argument("--labels", required=True, help="labelmap on the CT's grid")
    q.add_argument("--label-names", help="labels JSON or femur=1,tibia=2 (default: labels.json beside the labels)")
    q.add_argument("--out", required=True, help="model folder (model.safetensors, model.json, training curve)")
    q.add_argument("--bones", default="femur,tibia", help="bones to segment, one output channel each")
    q.add_argument("--arch", default="deeplabv3_mobilenet_v3_large",
                   choices=["deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50"])
    q.add_argument("--size", type=int, default=256, help="network input size in pixels (default 256)")
    q.add_argument("--epochs", type=int, help="epochs (default 16)")
    q.add_argument("--steps", type=int, help="batches per epoch (default 75 with bf16, 60 with fp32: ~27 min on 2 cores)")
    q.add_argument("--batch", type=int, help="frames per batch (default 8)")
    q.add_argument("--lr", type=float, help="peak learning rate (default 2e-3)")
    q.add_argument("--calib", help="the C-arm's calibration JSON (default: 512x512, 0.5 mm pixels, sdd 1000 mm)")
    q.add_argument("--init", help="weights to fine-tune from (.safetensors, or a .pt state dict)")
    q.add_argument("--labelled", help="folder of your own labelled frames (frames/<key>.png, "
                   "masks/<key>_<bone>.png) mixed into training")
    q.add_argument("--clutter", choices=["none", "mixed", "heavy"], default="mixed",
                   help="the other leg, metal and table edges drawn into the training frames (not into the "
                        "masks), so the model labels only the leg in front (default mixed: in some frames)")
    q.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    q.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="bf16: autocast the network to bfloat16, channels-last (1.45x the batches per second "
                        "of fp32 on a CPU with AVX512-BF16, and a better model in the same time: see the README); "
                        "default auto: bf16 where the CPU (or GPU) computes it natively, else fp32")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_segment_train)
    q = seg.add_parser("predict", help="one mask PNG per bone and a coloured overlay per frame")
    q.add_argument("--model", required=True, help="model folder from `fluororeg segment train`")
    q.add_argument("--frame", required=True, nargs="+", help="frame file(s) (PNG, TIFF, .npy, DICOM)")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--polarity", choices=["auto", "bone-dark", "bone-bright"], default="auto")
    q.add_argument("--no-flip", action="store_true",
                   help="predict from the frame alone (default: average with its mirror image; half the time)")
    q.set_defaults(func=cmd_segment_predict)

    p = sub.add_parser("demo", help="the built-in example: phantom, C-arm, DRRs and pictures")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--spacing", type=float, default=1.0)
    p.add_argument("--no-register", action="store_true", help="only the DRR part (no simulated registration)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("track", help="track bones through a fluoroscopy sequence; poses and knee kinematics",
                       epilog=CONVENTIONS)
    p.add_argument("--ct", help="the CT (needed with --bone)")
    p.add_argument("--labels", help="its labelmap (needed with --bone)")
    p.add_argument("--label-names", help="labels JSON or femur=1,tibia=2 (default: labels.json beside the labels)")
    p.add_argument("--bone", default=None, help="bones to track (default femur,tibia; none with --implant)")
    p.add_argument("--implant", action="append", default=[],
                   help="an implant component to track beside the bones: NAME=MESH[,material=cobalt_chrome|"
                        "titanium_alloy|polyethylene][,mu=V][,scale=S][,repair][,follows=OTHER] (repeatable; its start in "
                        "--init under NAME; follows=tray: it takes the tray's pose, e.g. an insert)")
    p.add_argument("--frames", dest="sequence", required=True, action="append",
                   help="the sequence: a folder of frames, a multi-page TIFF, a multi-frame DICOM, an (N, H, W) .npy or "
                   "a video; with a rig (biplane), one --frames per view in the rig's order, synchronised")
    p.add_argument("--calib", required=True, help="calibration JSON, a rig's JSON (several views), or a folder of one "
                   "calibration per frame (<frame>.json)")
    p.add_argument("--init", required=True, help="the bones' poses at the keyframe (poses JSON), or "
                   "{\"<frame>\": poses, ...} for several keyframes")
    p.add_argument("--keyframe", type=int, default=0, help="the frame --init is for (default 0)")
    p.add_argument("--mask", action="append", help="'auto' (with --model) or a folder of <frame>_labels.png label maps "
                   "(with a rig: one folder per view, in its order)")
    p.add_argument("--model", help="segmentation model folder for --mask auto")
    p.add_argument("--landmarks", help="JSON of femur and tibia landmarks (LPS mm, CT frame); default: "
                   "approximate ones from the labels")
    p.add_argument("--joint", default="femur,tibia",
                   help="the tracked bodies whose knee kinematics are written, femur side then tibia side "
                   "(default femur,tibia; an implanted knee: e.g. femoral,tray, with the components' landmarks "
                   "in --landmarks, or the bones' when the meshes lie in the CT's frame)")
    p.add_argument("--side", choices=["right", "left"], default="right")
    p.add_argument("--fps", type=float, help="frame rate when the sequence does not say (default: DICOM frame "
                   "time, the video's, else 30)")
    p.add_argument("--lowpass", type=float, help="low-pass the tracked poses (zero-lag Butterworth, cut-off in Hz, e.g. 6): "
                   "poses_smoothed.csv, and the kinematics from them (default: none)")
    p.add_argument("--polarity", choices=["auto", "bone-dark", "bone-bright"], default="auto")
    p.add_argument("--workers", type=int, help="track on a local Dask cluster of this many workers (default: serially)")
    p.add_argument("--scheduler", help="address of a Dask scheduler (a cluster) instead of local workers")
    p.add_argument("--config", help="tracking settings (YAML/JSON): cold and refine registration settings, checks, "
                   "recover (docs/CONVENTIONS.md, Tracking)")
    p.add_argument("--no-recover", action="store_true", help="do not re-run frames that are not ok from a cold start")
    p.add_argument("--no-animation", action="store_true", help="skip overlay.gif")
    p.add_argument("--out", required=True, help="output folder (a run there resumes where it stopped)")
    p.set_defaults(func=cmd_track)

    p = sub.add_parser("calibrate-rig", help="a biplane (N-view) rig's relative poses from one frame of a bead "
                       "phantom per view", epilog=CONVENTIONS)
    p.add_argument("--frame", required=True, action="append", help="a frame of the bead phantom; one per view, in the "
                   "rig's order")
    p.add_argument("--calib", required=True, help="the nominal rig JSON: each view's calibration and rough "
                   "camera_from_reference (from the C-arms' angle readouts)")
    p.add_argument("--beads", help="JSON {\"beads_mm\": [[x, y, z], ...]}: the beads in the phantom's frame (default: "
                   "the built-in 16-bead helix, radius 30 mm, height 80 mm, 1.25 turns about y)")
    p.add_argument("--polarity", choices=["auto", "bone-dark", "bone-bright"], default="auto",
                   help="the frames' polarity (beads count as bone: dark on a detected frame)")
    p.add_argument("--out", required=True, help="the calibrated rig JSON")
    p.set_defaults(func=cmd_calibrate_rig)

    p = sub.add_parser("gui", help="the registration panel as a web page (trame-slicer) on this machine")
    p.add_argument("--data", help="a folder from `fluororeg simulate`, or one with ct, labels, labels.json, "
                   "calib.json and frames (default: the built-in phantom)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free port)")
    p.add_argument("--open", action="store_true", help="open the page in the system's browser")
    p.set_defaults(func=cmd_gui)
    return parser


def _end_progress_lines() -> None:
    """Close any progress bar still drawn, so that a message starts on a line of its own."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Library warnings as one line, ``warning: ...`` (others as Python prints them)."""
    from .errors import FluoroRegWarning

    if issubclass(category, FluoroRegWarning):
        _end_progress_lines()
        print(f"warning: {message}", file=sys.stderr)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


def main(argv=None) -> int:
    """Run one command; 0 on success, 2 for bad input (one line ``error: ...``), 3 when a
    registration ran but every bone failed its checks (the result is written)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help (0) or a usage error, already printed in one line (2)
        return done.code if isinstance(done.code, int) else 2
    try:
        with _warnings.catch_warnings():
            _warnings.showwarning = _show_warning
            _check_counts(args)
            _check_outputs(args)
            args.func(args)
    except FluoroRegError as err:
        _end_progress_lines()
        print(f"error: {err}", file=sys.stderr)
        return 3 if isinstance(err, RegistrationFailed) else 2
    except KeyboardInterrupt:
        _end_progress_lines()
        print("error: interrupted; files finished so far are kept (evaluate resumes where it stopped)", file=sys.stderr)
        return 130
    except Exception as err:  # a bug: one line for the user, the traceback in a file for the report
        _end_progress_lines()
        if os.environ.get("FLUOROREG_DEBUG"):
            raise
        print(f"error: {_internal_error(err, args)}", file=sys.stderr)
        return 1
    return 0


def _internal_error(err: Exception, args) -> str:
    """One line for an unexpected exception (MemoryError: what to shrink); the traceback is written
    to a file whose path the line gives (set FLUOROREG_DEBUG=1 to see it raised instead)."""
    import tempfile
    import time
    import traceback

    if isinstance(err, MemoryError):
        return (f"out of memory in `fluororeg {args.command}`; use a coarser CT or a smaller detector, or lower the "
                "budget with FLUOROREG_MEMORY_GB")
    path = os.path.join(tempfile.gettempdir(), f"fluororeg-error-{time.strftime('%Y%m%d-%H%M%S')}.txt")
    with open(path, "w") as f:
        f.write(f"fluororeg {' '.join(sys.argv[1:])}\n" + "".join(traceback.format_exception(err)))
    first = str(err).splitlines()[0] if str(err) else ""
    return (f"internal error in `fluororeg {args.command}` ({type(err).__name__}: {first[:200]}); this is a bug: "
            f"please report it with {path}")


if __name__ == "__main__":
    sys.exit(main())
