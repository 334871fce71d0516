"""What one lateral view shows of a turn across the beam: the similarity at the finest level against
a turn about the weakest axis across the beam (register/depth.py's tilt grid), from the true pose,
for the femoral component and the tibial tray on three frames of the implant benchmark; writes
docs/implant_tilt.png and prints each curve and tilt sd.

    .venv/bin/python benchmarks/implant_tilt.py [FRAMES_FOLDER]   (default implants_out/frames_sim,
                                                                   from benchmarks/implants.py)
"""
import math
import sys
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from FluoroRegistrationLib.register.api import Registration, prepare_frame  # noqa: E402
from FluoroRegistrationLib.register.pipeline import ViewImage, _bone_view, _BoneRegistration  # noqa: E402
from FluoroRegistrationLib.register.config import RegistrationConfig  # noqa: E402
from FluoroRegistrationLib.register.depth import tilt_grid, tilt_sd_deg, weighed_pixels  # noqa: E402
from FluoroRegistrationLib.implant.body import implant_body  # noqa: E402
from FluoroRegistrationLib.geometry import as_rig  # noqa: E402
from FluoroRegistrationLib.files import read_poses  # noqa: E402

COMPONENTS = (("femoral", "cobalt_chrome", "tab:blue"), ("tray", "titanium_alloy", "tab:red"))


def finest_objective(folder: str, frame: str, comp: str, material: str):
    """The component's finest-level loss about its true pose in view A (the registration's own)."""
    truth = read_poses(f"{folder}/poses/{frame}.json")
    view = as_rig(f"{folder}/calib_true.json").views[0]
    body = implant_body(f"{folder}/phantom/{comp}.stl", comp, material)
    prepared = prepare_frame(f"{folder}/frames/{frame}.png", view.camera)
    masks = Registration({comp: body}).masks({comp: f"{folder}/masks/{frame}_{comp}.png"}, prepared, view.camera)
    image = ViewImage(view.camera, prepared.image, masks, prepared.field)
    job = _BoneRegistration(body, [_bone_view(image, comp, True)], truth[comp], RegistrationConfig(), lambda *a: None)
    return job.level_objective(len(job.levels) - 1)


def curve(objective, degrees: torch.Tensor):
    """(tilt sd deg, similarities (K,)) along the weakest axis across the beam, at ``degrees`` from the truth."""
    at = torch.zeros(6, dtype=torch.float64)
    sd, direction = tilt_sd_deg(*tilt_grid(objective, at), weighed_pixels(objective, at))
    xs = torch.zeros(len(degrees), 6, dtype=torch.float64)
    xs[:, :2] = torch.deg2rad(degrees)[:, None] * direction[None]
    with torch.no_grad():
        return sd, 1 - objective(xs).double()


def main(folder: str) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    fig.suptitle("one lateral view: similarity against a turn about the weakest axis across the beam, "
                 "from the true pose", fontsize=10)
    degrees = torch.linspace(-10, 10, 21, dtype=torch.float64)
    for ax, frame in zip(axes, ["0000", "0001", "0002"]):
        for comp, material, colour in COMPONENTS:
            sd, similarity = curve(finest_objective(folder, frame, comp, material), degrees)
            label = f"{comp} (tilt sd {'none' if not math.isfinite(sd) else f'{sd:.2f} deg'})"
            ax.plot(degrees.numpy(), similarity.numpy(), color=colour, marker="o", ms=3, label=label)
            print(frame, comp, f"tilt sd {sd:.3f} deg", "similarity at -10, -5, 0, 5, 10 deg:",
                  [round(float(v), 4) for v in similarity[::5]])
        ax.set_title(f"frame {frame}", fontsize=10)
        ax.set_xlabel("turn from the true pose (deg)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("similarity, finest level")
    fig.tight_layout()
    out = Path(__file__).resolve().parents[1] / "docs" / "implant_tilt.png"
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "implants_out/frames_sim")
