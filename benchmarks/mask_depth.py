"""Where the registration's loss puts the depth along the beam, per mask and dilation: the loss is
evaluated at the true pose moved along the camera's z axis (-4..+4 mm, a parabola through the three
lowest samples), at each pyramid level, with no mask, the true mask and a predicted one.

    .venv/bin/python benchmarks/mask_depth.py --frames OUT/register_high/frames_sim --model OUT/model \
        [--bone tibia] [--dilations 3.6,10.8] [--levels 1.4,0.35]

``--frames`` is a folder the evaluation harness simulated (``benchmarks/segment.py`` writes one per
realism). Prints a table: depth of the minimum (mm; negative = nearer the source) per frame.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def depth_of_minimum(objective, offsets) -> float:
    """Depth (mm) of the loss's minimum along z: the sampled minimum refined by the parabola's vertex
    (as the registration's ``line_search`` does, but reported without re-evaluating the vertex)."""
    import torch

    from FluoroRegistrationLib.register.optimize import parabola_vertex

    x = torch.zeros(len(offsets), 6, dtype=torch.float64)
    x[:, 5] = offsets
    with torch.no_grad():
        loss = objective(x)
    i = int(torch.argmin(loss))
    vertex = parabola_vertex(*loss[i - 1:i + 2]) if 0 < i < len(loss) - 1 else None
    return float(offsets[i]) + (vertex or 0.0) * float(offsets[1] - offsets[0])


def main() -> None:
    import torch

    from FluoroRegistrationLib.evaluate.runner import _frame, _predicted, _scene
    from FluoroRegistrationLib.register import RegistrationConfig
    from FluoroRegistrationLib.register.pipeline import similarity_objective

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", required=True, help="a harness frames folder (frames_sim)")
    parser.add_argument("--model", required=True, help="segmentation model folder")
    parser.add_argument("--bone", default="tibia")
    parser.add_argument("--dilations", default="3.6,10.8", help="mask dilations to compare (mm at the bone)")
    parser.add_argument("--levels", default="1.4,0.35", help="levels to compare (pixel size at the bone, mm)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bones = ("femur", "tibia")
    folder = str(Path(args.frames))
    volumes, rig = _scene(folder, bones, "true")
    camera = rig.cameras[0]  # the first view: these read single-plane frames
    keys = sorted(p.stem for p in (Path(folder) / "frames").glob("*.png"))
    dilations = [float(v) for v in args.dilations.split(",")]
    levels = [float(v) for v in args.levels.split(",")]
    offsets = torch.linspace(-4, 4, 17, dtype=torch.float64)
    cases = [("none", 0.0)] + [(m, d) for m in ("truth", "predicted") for d in dilations]
    print(f"Depth of the loss's minimum along the beam at the true {args.bone} pose (mm; negative = nearer "
          f"the source), `{' '.join(sys.argv)}`\n")
    print("| frame | mask | dilation mm | " + " | ".join(f"{p:g} mm pixels" for p in levels) + " |")
    print("|---|---|---|" + "---|" * len(levels))
    for key in keys:
        frame, truth, masks = _frame(folder, key, "true", bones)
        predicted = _predicted(folder, key, args.model, bones)
        for name, dilation in cases:
            mask = {"none": None, "truth": masks[args.bone], "predicted": predicted[args.bone]}[name]
            mask = None if mask is None else mask[None, None]
            config = RegistrationConfig.from_dict({"masks": {"dilation_mm": dilation}})
            row = [depth_of_minimum(similarity_objective(volumes[args.bone], frame.image, camera, truth[args.bone],
                                                         mask, frame.field, config, pixel_mm=p, fine=False), offsets)
                   for p in levels]
            print(f"| {key} | {name} | {'-' if mask is None else dilation} | "
                  + " | ".join(f"{v:+.2f}" for v in row) + " |", flush=True)


if __name__ == "__main__":
    main()
