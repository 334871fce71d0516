"""Training throughput of the segmenter: seconds per batch for each way of running a step.

    .venv/bin/python benchmarks/segment_throughput.py [--steps 12] [--threads 2]

The default training's batches (8 frames of 256 x 256 with ``mixed`` clutter, simulated on the fly
from the phantom, MobileNetV3 DeepLabv3 with the decoder) timed as ``train_segmenter`` runs them:
fp32 or bf16 autocast, contiguous or channels-last, the next batch simulated in the same thread or
in a prefetching one. Each mode starts from the same weights and generator, runs two warm-up steps,
then ``--steps`` timed ones; run it on an idle machine. Prints a table (median seconds per step,
steps in the 27-minute budget) and whether this CPU computes bf16 natively.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = [  # (name, precision, channels_last, prefetch)
    ("fp32, contiguous, no prefetch (before)", "fp32", False, False),
    ("fp32, channels-last", "fp32", True, False),
    ("bf16 autocast, channels-last", "bf16", True, False),
    ("fp32, channels-last, prefetch", "fp32", True, True),
    ("bf16 autocast, channels-last, prefetch (default)", "bf16", True, True),
]


def main(argv=None) -> None:
    import torch
    from tqdm import tqdm

    import tempfile

    from FluoroRegistrationLib.phantom import make_knee_phantom, write_phantom
    from FluoroRegistrationLib.segment import BoneSegmenter, TrainOptions
    from FluoroRegistrationLib.segment.data import DEFAULT_CAMERA, PoseBank, make_batch, training_simulator
    from FluoroRegistrationLib.segment.train import _Prefetch, resolve_precision, segmentation_loss
    from FluoroRegistrationLib.volume import load_ct, load_labels, read_label_names

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    opts = TrainOptions()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_phantom(make_knee_phantom(spacing_mm=1.0, flexion_deg=0.0, seed=0), Path(tmp) / "phantom")
        ct = load_ct(paths["ct"])
        labels = load_labels(paths["labels"], ct)
        names = read_label_names(paths["labels_json"])
    bones = list(opts.bones)
    sim, centre = training_simulator(ct, labels, names, bones)
    bank = PoseBank(sim, centre, DEFAULT_CAMERA, opts.size, 16, torch.Generator().manual_seed(0),
                    opts.flexion_range, opts.clutter)
    with tqdm(total=16, desc="simulate poses", unit="pose") as bar:
        bank.fill(lambda: bar.update())
    torch.manual_seed(0)
    start = BoneSegmenter(opts.arch, bones, opts.decoder)
    rows = []
    for name, precision, channels_last, prefetch in MODES:
        model = copy.deepcopy(start)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=fmt).train()
        opt = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
        g = torch.Generator().manual_seed(1)
        total = args.steps + 2
        batches = _Prefetch(lambda: make_batch(sim, bank, bones, opts.batch, g), prefetch)
        times = []
        try:
            for step in tqdm(range(total), desc=name, unit="batch"):
                t0 = time.perf_counter()
                x, y = batches.next(more=step + 1 < total)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    logits = model(x.contiguous(memory_format=fmt))
                loss = segmentation_loss(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                times.append(time.perf_counter() - t0)
        finally:
            batches.close()
        rows.append((name, statistics.median(times[2:]), loss.item()))
    base = rows[0][1]
    print(f"\nbf16 computed natively here: {resolve_precision('auto') == 'bf16'}; {args.threads} threads; "
          f"batch {opts.batch} x {opts.size} px, {args.steps} timed steps per mode\n")
    print("| mode | s per batch (median) | speed-up | batches in 27 min |")
    print("|---|---|---|---|")
    for name, s, _ in rows:
        print(f"| {name} | {s:.2f} | {base / s:.2f}x | {int(27 * 60 / s)} |")


if __name__ == "__main__":
    main()
