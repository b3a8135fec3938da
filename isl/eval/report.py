"""The evaluation report figure: per channel, the images beside a 2-D histogram.

One row per target channel: [median prediction] [truth] [subtractive error
(orange false positive, blue false negative, §5.3)] [predicted-vs-true 2-D
histogram, log counts, with the identity line and ticks on both axes]
[PIT histogram of the predicted distributions, when `isl predict` wrote the
calibration files: 10 bars of the fraction of pixels, a dashed line at 0.1
for a calibrated model; a peak at the right means the truth lies above the
prediction, a U shape an overconfident one] and the row's Pearson r,
interval coverage and information gain written under it. The images show the
scored region only, at its own aspect ratio. An 8-bit RGB PNG drawn with NumPy
and Pillow (no plotting library needed).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from isl.eval import panels as panels_lib

TILE = 256  # Height of the image tiles; side of the histogram's plot area.
MAX_WIDTH = 2 * TILE  # Widest image tile (a wide region is scaled down to it).
CAPTION = 34
GAP = 6
COLOUR_BAR = 40  # The strip under the header with each image column's colour bar.
BAR_HEIGHT = 10
AXIS_LEFT = 34  # Room for the histogram's y tick labels and title.
AXIS_BOTTOM = 26  # Room for its x tick labels and title.
TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)
PIT_WIDTH = 200  # Plot area of the PIT histogram.
PIT_TOP = 0.5  # Its y axis runs from 0 to this fraction (or the tallest bar).


def region_box(row: Mapping[str, object]) -> tuple[slice, slice]:
    """The rows and columns of the scored region of one report row.

    `row["mask"]` (`[h, w]`, true where scored) when given; else the bounding
    box of the pixels where the prediction or the truth is non-zero (callers
    zero everything outside the region); else the whole image.
    """
    prediction = np.asarray(row["prediction"])
    if row.get("mask") is not None:
        selected = np.asarray(row["mask"], bool)
    else:
        selected = (prediction != 0) | (np.asarray(row["truth"]) != 0)
    if not selected.any():
        return slice(0, prediction.shape[0]), slice(0, prediction.shape[1])
    rows, columns = np.flatnonzero(selected.any(axis=1)), np.flatnonzero(selected.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1)


def tile_shape(height: int, width: int) -> tuple[int, int]:
    """The tile an image of `height` x `width` is drawn in: its own aspect, TILE high, at most MAX_WIDTH wide."""
    scale = min(TILE / height, MAX_WIDTH / width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return panels_lib.resize_bilinear(image.astype(np.float32), *shape)


def histogram_image(counts: np.ndarray, size: int = TILE) -> np.ndarray:
    """A log-count 2-D histogram as a `[size, size, 3]` tile; x = truth, y = prediction (up).

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
    return _resize(image, (size, size))


def draw_axes(draw, left: int, top: int, size: int = TILE) -> None:
    """Frame, ticks and tick labels (intensity 0..1) of a histogram drawn at (left, top)."""
    black = (0, 0, 0)
    draw.rectangle([left - 1, top - 1, left + size, top + size], outline=black)
    for value in TICKS:
        x = left + round(value * (size - 1))
        y = top + size - 1 - round(value * (size - 1))
        label = f"{value:g}"
        draw.line([x, top + size, x, top + size + 4], fill=black)
        draw.text((x - 3 * len(label), top + size + 5), label, fill=black)
        draw.line([left - 5, y, left - 1, y], fill=black)
        draw.text((left - 7 - 6 * len(label), y - 5), label, fill=black)
    draw.text((left + size // 2 - 30, top + size + 15), "truth (0-1)", fill=black)
    draw.text((left - AXIS_LEFT + 1, top - 20), "prediction (0-1)", fill=black)


def draw_pit(draw, histogram: Sequence[float], left: int, top: int, width: int = PIT_WIDTH,
             height: int = TILE) -> None:
    """A PIT histogram at (left, top): bars, the dashed calibrated level, axes and a legend."""
    black, bar, level = (0, 0, 0), (70, 110, 170), (200, 60, 40)
    values = [float(value) for value in histogram]
    top_value = max(PIT_TOP, max(values) * 1.05)

    def y_of(value: float) -> int:
        return top + height - 1 - round(value / top_value * (height - 1))

    step = width / len(values)
    for index, value in enumerate(values):
        draw.rectangle([left + round(index * step) + 1, y_of(value), left + round((index + 1) * step) - 1,
                        top + height - 1], fill=bar)
    uniform = 1.0 / len(values)
    for x in range(left, left + width, 8):
        draw.line([x, y_of(uniform), min(x + 4, left + width - 1), y_of(uniform)], fill=level, width=2)
    draw.rectangle([left - 1, top - 1, left + width, top + height], outline=black)
    for value in (0.0, 0.5, 1.0):
        x = left + round(value * (width - 1))
        draw.line([x, top + height, x, top + height + 4], fill=black)
        draw.text((x - 3 * len(f"{value:g}"), top + height + 5), f"{value:g}", fill=black)
    for value in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5):
        if value <= top_value:
            y = y_of(value)
            draw.line([left - 5, y, left - 1, y], fill=black)
            draw.text((left - 7 - 6 * len(f"{value:g}"), y - 5), f"{value:g}", fill=black)
    draw.text((left + width // 2 - 40, top + height + 15), "PIT of the truth", fill=black)
    # Legend, inside the plot's top right.
    draw.rectangle([left + width - 96, top + 4, left + width - 86, top + 12], fill=bar)
    draw.text((left + width - 82, top + 3), "pixels", fill=black)
    draw.line([left + width - 96, top + 22, left + width - 86, top + 22], fill=level, width=2)
    draw.text((left + width - 82, top + 16), "calibrated", fill=black)


def drawn_row(row: Mapping[str, object]) -> dict[str, object]:
    """A report row with its three image tiles drawn at their size (`tiles`), without the full-size images.

    `report_figure` takes rows either way; drawing each row as it is scored
    keeps no image of the well's size waiting for the figure.
    """
    box = region_box(row)
    shape = tile_shape(box[0].stop - box[0].start, box[1].stop - box[1].start)
    prediction = np.asarray(row["prediction"], np.float32)[box]
    truth = np.asarray(row["truth"], np.float32)[box]
    tiles = [_resize(panels_lib.grey(prediction), shape), _resize(panels_lib.grey(truth), shape),
             _resize(panels_lib.subtractive_error(prediction, truth), shape)]
    drawn = {key: value for key, value in row.items() if key not in ("prediction", "truth", "mask")}
    drawn["tiles"] = tiles
    return drawn


def report_figure(
    rows: Sequence[Mapping[str, object]],
    title: str = "",
) -> np.ndarray:
    """Builds the figure.

    Args:
        rows: one mapping per channel with "channel", "prediction" `[h, w]`,
            "truth" `[h, w]`, "histogram" `[bins, bins]`, "caption" text and
            optionally "mask" `[h, w]` (the scored pixels; see `region_box`)
            and "pit_histogram" (10 fractions; the PIT column is drawn when a
            row has a finite one); or, instead of the images, their drawn
            "tiles" (`drawn_row`).
        title: a line above the figure.

    Returns:
        `[H, W, 3]` uint8.
    """
    from PIL import Image, ImageDraw

    rows = [row if "tiles" in row else drawn_row(row) for row in rows]
    shapes = [tuple(row["tiles"][0].shape[:2]) for row in rows]
    image_width = max((shape[1] for shape in shapes), default=TILE)
    row_height = max(TILE, max((shape[0] for shape in shapes), default=TILE)) + AXIS_BOTTOM
    lefts = [GAP + column * (image_width + GAP) for column in range(3)]
    histogram_left = lefts[-1] + image_width + GAP + AXIS_LEFT
    width = histogram_left + TILE + GAP
    pits = [_finite_pit(row.get("pit_histogram")) for row in rows]
    pit_left = width + AXIS_LEFT
    if any(pit is not None for pit in pits):
        width = pit_left + PIT_WIDTH + GAP
    header = 24 + CAPTION + COLOUR_BAR
    height = header + len(rows) * (row_height + CAPTION + GAP) + GAP
    canvas = np.ones((height, width, 3), np.float32)
    for index, (row, shape) in enumerate(zip(rows, shapes)):
        top = header + index * (row_height + CAPTION + GAP)
        for left, tile in zip(lefts, row["tiles"]):
            canvas[top : top + shape[0], left : left + shape[1]] = tile
        canvas[top : top + TILE, histogram_left : histogram_left + TILE] = histogram_image(
            np.asarray(row["histogram"]))
    bar_top = 24 + CAPTION - 4
    bar_width = min(image_width, 200)
    ramp = np.linspace(0.0, 1.0, bar_width, dtype=np.float32)[None, :].repeat(BAR_HEIGHT, axis=0)
    for left in lefts[:2]:
        canvas[bar_top : bar_top + BAR_HEIGHT, left : left + bar_width] = panels_lib.grey(ramp)
    signed = np.linspace(-1.0, 1.0, bar_width, dtype=np.float32)[None, :].repeat(BAR_HEIGHT, axis=0)
    canvas[bar_top : bar_top + BAR_HEIGHT, lefts[2] : lefts[2] + bar_width] = panels_lib.subtractive_error(
        np.maximum(signed, 0), np.maximum(-signed, 0))
    image = Image.fromarray(np.round(np.clip(canvas, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.text((GAP, 4), title, fill=(0, 0, 0))
    labels = ("median prediction", "truth", "prediction - truth")
    for left, label in zip(lefts, labels):
        draw.text((left, 24 + 10), label, fill=(0, 0, 0))
    bar_top, bar_width = 24 + CAPTION - 4, min(image_width, 200)
    bar_labels = (("0", "1", "intensity (1 = level 255)"),) * 2 + (("-1", "+1", "blue: truth brighter, "
                                                                    "orange: prediction brighter"),)
    for left, (low, high, unit) in zip(lefts, bar_labels):
        draw.rectangle([left - 1, bar_top - 1, left + bar_width, bar_top + BAR_HEIGHT], outline=(0, 0, 0))
        draw.text((left, bar_top + BAR_HEIGHT + 2), low, fill=(0, 0, 0))
        draw.text((left + bar_width - 6 * len(high), bar_top + BAR_HEIGHT + 2), high, fill=(0, 0, 0))
        draw.text((left, bar_top + BAR_HEIGHT + 14), unit, fill=(0, 0, 0))
    draw.text((histogram_left - AXIS_LEFT, 24 + 10), "2-D histogram (log counts)", fill=(0, 0, 0))
    if any(pit is not None for pit in pits):
        draw.text((pit_left - AXIS_LEFT, 24 + 10), "calibration: fraction of pixels", fill=(0, 0, 0))
    for index, row in enumerate(rows):
        top = header + index * (row_height + CAPTION + GAP)
        draw_axes(draw, histogram_left, top)
        if pits[index] is not None:
            draw_pit(draw, pits[index], pit_left, top)
        draw.text((GAP, top + row_height + 2), f"{row['channel']}: {row['caption']}", fill=(0, 0, 0))
    return np.asarray(image)


def _finite_pit(histogram: object) -> list[float] | None:
    """The PIT fractions when all are finite numbers, else None."""
    if histogram is None:
        return None
    values = [float(value) if value is not None else float("nan") for value in histogram]  # type: ignore[union-attr]
    return values if values and all(np.isfinite(values)) else None


def write_figure(path: str | os.PathLike[str], figure: np.ndarray) -> str:
    """Writes an 8-bit RGB PNG atomically; returns the path."""
    from PIL import Image

    from isl.io import atomic

    path = os.fspath(path)
    with atomic.temporary_path(path) as temporary:
        Image.fromarray(figure).save(temporary, format="PNG")
    return path
