"""The evaluation report figure: per channel, the images beside a 2-D histogram.

One row per target channel: [median prediction] [truth] [subtractive error
(orange false positive, blue false negative, §5.3)] [predicted-vs-true 2-D
histogram, log counts, with the identity line] and the row's Pearson r and
interval coverage written under it. An 8-bit RGB PNG drawn with NumPy and
Pillow (no plotting library needed).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from isl.eval import panels as panels_lib

TILE = 256
CAPTION = 34
GAP = 6


def _fit(image: np.ndarray, size: int = TILE) -> np.ndarray:
    """`[h, w, 3]` in [0, 1] resized to fit a size x size tile (letterboxed)."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_height, new_width = max(1, round(height * scale)), max(1, round(width * scale))
    resized = panels_lib.resize_bilinear(image.astype(np.float32), new_height, new_width)
    tile = np.zeros((size, size, 3), np.float32)
    top, left = (size - new_height) // 2, (size - new_width) // 2
    tile[top : top + new_height, left : left + new_width] = resized
    return tile


def histogram_image(counts: np.ndarray, size: int = TILE) -> np.ndarray:
    """A log-count 2-D histogram as an RGB tile; x = truth, y = prediction (up).

    Args:
        counts: `[bins, bins]`, rows prediction bins, columns truth bins.
    """
    values = np.log1p(counts)
    values = values / values.max() if values.max() > 0 else values
    # Dark blue -> yellow ramp; empty bins white.
    ramp = np.stack([values, 0.2 + 0.6 * values, 0.6 * (1 - values)], axis=-1)
    image = np.where(counts[..., None] > 0, ramp, 1.0)
    image = image[::-1]  # Prediction 1.0 at the top.
    bins = counts.shape[0]
    diagonal = np.arange(bins)
    image[bins - 1 - diagonal, diagonal] = (0.6, 0.6, 0.6)
    repeat = max(1, size // bins)
    image = np.repeat(np.repeat(image, repeat, axis=0), repeat, axis=1)
    return _fit(image, size)


def report_figure(
    rows: Sequence[Mapping[str, object]],
    title: str = "",
) -> np.ndarray:
    """Builds the figure.

    Args:
        rows: one mapping per channel with "channel", "prediction" `[h, w]`,
            "truth" `[h, w]`, "histogram" `[bins, bins]`, and "caption" text.
        title: a line above the figure.

    Returns:
        `[H, W, 3]` uint8.
    """
    from PIL import Image
    from PIL import ImageDraw

    columns = 4
    width = columns * (TILE + GAP) + GAP
    header = 24 + CAPTION
    height = header + len(rows) * (TILE + CAPTION + GAP) + GAP
    canvas = np.ones((height, width, 3), np.float32)
    labels = ("median prediction", "truth", "prediction - truth", "2-D histogram: x truth, y prediction")
    for index, row in enumerate(rows):
        top = header + index * (TILE + CAPTION + GAP)
        prediction = np.asarray(row["prediction"], np.float32)
        truth = np.asarray(row["truth"], np.float32)
        tiles = [
            _fit(panels_lib.grey(prediction)),
            _fit(panels_lib.grey(truth)),
            _fit(panels_lib.subtractive_error(prediction, truth)),
            histogram_image(np.asarray(row["histogram"])),
        ]
        for column, tile in enumerate(tiles):
            left = GAP + column * (TILE + GAP)
            canvas[top : top + TILE, left : left + TILE] = tile
    image = Image.fromarray(np.round(np.clip(canvas, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.text((GAP, 4), title, fill=(0, 0, 0))
    for column, label in enumerate(labels):
        draw.text((GAP + column * (TILE + GAP), 24 + 10), label, fill=(0, 0, 0))
    for index, row in enumerate(rows):
        top = header + index * (TILE + CAPTION + GAP) + TILE + 2
        draw.text((GAP, top), f"{row['channel']}: {row['caption']}", fill=(0, 0, 0))
    return np.asarray(image)


def write_figure(path: str | os.PathLike[str], figure: np.ndarray) -> str:
    """Writes an 8-bit RGB PNG atomically; returns the path."""
    from PIL import Image

    from isl.io import atomic

    path = os.fspath(path)
    with atomic.temporary_path(path) as temporary:
        Image.fromarray(figure).save(temporary, format="PNG")
    return path
