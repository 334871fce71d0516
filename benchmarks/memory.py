"""Peak resident memory of registering one bone from a 512 x 512 x 400 clinical CT, through the CLI.

    .venv/bin/python benchmarks/memory.py [--work DIR] [--bone femur]

The phantom is resampled onto a clinical grid (0.7 x 0.7 x 2.5 mm, CT noise) and padded with air to
512 x 512 x 400 voxels (358 x 358 x 1000 mm, what a leg CT holds), written as int16 NIfTI with an
int16 labelmap; a frame is simulated from the same anatomy (512 px of 0.5 mm). Then ``fluororeg
register`` runs in a child process, exactly as a user runs it (default configuration, the bone's
mask, a start about 10 mm / 8 deg off), and its peak resident set size (``ru_maxrss`` of the child)
is reported against the 2 GB bound, with the seconds and the error.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPE = (400, 512, 512)  # (k, j, i): slices, rows, columns
SPACING = (0.7, 0.7, 2.5)  # (x, y, z) mm


def make_clinical_ct(work: Path) -> Path:
    """``work/padded``: the phantom on the clinical grid, padded with air to :data:`SHAPE`."""
    import numpy as np

    from FluoroRegistrationLib.evaluate.zoo import ZooMember, make_member
    from FluoroRegistrationLib.volume import ImageVolume, load_ct, load_labels, write_image

    out = work / "padded"
    if (out / "ct.nii.gz").is_file():
        return out
    member = work / "member"
    if not (member / "member.json").is_file():
        make_member(ZooMember("clinical", spacing_mm=SPACING, noise_hu=20.0), member)
    ct = load_ct(member / "full" / "ct.nii.gz")
    labels = load_labels(member / "full" / "labels.nii.gz", ct)
    k, j, i = ct.array.shape
    if k > SHAPE[0] or j > SHAPE[1] or i > SHAPE[2]:
        raise SystemExit(f"the phantom's clinical grid {ct.array.shape} is larger than {SHAPE}")
    before = [(SHAPE[d] - n) // 2 for d, n in enumerate((k, j, i))]
    pads = [(b, SHAPE[d] - n - b) for d, (b, n) in enumerate(zip(before, (k, j, i)))]
    hu = np.pad(np.round(ct.array).astype(np.int16), pads, constant_values=-1000)
    lab = np.pad(labels.array.astype(np.int16), pads)
    origin = np.asarray(ct.volume_from_index[:3, 3]) - np.array(SPACING) * np.array(before[::-1])
    out.mkdir(parents=True, exist_ok=True)
    write_image(ImageVolume.from_spacing(hu, SPACING, origin), out / "ct.nii.gz")
    write_image(ImageVolume.from_spacing(lab, SPACING, origin), out / "labels.nii.gz")
    (out / "labels.json").write_text((member / "full" / "labels.json").read_text())
    return out


def simulate(work: Path) -> Path:
    from FluoroRegistrationLib.evaluate.zoo import GEOMETRIES
    from FluoroRegistrationLib.simulate.writer import simulate_folder

    sim = work / "frames"
    if not (sim / "poses.json").is_file():
        m = work / "member" / "full"
        simulate_folder(sim, m / "ct.nii.gz", m / "labels.nii.gz", m / "labels.json", frames=1, seed=0,
                        realism="medium", camera=GEOMETRIES["512px-0.5mm-sdd1000"], flexion_range=(10.0, 60.0))
    return sim


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", help="keep (or reuse) the CT and frame here")
    parser.add_argument("--bone", default="femur")
    args = parser.parse_args(argv)
    import torch

    from FluoroRegistrationLib.files import read_poses, write_poses
    from FluoroRegistrationLib.geometry import Camera, CentredParameterization
    from FluoroRegistrationLib.register import Registration, pose_errors

    work = Path(args.work or tempfile.mkdtemp(prefix="fluororeg_memory_"))
    ct_dir = make_clinical_ct(work)
    sim = simulate(work)
    truth = read_poses(sim / "poses" / "0000.json")[args.bone]
    # the start and the error need the bone's centroid: from the small (unpadded) CT, the same anatomy
    small = Registration.from_ct(work / "member" / "full" / "ct.nii.gz", work / "member" / "full" / "labels.nii.gz",
                                 [args.bone]).volumes[args.bone]
    d = torch.tensor([0.6, -0.5, 0.4, 6.0, -5.0, 6.0], dtype=torch.float64)
    d[:3] = d[:3] / d[:3].norm() * torch.pi / 180 * 8
    start = CentredParameterization(small.centroid, truth).pose(d)
    write_poses(work / "init.json", {args.bone: start})
    out = work / "result.json"
    cmd = [str(Path(sys.executable).parent / "fluororeg"), "register", "--ct", str(ct_dir / "ct.nii.gz"),
           "--labels", str(ct_dir / "labels.nii.gz"), "--bone", args.bone, "--frame", str(sim / "frames" / "0000.png"),
           "--calib", str(sim / "calib_true.json"), "--init", str(work / "init.json"),
           "--mask", f"{args.bone}={sim / 'masks' / f'0000_{args.bone}.png'}", "--out", str(out)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if done.returncode != 0:
        print(done.stdout[-2000:], done.stderr[-2000:])
        return 1
    pose = torch.tensor(json.loads(out.read_text())[args.bone]["camera_from_volume"], dtype=torch.float64)
    err = pose_errors(pose, truth, small.centroid, small.points, Camera.from_json(sim / "calib_true.json"))
    ct_mb = (ct_dir / "ct.nii.gz").stat().st_size / 2**20
    print(f"| CT | bone | peak RSS (MB) | bound | s (CLI, incl. start-up and reading) | mTRE mm |\n|---|---|---|---|---|---|\n"
          f"| {SHAPE[2]}x{SHAPE[1]}x{SHAPE[0]} int16 at {'x'.join(map(str, SPACING))} mm ({ct_mb:.0f} MB gzipped) | "
          f"{args.bone} | {peak_mb:.0f} | {'within' if peak_mb < 2048 else 'OVER'} 2048 | {seconds:.1f} | "
          f"{err['mtre_mm']:.2f} |")
    return 0 if peak_mb < 2048 else 2


if __name__ == "__main__":
    sys.exit(main())
