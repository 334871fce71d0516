"""Segmentation benchmark: train the default model on the phantom, score it on held-out frames, time
prediction, and (``--register``) compare registration with predicted, ground-truth and no masks.

    .venv/bin/python benchmarks/segment.py [--out seg_bench] [--skip-train] [--heldout 12] [--register]

Held-out frames: ``fluororeg simulate`` with another seed and the ``high`` realism preset (the
strongest: 500 quanta per pixel, scatter-to-primary 0.8, 8 bits, 5 % distortion), drawn by the
exact (Siddon) renderer at 512 x 512, where training used the fast trilinear renderer at 256 x 256;
scored twice: as they are, and with heavy clutter (the other leg, metal, a table edge in every
frame: the same knees and C-arms). Writes ``benchmarks/SEGMENT_RESULTS.md`` and
``Resources/segment_predictions.png``.

``--realism R`` / ``--clutter C``: only the registration comparison, on frames of that realism and
clutter (appended to SEGMENT_RESULTS.md as a section of its own).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def train(out: Path) -> dict:
    from FluoroRegistrationLib.phantom import make_knee_phantom, write_phantom
    from FluoroRegistrationLib.segment import TrainOptions, train_segmenter
    from FluoroRegistrationLib.volume import load_ct, load_labels, read_label_names

    paths = write_phantom(make_knee_phantom(spacing_mm=1.0, flexion_deg=0.0, seed=0), out / "phantom")
    ct = load_ct(paths["ct"])
    labels = load_labels(paths["labels"], ct)
    return train_segmenter(ct, labels, read_label_names(paths["labels_json"]), out / "model", TrainOptions())


def heldout(out: Path, frames: int, seed: int, clutter: str | None = None) -> Path:
    from FluoroRegistrationLib.simulate.writer import simulate_folder

    folder = out / ("heldout" if clutter is None else f"heldout_{clutter}")
    if not (folder / "poses.json").is_file():
        ph = out / "phantom"
        simulate_folder(folder, ph / "ct.nii.gz", ph / "labels.nii.gz", ph / "labels.json", frames=frames, seed=seed,
                        realism="high", reference_flexion_deg=0.0, flexion_range=(0.0, 120.0), clutter=clutter)
    return folder


def score(model_dir: Path, folder: Path) -> tuple[list[dict], dict]:
    import torch

    from FluoroRegistrationLib.frame import read_frame_array
    from FluoroRegistrationLib.geometry import Camera
    from FluoroRegistrationLib.segment import dice, hd95, load_model, predict_masks
    from FluoroRegistrationLib.simulate.writer import read_truth_mask

    model, info = load_model(model_dir)
    camera = Camera.from_json(folder / "calib.json")
    rows, shown = [], {}
    keys = sorted(json.loads((folder / "poses.json").read_text()))
    for key in keys:
        raw = read_frame_array(folder / "frames" / f"{key}.png")
        pred = predict_masks(model, info, raw)
        for bone in info.bones:
            truth = read_truth_mask(folder, key, bone).numpy()
            rows.append({"frame": key, "bone": bone, "dice": dice(pred[bone], truth),
                         "hd95_px": hd95(pred[bone], truth), "hd95_mm": hd95(pred[bone], truth, camera.row_spacing_mm)})
        shown[key] = (raw, pred)
    # prediction time per 256 x 256 frame, warm (the first call builds kernels)
    raw256 = torch.nn.functional.interpolate(torch.from_numpy(read_frame_array(folder / "frames" / f"{keys[0]}.png"))
                                             .double()[None, None], size=(256, 256), mode="area")[0, 0].numpy()
    predict_masks(model, info, raw256)
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        predict_masks(model, info, raw256)
        times.append(time.perf_counter() - t0)
    return rows, {"shown": shown, "predict_s_median": float(np.median(times)), "predict_s_p90": float(np.percentile(times, 90)),
                  "threads": torch.get_num_threads()}


def figure(sets: list[tuple[str, Path, dict]], path: Path, count: int = 4) -> None:
    """One row per held-out set ((title, folder, shown)): frames with predicted and true outlines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from FluoroRegistrationLib.segment.predict import COLOURS
    from FluoroRegistrationLib.simulate.writer import read_truth_mask

    fig, axes = plt.subplots(len(sets), count, figsize=(3.3 * count, 3.4 * len(sets)), squeeze=False)
    for row, (title, folder, shown) in zip(axes, sets):
        for ax, key in zip(row, list(shown)[:count]):
            raw, pred = shown[key]
            ax.imshow(raw, cmap="gray")
            for bone, m in pred.items():
                truth = read_truth_mask(folder, key, bone).numpy()
                ax.contour(truth, levels=[0.5], colors="white", linewidths=1.6)
                ax.contour(m, levels=[0.5], colors=[np.array(COLOURS[bone]) / 255], linewidths=1.0)
            ax.set_title(f"{title} {key}", fontsize=9)
            ax.axis("off")
    fig.suptitle("predicted masks (femur red, tibia blue) over the truth (white); high-realism held-out frames",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def score_table(rows: list[dict], bones) -> list[str]:
    lines = ["| bone | frames | Dice mean | Dice min | HD95 px (median / max) | HD95 mm at the detector (median) |",
             "|---|---|---|---|---|---|"]
    for bone in bones:
        r = [x for x in rows if x["bone"] == bone]
        d = np.array([x["dice"] for x in r])
        h = np.array([x["hd95_px"] for x in r])
        hm = np.array([x["hd95_mm"] for x in r])
        lines.append(f"| {bone} | {len(r)} | {d.mean():.4f} | {d.min():.4f} | {np.median(h):.1f} / {h.max():.1f} | "
                     f"{np.median(hm):.2f} |")
    return lines


def register_comparison(out: Path, workers: int, realism: str | None = None, clutter: str | None = None) -> str:
    """The registration comparison of ``segment_study.yaml`` (its frames' realism and clutter, or
    ``realism`` / ``clutter``)."""
    import yaml

    from FluoroRegistrationLib.evaluate import load_experiment, run_experiment, write_report

    config = yaml.safe_load((ROOT / "benchmarks" / "segment_study.yaml").read_text())
    config["conditions"] = [c if c.get("mask") != "predicted" else {**c, "model": str(out / "model")}
                            for c in config["conditions"]]
    sim = config["frames"]["simulate"]
    sim["realism"] = realism or sim.get("realism", "medium")
    if clutter not in (None, "none"):
        sim["clutter"] = clutter
    default = realism is None and clutter in (None, "none")
    folder = out / ("register" if default else f"register_{sim['realism']}"
                    + ("" if clutter in (None, "none") else f"_{clutter}"))
    config["name"] = config["name"].replace("medium realism", f"{sim['realism']} realism"
                                            + ("" if clutter in (None, "none") else f", {clutter} clutter"))
    path = out / f"{folder.name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    exp = load_experiment(path)
    t0 = time.perf_counter()
    rows = run_experiment(exp, folder, workers=workers)
    wall = time.perf_counter() - t0
    write_report(exp, folder, rows)
    picture = "segment_registration.png" if default else f"segment_{folder.name}.png"
    shutil.copy(folder / "success_vs_initial_mtre.png", ROOT / "Resources" / picture)
    what = "" if default else f" with {sim['realism']}-realism frames" + (
        "" if clutter in (None, "none") else f" and {clutter} clutter")
    return (f"Registration with predicted vs ground-truth vs no masks (`benchmarks/segment_study.yaml`"
            f"{what}, {len(rows)} runs, {wall / 60:.1f} min on {workers} Dask workers):\n\n"
            + (folder / "summary.md").read_text())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="seg_bench")
    parser.add_argument("--skip-train", action="store_true", help="reuse OUT/model")
    parser.add_argument("--heldout", type=int, default=12, help="held-out frames (default 12)")
    parser.add_argument("--seed", type=int, default=101, help="held-out seed (training used 0)")
    parser.add_argument("--register", action="store_true", help="also run the registration comparison")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--realism", choices=["low", "medium", "high"],
                        help="run only the registration comparison, on frames of this realism instead of the "
                             "config's (needs OUT/model; into OUT/register_REALISM[_CLUTTER]; appended to "
                             "SEGMENT_RESULTS.md, which a run without --realism or --clutter rewrites)")
    parser.add_argument("--clutter", choices=["none", "mixed", "heavy"],
                        help="run only the registration comparison, on frames with this clutter (the other leg, "
                             "metal, a table edge; as --realism)")
    args = parser.parse_args(argv)
    if args.clutter == "none":
        args.clutter = None  # the config's frames, as without the flag
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.realism is not None or args.clutter is not None:  # only the registration comparison
        if not (out / "model" / "model.json").is_file():
            parser.error(f"--realism / --clutter need a trained model in {out / 'model'}; run without them first")
        section = register_comparison(out, args.workers, args.realism, args.clutter)
        results = ROOT / "benchmarks" / "SEGMENT_RESULTS.md"
        realism = args.realism or "medium"
        heading = f"{realism}-realism frames" + ("" if args.clutter in (None, "none") else f" with {args.clutter} clutter")
        marker = f"\n## Registration on {heading}\n"
        old = results.read_text() if results.is_file() else ""
        kept, _, rest = old.partition(marker)
        later = rest[rest.find("\n## "):] if "\n## " in rest else ""  # sections after this one stay
        flags = (f" --realism {args.realism}" if args.realism else "") + (f" --clutter {args.clutter}" if args.clutter else "")
        results.write_text(kept.rstrip("\n") + "\n" + marker + f"\nPrinted by `.venv/bin/python benchmarks/segment.py "
                           f"--out {out}{flags}`.\n\n" + section.rstrip("\n") + "\n" + later)
        print(section)
        return
    if not args.skip_train or not (out / "model" / "model.json").is_file():
        train(out)
    info = json.loads((out / "model" / "model.json").read_text())
    sets, tables, all_rows, extra = [], [], [], None
    for clutter, title in ((None, "held-out"), ("heavy", "held-out, heavy clutter")):
        folder = heldout(out, args.heldout, args.seed, clutter)
        rows, scored = score(out / "model", folder)
        extra = extra or scored
        sets.append((title, folder, scored["shown"]))
        tables.append((clutter, score_table(rows, info["bones"])))
        all_rows += [{**r, "clutter": clutter or "none"} for r in rows]
    figure(sets, ROOT / "Resources" / "segment_predictions.png")
    shutil.copy(out / "model" / "training_curve.png", ROOT / "Resources" / "segment_training_curve.png")
    t = info["training"]
    clutter_trained = t.get("options", {}).get("clutter")
    text = (f"Printed by `.venv/bin/python benchmarks/segment.py{' --register' if args.register else ''}`.\n\n"
            f"Model: {info['arch']}, input {info['size']} px, bones {', '.join(info['bones'])}; trained from scratch on "
            f"frames simulated from the phantom (clutter: {clutter_trained or 'none'}) in {t['seconds'] / 60:.1f} min "
            f"(best epoch {t['best_epoch']}, validation Dice "
            + ", ".join(f"{b} {v:.4f}" for b, v in t["val_dice"].items()) + ").\n\n")
    for clutter, lines in tables:
        text += (f"Held-out: {args.heldout} frames (seed {args.seed}, realism high, exact renderer, 512 x 512"
                 + (")" if clutter is None else f", {clutter} clutter: the other leg, metal and a table edge in "
                    "every frame)") + ":\n\n" + "\n".join(lines) + "\n\n")
    text += (f"Prediction of a 256 x 256 frame on the CPU ({extra['threads']} threads, warm): median "
             f"{extra['predict_s_median']:.3f} s, p90 {extra['predict_s_p90']:.3f} s.\n")
    if args.register:
        text += "\n" + register_comparison(out, args.workers)
    (ROOT / "benchmarks" / "SEGMENT_RESULTS.md").write_text(text)
    (out / "heldout_scores.json").write_text(json.dumps(all_rows, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
