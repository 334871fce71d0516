"""One view against two on an idle machine: seconds per bone and errors, the same random starts
(10 and 20 mm / deg off the truth) through `Registration.register` (the one registration path),
2 threads. On a simulated biplane folder, e.g.

    fluororeg simulate --out /tmp/bp90 --frames 4 --view-angle 90 --flexion-range 10,80 --seed 11
    .venv/bin/python benchmarks/views_speed.py /tmp/bp90 0000,0001,0002,0003

prints a line per run and a table: per bone and condition, runs, median seconds, success (mTRE < 1 mm),
median mTRE / in-plane / out-of-plane (along the first view's beam) / rotation, and the median of
each start's two-view / one-view time ratio.
"""
import sys

import numpy as np
import torch

from FluoroRegistrationLib.evaluate.starts import random_offset
from FluoroRegistrationLib.files import read_poses
from FluoroRegistrationLib.geometry import CentredParameterization, Rig, as_rig
from FluoroRegistrationLib.register import Registration, pose_errors

torch.set_num_threads(2)
root = sys.argv[1]
keys = sys.argv[2].split(',')
rig = as_rig(f'{root}/rig_true.json')
variants = {"1 view": 1, "2 views": 2}
base = Registration.from_ct(f'{root}/phantom/ct.nii.gz', f'{root}/phantom/labels.nii.gz', ['femur', 'tibia'])
g = torch.Generator().manual_seed(7)
rows = []
for key in keys:
    truth = read_poses(f'{root}/poses/{key}.json')
    for bone in ['femur', 'tibia']:
        vol = base.volumes[bone]
        for mag in (10.0, 20.0):
            start = {bone: CentredParameterization(vol.centroid, truth[bone]).pose(random_offset(g, mag, mag))}
            for name, n in variants.items():
                r = Registration({bone: vol}, base.config)
                frames = [f'{root}/frames/{key}.png', f'{root}/views/B/frames/{key}.png']
                masks = [{bone: f'{root}/masks/{key}_{bone}.png'}, {bone: f'{root}/views/B/masks/{key}_{bone}.png'}]
                res = r.register(frames[:n] if n > 1 else frames[0], Rig(rig.views[:n]), start,
                                 masks=masks[:n] if n > 1 else masks[0]).bones[bone]
                e = pose_errors(res.camera_from_volume, truth[bone], vol.centroid, vol.points)
                rows.append((name, bone, res.seconds, e, (key, mag)))
                print(f"{name:8s} {key} {bone} {mag:.0f}: {res.seconds:5.1f} s mTRE {e['mtre_mm']:.3f} in {e['in_plane_mm']:.3f} "
                      f"out {e['out_of_plane_mm']:.3f} rot {e['rotation_deg']:.3f}", flush=True)
print("\n| bone | condition | runs | s per bone (median) | < 1 mm | mTRE mm | in-plane mm | out-of-plane mm | rotation deg | 2 views / 1 view time (median) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for bone in ['femur', 'tibia']:
    for name in variants:
        sel = [r for r in rows if r[0] == name and r[1] == bone]
        m = lambda k: np.median([r[3][k] for r in sel])  # noqa: E731
        one = {r[4]: r[2] for r in rows if r[0] == "1 view" and r[1] == bone}
        ratio = f"{np.median([r[2] / one[r[4]] for r in sel]):.2f}x" if name != "1 view" else ""
        print(f"| {bone} | {name} | {len(sel)} | {np.median([r[2] for r in sel]):.1f} | {sum(r[3]['mtre_mm'] < 1 for r in sel)}/{len(sel)} "
              f"| {m('mtre_mm'):.3f} | {m('in_plane_mm'):.3f} | {m('out_of_plane_mm'):.3f} | {m('rotation_deg'):.3f} | {ratio} |")
