"""The validation zoo: registration measured on many anatomies, CT grids and C-arm geometries, not
one phantom at one geometry.

A member is a CT made from the built-in knee phantom the way real data differ from it: the anatomy
scaled (0.8-1.25x) with denser or lighter bone, resampled onto a grid a scanner produces
(anisotropic 0.6 x 0.6 x 2.5 mm or 1 x 1 x 3 mm: linear for the CT, nearest for the labels), CT
noise, and a field of view that cuts the bones (the frames are simulated from the whole leg, the
registration only gets the cut CT); or another anatomy: the procedural lumbar spine
(phantom_spine.py), where each registered vertebra lies between two others, with ribs, the
pelvis, organs and bowel gas in every lateral frame. A geometry is a detector (size, pixel pitch) and a
source-to-detector distance; the knee sits at 0.7 of it (550-800 mm). For every member and
geometry the simulator (not the registration's renderer) makes frames, and the evaluation harness
(``run_experiment``, the one registration path) registers them from starts of 0-6 and 6-12 mm mTRE, with
true masks and without. :func:`zoo_table` prints one table.

    fluororeg zoo --out zoo_out [--members all] [--geometries all] [--realism medium]
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import FluoroRegError
from ..geometry import Camera

KNEE_Z_MM = 24.0  # the phantom's knee centre (LPS z)


@dataclass(frozen=True)
class ZooMember:
    """How a member's CT differs from the phantom (see the module docstring)."""

    name: str
    spacing_mm: tuple = (1.0, 1.0, 1.0)  # the CT grid (x, y, z)
    scale: float = 1.0  # anatomy size
    density: float = 1.0  # bone's HU above soft tissue, scaled
    noise_hu: float = 0.0  # CT noise (Gaussian, std)
    fov_z_mm: float | None = None  # the registration's CT keeps this slab around the knee (None: all)
    anatomy: str = "knee"  # "knee" (phantom.py) or "spine" (phantom_spine.py)
    bones: tuple | None = None  # what is registered (None: the zoo's bones, femur and tibia)

    def __post_init__(self):
        if self.anatomy not in ("knee", "spine"):
            raise FluoroRegError(f"zoo member {self.name}: anatomy {self.anatomy!r} is not knee or spine")
        if self.anatomy == "spine" and (self.scale != 1.0 or self.fov_z_mm is not None):
            raise FluoroRegError(f"zoo member {self.name}: the spine is not scaled or cut (scale 1, fov_z_mm None)")


MEMBERS = {m.name: m for m in (
    ZooMember("knee-1mm"),
    ZooMember("knee-0.6x0.6x2.5", spacing_mm=(0.6, 0.6, 2.5), noise_hu=20.0),
    ZooMember("knee-1x1x3", spacing_mm=(1.0, 1.0, 3.0), noise_hu=30.0),
    ZooMember("small-light-0.7x0.7x2.5", spacing_mm=(0.7, 0.7, 2.5), scale=0.8, density=0.8, noise_hu=20.0),
    ZooMember("large-dense-cut-fov", spacing_mm=(1.0, 1.0, 1.0), scale=1.25, density=1.2, noise_hu=15.0,
              fov_z_mm=150.0),
    ZooMember("spine-0.8x0.8x2.5", spacing_mm=(0.8, 0.8, 2.5), noise_hu=20.0, anatomy="spine", bones=("L3", "L4")),
)}
FLEXION_RANGE_DEG = {"knee": (10.0, 60.0), "spine": None}  # None: the simulator's default for the anatomy

GEOMETRIES = {
    "256px-1.35mm-sdd1020": Camera(1020.0, 256, 256, 1.35, 1.35),
    "512px-0.5mm-sdd1000": Camera(1000.0, 512, 512, 0.5, 0.5),
    "1024px-0.2mm-sdd1100": Camera(1100.0, 1024, 1024, 0.2, 0.2),
}


def _image(array: np.ndarray, spacing, origin):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(v) for v in spacing))
    img.SetOrigin(tuple(float(v) for v in origin))
    return img


def _resample(img, spacing, linear: bool, default: float):
    """``img`` on a grid of ``spacing`` covering the same extent (SimpleITK)."""
    import SimpleITK as sitk

    size = [max(1, int(round(n * s / t))) for n, s, t in zip(img.GetSize(), img.GetSpacing(), spacing)]
    extent_lo = np.array(img.GetOrigin()) - 0.5 * np.array(img.GetSpacing())
    origin = extent_lo + 0.5 * np.array(spacing)
    return sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear if linear else sitk.sitkNearestNeighbor,
                         tuple(origin), tuple(float(s) for s in spacing), img.GetDirection(), default,
                         img.GetPixelID())


def make_member(member: ZooMember, out, seed: int = 0, phantom_spacing_mm: float = 1.0) -> dict:
    """Write the member's CT: ``out/full/`` (what the frames are simulated from) and ``out/phantom/``
    (what registration gets: the same, or cut to its field of view), from the phantom built at
    ``phantom_spacing_mm``. Returns the paths."""
    import SimpleITK as sitk

    from ..phantom import make_knee_phantom
    from ..phantom_spine import make_spine_phantom
    from ..volume import SOFT_TISSUE_HU, ImageVolume, write_image

    out = Path(out)
    ph = (make_spine_phantom(spacing_mm=phantom_spacing_mm, seed=seed) if member.anatomy == "spine" else
          make_knee_phantom(spacing_mm=phantom_spacing_mm, flexion_deg=0.0, seed=seed))
    hu = ph.hu.astype(np.float32)
    bone = ph.labels > 0
    hu[bone] = SOFT_TISSUE_HU + (hu[bone] - SOFT_TISSUE_HU) * member.density
    spacing = np.asarray(ph.spacing_mm, float) * member.scale  # the same voxels, a larger or smaller knee
    origin = (np.asarray(ph.origin_mm, float) - np.array([0, 0, KNEE_Z_MM])) * member.scale + np.array([0, 0, KNEE_Z_MM])
    ct = _resample(_image(hu, spacing, origin), member.spacing_mm, True, -1000.0)
    labels = _resample(_image(ph.labels.astype(np.int16), spacing, origin), member.spacing_mm, False, 0)
    ct_array = sitk.GetArrayFromImage(ct)
    if member.noise_hu:
        rng = np.random.default_rng(seed + 101)
        ct_array = ct_array + rng.normal(0.0, member.noise_hu, ct_array.shape).astype(np.float32)
    ct_array = np.round(ct_array).astype(np.int16)
    label_array = sitk.GetArrayFromImage(labels).astype(np.int16)
    paths = {}
    for sub, (c, lab, org) in {"full": (ct_array, label_array, ct.GetOrigin()),
                               "phantom": _cut(member, ct_array, label_array, ct)}.items():
        folder = out / sub
        folder.mkdir(parents=True, exist_ok=True)
        for name, arr in (("ct", c), ("labels", lab)):
            write_image(ImageVolume.from_spacing(arr, member.spacing_mm, org), folder / f"{name}.nii.gz")
        (folder / "labels.json").write_text(json.dumps({k: int(v) for k, v in ph.label_names.items()}))
        paths[sub] = folder
    (out / "member.json").write_text(json.dumps(asdict(member)) + "\n")
    return paths


def _cut(member: ZooMember, ct_array, label_array, ct):
    """The CT as registration gets it: the slab of ``fov_z_mm`` about the knee (all when None)."""
    if member.fov_z_mm is None:
        return ct_array, label_array, ct.GetOrigin()
    z = ct.GetOrigin()[2] + np.arange(ct_array.shape[0]) * ct.GetSpacing()[2]
    keep = np.abs(z - KNEE_Z_MM) <= member.fov_z_mm / 2
    first = int(np.argmax(keep))
    origin = (ct.GetOrigin()[0], ct.GetOrigin()[1], float(z[first]))
    return ct_array[keep], label_array[keep], origin


@dataclass(frozen=True)
class ZooSettings:
    """What ``fluororeg zoo`` runs: members x geometries, frames per pair, starts, realism."""

    members: tuple = tuple(MEMBERS)
    geometries: tuple = tuple(GEOMETRIES)
    frames: int = 2
    realism: str = "medium"
    mtre_bins_mm: tuple = (0.0, 6.0, 12.0)
    per_bin: int = 1
    bones: tuple = ("femur", "tibia")
    seed: int = 0

    def __post_init__(self):
        unknown = [m for m in self.members if m not in MEMBERS]
        if unknown:
            raise FluoroRegError(f"unknown zoo member(s) {', '.join(unknown)}; choose from {', '.join(MEMBERS)}")
        unknown = [g for g in self.geometries if g not in GEOMETRIES]
        if unknown:
            raise FluoroRegError(f"unknown zoo geometry(ies) {', '.join(unknown)}; choose from {', '.join(GEOMETRIES)}")
        if self.frames < 1 or self.per_bin < 1:
            raise FluoroRegError("zoo: frames and per_bin must be at least 1")


def run_zoo(settings: ZooSettings, out, workers: int | None = None, serial: bool = False,
            options: dict | None = None) -> list[dict]:
    """Make each member, simulate each geometry, run the harness; returns every run's row with its
    member and geometry. Rerunning resumes (members, frames and finished runs are kept)."""
    from ..simulate.writer import simulate_folder
    from .config import experiment_from_dict
    from .runner import run_experiment

    out = Path(out)
    rows = []
    for m in settings.members:
        member_dir = out / m
        if not (member_dir / "member.json").is_file():
            make_member(MEMBERS[m], member_dir, settings.seed)
        for g in settings.geometries:
            folder = member_dir / g
            if not (folder / "poses.json").is_file():
                _link_registration_ct(member_dir, folder)
                simulate_folder(folder, member_dir / "full" / "ct.nii.gz", member_dir / "full" / "labels.nii.gz",
                                member_dir / "full" / "labels.json", frames=settings.frames, seed=settings.seed,
                                realism=settings.realism, camera=GEOMETRIES[g],
                                flexion_range=FLEXION_RANGE_DEG[MEMBERS[m].anatomy])
            exp = experiment_from_dict({
                "name": f"zoo {m} {g}", "seed": settings.seed, "frames": {"folder": str(folder)},
                "bones": list(MEMBERS[m].bones or settings.bones), "calibration": "true",
                "starts": {"mtre_bins_mm": list(settings.mtre_bins_mm), "per_bin": settings.per_bin},
                "conditions": [{"name": "mask", "mask": "truth"}, {"name": "no mask", "mask": "none"}],
                "options": dict(options or {})})
            for row in run_experiment(exp, folder / "runs", workers=workers, serial=serial):
                rows.append({**row, "member": m, "geometry": g})
    return rows


def _link_registration_ct(member_dir: Path, folder: Path) -> None:
    """``folder/phantom``: the CT registration gets (the harness reads it there)."""
    target = folder / "phantom"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("ct.nii.gz", "labels.nii.gz", "labels.json"):
        link = target / name
        if not link.exists():
            link.symlink_to((member_dir / "phantom" / name).resolve())


def zoo_summary(rows: list[dict]) -> list[dict]:
    """Per member, geometry, bone and mask condition: runs, success (< 2 mm mTRE), medians of the
    in-plane, out-of-plane and rotation errors, seconds per bone, and of the failures how many the
    truth scores better than the result (search failures; the rest are the similarity's)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["member"], r["geometry"], r["bone"], r["condition"]), []).append(r)
    out = []
    for (m, g, b, c), sel in groups.items():
        col = lambda k: np.array([float(r[k]) for r in sel])  # noqa: E731
        failed = [r for r in sel if float(r["mtre_mm"]) >= 2.0]
        out.append({"member": m, "geometry": g, "bone": b, "condition": c, "runs": len(sel),
                    "success_2mm": float((col("mtre_mm") < 2.0).mean()),
                    "in_plane_mm": float(np.median(col("in_plane_mm"))),
                    "out_of_plane_mm": float(np.median(col("out_of_plane_mm"))),
                    "rotation_deg": float(np.median(col("rotation_deg"))),
                    "seconds": float(np.median(col("seconds"))), "failures": len(failed),
                    "search_failures": sum(float(r["truth_similarity"]) > float(r["similarity"]) for r in failed)})
    return out


def zoo_table(summary: list[dict]) -> str:
    """The zoo's one table (Markdown)."""
    lines = ["| member | geometry | bone | masks | runs | success <2 mm | in-plane mm | out-of-plane mm | "
             "rotation deg | s per bone | failures (search / similarity) |", "|---" * 11 + "|"]
    for s in summary:
        lines.append(f"| {s['member']} | {s['geometry']} | {s['bone']} | {s['condition']} | {s['runs']} | "
                     f"{100 * s['success_2mm']:.0f} % | {s['in_plane_mm']:.2f} | {s['out_of_plane_mm']:.2f} | "
                     f"{s['rotation_deg']:.2f} | {s['seconds']:.1f} | {s['failures']} "
                     f"({s['search_failures']} / {s['failures'] - s['search_failures']}) |")
    return "\n".join(lines)


def zoo_overview(rows: list[dict]) -> str:
    """Two short tables (Markdown): per member and geometry (both bones pooled) and per geometry
    (every member pooled): runs, success (< 2 mm) with true masks and without, and the medians of
    the runs with true masks."""
    def line(label: str, sel: list[dict]) -> str:
        masked = [r for r in sel if r["condition"] == "mask"]
        bare = [r for r in sel if r["condition"] != "mask"]
        rate = lambda rs: (f"{100 * np.mean([float(r['mtre_mm']) < 2.0 for r in rs]):.0f} % ({len(rs)})"  # noqa: E731
                           if rs else "-")
        med = lambda k: f"{np.median([float(r[k]) for r in masked]):.2f}" if masked else "-"  # noqa: E731
        return (f"| {label} | {rate(masked)} | {rate(bare)} | {med('in_plane_mm')} | {med('out_of_plane_mm')} | "
                f"{med('rotation_deg')} | {med('seconds')} |")

    def head(*labels: str) -> str:
        columns = [*labels, "success <2 mm, true masks (runs)", "without masks", "in-plane mm", "out-of-plane mm",
                   "rotation deg", "s per bone"]
        return "| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|"

    pairs = list(dict.fromkeys((r["member"], r["geometry"]) for r in rows))
    geometries = list(dict.fromkeys(r["geometry"] for r in rows))
    by_pair = [line(f"{m} | {g}", [r for r in rows if (r["member"], r["geometry"]) == (m, g)]) for m, g in pairs]
    by_geometry = [line(g, [r for r in rows if r["geometry"] == g]) for g in geometries] + [line("**all**", rows)]
    return "\n".join([head("member", "geometry"), *by_pair, "", head("geometry (members pooled)"), *by_geometry])
