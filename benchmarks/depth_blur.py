"""What moves the depth along the beam at a coarse detector: each realism effect switched off, and the
DRR blurred to match the frame. For a folder the validation zoo wrote (``fluororeg zoo``), the frames
are re-drawn from the member's full CT with the medium preset less one effect (the same line
integrals, the same noise seed), and the finest level's loss is evaluated at the true pose moved
along the camera's z axis (-6..+6 mm; the minimum from a parabola through its neighbours), with the
true mask, the DRR blurred by a Gaussian of each ``--sigmas`` (detector pixels; 0: as registration
draws it).

    .venv/bin/python benchmarks/depth_blur.py --folder /tmp/zoo_all/knee-1mm/256px-1.35mm-sdd1020 \\
        [--variants orig,medium,nonoise,noblur,nodist,noscatter,noheel,clean] [--sigmas 0,0.6,0.9,1.2] [--bones femur,tibia]

Prints one line per variant, frame and bone: the depth of the minimum (mm, + away from the source)
for each sigma.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402
from mask_depth import depth_of_minimum  # noqa: E402

from FluoroRegistrationLib.geometry import Camera  # noqa: E402
from FluoroRegistrationLib.register import Registration, prepare_frame, similarity_objective  # noqa: E402
from FluoroRegistrationLib.simulate.detector import apply_blur  # noqa: E402
from FluoroRegistrationLib.simulate.frames import PRESETS, FrameSimulator  # noqa: E402
from FluoroRegistrationLib.simulate.writer import _write_frame  # noqa: E402
from FluoroRegistrationLib.volume import load_ct, load_labels, read_label_names  # noqa: E402

OFF = {"medium": {}, "nonoise": dict(photons_per_pixel=None, electronic_noise=0.0),
       "noblur": dict(focal_spot_mm=0.0, detector_blur_px=0.0), "nodist": dict(distortion_k=0.0),
       "noscatter": dict(scatter_to_primary=0.0), "noheel": dict(heel=0.0, vignetting=0.0)}
OFF["clean"] = {k: v for d in OFF.values() for k, v in d.items()}
SHIFTS = torch.arange(-6, 6.5, 1.0, dtype=torch.float64)


def variant_frames(folder: Path, poses: dict, camera: Camera, variants: list[str], out: Path) -> dict:
    """{variant: {key: (frame path, camera)}}: the zoo's own frames for ``orig``, else re-drawn."""
    frames = {"orig": {k: (folder / "frames" / f"{k}.png", camera) for k in poses}} if "orig" in variants else {}
    drawn = [v for v in variants if v != "orig"]
    if not drawn:
        return frames
    member = folder.parent
    ct = load_ct(member / "full" / "ct.nii.gz")
    names = read_label_names(member / "full" / "labels.json")
    sim = FrameSimulator(ct, load_labels(member / "full" / "labels.nii.gz", ct), names, "medium")
    integrals = {k: sim.line_integrals(camera, {b: torch.tensor(v["camera_from_volume"], dtype=torch.float64)
                                                for b, v in poses[k].items()}) for k in poses}
    medium = PRESETS["medium"]
    for v in drawn:
        realism = dataclasses.replace(medium, detector=dataclasses.replace(medium.detector, **OFF[v]))
        cam = dataclasses.replace(camera, distortion_k=realism.detector.distortion_k)
        (out / v / "frames").mkdir(parents=True, exist_ok=True)
        (out / v / "masks").mkdir(exist_ok=True)
        for k in poses:
            _write_frame(out / v, k, sim.detect(cam, integrals[k], torch.Generator().manual_seed(5), realism), names)
        frames[v] = {k: (out / v / "frames" / f"{k}.png", cam) for k in poses}
    return frames


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", required=True, type=Path, help="a zoo member's geometry folder")
    ap.add_argument("--variants", default="orig,medium,noblur,clean")
    ap.add_argument("--sigmas", default="0,0.6,0.9")
    ap.add_argument("--bones", default=None, help="comma-separated (default: the ones the zoo registered there)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    folder = args.folder
    camera = Camera.from_json(folder / "calib_true.json")
    poses = json.loads((folder / "poses.json").read_text())
    registered = folder / "runs" / "config.yaml"
    bones = args.bones.split(",") if args.bones else \
        (yaml.safe_load(registered.read_text())["bones"] if registered.exists() else sorted(next(iter(poses.values()))))
    reg = Registration.from_ct(folder / "phantom" / "ct.nii.gz", folder / "phantom" / "labels.nii.gz", bones=bones)
    sigmas = [float(s) for s in args.sigmas.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        frames = variant_frames(folder, poses, camera, args.variants.split(","), Path(tmp))
        print(f"| variant | frame | bone | {' | '.join(f'sigma {s:g} px' for s in sigmas)} |")
        print("|---|---|---|" + "---|" * len(sigmas))
        for variant, per_key in frames.items():
            for key, (path, cam) in sorted(per_key.items()):
                frame = prepare_frame(path, cam)
                for bone in bones:
                    truth = torch.tensor(poses[key][bone]["camera_from_volume"], dtype=torch.float64)
                    mask = torch.from_numpy(np.array(Image.open(folder / "masks" / f"{key}_{bone}.png")) > 0)
                    depths = []
                    for s in sigmas:
                        objective = similarity_objective(reg.volumes[bone], frame.image, cam, truth,
                                                         mask=mask[None, None], field=frame.field)
                        # the DRR blurred as the simulator blurs a frame (detector.apply_blur)
                        objective.appearance = (lambda drr, s=s: apply_blur(drr, s)) if s > 0 else None
                        depths.append(depth_of_minimum(objective, SHIFTS))
                    print(f"| {variant} | {key} | {bone} | " + " | ".join(f"{d:+.2f}" for d in depths) + " |", flush=True)


if __name__ == "__main__":
    main()
