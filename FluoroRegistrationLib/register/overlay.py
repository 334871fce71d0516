"""Pictures that show a fit: each registered bone's projected outline drawn over the frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..geometry import Camera
from ..render import project_label

COLOURS = ("tab:red", "tab:green", "tab:orange", "tab:cyan", "tab:purple", "tab:olive")


def draw_overlay(path, frame_display: np.ndarray, camera: Camera, bones: dict, poses: dict[str, torch.Tensor],
                 initial: dict[str, torch.Tensor] | None = None, title: str = "") -> None:
    """Save a PNG of the frame (H, W) with each bone's outline at ``poses`` (solid) and, if given,
    at ``initial`` (dashed). Outlines are the borders of the bones' projected masks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = frame_display.shape
    fig, ax = plt.subplots(figsize=(6, 6 * h / w))
    ax.imshow(frame_display, cmap="gray")
    with torch.no_grad():
        for i, (name, bone) in enumerate(bones.items()):
            colour = COLOURS[i % len(COLOURS)]
            for which, style in ((initial, "--"), (poses, "-")):
                if which is None or name not in which:
                    continue
                mask = project_label(bone, camera, which[name].to(bone.dtype))[0, 0].numpy() > 0.5
                if mask.any():
                    ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1.2, linestyles=style)
            ax.plot([], [], color=colour, label=name)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "registered outlines (solid); initial (dashed)", fontsize=9)
    ax.set_axis_off()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
