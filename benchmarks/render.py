"""DRR renderer benchmark: forward and forward+backward times, peak memory, accuracy; ours beside DiffDRR.

    .venv/bin/python benchmarks/render.py              # ours, and DiffDRR if it is installed
    make bench-peer-deps                               # installs DiffDRR 0.6.1 for the comparison

Cases: the knee phantom's femur (its own crop, as registration renders it) and the whole phantom
(all tissue), at 128x128 and 256x256 detectors of the demo's lateral C-arm view, for 1 pose and a
batch of 16 poses (small random perturbations). Times are medians over ``--repeats`` runs after
warm-up; forward+backward is the gradient of a scalar loss with respect to the six pose
parameters of every pose. Peak memory is the rise of the process's peak resident memory (VmHWM, reset
before) during the first forward+backward above its resident memory before it (each case runs in
a fresh process, with the volume loaded). Accuracy is the relative L2 difference from the exact
integral of the same voxel model (our exact renderer, trilinear model, float64).

DiffDRR renders the same attenuation array at the same geometry (benchmarks/peer_diffdrr.py
checks its geometry against analytic truth); its Trilinear renderer runs at 500 points (its
default) and at ``n = ceil(box diagonal / voxel)`` points, about our one sample per voxel.
The benchmark never installs anything.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _setup(phantom_dir, volume_name, size, batch, dtype_name="float32"):
    import torch

    from FluoroRegistrationLib.demo import DEMO_CAMERA
    from FluoroRegistrationLib.files import read_poses
    from FluoroRegistrationLib.geometry import CentredParameterization
    from FluoroRegistrationLib.volume import bone_volumes, load_ct, load_labels, whole_volume

    ct = load_ct(Path(phantom_dir) / "ct.nii.gz")
    if volume_name == "knee":
        vol = whole_volume(ct)
    else:
        labels = load_labels(Path(phantom_dir) / "labels.nii.gz", ct)
        vol = bone_volumes(ct, labels, {"femur": 1}, ["femur"])["femur"]
    vol = vol.to(dtype=getattr(torch, dtype_name))
    camera = DEMO_CAMERA.resized(size, size)
    pose = read_poses(Path(phantom_dir) / "poses.json")["femur"]
    centre = vol.centroid if vol.centroid is not None else pose.new_zeros(3)
    par = CentredParameterization(centre, pose)
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.03] * 3 + [3.0] * 3, dtype=torch.float64)
    x0 = torch.randn(batch, 6, generator=g, dtype=torch.float64) * scale
    if batch == 1:
        x0.zero_()
    return vol, camera, par, x0


def _median_ms(fn, repeats):
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[len(times) // 2]


def _case(args):
    """Runs in a fresh process: (fwd ms, fwd+bwd ms, peak MB) for one renderer and case."""
    phantom_dir, renderer, volume_name, size, batch, repeats, threads, n_points = args
    import torch

    torch.set_num_threads(threads)
    vol, camera, par, x0 = _setup(phantom_dir, volume_name, size, batch)
    if renderer == "ours":
        from FluoroRegistrationLib.render import render

        def draw(T):
            return render(vol, camera, T.to(vol.mu.dtype))
    else:
        from peer_diffdrr import make_diffdrr_renderer

        D, H, W = vol.mu.shape
        spacing = vol.volume_from_index[:3, :3].norm(dim=0).tolist()
        origin = vol.volume_from_index[:3, 3].tolist()
        kind, _, pts = renderer.partition(":")
        peer = make_diffdrr_renderer(vol.mu, spacing, origin, sdd_mm=camera.sdd_mm, rows=camera.rows,
                                     cols=camera.cols, row_spacing_mm=camera.row_spacing_mm,
                                     col_spacing_mm=camera.col_spacing_mm,
                                     principal_point_colrow=(camera.u0, camera.v0), renderer=kind,
                                     n_points=int(pts or n_points))

        def draw(T):
            return peer(T.to(torch.float32))

    def forward():
        with torch.no_grad():
            return draw(par.pose(x0))

    def forward_backward():
        x = x0.clone().requires_grad_()
        draw(par.pose(x)).square().sum().backward()

    import gc

    gc.collect()
    base = _rss_mb()
    _reset_peak()
    forward_backward()  # the first call, before any warm-up: its allocations are the case's memory
    peak = _peak_mb() - base
    fwd = _median_ms(forward, repeats)
    fb = _median_ms(forward_backward, repeats)
    image = forward()[0, 0].double().numpy() if batch == 1 else None
    return fwd, fb, peak, image


def _exact(args):
    """Runs in a fresh process (so no idle threads of the main process disturb the timings)."""
    phantom_dir, volume_name, size, interpolation = args
    import torch

    from FluoroRegistrationLib.render import render

    vol, camera, par, x0 = _setup(phantom_dir, volume_name, size, 1, "float64")
    with torch.no_grad():
        return render(vol, camera, par.pose(x0), "exact", interpolation=interpolation)[0, 0].numpy()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--volumes", default="femur,knee")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spacing", type=float, default=1.0, help="phantom voxel size (mm)")
    parser.add_argument("--no-peer", action="store_true", help="skip DiffDRR even if installed")
    parser.add_argument("--out", help="also write the table (Markdown) to this file")
    parser.add_argument("--peer-max-samples", type=float, default=4e7,
                        help="skip DiffDRR cases above this many samples (poses x pixels x points): minutes each")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from tqdm import tqdm

    from FluoroRegistrationLib.demo import DEMO_DEPTH_MM, DEMO_CAMERA
    from FluoroRegistrationLib.files import write_poses
    from FluoroRegistrationLib.geometry import lateral_view
    from FluoroRegistrationLib.phantom import make_knee_phantom, write_phantom

    peers = []
    if not args.no_peer:
        from peer_diffdrr import diffdrr_available

        if diffdrr_available():
            peers = ["trilinear:500", "trilinear", "siddon"]
        else:
            print("DiffDRR is not installed: ours only (run `make bench-peer-deps` for the side-by-side).")

    tmp = tempfile.mkdtemp(prefix="fluororeg-bench-")
    phantom = make_knee_phantom(spacing_mm=args.spacing, flexion_deg=30.0, seed=0)
    write_phantom(phantom, tmp)
    write_poses(Path(tmp) / "poses.json", {"femur": lateral_view(phantom.knee_centre_mm, DEMO_DEPTH_MM)})

    sizes = [int(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    volumes = [v.strip() for v in args.volumes.split(",")]
    ctx = mp.get_context("spawn")
    rows = []
    jobs = [(v, s, b, r) for v in volumes for s in sizes for b in batches for r in ["ours"] + peers]
    bar = tqdm(jobs, desc="benchmark", unit="case")
    exact_cache = {}
    for volume_name, size, batch, renderer in bar:
        bar.set_postfix_str(f"{renderer} {volume_name} {size} B={batch}")
        n_points = None
        if renderer != "ours":
            vol, camera, _, _ = _setup(tmp, volume_name, size, 1)
            D, H, W = vol.mu.shape
            n_points = math.ceil(math.sqrt(D * D + H * H + W * W))  # one sample per voxel along the diagonal
            n_used = int(renderer.partition(":")[2] or n_points) if renderer.startswith("trilinear") else D + H + W
            if batch * size * size * n_used > args.peer_max_samples:
                rows.append((volume_name, size, batch, f"diffdrr {renderer.replace(':', ' n=')}", None, None, None,
                             "skipped (minutes per case)"))
                continue
        with ctx.Pool(1) as pool:
            try:
                fwd, fb, peak, image = pool.apply(_case, ((tmp, renderer, volume_name, size, batch, args.repeats,
                                                            args.threads, n_points),))
            except Exception as err:  # a peer that fails (e.g. out of memory) is reported, not fatal
                rows.append((volume_name, size, batch, f"diffdrr {renderer}", None, None, None, f"failed: {err}"[:60]))
                continue
        err_text = ""
        if image is not None:
            # Siddon is compared with the exact integral of its own voxel model (nearest), the others
            # with the exact integral of the trilinear model
            interpolation = "nearest" if renderer == "siddon" else "linear"
            key = (volume_name, size, interpolation)
            if key not in exact_cache:
                bar.set_postfix_str(f"exact reference {volume_name} {size} {interpolation}")
                with ctx.Pool(1) as pool:
                    exact_cache[key] = pool.apply(_exact, ((tmp, volume_name, size, interpolation),))
            exact = exact_cache[key]
            err_text = f"{100 * np.linalg.norm(image - exact) / np.linalg.norm(exact):.3f}% ({interpolation})"
        label = renderer if renderer == "ours" else f"diffdrr {renderer.replace(':', ' n=')}" + (
            f" n={n_points}" if renderer == "trilinear" else "")
        rows.append((volume_name, size, batch, label, fwd, fb, peak, err_text))
    bar.close()

    report = []
    say = _Tee(report)  # print to the terminal and keep the lines for --out
    say(f"\nDRR benchmark: knee phantom at {args.spacing:g} mm, lateral view (sdd {DEMO_CAMERA.sdd_mm:g} mm), "
          f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats}\n")
    say("| volume | detector | poses | renderer | forward ms | fwd+bwd ms | fwd+bwd ms / pose | peak MB | "
          "vs exact (rel. L2) |")
    say("|---|---|---|---|---|---|---|---|---|")
    for volume_name, size, batch, label, fwd, fb, peak, err_text in rows:
        if fwd is None:
            say(f"| {volume_name} | {size}x{size} | {batch} | {label} | - | - | - | - | {err_text} |")
            continue
        say(f"| {volume_name} | {size}x{size} | {batch} | {label} | {fwd:.1f} | {fb:.1f} | {fb / batch:.1f} | "
              f"{peak:.0f} | {err_text} |")
    speedups = {}
    for volume_name, size, batch, label, fwd, fb, *_ in rows:
        if fb is not None:
            speedups.setdefault((volume_name, size, batch), {})[label] = fb
    lines = []
    for key, found in speedups.items():
        peer_times = {k: v for k, v in found.items() if k != "ours"}
        if "ours" in found and peer_times:
            best = min(peer_times, key=peer_times.get)
            lines.append(f"- {key[0]} {key[1]}x{key[1]} B={key[2]}: ours {found['ours']:.1f} ms vs {best} "
                         f"{peer_times[best]:.1f} ms fwd+bwd: {peer_times[best] / found['ours']:.1f}x faster")
    if lines:
        say("\nSpeed-up over DiffDRR's fastest renderer (forward+backward):")
        say("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(report) + "\n")


class _Tee:
    def __init__(self, lines):
        self.lines = lines

    def __call__(self, text=""):
        print(text)
        self.lines.append(str(text))


if __name__ == "__main__":
    main()
