"""The built-in example (``make demo``): knee phantom, a lateral C-arm view, DRRs and a picture.

Writes into ``out``: the phantom (ct.nii.gz, labels.nii.gz, labels.json), calib.json, poses.json,
DRRs of the whole knee and of each bone (16-bit PNG + .npy), per-bone projected masks, and
``demo.png`` (the DRRs side by side, bone outlines over the knee). Prints the fast renderer's
difference from the exact one and the timings.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .files import save_image, write_poses
from .geometry import Camera, lateral_view
from .render import project_label, render
from .volume import bone_volumes, load_ct, load_labels, read_label_names, whole_volume

DEMO_CAMERA = Camera(sdd_mm=1000.0, rows=512, cols=512, row_spacing_mm=0.5, col_spacing_mm=0.5)
DEMO_DEPTH_MM = 700.0
BONES = ("femur", "tibia", "patella", "fibula")
COLOURS = {"femur": "tab:red", "tibia": "tab:green", "patella": "tab:orange", "fibula": "tab:cyan"}


def run_demo(out, spacing_mm: float = 1.0, flexion_deg: float = 30.0) -> dict:
    from .phantom import make_knee_phantom, write_phantom

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = tqdm(total=6, desc="demo", unit="step")
    timings = {}

    steps.set_postfix_str("building knee phantom")
    t0 = time.perf_counter()
    phantom = make_knee_phantom(spacing_mm=spacing_mm, flexion_deg=flexion_deg, seed=0)
    paths = write_phantom(phantom, out)
    timings["phantom_s"] = time.perf_counter() - t0
    steps.update()

    steps.set_postfix_str("loading CT and bones")
    ct = load_ct(paths["ct"])
    labels = load_labels(paths["labels"], ct)
    names = read_label_names(paths["labels_json"])
    bones = bone_volumes(ct, labels, names, BONES)
    knee = whole_volume(ct)
    camera = DEMO_CAMERA
    camera.to_json(out / "calib.json")
    pose = lateral_view(phantom.knee_centre_mm, DEMO_DEPTH_MM)
    poses = {name: pose for name in BONES}
    write_poses(out / "poses.json", {"volume": pose, **poses})
    steps.update()

    steps.set_postfix_str("rendering DRRs")
    pose32 = pose.to(torch.float32)
    with torch.no_grad():
        t0 = time.perf_counter()
        drr_knee = render(knee, camera, pose32)[0, 0]
        timings["knee_fast_512_s"] = time.perf_counter() - t0
        drr_bones = {}
        for name, vol in bones.items():
            t0 = time.perf_counter()
            drr_bones[name] = render(vol, camera, pose32)[0, 0]
            timings[f"{name}_fast_512_s"] = time.perf_counter() - t0
    save_image(drr_knee, out / "drr_knee.png")
    np.save(out / "drr_knee.npy", drr_knee.numpy())
    for name, img in drr_bones.items():
        save_image(img, out / f"drr_{name}.png")
    steps.update()

    steps.set_postfix_str("projecting bone labels")
    masks = {}
    with torch.no_grad():
        for name, vol in bones.items():
            thickness = project_label(vol, camera, pose32)[0, 0]
            masks[name] = (thickness > 0.5).numpy()
            save_image(masks[name].astype(np.float32), out / f"mask_{name}.png", scale=255.0)
    steps.update()

    steps.set_postfix_str("checking fast against exact")
    small = camera.resized(128, 128)
    with torch.no_grad():
        femur64 = bones["femur"].to(dtype=torch.float64)
        exact = render(femur64, small, pose, "exact")
        fast = render(bones["femur"], small, pose32, "fast").double()
    timings["femur_fast_vs_exact_rel_l2"] = float((fast - exact).norm() / exact.norm())
    steps.update()

    steps.set_postfix_str("drawing demo.png")
    _figure(out / "demo.png", drr_knee.numpy(), {k: v.numpy() for k, v in drr_bones.items()}, masks, flexion_deg)
    steps.update()
    steps.close()
    print(f"phantom built in {timings['phantom_s']:.1f} s; 512x512 fast DRRs: knee {timings['knee_fast_512_s']:.2f} s, "
          f"femur {timings['femur_fast_512_s']:.2f} s; fast vs exact (femur, 128x128): "
          f"{100 * timings['femur_fast_vs_exact_rel_l2']:.2f}% relative L2")
    print(f"wrote {out}/demo.png and the DRRs, masks, calib.json and poses.json beside it")
    return timings


def _figure(path, knee, bones, masks, flexion_deg):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    axes[0].imshow(knee, cmap="gray")
    axes[0].set_title(f"knee phantom DRR (lateral, {flexion_deg:g} deg flexion)")
    axes[1].imshow(bones["femur"], cmap="gray")
    axes[1].set_title("femur only")
    axes[2].imshow(bones["tibia"], cmap="gray")
    axes[2].set_title("tibia only")
    axes[3].imshow(knee, cmap="gray")
    for name, mask in masks.items():
        axes[3].contour(mask.astype(float), levels=[0.5], colors=COLOURS[name], linewidths=1.0)
    axes[3].set_title("projected bone outlines")
    handles = [plt.Line2D([], [], color=c, label=n) for n, c in COLOURS.items()]
    axes[3].legend(handles=handles, loc="lower right", fontsize=7)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
