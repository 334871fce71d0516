"""Training the bone segmenter on frames simulated from a CT (see ``data.py``).

Loss: binary cross-entropy on every channel (background = no bone) plus a soft Dice loss on each
bone channel, AdamW with a one-cycle learning rate. After each epoch: the Dice per bone on a fixed
validation set (another seed, stronger degradations, no augmentation), the curve plotted, and the
best epoch's weights kept in ``OUT/model.safetensors`` with ``OUT/model.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import FluoroRegError
from ..simulate.clutter import get_clutter
from .data import PoseBank, fixed_set, make_batch, read_labelled_folder, training_simulator
from .metrics import dice
from .model import ARCHITECTURES, BoneSegmenter, ModelInfo, init_from, save_model


@dataclass
class TrainOptions:
    """Defaults: a CPU run of about 27 minutes on 2 cores for the phantom (README): bf16 where the
    CPU computes it natively, with 75 batches per epoch (26.3 min measured), else fp32 with 60
    (27.0 min measured); ``steps_per_epoch=None`` picks by the resolved precision."""

    bones: tuple = ("femur", "tibia")
    arch: str = ARCHITECTURES[0]
    decoder: bool = True     # the stride-8 decoder on MobileNetV3 (see BoneSegmenter)
    size: int = 256
    epochs: int = 16
    steps_per_epoch: int | None = None  # None: DEFAULT_STEPS of the resolved precision
    batch: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    bank: int = 160          # poses whose line integrals are kept
    renew: int = 24          # poses replaced after each epoch
    val_frames: int = 24
    val_strength: float = 1.5
    seed: int = 0
    init: str | None = None  # weights to fine-tune from
    labelled: str | None = None  # a folder of the user's labelled frames, mixed in
    labelled_fraction: float = 0.25
    flexion_range: tuple = (0.0, 130.0)
    clutter: str | None = "mixed"  # other leg, metal, table edge in the frames (simulate/clutter.py)
    threads: int | None = None
    precision: str = "auto"  # "bf16": autocast, channels-last; "auto": bf16 where the CPU or GPU computes it natively
    prefetch: bool = True    # simulate the next batch in a thread while the network trains on this one

    def check(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise FluoroRegError(f"unknown architecture '{self.arch}'; choose one of {', '.join(ARCHITECTURES)}")
        if not (self.size >= 64 and self.size % 16 == 0):
            raise FluoroRegError(f"--size must be a multiple of 16 and >= 64, got {self.size}")
        for name in ("epochs", "steps_per_epoch", "batch", "bank", "val_frames"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise FluoroRegError(f"{name} must be >= 1, got {getattr(self, name)}")
        get_clutter(self.clutter)
        if self.precision not in PRECISIONS:
            raise FluoroRegError(f"unknown precision '{self.precision}'; choose one of {', '.join(PRECISIONS)}")
        if not self.bones:
            raise FluoroRegError("give at least one bone to segment (--bones femur,tibia)")


PRECISIONS = ("auto", "fp32", "bf16")
# batches per epoch when none are given: each fills about 27 minutes on 2 CPU cores (README)
DEFAULT_STEPS = {"bf16": 75, "fp32": 60}


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """"auto" -> "bf16" where it is computed natively (a CPU with AVX512-BF16 or AMX, a CUDA GPU
    with bf16 support), else "fp32"; other values as they are."""
    if precision != "auto":
        return precision
    if str(device).startswith("cuda"):
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return "bf16" if native else "fp32"


class _Prefetch:
    """Batches made one ahead in a thread (the simulator's torch work releases the GIL), so the
    network's step and the next batch's simulation overlap; batches come out in the order they
    were asked for, from the same generator, so a run is as reproducible as without it."""

    def __init__(self, make, enabled: bool):
        from concurrent.futures import ThreadPoolExecutor

        self.make, self.pool, self.pending = make, ThreadPoolExecutor(1) if enabled else None, None

    def next(self, more: bool):
        """The next batch; ``more``: another will be wanted after it (start making it now)."""
        batch = self.pending.result() if self.pending is not None else self.make()
        self.pending = self.pool.submit(self.make) if (more and self.pool is not None) else None
        return batch

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """logits (B, 1 + N, S, S), target (B, N, S, S) in {0, 1} -> BCE (all channels) + soft Dice (bones)."""
    background = 1.0 - target.amax(1, keepdim=True)
    full = torch.cat([background, target], 1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, full)
    p = torch.sigmoid(logits[:, 1:])
    inter = (p * target).sum((2, 3))
    soft_dice = (2 * inter + 1.0) / (p.sum((2, 3)) + target.sum((2, 3)) + 1.0)
    return bce + (1.0 - soft_dice).mean()


def validate(model: BoneSegmenter, inputs: torch.Tensor, targets: torch.Tensor, threshold: float = 0.5,
             chunk: int = 8) -> list[float]:
    """Mean Dice per bone over a validation set (inputs (V, 1, S, S), targets (V, N, S, S))."""
    model.eval()
    scores = []
    with torch.inference_mode():
        for i in range(0, len(inputs), chunk):
            pred = torch.sigmoid(model(inputs[i:i + chunk])[:, 1:]) > threshold
            for p, t in zip(pred.numpy(), targets[i:i + chunk].numpy() > 0.5):
                scores.append([dice(p[n], t[n]) for n in range(t.shape[0])])
    model.train()
    return np.mean(scores, 0).tolist()


def plot_curve(history: list[dict], bones, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(epochs, [h["loss"] for h in history], "k.-")
    a.set(xlabel="epoch", ylabel="training loss (BCE + soft Dice)", yscale="log")
    for n, bone in enumerate(bones):
        b.plot(epochs, [h["val_dice"][n] for h in history], ".-", label=bone)
    b.set(xlabel="epoch", ylabel="validation Dice", ylim=(max(0.0, min(min(h["val_dice"]) for h in history) - 0.05), 1))
    b.grid(alpha=0.3)
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train_segmenter(ct, labels, names, out, options: TrainOptions | None = None, camera=None,
                    progress: bool = True) -> dict:
    """Train a segmenter for ``options.bones`` on frames simulated from ``ct``/``labels``; writes the
    model folder ``out`` (weights, JSON, ``history.json``, ``training_curve.png``) and returns
    {"history", "seconds", "best_epoch", "val_dice"}."""
    from tqdm import tqdm

    from .data import DEFAULT_CAMERA

    options = options or TrainOptions()
    options.check()
    precision = resolve_precision(options.precision)
    options = replace(options, precision=precision,
                      steps_per_epoch=options.steps_per_epoch or DEFAULT_STEPS[precision])
    bones = list(options.bones)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if options.threads:
        torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    t_start = time.perf_counter()
    sim, centre = training_simulator(ct, labels, names, bones)
    camera = camera or DEFAULT_CAMERA
    g = torch.Generator().manual_seed(options.seed)
    g_val = torch.Generator().manual_seed(options.seed + 1_000_003)
    bank = PoseBank(sim, centre, camera, options.size, options.bank, g, options.flexion_range, options.clutter)
    val_bank = PoseBank(sim, centre, camera, options.size, options.val_frames, g_val, options.flexion_range,
                        options.clutter)
    with tqdm(total=options.bank + options.val_frames, desc="simulate poses", unit="pose",
              disable=not progress) as bar:
        bank.fill(lambda: bar.update())
        val_bank.fill(lambda: bar.update())
    val_x, val_y = fixed_set(sim, val_bank, bones, g_val, options.val_strength)
    labelled = read_labelled_folder(options.labelled, bones, options.size) if options.labelled else None

    model = BoneSegmenter(options.arch, bones, options.decoder)
    notes = {"precision": precision}
    if options.init:
        notes["init"] = options.init
        notes["init_not_copied"] = init_from(model, options.init)
    # bf16 runs channels-last (measured faster together, benchmarks/segment_throughput.py); fp32
    # keeps the default layout, so its training gives the weights it gave before
    layout = torch.channels_last if precision == "bf16" else torch.contiguous_format
    model = model.to(memory_format=layout)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    total = options.epochs * options.steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=options.lr, total_steps=total, pct_start=0.15)
    info = ModelInfo(arch=options.arch, bones=bones, size=options.size, decoder=model.decoder)
    history, best = [], -1.0
    for epoch in range(1, options.epochs + 1):
        losses = []
        bar = tqdm(range(options.steps_per_epoch), desc=f"epoch {epoch}/{options.epochs}", unit="batch",
                   disable=not progress)
        # within an epoch only: the bank is renewed (from the same generator) between epochs
        batches = _Prefetch(lambda: make_batch(sim, bank, bones, options.batch, g, labelled, options.labelled_fraction),
                            options.prefetch)
        try:
            for step in bar:
                x, y = batches.next(more=step + 1 < options.steps_per_epoch)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    logits = model(x.contiguous(memory_format=layout))
                loss = segmentation_loss(logits.float(), y)
                if not torch.isfinite(loss):
                    raise FluoroRegError("training diverged (loss is not finite); lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
                bar.set_postfix_str(f"loss {np.mean(losses[-10:]):.3f}")
        finally:
            batches.close()
        val = validate(model, val_x, val_y, info.threshold)
        record = {"epoch": epoch, "loss": float(np.mean(losses)), "val_dice": val,
                  "seconds": time.perf_counter() - t_start}
        history.append(record)
        if progress:
            print(f"epoch {epoch}: loss {record['loss']:.4f}, validation Dice "
                  + ", ".join(f"{b} {d:.4f}" for b, d in zip(bones, val)), flush=True)
        if float(np.mean(val)) > best:
            best = float(np.mean(val))
            info.training = {"best_epoch": epoch, "val_dice": dict(zip(bones, val)), **notes,
                             "options": {k: v for k, v in asdict(options).items()}}
            save_model(out, model, info)
        (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
        plot_curve(history, bones, out / "training_curve.png")
        if epoch < options.epochs:
            bank.renew(options.renew)
    seconds = time.perf_counter() - t_start
    info.training["seconds"] = seconds
    (out / "model.json").write_text(json.dumps(asdict(info), indent=1) + "\n")
    return {"history": history, "seconds": seconds, "best_epoch": info.training["best_epoch"],
            "val_dice": info.training["val_dice"]}


__all__ = ["DEFAULT_STEPS", "PRECISIONS", "TrainOptions", "plot_curve", "resolve_precision", "segmentation_loss", "train_segmenter", "validate"]
