"""The one registration path: files or loaded objects in, each bone's pose out.

Every face calls it: ``fluororeg register``, the Python API, the Slicer scene logic and its worker
job, the evaluation runner, the demo and the benchmarks. It does each step once: reading the CT,
labels and label names; the bones as registration draws them (``registration_volumes``); reading
and converting the frame (collimated field, polarity, :data:`~FluoroRegistrationLib.frame.LOG_CONVERSION`);
the calibration (its distortion is undone inside :func:`register`); the masks (files, arrays, a
label map over the frame, or ``"auto"`` from a segmentation model) by one rule; then :func:`register`.

    result = register_frame(ct="ct.nii.gz", labels="labels.nii.gz", frame="0000.png",
                            calibration="calib.json", initial_poses="init.json",
                            masks={"femur": "femur_mask.png"})
    reg = Registration.from_ct("ct.nii.gz", "labels.nii.gz", bones=["femur", "tibia"])  # many frames
    result = reg.register("0001.png", "calib.json", "init.json", masks="auto", model="seg_model/")
    result = reg.register(["A/0001.png", "B/0001.png"], "biplane.json", "init.json")  # two views, one pose
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import FluoroRegError
from ..frame import Frame, frame_from_array, load_frame
from ..geometry import Camera, Rig, as_rig
from ..volume import ImageVolume, RenderVolume
from .config import RegistrationConfig
from .pipeline import RegistrationResult, ViewImage, followed, register_views


def as_config(config) -> RegistrationConfig:
    """A :class:`RegistrationConfig` from one, a nested dict, or None (the defaults)."""
    if config is None:
        return RegistrationConfig()
    if isinstance(config, RegistrationConfig):
        return config
    if isinstance(config, dict):
        return RegistrationConfig.from_dict(config)
    raise FluoroRegError(f"config must be a RegistrationConfig or a dict, got {type(config).__name__}")


def prepare_frame(frame, camera: Camera | None, polarity: str = "auto", index: int = 0) -> Frame:
    """The frame as registration compares it: a path (frame ``index`` of a stack), a raw (H, W)
    array of the stored values, or a :class:`Frame` already prepared; size checked against ``camera``
    (None: not checked)."""
    if isinstance(frame, Frame):
        if camera is None:
            return frame
        try:
            camera.check_frame(*frame.image.shape[-2:])
        except FluoroRegError as err:
            raise FluoroRegError(f"{frame.path}: {err}") from None
        return frame
    if isinstance(frame, (str, Path)):
        return load_frame(frame, camera, polarity=polarity, index=index)
    if isinstance(frame, (np.ndarray, torch.Tensor)):
        raw = frame.detach().cpu().numpy() if isinstance(frame, torch.Tensor) else frame
        return frame_from_array(np.squeeze(raw), camera, polarity)
    raise FluoroRegError(f"frame must be a file path, an (H, W) array or a Frame, got {type(frame).__name__}")


def as_initial_poses(initial_poses, bones: list[str]) -> dict[str, torch.Tensor]:
    """{bone: (4, 4) float64} for every bone, from a poses JSON path or a dict of 4x4 matrices."""
    from ..files import check_rigid, read_poses

    if isinstance(initial_poses, (str, Path)):
        poses = read_poses(initial_poses)
        where = str(initial_poses)
    elif isinstance(initial_poses, dict):
        poses = {b: check_rigid(torch.as_tensor(p).detach().cpu().numpy() if isinstance(p, torch.Tensor) else p,
                                f"initial pose of {b}") for b, p in initial_poses.items()}
        where = "the initial poses"
    else:
        raise FluoroRegError(f"initial poses must be a poses JSON path or {{bone: 4x4}}, got {type(initial_poses).__name__}")
    missing = [b for b in bones if b not in poses]
    if missing:
        raise FluoroRegError(f"no initial pose for {', '.join(missing)} in {where}; add one per bone")
    return {b: poses[b] for b in bones}


def binary_mask(values, what: str) -> torch.Tensor:
    """The one rule that turns a mask into the region it marks: (H, W) bool as is; numbers (0/1,
    0/255, probabilities) above half their maximum. Empty, negative or non-finite masks are errors."""
    a = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    a = np.squeeze(a)
    if a.ndim != 2 or a.dtype.kind not in "biuf":
        raise FluoroRegError(f"{what} must be a 2D array of numbers over the frame (H, W), got {a.dtype} of shape "
                             f"{a.shape}")
    if a.dtype != bool:
        a = a.astype(np.float64)
        if not np.isfinite(a).all() or a.min() < 0:
            raise FluoroRegError(f"{what} holds negative, NaN or infinite values; save it as 0 outside and 1 (or 255) inside")
        a = a > 0.5 * a.max() if a.max() > 0 else np.zeros(a.shape, bool)
    if not a.any():
        raise FluoroRegError(f"{what} is empty (no pixel inside); check the file, or register this bone without a mask")
    return torch.from_numpy(a)


class Registration:
    """The bones of one CT, ready to register to many frames (their volumes are built once).

    Args:
        volumes: {bone: RenderVolume} as registration draws them (:meth:`from_ct` makes them).
        config: a :class:`RegistrationConfig` or nested dict (None: the defaults).
        label_ids: {bone: label id}, for masks given as a label map over the frame.
    """

    def __init__(self, volumes: dict[str, RenderVolume], config=None, label_ids: dict[str, int] | None = None):
        if not volumes:
            raise FluoroRegError("no bones to register; name at least one bone of the label map")
        self.volumes = dict(volumes)
        self.config = as_config(config)
        self.label_ids = dict(label_ids or {})

    @classmethod
    def from_ct(cls, ct, labels, bones=None, label_names=None, config=None) -> "Registration":
        """From a CT and its labelmap (paths or :class:`ImageVolume`); ``label_names``: a JSON path,
        dict or ``"femur=1,tibia=2"`` (default: the labels' JSON beside a labelmap file);
        ``bones``: names to register (default: every named label)."""
        from ..volume import (default_label_names, labels_on_ct, load_ct, load_labels, read_label_names,
                             registration_volumes)

        for name, value in (("ct", ct), ("labels", labels)):
            if not isinstance(value, (ImageVolume, str, Path)):
                raise FluoroRegError(f"{name} must be a volume file path or an ImageVolume (e.g. ImageVolume.from_spacing"
                                     f"(array, spacing_mm)), got {type(value).__name__}")
        ct_volume = ct if isinstance(ct, ImageVolume) else load_ct(ct)
        if isinstance(labels, ImageVolume):
            label_volume = labels_on_ct(labels, ct_volume, labels.path)
        else:
            label_volume = load_labels(labels, ct_volume)
        if label_names is None:
            if isinstance(labels, ImageVolume):
                raise FluoroRegError("label_names is needed with a loaded labelmap, e.g. {'femur': 1, 'tibia': 2}")
            label_names = default_label_names(labels)
        names = read_label_names(label_names)
        if isinstance(bones, str):
            bones = [b.strip() for b in bones.split(",") if b.strip()]
        if bones is not None and not (isinstance(bones, (list, tuple)) and all(isinstance(b, str) for b in bones)):
            raise FluoroRegError(f"bones must be bone names, e.g. ['femur', 'tibia'] or 'femur,tibia', got {bones!r}")
        config = as_config(config)
        volumes = registration_volumes(ct_volume, label_volume, names, bones, context_mm=config.context_mm)
        return cls(volumes, config, {b: names[b] for b in volumes})

    def masks(self, masks, frame: Frame, camera: Camera, model=None) -> dict[str, torch.Tensor]:
        """{bone: (H, W) bool} from: None; ``"auto"`` (predicted by ``model``, a folder or a loaded
        ``(network, info)``); a label map over the frame (a path or (H, W) integer array holding the
        bones' label ids: a bone absent from it is registered without a mask); or {bone: path or
        (H, W) array}, each through :func:`binary_mask`."""
        if masks is None:
            if model is not None:
                raise FluoroRegError("a segmentation model is used with masks='auto' (--mask auto); add it or drop the model")
            return {}
        if isinstance(masks, str) and masks == "auto":
            follower_of = followed(self.volumes)  # a follower is not registered: no mask asked for it
            return auto_masks(model, frame, [b for b in self.volumes if b not in follower_of])
        if isinstance(masks, dict):
            unknown = [b for b in masks if b not in self.volumes]
            if unknown:
                raise FluoroRegError(f"mask given for {', '.join(unknown)}, which is not registered "
                                     f"({', '.join(self.volumes)}); name one of those")
            return {b: _mask_image(m, camera, f"mask of {b}") for b, m in masks.items() if m is not None}
        return self._label_map_masks(masks, camera)

    def _label_map_masks(self, label_map, camera: Camera) -> dict[str, torch.Tensor]:
        missing = [b for b in self.volumes if b not in self.label_ids]
        if missing:
            raise FluoroRegError(f"mask label map: no label id known for {', '.join(missing)}; give masks as "
                                 "{bone: image}")
        return label_map_masks(label_map, {b: self.label_ids[b] for b in self.volumes}, camera)

    def register(self, frame, calibration, initial_poses, masks=None, model=None, polarity: str = "auto",
                 index: int = 0, progress=None, cancel=None) -> RegistrationResult:
        """Register every bone to one frame, or to the frames of several views of a rig at once.

        ``frame``: path, raw (H, W) array or Frame (a list of them, one per view, with a rig);
        ``calibration``: Camera, Rig, dict or JSON path (a rig's JSON has ``views``: docs/CONVENTIONS.md);
        ``initial_poses``: poses JSON path or {bone: 4x4} (a rig's first view's camera frame);
        ``masks``: see :meth:`masks` (with a rig: "auto", or a list of such, one per view);
        ``progress``, ``cancel``: see :func:`register`. Poses come back in the first view's frame."""
        rig = as_rig(calibration)
        frames = rig.per_view(frame, "frame")
        mask_specs = masks if isinstance(masks, str) or masks is None else rig.per_view(masks, "mask")
        follower_of = followed(self.volumes)
        initial = as_initial_poses(initial_poses, [b for b in self.volumes if b not in follower_of])
        views = []
        for k, v in enumerate(rig.views):
            prepared = prepare_frame(frames[k], v.camera, polarity, index)
            spec = mask_specs if isinstance(mask_specs, str) or mask_specs is None else mask_specs[k]
            views.append(ViewImage(v.camera, prepared.image, self.masks(spec, prepared, v.camera, model),
                                   prepared.field, v.camera_from_reference, v.name))
        return register_views(self.volumes, views, initial, config=self.config, progress=progress, cancel=cancel)


def label_map_masks(label_map, label_ids: dict[str, int], camera: Camera) -> dict[str, torch.Tensor]:
    """{bone: (H, W) bool} from a label map over the frame (a path or (H, W) integer array): each
    bone's pixels are those holding its label id; a bone absent from the map gets no mask."""
    from ..frame import read_frame_array

    what = f"mask label map {label_map}" if isinstance(label_map, (str, Path)) else "mask label map"
    a = read_frame_array(label_map) if isinstance(label_map, (str, Path)) else np.squeeze(np.asarray(label_map))
    _check_mask_shape(a, camera, what)
    out = {b: torch.from_numpy(a == i) for b, i in label_ids.items()}
    out = {b: m for b, m in out.items() if bool(m.any())}
    if not out:
        raise FluoroRegError(f"{what} holds none of the bones' label ids "
                             f"({', '.join(f'{b}={i}' for b, i in label_ids.items())}); check the label map")
    return out


def _check_mask_shape(a: np.ndarray, camera: Camera, what: str) -> None:
    if a.ndim != 2 or a.shape != camera.shape:
        size = "x".join(map(str, a.shape)) if a.ndim else f"a single value ({a.item()!r})"
        raise FluoroRegError(f"{what} is {size} but the frame is {camera.rows}x{camera.cols}; "
                             "give masks on the frame's pixel grid")


def _mask_image(mask, camera: Camera, what: str) -> torch.Tensor:
    """One bone's mask from a path or an array, checked against the frame's size."""
    from ..frame import read_frame_array

    if isinstance(mask, (str, Path)):
        what = f"{what} ({mask})"
        mask = read_frame_array(mask)
    a = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    _check_mask_shape(np.squeeze(a), camera, what)
    return binary_mask(a, what)


def predicted_masks(model, frame: Frame, bones: list[str], flip: bool = True) -> dict[str, torch.Tensor]:
    """{bone: (H, W) bool} predicted by a segmentation model (a folder from ``fluororeg segment
    train``, or a loaded ``(network, info)``) from the frame's stored values; a bone the model finds
    nowhere gets an empty mask (see :func:`auto_masks`)."""
    from ..segment import load_model, predict_masks

    if model is None:
        raise FluoroRegError("masks 'auto' need a segmentation model (--model DIR from `fluororeg segment train`)")
    network, info = load_model(model) if isinstance(model, (str, Path)) else model
    predicted = predict_masks(network, info, frame.raw, frame.polarity, bones=bones, flip=flip)
    return {b: torch.from_numpy(m) for b, m in predicted.items()}


def auto_masks(model, frame: Frame, bones: list[str]) -> dict[str, torch.Tensor]:
    """``masks="auto"``: :func:`predicted_masks`, and a bone found nowhere is an error naming the fix."""
    predicted = predicted_masks(model, frame, bones)
    empty = [b for b, m in predicted.items() if not bool(m.any())]
    if empty:
        raise FluoroRegError(f"the model found no {', '.join(empty)} in {frame.path}; check the frame, or give "
                             f"that bone's mask yourself")
    return predicted


def register_frame(ct, labels, frame, calibration, initial_poses, bones=None, masks=None, label_names=None,
                   model=None, config=None, polarity: str = "auto", index: int = 0, progress=None,
                   cancel=None) -> RegistrationResult:
    """Register bones of a CT to one fluoroscopy frame: the one path every face calls.

    Args:
        ct, labels: CT (Hounsfield units) and labelmap on its grid: file paths or ImageVolumes.
        frame: the frame file (PNG, TIFF, DICOM, .npy; ``index`` picks one of a stack), or its raw
            (H, W) values, or a prepared :class:`~FluoroRegistrationLib.frame.Frame`; with a rig, a
            list of them, one per view.
        calibration: Camera, Rig, calibration or rig dict, or JSON path (docs/CONVENTIONS.md).
        initial_poses: poses JSON path or {bone: (4, 4) camera_from_volume} (with a rig: in the
            first view's camera frame).
        bones: names to register (default: the bones of ``initial_poses`` when it is a dict, else
            every named label).
        masks: None, "auto" (with ``model``), a label map over the frame, or {bone: path or array};
            with a rig, "auto" or a list of such, one per view.
        label_names: JSON path, dict or "femur=1,tibia=2" (default: the JSON beside the labels file).
        config: :class:`RegistrationConfig` or nested dict.
        polarity: "auto", "bone-dark" or "bone-bright".
        progress, cancel: see :func:`register`.
    Returns:
        :class:`RegistrationResult` (``.poses()``, ``.save(path)``).
    """
    if bones is None and isinstance(initial_poses, dict):
        bones = list(initial_poses)
    reg = Registration.from_ct(ct, labels, bones, label_names, config)
    return reg.register(frame, calibration, initial_poses, masks=masks, model=model, polarity=polarity, index=index,
                        progress=progress, cancel=cancel)
