"""DRR renderer benchmark: forward and forward+backward times, peak memory, accuracy; ours beside DiffDRR and nanodrr.

    .venv/bin/python benchmarks/render.py              # ours, and DiffDRR / nanodrr if installed
    make bench-peer-deps                               # installs DiffDRR 0.6.1 and nanodrr 0.1.7

Cases: the knee phantom's femur (its own crop, as registration renders it) and the whole phantom
(all tissue), at 128x128, 256x256 and 512x512 detectors (``--sizes``) of the demo's lateral C-arm
view, for 1 pose and a batch of 16 poses (small random perturbations). Times are medians over
``--repeats`` runs after warm-up; forward+backward is the gradient of a scalar loss with respect
to the six pose parameters of every pose. Peak memory is the rise of the process's peak resident
memory (VmHWM, reset before) during the first forward+backward above its resident memory before it
(each case runs in a fresh process, with the volume loaded). Accuracy is the relative L2
difference from the exact integral of the same voxel model (our exact renderer, trilinear model,
float64). "others' CPU" is the cores other processes kept busy while a case was measured: rows
above 0.1 are flagged SHARED, their times are not comparable (time the table on an idle machine).

DiffDRR renders the same attenuation array at the same geometry (benchmarks/peer_diffdrr.py
checks its geometry against analytic truth); its Trilinear renderer runs at 500 points (its
default) and at ``n = ceil(box diagonal / voxel)`` points, about our one sample per voxel.

nanodrr (DiffDRR's successor) renders the same array at the same geometry through its plain
PyTorch path, the one that runs on a CPU (benchmarks/peer_nanodrr.py; check_peer_nanodrr.py checks
its geometry against analytic truth and our exact renderer).  It clips each ray to the volume box
and takes ``n`` trilinear samples at the midpoints of equal parts of the chord; it runs at 500
samples (its default) and at ``--nanodrr-samples`` (default 64: the smallest of the check's sweep
that keeps every case within 1 % of the exact integral, so its fastest setting of our accuracy).
Peer cases with more than ``--peer-max-samples`` (DiffDRR) or ``--nanodrr-max-samples`` (nanodrr)
samples (poses x pixels x samples per ray) are skipped: they would take minutes each.
The benchmark never installs anything.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import shlex
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


#: Above this many cores used by other processes during a case, its times are flagged SHARED.
SHARED_CORES = 0.1


def _cpu_busy_s() -> float:
    """Busy time of all CPUs together (s) since boot, from /proc/stat (user .. steal)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


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
    """Runs in a fresh process: (fwd ms, fwd+bwd ms, peak MB, image, others' CPU) for one renderer and case.

    others' CPU: the CPUs' busy time not spent by this process during the measurements, per second
    of wall time (cores): above about 0.1 another process shared the cores and the times are off.
    """
    phantom_dir, renderer, volume_name, size, batch, repeats, threads, n_points = args
    import torch

    torch.set_num_threads(threads)
    vol, camera, par, x0 = _setup(phantom_dir, volume_name, size, batch)
    if renderer == "ours":
        from FluoroRegistrationLib.render import render

        def draw(T):
            return render(vol, camera, T.to(vol.mu.dtype))
    elif renderer.startswith("nanodrr"):
        from peer_nanodrr import make_nanodrr_renderer

        peer = make_nanodrr_renderer(vol.mu, volume_from_index=vol.volume_from_index, sdd_mm=camera.sdd_mm,
                                     rows=camera.rows, cols=camera.cols, row_spacing_mm=camera.row_spacing_mm,
                                     col_spacing_mm=camera.col_spacing_mm,
                                     principal_point_colrow=(camera.u0, camera.v0),
                                     n_samples=int(renderer.partition(":")[2]))

        def draw(T):
            return peer(T)  # the adapter inverts the pose in float64 and renders in float32
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
    busy0, own0, wall0 = _cpu_busy_s(), time.process_time(), time.perf_counter()
    _reset_peak()
    forward_backward()  # the first call, before any warm-up: its allocations are the case's memory
    peak = _peak_mb() - base
    fwd = _median_ms(forward, repeats)
    fb = _median_ms(forward_backward, repeats)
    others = max(0.0, _cpu_busy_s() - busy0 - (time.process_time() - own0)) / (time.perf_counter() - wall0)
    image = forward()[0, 0].double().numpy() if batch == 1 else None
    return fwd, fb, peak, image, others


def _exact(args):
    """Runs in a fresh process (so no idle threads of the main process disturb the timings)."""
    phantom_dir, volume_name, size, interpolation = args
    import torch

    from FluoroRegistrationLib.render import render

    vol, camera, par, x0 = _setup(phantom_dir, volume_name, size, 1, "float64")
    with torch.no_grad():
        return render(vol, camera, par.pose(x0), "exact", interpolation=interpolation)[0, 0].numpy()


def _label(renderer: str, n_points: int | None) -> str:
    """The table's name of a renderer: ours, diffdrr trilinear n=..., diffdrr siddon, nanodrr n=..."""
    if renderer == "ours":
        return "ours"
    kind, _, pts = renderer.partition(":")
    if kind == "nanodrr":
        from peer_nanodrr import DEFAULT_N_SAMPLES

        return f"nanodrr n={pts}" + (" (default)" if int(pts) == DEFAULT_N_SAMPLES else "")
    if kind == "trilinear":
        return f"diffdrr trilinear n={pts or n_points}"
    return f"diffdrr {kind}"


def _samples(renderer: str, shape, n_points: int) -> int:
    """Samples per ray a peer takes (DiffDRR's Siddon: about one per crossed plane)."""
    D, H, W = shape
    kind, _, pts = renderer.partition(":")
    if kind == "siddon":
        return D + H + W
    return int(pts or n_points)


def _speedup(ours_ms: float, peer_ms: float) -> str:
    ratio = peer_ms / ours_ms
    return f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="128,256,512", help="detector sizes (square), comma-separated")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--volumes", default="femur,knee")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spacing", type=float, default=1.0, help="phantom voxel size (mm)")
    parser.add_argument("--no-peer", action="store_true", help="skip DiffDRR and nanodrr even if installed")
    parser.add_argument("--peers", default="diffdrr,nanodrr", help="peers to run when installed")
    parser.add_argument("--nanodrr-samples", type=int, default=None,
                        help="nanodrr's samples per ray beside its default 500 (default: peer_nanodrr.BENCH_N_SAMPLES, "
                             "the smallest within 1%% of the exact integral in check_peer_nanodrr.py)")
    parser.add_argument("--out", help="also write the table (Markdown, with a header) to this file")
    parser.add_argument("--peer-max-samples", type=float, default=4e7,
                        help="skip DiffDRR cases above this many samples (poses x pixels x points): minutes each")
    parser.add_argument("--nanodrr-max-samples", type=float, default=1e8,
                        help="skip nanodrr cases above this many samples (poses x pixels x points): minutes each")
    args = parser.parse_args(argv)
    started = time.time()
    load_before = os.getloadavg()

    import numpy as np
    import torch
    from tqdm import tqdm

    from FluoroRegistrationLib.demo import DEMO_DEPTH_MM, DEMO_CAMERA
    from FluoroRegistrationLib.files import write_poses
    from FluoroRegistrationLib.geometry import lateral_view
    from FluoroRegistrationLib.phantom import make_knee_phantom, write_phantom

    peers, versions = [], []
    wanted = set() if args.no_peer else {p.strip() for p in args.peers.split(",")}
    if "diffdrr" in wanted:
        from peer_diffdrr import diffdrr_available

        if diffdrr_available():
            peers += ["trilinear:500", "trilinear", "siddon"]
            versions.append(f"DiffDRR {_version('diffdrr')}")
        else:
            print("DiffDRR is not installed: no DiffDRR rows (run `make bench-peer-deps` for the side-by-side).")
    if "nanodrr" in wanted:
        from peer_nanodrr import BENCH_N_SAMPLES, DEFAULT_N_SAMPLES, nanodrr_available

        if nanodrr_available():
            n_bench = args.nanodrr_samples or BENCH_N_SAMPLES
            peers += [f"nanodrr:{n}" for n in sorted({DEFAULT_N_SAMPLES, n_bench}, reverse=True)]
            versions.append(f"nanodrr {_version('nanodrr')}")
        else:
            print("nanodrr is not installed: no nanodrr rows (run `make bench-peer-deps` for the side-by-side).")

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
    shapes = {}
    loads = [load_before[0]]  # 1-min load average before each case: was the machine shared?
    for volume_name, size, batch, renderer in bar:
        bar.set_postfix_str(f"{renderer} {volume_name} {size} B={batch}")
        loads.append(os.getloadavg()[0])
        n_points = None
        if renderer != "ours":
            if volume_name not in shapes:
                shapes[volume_name] = tuple(_setup(tmp, volume_name, size, 1)[0].mu.shape)
            D, H, W = shapes[volume_name]
            n_points = math.ceil(math.sqrt(D * D + H * H + W * W))  # one sample per voxel along the diagonal
            limit = args.nanodrr_max_samples if renderer.startswith("nanodrr") else args.peer_max_samples
            if batch * size * size * _samples(renderer, shapes[volume_name], n_points) > limit:
                rows.append((volume_name, size, batch, _label(renderer, n_points), None, None, None,
                             "skipped (minutes per case)", None))
                continue
        with ctx.Pool(1) as pool:
            try:
                fwd, fb, peak, image, others = pool.apply(_case, ((tmp, renderer, volume_name, size, batch,
                                                                   args.repeats, args.threads, n_points),))
            except Exception as err:  # a peer that fails (e.g. out of memory) is reported, not fatal
                rows.append((volume_name, size, batch, _label(renderer, n_points), None, None, None,
                             f"failed: {err}"[:60], None))
                continue
        err_text = ""
        if image is not None:
            # Siddon is compared with the exact integral of its own voxel model (nearest), the others
            # (ours, DiffDRR's Trilinear, nanodrr) with the exact integral of the trilinear model
            interpolation = "nearest" if renderer == "siddon" else "linear"
            key = (volume_name, size, interpolation)
            if key not in exact_cache:
                bar.set_postfix_str(f"exact reference {volume_name} {size} {interpolation}")
                with ctx.Pool(1) as pool:
                    exact_cache[key] = pool.apply(_exact, ((tmp, volume_name, size, interpolation),))
            exact = exact_cache[key]
            err_text = f"{100 * np.linalg.norm(image - exact) / np.linalg.norm(exact):.3f}% ({interpolation})"
        rows.append((volume_name, size, batch, _label(renderer, n_points), fwd, fb, peak, err_text, others))
    bar.close()

    report = []
    say = _Tee(report)  # print to the terminal and keep the lines for --out
    load_after = os.getloadavg()
    say(f"\nDRR benchmark: knee phantom at {args.spacing:g} mm, lateral view (sdd {DEMO_CAMERA.sdd_mm:g} mm), "
          f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats}\n")
    say("| volume | detector | poses | renderer | forward ms | fwd+bwd ms | fwd+bwd ms / pose | peak MB | "
          "vs exact (rel. L2) | others' CPU |")
    say("|---|---|---|---|---|---|---|---|---|---|")
    for volume_name, size, batch, label, fwd, fb, peak, err_text, others in rows:
        if fwd is None:
            say(f"| {volume_name} | {size}x{size} | {batch} | {label} | - | - | - | - | {err_text} | - |")
            continue
        say(f"| {volume_name} | {size}x{size} | {batch} | {label} | {fwd:.1f} | {fb:.1f} | {fb / batch:.1f} | "
              f"{peak:.0f} | {err_text} | {others:.2f}{' SHARED' if others > SHARED_CORES else ''} |")
    shared = [others for *_, others in rows if others is not None and others > SHARED_CORES]
    if shared:
        say(f"\nSHARED: {len(shared)} rows were timed while other processes used {min(shared):.1f}-{max(shared):.1f} "
            "cores of this machine; their times are too slow, by factors that differ between renderers, and not "
            "comparable. Rerun on an idle machine.")
    timings = {}  # (volume, size, batch) -> {label: (fwd, fwd+bwd, shared)}
    for volume_name, size, batch, label, fwd, fb, *_, others in rows:
        if fb is not None:
            timings.setdefault((volume_name, size, batch), {})[label] = (fwd, fb, others > SHARED_CORES)

    def fastest(found, prefix):
        peer = {k: v for k, v in found.items() if k.startswith(prefix)}
        return min(peer, key=lambda k: peer[k][1]) if peer else None

    lines_diffdrr, lines_nanodrr = [], []
    for key, found in timings.items():
        case = f"- {key[0]} {key[1]}x{key[1]} B={key[2]}"
        best_d, best_n = fastest(found, "diffdrr"), fastest(found, "nanodrr")

        def flag(*labels, found=found):
            return " (SHARED CPU: not comparable)" if any(found[k][2] for k in labels) else ""

        if "ours" in found and best_d:
            lines_diffdrr.append(f"{case}: ours {found['ours'][1]:.1f} ms vs {best_d} {found[best_d][1]:.1f} ms "
                                 f"fwd+bwd: {_speedup(found['ours'][1], found[best_d][1])}{flag('ours', best_d)}")
        if "ours" in found and best_n:
            line = (f"{case}: ours {found['ours'][1]:.1f} ms vs {best_n} {found[best_n][1]:.1f} ms fwd+bwd: "
                    f"{_speedup(found['ours'][1], found[best_n][1])} (forward: "
                    f"{_speedup(found['ours'][0], found[best_n][0])}){flag('ours', best_n)}")
            if best_d:
                line += f"; nanodrr vs {best_d}: {_speedup(found[best_n][1], found[best_d][1])}{flag(best_n, best_d)}"
            lines_nanodrr.append(line)
    if lines_diffdrr:
        say("\nSpeed-up over DiffDRR's fastest renderer (forward+backward):")
        say("\n".join(lines_diffdrr))
    if lines_nanodrr:
        say("\nSpeed-up over nanodrr's fastest row (forward+backward; every nanodrr row is within 1 % of the exact "
            "integral), and nanodrr's own speed-up over DiffDRR's fastest renderer where both ran:")
        say("\n".join(lines_nanodrr))
    if args.out:
        minutes = (time.time() - started) / 60
        command = shlex.join(sys.argv[1:] if argv is None else argv)
        header = [
            "# Renderer benchmark results",
            "",
            (f"Printed by `.venv/bin/python benchmarks/render.py {command}` on a {os.cpu_count()}-core CPU machine "
             f"(no GPU), after `make bench-peer-deps` ({', '.join(versions) if versions else 'no peer installed'}); "
             f"{minutes:.0f} min in all. Load average (1 min) {load_before[0]:.1f} at the start, up to "
             f"{max(loads + [load_after[0]]):.1f} during the run, {load_after[0]:.1f} at the end. The last column, "
             "others' CPU, is the cores other processes kept busy while the case was measured (from /proc/stat); "
             f"above {SHARED_CORES:g} the row is flagged SHARED: its times are too slow and not comparable (with "
             f"{args.threads} threads on {os.cpu_count()} cores every parallel operation waits for the thread the "
             "other process displaced, by a factor that differs between renderers and moments)."),
            "",
            (f"Peer cases above {args.peer_max_samples:.0e} samples (DiffDRR) or {args.nanodrr_max_samples:.0e} "
             "(nanodrr) are skipped (samples = poses x pixels x samples per ray): each would take minutes; the table "
             "says which. nanodrr runs its CPU PyTorch path (`backend=\"torch\"`) at its default 500 samples per ray "
             "and at the smallest sample count of benchmarks/check_peer_nanodrr.py's sweep that keeps every case "
             "within 1 % (relative L2) of the exact integral of the same voxel model."),
        ]
        Path(args.out).write_text("\n".join(header + report) + "\n")


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


class _Tee:
    def __init__(self, lines):
        self.lines = lines

    def __call__(self, text=""):
        print(text)
        self.lines.append(str(text))


if __name__ == "__main__":
    main()
