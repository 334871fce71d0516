"""The web face's picture of a frame: the frame in grey, a DRR in orange over it, outlines of masks
(cyan) and of the registered bones (green). Pure numpy; :func:`data_url` encodes it for a page."""

from __future__ import annotations

import base64
import io

import numpy as np
import torch

DRR_RGB = np.array([255, 140, 0], np.float32)
MASK_RGB = np.array([0, 220, 255], np.float32)
RESULT_RGB = np.array([60, 255, 60], np.float32)


def grey(image: np.ndarray) -> np.ndarray:
    """(rows, cols) any values -> (rows, cols) float32 in 0-1, stretched between its 1st and 99th
    percentiles (non-finite pixels black)."""
    image = np.asarray(image, np.float32)
    finite = np.isfinite(image)
    if not finite.any():
        return np.zeros(image.shape, np.float32)
    lo, hi = np.percentile(image[finite], [1, 99])
    out = np.clip((image - lo) / max(hi - lo, 1e-12), 0, 1)
    return np.where(finite, out, 0).astype(np.float32)


def resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(h, w) float -> ``shape`` by bilinear interpolation (a coarse DRR onto the frame's grid)."""
    if image.shape == tuple(shape):
        return np.asarray(image, np.float32)
    t = torch.as_tensor(np.asarray(image, np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False)[0, 0].numpy()


def outline(labels: np.ndarray) -> np.ndarray:
    """(rows, cols) bool: pixels of a non-zero label with a 4-neighbour of another label."""
    labels = np.asarray(labels)
    edge = np.zeros(labels.shape, bool)
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    return edge & (labels != 0)


def compose(frame: np.ndarray, drr: np.ndarray | None = None, masks: np.ndarray | None = None,
            result: np.ndarray | None = None, drr_opacity: float = 0.6) -> np.ndarray:
    """(rows, cols, 3) uint8 picture. frame: (rows, cols) raw pixels; drr: (h, w) line integrals
    (any size, scaled to the frame); masks, result: (rows, cols) label maps drawn as outlines."""
    base = grey(frame)
    rgb = np.repeat(base[..., None] * 255.0, 3, axis=2)
    if drr is not None:
        d = np.clip(resize(np.nan_to_num(drr), base.shape), 0, None)
        alpha = drr_opacity * d / max(float(d.max()), 1e-12)
        rgb = rgb * (1 - alpha[..., None]) + DRR_RGB * alpha[..., None]
    for labels, colour in ((masks, MASK_RGB), (result, RESULT_RGB)):
        if labels is not None:
            rgb[outline(labels)] = colour
    return np.clip(rgb, 0, 255).astype(np.uint8)


def data_url(rgb: np.ndarray, fmt: str = "png") -> str:
    """A (rows, cols, 3) uint8 picture as a ``data:image/...;base64`` URL for an <img>."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG" if fmt == "jpeg" else "PNG",
                              **({"quality": 90} if fmt == "jpeg" else {"compress_level": 1}))
    return f"data:image/{fmt};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
