"""Segmentation scores: Dice and the 95th-percentile Hausdorff distance of two masks."""

from __future__ import annotations

import numpy as np


def dice(pred, truth) -> float:
    """2 |P & T| / (|P| + |T|) of two bool masks of one shape; 1.0 when both are empty."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    total = p.sum() + t.sum()
    return 1.0 if total == 0 else float(2.0 * (p & t).sum() / total)


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(pred, truth, spacing=1.0) -> float:
    """95th percentile of the distances from each mask's boundary pixels to the other's boundary
    (both directions pooled), in the units of ``spacing`` (pixels by default). ``inf`` when one
    mask is empty and the other is not; 0 when both are empty."""
    from scipy import ndimage

    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return float("inf")
    sp, st = _surface(p), _surface(t)
    d_to_t = ndimage.distance_transform_edt(~st, sampling=spacing)
    d_to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return float(np.percentile(np.concatenate([d_to_t[sp], d_to_p[st]]), 95))
