"""The bone segmentation network: torchvision's DeepLabv3, its preprocessing, and its files.

A model folder holds ``model.safetensors`` (the weights: tensors only, nothing executable) and
``model.json`` (what the weights mean: architecture, bones in channel order, input size,
preprocessing, and how it was trained). Channel 0 is the background, channel ``1 + n`` bone ``n``.
Each bone channel is its own yes/no question (sigmoid, not softmax): bones overlap in a projection
(the femoral condyles over the tibial plateau, the patella over the femur), and each bone's mask
must keep the overlap, since the registration compares the whole projected bone.

Preprocessing (a frame in any polarity or bit depth -> the network's input): the frame is turned
bone-bright with :func:`FluoroRegistrationLib.frame.to_attenuation` (``1 - I / I_ref``, its field
found from the collimator), resized to ``size x size`` (bilinear, antialiased) and mapped by
``(x - 0.5) / 0.25``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import FluoroRegError

ARCHITECTURES = ("deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50")
WEIGHTS_FILE = "model.safetensors"
INFO_FILE = "model.json"
FORMAT_VERSION = 1


@dataclass
class ModelInfo:
    """What a weights file means (written beside it as ``model.json``)."""

    arch: str = ARCHITECTURES[0]
    bones: list = field(default_factory=lambda: ["femur", "tibia"])
    size: int = 256
    threshold: float = 0.5
    decoder: bool = True
    preprocessing: dict = field(default_factory=lambda: {
        "conversion": "to_attenuation(raw, polarity, log=False): 1 - I/I_ref, bone bright, 0 outside the field",
        "polarity": "auto", "resize": "bilinear, antialias, to size x size", "normalise": "(x - 0.5) / 0.25"})
    training: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def classes(self) -> list[str]:
        return ["background", *self.bones]


class BoneSegmenter(torch.nn.Module):
    """DeepLabv3 with one logit per class: (B, 1, S, S) normalised frames -> (B, 1 + bones, S, S).

    ``decoder`` (MobileNetV3 only; its head sees the frame at 1/16 of its size): the DeepLabv3+
    refinement, the head's features upsampled to 1/8 and fused with the backbone's stride-8 features
    by a small separable convolution before the logits; bone outlines are then drawn from a grid
    twice as fine at ~10 % more compute. The ResNet-50 variant already works at 1/8.
    """

    def __init__(self, arch: str = ARCHITECTURES[0], bones=("femur", "tibia"), decoder: bool = True):
        super().__init__()
        from torchvision.models import segmentation

        if arch not in ARCHITECTURES:
            raise FluoroRegError(f"unknown architecture '{arch}'; choose one of {', '.join(ARCHITECTURES)}")
        if not bones:
            raise FluoroRegError("the model needs at least one bone to segment")
        n = 1 + len(bones)
        self.decoder = decoder and arch == "deeplabv3_mobilenet_v3_large"
        # weights_backbone=None: nothing is downloaded, the network starts from scratch
        self.net = getattr(segmentation, arch)(weights=None, weights_backbone=None, num_classes=n,
                                               aux_loss=self.decoder)
        if self.decoder:
            self.net.aux_classifier = None  # the stride-8 features feed the decoder instead
            self.net.classifier[-1] = torch.nn.Identity()  # the head gives features, the decoder logits
            self.net.backbone.eval()
            with torch.no_grad():
                low = self.net.backbone(torch.zeros(1, 3, 64, 64))["aux"].shape[1]
            self.net.backbone.train()
            bn = torch.nn.BatchNorm2d
            self.low = torch.nn.Sequential(torch.nn.Conv2d(low, 48, 1, bias=False), bn(48), torch.nn.ReLU())
            self.fuse = torch.nn.Sequential(
                torch.nn.Conv2d(256 + 48, 96, 1, bias=False), bn(96), torch.nn.ReLU(),
                torch.nn.Conv2d(96, 96, 3, padding=1, groups=96, bias=False), bn(96), torch.nn.ReLU(),
                torch.nn.Conv2d(96, 96, 1, bias=False), bn(96), torch.nn.ReLU(),
                torch.nn.Conv2d(96, n, 1))
        # torchvision's MobileNetV3 keeps BatchNorm running statistics with momentum 0.01, made for
        # long ImageNet runs; in a short run from scratch they would still be far from the batches'
        # statistics when the model is used (predictions in eval mode collapse to background)
        for module in self.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = 0.1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x3 = x.expand(-1, 3, -1, -1)
        if not self.decoder:
            return self.net(x3)["out"]
        f = self.net.backbone(x3)
        high = self.net.classifier(f["out"])  # ASPP features, 1/16
        low = self.low(f["aux"])  # 1/8
        high = torch.nn.functional.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.fuse(torch.cat([high, low], 1))
        return torch.nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def preprocess(raw, size: int, polarity: str = "auto") -> tuple[torch.Tensor, np.ndarray]:
    """A raw frame (H, W) -> the network's input (1, 1, size, size) float32 and the frame's field
    (H, W) bool (outside the collimator nothing is predicted)."""
    from ..frame import _convert

    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 2:
        raise FluoroRegError(f"expected a 2D frame (rows, cols), got shape {raw.shape}; pick one frame first")
    if not np.isfinite(raw).all():
        raise FluoroRegError("the frame holds NaN or infinite values; fix or crop the image first")
    att, field_mask, _ = _convert(raw, polarity, None, log=False)
    x = torch.from_numpy(att).float()[None, None]
    if x.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                            align_corners=False)
    return (x - 0.5) / 0.25, field_mask


def save_model(folder, model: BoneSegmenter, info: ModelInfo) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``folder``; returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"arch": info.arch, "bones": ",".join(info.bones)})
    (folder / INFO_FILE).write_text(json.dumps(asdict(info), indent=1) + "\n")
    return folder


def read_weights(path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors``, or from a ``.pt``/``.pth`` file loaded with
    ``weights_only=True`` (tensors only: a file that needs code to unpickle is refused)."""
    path = Path(path)
    if not path.is_file():
        raise FluoroRegError(f"weights file not found: {path}; give a model.safetensors or a .pt state dict")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # SafetensorError (empty, truncated, not safetensors), OSError
            why = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise FluoroRegError(f"cannot read {path} as safetensors ({why}); the file is damaged or not a weights "
                                 "file: copy it again or retrain") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle refusals and broken files alike
        raise FluoroRegError(f"cannot read {path} as a state dict with weights_only=True ({type(err).__name__}); "
                             "save it with torch.save(model.state_dict()) or as safetensors") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FluoroRegError(f"{path} does not hold a state dict (name -> tensor)")
    return state


def read_model_info(path) -> ModelInfo:
    """``model.json`` -> :class:`ModelInfo`, every field checked (one line naming the bad one)."""
    try:
        raw = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise FluoroRegError(f"{path} is not valid JSON ({str(err).splitlines()[0]}); restore it from the training "
                             "output") from None
    if not isinstance(raw, dict):
        raise FluoroRegError(f"{path} must hold a JSON object (arch, bones, size, ...), got {type(raw).__name__}")
    info = ModelInfo(**{k: v for k, v in raw.items() if k in ModelInfo.__dataclass_fields__})
    checks = (("arch", info.arch in ARCHITECTURES if isinstance(info.arch, str) else False, "one of " + ", ".join(ARCHITECTURES)),
              ("bones", isinstance(info.bones, list) and bool(info.bones) and all(isinstance(b, str) and b for b in
                                                                                   info.bones)
               and len(set(info.bones)) == len(info.bones), "a list of distinct bone names"),
              ("size", isinstance(info.size, int) and not isinstance(info.size, bool) and 16 <= info.size <= 4096,
               "an integer from 16 to 4096"),
              ("threshold", isinstance(info.threshold, (int, float)) and not isinstance(info.threshold, bool)
               and 0 < info.threshold < 1, "a number between 0 and 1"),
              ("decoder", isinstance(info.decoder, bool), "true or false"),
              ("preprocessing", isinstance(info.preprocessing, dict), "an object"),
              ("format_version", isinstance(info.format_version, int) and 1 <= info.format_version <= FORMAT_VERSION,
               f"an integer from 1 to {FORMAT_VERSION} (a newer format needs a newer FluoroRegistration)"))
    for name, ok, allowed in checks:
        if not ok:
            raise FluoroRegError(f"{path}: {name} = {getattr(info, name)!r} is not {allowed}")
    return info


def _weights_path(folder: Path) -> Path:
    """``folder/model.safetensors``, or the folder's only ``.pt`` / ``.pth`` state dict."""
    if (folder / WEIGHTS_FILE).is_file():
        return folder / WEIGHTS_FILE
    others = sorted(p for p in folder.iterdir() if p.suffix in (".pt", ".pth"))
    if len(others) == 1:
        return others[0]
    found = f" (found {', '.join(p.name for p in others)}: keep one)" if others else ""
    raise FluoroRegError(f"no {WEIGHTS_FILE} in {folder}{found}; pass the folder written by `fluororeg segment train`")


def load_model(folder, device: str = "cpu") -> tuple[BoneSegmenter, ModelInfo]:
    """A model folder (or its ``model.json`` / ``model.safetensors``) -> (model in eval mode, info)."""
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    info_path = folder / INFO_FILE
    if not info_path.is_file():
        raise FluoroRegError(f"no {INFO_FILE} in {folder}; pass the folder written by `fluororeg segment train`")
    info = read_model_info(info_path)
    model = BoneSegmenter(info.arch, info.bones, info.decoder)
    state = read_weights(_weights_path(folder))
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise FluoroRegError(f"{_weights_path(folder)} does not fit a {info.arch} for {len(info.bones)} bones; "
                             f"the weights and {INFO_FILE} come from different models") from None
    return model.to(device).eval(), info


def init_from(model: BoneSegmenter, path) -> list[str]:
    """Fine-tuning: copy every tensor of ``path`` whose name and shape fit into ``model`` (ours, or
    a torchvision DeepLabv3 state dict without the ``net.`` prefix); returns the names not copied
    (typically the last layer, when the bones differ)."""
    state = read_weights(path)
    own = model.state_dict()
    copied, skipped = {}, []
    for name, value in state.items():
        key = name if name in own else f"net.{name}"
        if key in own and own[key].shape == value.shape:
            copied[key] = value
        else:
            skipped.append(name)
    if not copied:
        raise FluoroRegError(f"no tensor of {path} fits this model; is it a DeepLabv3 of the same backbone?")
    model.load_state_dict(copied, strict=False)
    return skipped
