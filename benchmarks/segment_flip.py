"""Dice of a segmentation model on simulated frame folders, predicted from each frame alone and
averaged with its mirror image (the default of ``predict_masks``).

    .venv/bin/python benchmarks/segment_flip.py MODEL_DIR FOLDER [FOLDER ...]

FOLDER: a ``fluororeg simulate`` folder (frames/, masks/, poses.json), e.g. an evaluation's
``frames_sim``. Prints one table: per folder and bone, mean and min Dice with each prediction, and
the mean over all folders' frames.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def scores(model_dir: Path, folders: list[Path]) -> list[dict]:
    """One row per folder, frame and bone: Dice without and with the mirror average."""
    from tqdm import tqdm

    from FluoroRegistrationLib.frame import read_frame_array
    from FluoroRegistrationLib.segment import dice, load_model, predict_masks
    from FluoroRegistrationLib.simulate.writer import read_truth_mask

    model, info = load_model(model_dir)
    rows = []
    for folder in folders:
        keys = sorted(json.loads((folder / "poses.json").read_text()))
        for key in tqdm(keys, desc=folder.name, unit="frame"):
            raw = read_frame_array(folder / "frames" / f"{key}.png")
            single = predict_masks(model, info, raw, flip=False)
            averaged = predict_masks(model, info, raw, flip=True)
            for bone in info.bones:
                truth = read_truth_mask(folder, key, bone).numpy()
                rows.append({"folder": str(folder), "frame": key, "bone": bone,
                             "single": dice(single[bone], truth), "mirror_averaged": dice(averaged[bone], truth)})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| frames | bone | n | Dice, one pass (mean / min) | Dice, mirror-averaged (mean / min) |",
             "|---|---|---|---|---|"]
    groups = sorted({(r["folder"], r["bone"]) for r in rows}) + sorted({("all", r["bone"]) for r in rows})
    for folder, bone in groups:
        sel = [r for r in rows if r["bone"] == bone and folder in ("all", r["folder"])]
        a, b = np.array([r["single"] for r in sel]), np.array([r["mirror_averaged"] for r in sel])
        lines.append(f"| {folder} | {bone} | {len(sel)} | {a.mean():.3f} / {a.min():.3f} | {b.mean():.3f} / {b.min():.3f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("folders", type=Path, nargs="+")
    args = parser.parse_args(argv)
    print(table(scores(args.model, args.folders)))


if __name__ == "__main__":
    main()
