"""Draws docs/condition_b_validation.png: truth beside the predictions of several models.

Usage (after `isl predict` of the sample well with each model, see
checkpoints/condition_b_sample/README.md):

    python docs/figures.py --sample_dir=../shared/data/condition_b_sample \
        --prediction=ISL=predictions/isl --prediction=U-Net=predictions/unet \
        --rows=768:1024 --output=docs/condition_b_validation.png

Rows of the figure: the in-focus phase-contrast slice, then one row per
channel (DAPI, MAP2, NFH). Columns: the real stain, then each model's median
prediction. Each channel row shares one contrast stretch, the real stain's
0.5-99.5 percentiles, so the columns compare directly. Everything is shown
at half resolution.
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np
from PIL import Image, ImageDraw

CHANNELS = ("DAPI_CONFOCAL", "MAP2_CONFOCAL", "NFH_CONFOCAL")


def _read(path: str) -> np.ndarray:
    from isl.io import images

    return images.read_image(path).astype(np.float64) / 65535.0


def _find(directory: str, pattern: str) -> str:
    found = sorted(glob.glob(os.path.join(directory, "**", pattern), recursive=True))
    if not found:
        raise SystemExit(f"{directory}: no file matches {pattern}")
    return found[0]


def _stretch(image: np.ndarray, low: float, high: float) -> np.ndarray:
    return (np.clip((image - low) / max(high - low, 1e-9), 0, 1) * 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample_dir", required=True)
    parser.add_argument("--prediction", action="append", default=[], help="NAME=PREDICTIONS_DIR (repeatable)")
    parser.add_argument("--rows", default="768:1024")
    parser.add_argument("--columns", default=":")
    parser.add_argument("--phase_z", type=int, default=6)
    parser.add_argument("--output", required=True)
    arguments = parser.parse_args()

    def as_slice(text: str) -> slice:
        start, end = text.split(":")
        return slice(int(start) if start else None, int(end) if end else None)

    region = (as_slice(arguments.rows), as_slice(arguments.columns))
    predictions = [item.split("=", 1) for item in arguments.prediction]
    phase = _read(_find(arguments.sample_dir, f"*z_depth-{arguments.phase_z},channel-PHASE_CONTRAST*"))[region]
    tiles = [[_stretch(phase, *np.percentile(phase, (0.5, 99.5)))]]
    labels = [["phase contrast (z %d)" % arguments.phase_z]]
    for channel in CHANNELS:
        truth = _read(_find(arguments.sample_dir, f"*channel-{channel},*"))[region]
        low, high = np.percentile(truth, (0.5, 99.5))
        row, row_labels = [_stretch(truth, low, high)], [f"{channel.split('_')[0]} real"]
        for name, directory in predictions:
            predicted = _read(_find(directory, f"*channel-{channel}*MEDIAN*"))[region]
            pearson = np.corrcoef(predicted.ravel(), truth.ravel())[0, 1]
            row.append(_stretch(predicted, low, high))
            row_labels.append(f"{name} (r = {pearson:.2f})")
        tiles.append(row)
        labels.append(row_labels)
    height, width = (side // 2 for side in tiles[0][0].shape)
    columns = 1 + len(predictions)
    caption = 14
    canvas = Image.new("RGB", (columns * (width + 4), len(tiles) * (height + caption + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for row_index, (row, row_labels) in enumerate(zip(tiles, labels)):
        for column_index, (tile, label) in enumerate(zip(row, row_labels)):
            small = Image.fromarray(tile).resize((width, height), Image.BILINEAR)
            x, y = column_index * (width + 4), row_index * (height + caption + 4)
            draw.text((x + 2, y), label, fill=(0, 0, 0))
            canvas.paste(small, (x, y + caption))
    canvas.save(arguments.output, optimize=True)
    print(f"Wrote {arguments.output} ({canvas.size[0]}x{canvas.size[1]})")


if __name__ == "__main__":
    main()
