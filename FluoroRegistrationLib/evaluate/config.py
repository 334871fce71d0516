"""The experiment definition: a YAML file, checked, with every default written back out.

```yaml
name: study
seed: 0
frames:                      # either a folder written by `fluororeg simulate` ...
  folder: sim/
  # ... or what to simulate (into OUT/frames_sim/): count, realism, flexion_range, camera, clutter
  # (clutter: none, mixed or heavy: the other leg, metal, a table edge; simulate/clutter.py)
  # simulate: {count: 6, realism: medium, flexion_range: [0, 90]}
  # (view_angles: [60] adds a second view, a biplane rig; see `fluororeg simulate --view-angle`)
  # (implant: true puts the procedural total knee in the phantom; then bones may name its components,
  # femoral, tray, insert, registered from their meshes)
calibration: true            # true: the C-arm that took the frames; nominal: the folder's calib.json
bones: [femur, tibia]
starts:
  mtre_bins_mm: [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20]   # bin edges of the initial mTRE
  per_bin: 2                 # starts per frame, bone and bin (the same starts for every condition)
  per_axis:                  # optional: one parameter at a time, for per-parameter capture ranges
    translation_mm: [5, 10, 15, 20]
    rotation_deg: [4, 8, 12]
conditions:                  # one line each; options: RegistrationConfig's stages (nested), e.g.
  - {name: mask, mask: truth}
  - {name: no mask, mask: none}
  # - {name: gcc, mask: truth, options: {similarity: gcc}}
  # - {name: wide, mask: truth, options: {search: {range_mm: 40}, masks: {fine_dilation_mm: 15}}}
  # - {name: predicted, mask: predicted, model: seg_model/}   # masks from `fluororeg segment train`
  # - {name: 2 views, mask: truth, views: 2}   # the first two views of a rig's frames (default 1)
  # - {name: 2 views, rig off, mask: truth, views: 2, rig_error: {rotation_deg: 0.3, translation_mm: 1.0}}
options: {}                  # RegistrationConfig overrides for every condition (a condition's own win)
landscape:                   # optional loss landscapes
  frames: [0]
  half_range: {translation_mm: 20, rotation_deg: 15}
  points: 41
  pairs: [[0, 1], [3, 5]]    # 2D slices over these parameter pairs (rx ry rz tx ty tz = 0..5)
  pixel_mm: 1.4              # the level: pixel size at the bone (mm)
```
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FluoroRegError
from ..phantom import FLEXION_RANGE_DEG
from .schema import Anything, AnyMapping, Flag, Integer, List, Mapping, Number, Optional, Text

MASK_SOURCES = ("truth", "none", "predicted")
SIMULATE_KEYS = ("count", "realism", "flexion_range", "camera", "clutter", "view_angles", "implant")
LANDSCAPE_KEYS = ("frames", "bones", "half_range", "points", "pairs", "pixel_mm")
# the config's plain sections, checked for type and range before anything else (schema.py); the
# registration options are RegistrationConfig's and the camera the calibration's own checks
SCHEMA = Mapping({
    "name": Text(), "seed": Integer(0), "calibration": Anything, "options": AnyMapping(),
    "bones": List(Text(), 1), "threads_per_task": Integer(1, 256),
    "frames": Mapping({
        "folder": Text(), "use": List(Integer(0)),
        "simulate": Mapping(dict(zip(SIMULATE_KEYS, (
            Integer(1, 100000), Text(), List(Number(*FLEXION_RANGE_DEG), 2, 2), Anything, Optional(Text()),
            List(Number(10, 170), 0, 7), Flag))))}),
    "starts": Mapping({"mtre_bins_mm": List(Number(0, 1000), 2), "per_bin": Integer(1, 1000),
                       "per_axis": Mapping({"translation_mm": List(Number(0, 500)),
                                            "rotation_deg": List(Number(0, 180))})}),
    "conditions": List(Mapping({"name": Text(), "mask": Text(MASK_SOURCES), "options": Optional(AnyMapping()),
                                "model": Optional(Text()), "views": Integer(1, 8),
                                "rig_error": Optional(Mapping({"rotation_deg": Number(0, 10),
                                                               "translation_mm": Number(0, 50)}))},
                               required=("name",))),
    "landscape": Optional(Mapping(dict(zip(LANDSCAPE_KEYS, (
        List(Integer(0)), List(Text()),
        Mapping({"translation_mm": Number(0.001, 500), "rotation_deg": Number(0.001, 180)}),
        Integer(3, 1001), List(List(Integer(0, 5), 2, 2)), Number(0.01, 50)))))),
})


@dataclass(frozen=True)
class Condition:
    """One way of registering: a name, where masks come from, and RegistrationConfig overrides (nested)."""

    name: str
    mask: str = "truth"
    options: dict = field(default_factory=dict)
    model: str | None = None  # the segmentation model folder, for mask: predicted
    views: int = 1  # how many of the rig's views to register against (the first ``views``)
    rig_error: dict | None = None  # {rotation_deg, translation_mm}: the rig's relative poses perturbed by these


@dataclass
class Experiment:
    name: str = "experiment"
    seed: int = 0
    frames: dict = field(default_factory=dict)
    calibration: str = "true"
    bones: list = field(default_factory=lambda: ["femur", "tibia"])
    starts: dict = field(default_factory=dict)
    conditions: list = field(default_factory=list)
    options: dict = field(default_factory=dict)
    landscape: dict | None = None
    threads_per_task: int = 1

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["conditions"] = [dataclasses.asdict(c) for c in self.conditions]
        return d

    @property
    def bins(self) -> list[float]:
        return [float(v) for v in self.starts.get("mtre_bins_mm", [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20])]


def _options_known(options: dict, where: str, base: dict | None = None) -> None:
    """Registration options (nested RegistrationConfig fields) build a valid config, alone and on
    top of ``base``; otherwise one line naming the field."""
    from ..register import RegistrationConfig

    if not isinstance(options, dict):
        raise FluoroRegError(f"{where} must be a mapping of RegistrationConfig stages, e.g. {{search: {{range_mm: 20}}}}")
    RegistrationConfig.from_dict(base or {}, "options").merged(options, where)


def experiment_from_dict(d: dict, base: Path | None = None) -> Experiment:
    """Check a parsed config and fill its defaults. ``base``: folder relative paths start from."""
    if not isinstance(d, dict):
        raise FluoroRegError("the experiment config must be a mapping (name, frames, bones, starts, conditions)")
    allowed = {f.name for f in dataclasses.fields(Experiment)}
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise FluoroRegError(f"unknown key(s) {', '.join(unknown)} in the experiment config; "
                             f"allowed: {', '.join(sorted(allowed))}")
    _landscape_level_hint(d.get("landscape"))
    SCHEMA(d, "")  # types, ranges and keys of every plain section; what follows checks the rest
    d = dict(d)
    frames = dict(d.get("frames") or {})
    if ("folder" in frames) == ("simulate" in frames):
        raise FluoroRegError("frames: give either 'folder' (a `fluororeg simulate` output) or 'simulate' (what to simulate)")
    if "simulate" in frames:
        _simulate_known(frames["simulate"])
    if "folder" in frames and base is not None and not Path(frames["folder"]).is_absolute():
        frames["folder"] = str((base / frames["folder"]).resolve())
    d["frames"] = frames
    conditions = []
    for c in d.get("conditions") or [{"name": "mask", "mask": "truth"}, {"name": "no mask", "mask": "none"}]:
        cond = Condition(c["name"], c.get("mask", "truth"), dict(c.get("options") or {}), c.get("model"),
                         int(c.get("views", 1)), None if c.get("rig_error") is None else dict(c["rig_error"]))
        if cond.rig_error is not None and cond.views < 2:
            raise FluoroRegError(f"condition {cond.name}: rig_error perturbs the views' relative poses; it needs views: 2 "
                                 "or more")
        if cond.mask == "predicted" and not (cond.model and (Path(cond.model) / "model.json").is_file()):
            raise FluoroRegError(f"condition {cond.name}: mask predicted needs model: FOLDER holding a model.json "
                                 f"(from `fluororeg segment train`), got {cond.model!r}")
        _options_known(cond.options, f"condition {cond.name}", d.get("options") or {})
        conditions.append(cond)
    if len({c.name for c in conditions}) != len(conditions):
        raise FluoroRegError("condition names must be unique")
    d["conditions"] = conditions
    _options_known(d.get("options") or {}, "options")
    if isinstance(d.get("calibration"), bool):  # YAML reads the documented `calibration: true` as a boolean
        d["calibration"] = "true" if d["calibration"] else "nominal"
    exp = Experiment(**d)
    if exp.calibration not in ("true", "nominal"):
        raise FluoroRegError(f"calibration must be 'true' or 'nominal', got {exp.calibration}")
    bins = exp.bins
    if len(bins) < 2 or bins[0] != 0 or any(b <= a for a, b in zip(bins, bins[1:])):
        raise FluoroRegError(f"starts.mtre_bins_mm must rise from 0 (e.g. [0, 2, 4, 6]); got {bins}")
    return exp


def load_experiment(path) -> Experiment:
    """Read and check an experiment YAML (or JSON) file."""
    from ..files import read_yaml

    data = read_yaml(path, "experiment config", "write one (see `fluororeg evaluate --help`)")
    return experiment_from_dict(data, Path(path).parent)


def write_experiment(exp: Experiment, path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(exp.to_dict(), sort_keys=False))


def _landscape_level_hint(spec) -> None:
    """landscape: ``level`` (pixels) became ``pixel_mm`` (the pixel at the bone): say so, where the
    schema would only call it unknown."""
    if isinstance(spec, dict) and "level" in spec:
        unknown = sorted(str(k) for k in set(spec) - set(LANDSCAPE_KEYS))
        raise FluoroRegError(f"unknown key(s) {', '.join(unknown)} in landscape; allowed: {', '.join(LANDSCAPE_KEYS)}"
                             "; level (px) is now pixel_mm, the pixel size at the bone (e.g. 1.4)")


def _simulate_known(sim) -> None:
    """frames: simulate (its keys and types checked by the schema): a flexion range that runs
    forwards, realism and clutter that name presets, a physical camera."""
    from ..simulate.clutter import get_clutter
    from ..simulate.frames import get_realism

    flexion = sim.get("flexion_range")
    if flexion is not None and flexion[0] > flexion[1]:
        raise FluoroRegError(f"frames.simulate.flexion_range {flexion} runs backwards; give [min, max]")
    get_realism(sim.get("realism", "medium"))
    get_clutter(sim.get("clutter"))
    if sim.get("camera") is not None:
        from ..geometry import Camera

        Camera.from_dict(sim["camera"], "frames: simulate: camera")
