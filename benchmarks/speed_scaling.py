"""How registration time grows with the detector, the CT grid and the batch (part of benchmarks/speed.py).

For two CT grids resampled from the phantom (0.5 mm isotropic; clinical 0.7 x 0.7 x 2.5 mm) and the
three detectors of the validation zoo, one frame is simulated and the femur registered cold and
tracked through the one path; the render's time per pose is measured against the batch size at the
search level and at the finest level. Writes a four-panel plot.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm import tqdm

from FluoroRegistrationLib.evaluate.zoo import GEOMETRIES, ZooMember, make_member
from FluoroRegistrationLib.files import read_poses
from FluoroRegistrationLib.register import Registration
from FluoroRegistrationLib.register.pipeline import bone_depth_mm, level_for, level_volume
from FluoroRegistrationLib.render import render
from speed import perturbed_starts, registered

GRIDS = {"0.5 mm": (0.5, 0.5, 0.5), "0.7x0.7x2.5 mm": (0.7, 0.7, 2.5)}
BATCHES = (1, 4, 16, 64)


def _case(folder: Path, member_dir: Path, camera, seed: int) -> None:
    from FluoroRegistrationLib.simulate.writer import simulate_folder

    if not (folder / "poses.json").is_file():
        simulate_folder(folder, member_dir / "full" / "ct.nii.gz", member_dir / "full" / "labels.nii.gz",
                        member_dir / "full" / "labels.json", frames=1, seed=seed, realism="medium", camera=camera,
                        flexion_range=(10.0, 60.0))


def registration_scaling(base: Path, seed: int) -> list[dict]:
    """Seconds and mTRE of the femur, cold and tracked, per CT grid and detector."""
    from FluoroRegistrationLib.track.tracker import TRACK_REFINE

    rows = []
    cases = [(g, d) for g in GRIDS for d in GEOMETRIES]
    for grid, geometry in tqdm(cases, desc="scaling cases", unit="case"):
        member_dir = base / grid.replace(" ", "")
        if not (member_dir / "member.json").is_file():
            make_member(ZooMember(grid, spacing_mm=GRIDS[grid]), member_dir, seed)
        folder = member_dir / geometry
        _case(folder, member_dir, GEOMETRIES[geometry], seed)
        d = member_dir / "phantom"
        cold = Registration.from_ct(d / "ct.nii.gz", d / "labels.nii.gz", ["femur"])
        truth = {"femur": read_poses(folder / "poses" / "0000.json")["femur"]}
        shape = tuple(cold.volumes["femur"].mu.shape)
        for name, reg, (mm, deg) in (("cold", cold, (10.0, 8.0)),
                                     ("tracked", Registration(cold.volumes, TRACK_REFINE), (2.0, 2.0))):
            starts = perturbed_starts(cold.volumes, truth, mm, deg, seed)
            result, errors = registered(reg, folder, 0, folder / "calib_true.json", starts, truth)
            rows.append({"grid": grid, "detector": geometry, "mode": name, "bone voxels": "x".join(map(str, shape)),
                         "seconds": result.seconds, "mtre": errors["femur"]})
    return rows


def batch_scaling(base: Path) -> list[dict]:
    """Render seconds per pose (forward, and forward+backward) against the batch, femur, 512 px detector,
    at the search level (2.8 mm pixels at the bone) and the finest (0.35 mm)."""
    member_dir = base / "0.5mm"
    folder = member_dir / "512px-0.5mm-sdd1000"
    d = member_dir / "phantom"
    bone = Registration.from_ct(d / "ct.nii.gz", d / "labels.nii.gz", ["femur"]).volumes["femur"]
    from FluoroRegistrationLib.geometry import Camera

    camera = Camera.from_json(folder / "calib_true.json")
    pose = read_poses(folder / "poses" / "0000.json")["femur"]
    depth = bone_depth_mm(bone, pose)
    rows = []
    for pixel_mm in (2.8, 0.35):
        level = level_for(camera, depth, pixel_mm)
        cam = camera.resized(*level.size)
        drawn = level_volume(bone, level)  # as registration draws it there
        for batch in BATCHES:
            poses = pose.to(torch.float32).repeat(batch, 1, 1)
            poses[:, :3, 3] += torch.randn(batch, 3, generator=torch.Generator().manual_seed(batch)) * 2
            for grad in (False, True):
                times = []
                for _ in range(3):
                    p = poses.clone().requires_grad_(grad)
                    t0 = time.perf_counter()
                    img = render(drawn, cam, p, "fast")
                    if grad:
                        torch.autograd.grad(img.square().mean(), p)
                    times.append(time.perf_counter() - t0)
                rows.append({"level": f"{level.size[1]} px ({pixel_mm} mm)", "batch": batch,
                             "pass": "fwd+bwd" if grad else "forward", "ms per pose": 1000 * sorted(times)[1] / batch})
    return rows


def plot(reg_rows: list[dict], batch_rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    pixels = {g: GEOMETRIES[g].cols for g in GEOMETRIES}
    for ax, mode in zip(axes[:2], ("cold", "tracked")):
        for grid in GRIDS:
            rs = [r for r in reg_rows if r["grid"] == grid and r["mode"] == mode]
            ax.plot([pixels[r["detector"]] for r in rs], [r["seconds"] for r in rs], "o-", label=f"CT {grid}")
            for r in rs:
                ax.annotate(f"{r['mtre']:.2f} mm", (pixels[r["detector"]], r["seconds"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        ax.set(xscale="log", xticks=list(pixels.values()), xticklabels=[str(v) for v in pixels.values()],
               xlabel="detector (px a side)", ylabel="s per bone (femur)", title=f"{mode} registration (labels: mTRE)")
        ax.set_ylim(bottom=0)
        ax.minorticks_off()
        ax.legend()
    ax = axes[2]
    for level in dict.fromkeys(r["level"] for r in batch_rows):
        for kind, style in (("forward", "--"), ("fwd+bwd", "-")):
            rs = [r for r in batch_rows if r["level"] == level and r["pass"] == kind]
            ax.plot([r["batch"] for r in rs], [r["ms per pose"] for r in rs], style, marker="o", label=f"{level} {kind}")
    ax.set(xscale="log", yscale="log", xlabel="poses per render call (batch)", ylabel="ms per pose",
           title="femur render, 512 px detector")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scaling(base: Path, plot_path: Path, seed: int) -> str:
    reg_rows = registration_scaling(base, seed)
    batch_rows = batch_scaling(base)
    plot(reg_rows, batch_rows, plot_path)
    lines = ["**Registration time against detector and CT grid** (femur, one path; cold: default config from "
             "10 mm / 8 deg; tracked: TRACK_REFINE from 2 mm / 2 deg)", "",
             "| CT grid | bone crop voxels | detector | mode | s | mTRE mm |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['grid']} | {r['bone voxels']} | {r['detector']} | {r['mode']} | {r['seconds']:.2f} | {r['mtre']:.2f} |"
              for r in reg_rows]
    lines += ["", "**Render time per pose against the batch** (femur, 0.5 mm CT, 512 px detector)", "",
              "| level | pass | " + " | ".join(f"B={b}" for b in BATCHES) + " |", "|---|---|" + "---|" * len(BATCHES)]
    for level in dict.fromkeys(r["level"] for r in batch_rows):
        for kind in ("forward", "fwd+bwd"):
            rs = [r for r in batch_rows if r["level"] == level and r["pass"] == kind]
            lines.append(f"| {level} | {kind} | " + " | ".join(f"{r['ms per pose']:.2f} ms" for r in rs) + " |")
    lines.append(f"\nPlot: `{plot_path.name}`.")
    return "\n".join(lines)
