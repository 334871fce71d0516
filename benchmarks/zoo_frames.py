"""Tile a zoo run's simulated frames with the registered bones' true outlines, for a person to look at.

    .venv/bin/python benchmarks/zoo_frames.py ZOO_OUT --member spine-0.8x0.8x2.5 --out Resources/zoo_spine_frames.png

Each frame is windowed on the pixels of the bones it registers (1st-99th percentile, widened by
half), so the low contrast of a lateral trunk stays visible; outlines: the true masks, one colour
per bone; a row per geometry.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

COLOURS = [(0, 230, 255), (255, 170, 0), (120, 255, 120), (255, 90, 200)]


def _read(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def tile(folder: Path, key: str, bones: list[str], size: int) -> Image.Image:
    """One frame (``size`` px square) with each bone's true outline."""
    frame = _read(folder / "frames" / f"{key}.png").astype(np.float32)
    masks = [_read(folder / "masks" / f"{key}_{b}.png") > 0 for b in bones]
    values = frame[np.any(masks, axis=0)] if any(m.any() for m in masks) else frame.ravel()
    lo, hi = np.percentile(values, [1, 99])
    lo, hi = lo - 0.5 * (hi - lo), hi + 0.5 * (hi - lo)
    grey = (np.clip((frame - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    rgb = np.stack([grey] * 3, -1)
    width = max(1, frame.shape[0] // 256)
    for mask, colour in zip(masks, COLOURS):
        rgb[mask & ~ndimage.binary_erosion(mask, iterations=width)] = colour
    return Image.fromarray(rgb).resize((size, size), Image.BILINEAR)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("zoo_out")
    ap.add_argument("--member", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", type=int, default=320, help="pixels per tile")
    args = ap.parse_args(argv)
    member_dir = Path(args.zoo_out) / args.member
    bones = json.loads((member_dir / "member.json").read_text()).get("bones") or ["femur", "tibia"]
    rows = []
    for geometry in sorted(p for p in member_dir.iterdir() if (p / "poses.json").is_file()):
        keys = sorted(json.loads((geometry / "poses.json").read_text()))
        row = Image.new("RGB", (args.size * len(keys), args.size + 18), "white")
        for k, key in enumerate(keys):
            row.paste(tile(geometry, key, bones, args.size), (k * args.size, 18))
        ImageDraw.Draw(row).text((4, 3), f"{args.member}  {geometry.name}  (" + ", ".join(
            f"{b}: {'cyan orange green pink'.split()[i]}" for i, b in enumerate(bones)) + ")", fill="black")
        rows.append(row)
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    sheet.save(args.out)
    print(f"wrote {args.out} ({len(rows)} geometries)")


if __name__ == "__main__":
    main()
