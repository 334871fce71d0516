"""Seconds per bone, one view vs two views (default) vs two views without the 0.35 mm level, on a simulated biplane folder (/tmp/bp: `fluororeg simulate --out /tmp/bp --frames 2 --view-angle 60 --flexion-range 10,80 --seed 3`), same starts, 2 threads, idle machine."""
import sys, time, torch
from FluoroRegistrationLib.files import read_poses
from FluoroRegistrationLib.register import Registration, RegistrationConfig, pose_errors
from FluoroRegistrationLib.geometry import CentredParameterization, as_rig, Rig
from FluoroRegistrationLib.evaluate.starts import random_offset
torch.set_num_threads(2)
root = sys.argv[1] if len(sys.argv) > 1 else '/tmp/bp'  # the folder the docstring's command writes
rig = as_rig(f'{root}/rig_true.json')
variants = {"1 view": (1, None), "2 views": (2, None),
            "2 views, 2.8-0.7 mm": (2, {"pyramid": {"pixel_mm": [2.8, 1.4, 0.7], "iterations": [60, 50, 40]}})}
regs = {}
g = torch.Generator().manual_seed(5)
rows = []
for key in ['0000', '0001']:
    truth = read_poses(f'{root}/poses/{key}.json')
    for bone in ['femur', 'tibia']:
        for name, (n, cfg) in variants.items():
            if name not in regs:
                regs[name] = Registration.from_ct(f'{root}/phantom/ct.nii.gz', f'{root}/phantom/labels.nii.gz', ['femur', 'tibia'], config=cfg)
        reg = regs["1 view"]
        vol = reg.volumes[bone]
        start = {bone: CentredParameterization(vol.centroid, truth[bone]).pose(random_offset(g, 10.0, 10.0))}
        for name, (n, cfg) in variants.items():
            r = Registration({bone: regs[name].volumes[bone]}, regs[name].config)
            frames = [f'{root}/frames/{key}.png', f'{root}/views/B/frames/{key}.png'][:n]
            masks = [{bone: f'{root}/masks/{key}_{bone}.png'}, {bone: f'{root}/views/B/masks/{key}_{bone}.png'}][:n]
            res = r.register(frames if n > 1 else frames[0], Rig(rig.views[:n]), start, masks=masks if n > 1 else masks[0]).bones[bone]
            e = pose_errors(res.camera_from_volume, truth[bone], vol.centroid, vol.points)
            rows.append((name, key, bone, res.seconds, e, res.depth_sd_mm))
            print(f"{name:22s} {key} {bone}: {res.seconds:5.1f} s mTRE {e['mtre_mm']:.3f} in {e['in_plane_mm']:.3f} out {e['out_of_plane_mm']:.3f} rot {e['rotation_deg']:.3f} sd {res.depth_sd_mm:.3f}", flush=True)
import numpy as np
print()
for name in variants:
    sel = [r for r in rows if r[0] == name]
    print(f"| {name} | {np.median([r[3] for r in sel]):.1f} s | mTRE {np.median([r[4]['mtre_mm'] for r in sel]):.3f} | out {np.median([r[4]['out_of_plane_mm'] for r in sel]):.3f} | in {np.median([r[4]['in_plane_mm'] for r in sel]):.3f} | rot {np.median([r[4]['rotation_deg'] for r in sel]):.3f} |")
