"""The registration part of ``make demo``: simulate a lateral knee frame, register femur and tibia.

Starts each bone about 10 mm / 8 deg off its true pose, registers with and without the ground-truth
masks, prints a table of errors (docs/CONVENTIONS.md definitions) and writes the overlays.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .evaluate.starts import random_offset
from .files import read_poses
from .frame import read_frame_array
from .geometry import Camera, CentredParameterization
from .register import Registration, pose_errors
from .register.overlay import draw_overlay

BONES = ("femur", "tibia")


def run_register_demo(out, seed: int = 3, realism: str = "medium") -> list[dict]:
    from .simulate.writer import simulate_folder

    out = Path(out)
    sim = out / "simulated"
    t0 = time.perf_counter()
    simulate_folder(sim, frames=1, seed=seed, realism=realism, flexion_range=(10.0, 60.0))
    print(f"simulated a lateral knee frame ({realism} realism) in {time.perf_counter() - t0:.0f} s -> {sim}")
    reg = Registration.from_ct(sim / "phantom" / "ct.nii.gz", sim / "phantom" / "labels.nii.gz", list(BONES))
    bones = reg.volumes
    calibration = sim / "calib_true.json"  # the demo isolates the method from calibration error
    camera = Camera.from_json(calibration)
    truth = read_poses(sim / "poses" / "0000.json")
    g = torch.Generator().manual_seed(seed)
    start = {}
    for b in BONES:
        start[b] = CentredParameterization(bones[b].centroid, truth[b]).pose(random_offset(g, 10.0, 8.0))
    masks = {b: sim / "masks" / f"0000_{b}.png" for b in BONES}
    rows = []
    raw = read_frame_array(sim / "frames" / "0000.png")
    for condition, m in (("masks", masks), ("no masks", None)):
        result = reg.register(sim / "frames" / "0000.png", calibration, start, masks=m)
        for b, r in result.bones.items():
            e0 = pose_errors(start[b], truth[b], bones[b].centroid, bones[b].points, camera)
            e = pose_errors(r.camera_from_volume, truth[b], bones[b].centroid, bones[b].points, camera)
            rows.append({"bone": b, "condition": condition, "start_mtre": e0["mtre_mm"], **e, "seconds": r.seconds})
        tag = condition.replace(" ", "_")
        draw_overlay(out / f"overlay_{tag}.png", raw, camera, bones, result.poses(), start,
                     f"registered ({condition}): solid; start: dashed")
    print("\n| bone | similarity focus | start mTRE mm | in-plane mm | out-of-plane mm | rotation deg | mTRE mm | s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['bone']} | {r['condition']} | {r['start_mtre']:.1f} | {r['in_plane_mm']:.2f} | "
              f"{r['out_of_plane_mm']:.2f} | {r['rotation_deg']:.2f} | {r['mtre_mm']:.2f} | {r['seconds']:.1f} |")
    print(f"\nwrote {out}/overlay_masks.png and {out}/overlay_no_masks.png")
    return rows
