"""Training curves from the TensorBoard logs `isl train` writes (no tensorboard package).

`read_scalars(model_dir, tag)` reads one scalar series (e.g. the training
`loss`, or `head_MAXPROJECT_DAPI_CONFOCAL`) from `MODEL_DIR/logs/train` (or
`logs/validation`), and `curves_figure` draws several runs' series in one
labelled RGB figure (PIL), optionally smoothed by a moving average.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

import numpy as np

from isl import errors
from isl.io import model_dir as model_dir_lib

# Line colours, one per run (colour-blind friendly: blue, orange, green, purple, grey).
COLOURS = ((0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (120, 120, 120))


def read_scalars(model_dir: str, tag: str = "loss", split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """One scalar series of a run, sorted by step, the last value kept per step.

    Args:
        model_dir: a model directory of `isl train`.
        tag: the scalar's name (`loss`, `head_<z>_<channel>`, `steps_per_second`).
        split: "train" or "validation" (the sub-folder of `logs/`).

    Returns:
        (steps `[N]` int64, values `[N]` float64).

    Raises:
        InputError: when the run has no such log or no such scalar.
    """
    import tensorflow as tf

    directory = model_dir_lib.ModelDir(model_dir).log_split(split)
    files = sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*")))
    if not files:
        raise errors.InputError(f"{directory}: no TensorBoard event files "
                                f"(is {model_dir} a model directory of `isl train`?).")
    points: dict[int, float] = {}
    for path in files:
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag != tag:
                    continue
                if value.HasField("tensor"):
                    number = float(tf.make_ndarray(value.tensor))
                else:
                    number = float(value.simple_value)
                points[int(event.step)] = number
    if not points:
        raise errors.InputError(f"{directory}: no scalar named {tag!r}.")
    steps = np.array(sorted(points), np.int64)
    return steps, np.array([points[int(step)] for step in steps], np.float64)


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over `window` points (shorter at the start)."""
    if window <= 1 or values.size == 0:
        return values
    cumulative = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, values.size + 1)
    starts = np.maximum(ends - window, 0)
    return (cumulative[ends] - cumulative[starts]) / (ends - starts)


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    span = high - low if high > low else 1.0
    raw = span / count
    magnitude = 10 ** np.floor(np.log10(raw))
    step = min((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), default=raw)
    first = np.ceil(low / step) * step
    return [float(v) for v in np.arange(first, high + step * 1e-9, step)]


def curves_figure(
    series: Sequence[tuple[str, np.ndarray, np.ndarray]],
    title: str = "",
    y_label: str = "loss",
    width: int = 720,
    height: int = 420,
) -> np.ndarray:
    """Draws named (steps, values) series as lines with axes, ticks and a legend.

    Returns:
        `[height, width, 3]` uint8 RGB.
    """
    from PIL import Image, ImageDraw

    if not series:
        raise ValueError("No series to draw.")
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 64, 16, 34 if title else 16, 44
    steps_all = np.concatenate([s for _, s, _ in series])
    values_all = np.concatenate([v for _, _, v in series])
    x_low, x_high = 0.0, float(max(steps_all.max(), 1))
    y_low, y_high = float(values_all.min()), float(values_all.max())
    pad = (y_high - y_low) * 0.05 or 0.05
    y_low, y_high = y_low - pad, y_high + pad

    def to_pixel(step: float, value: float) -> tuple[float, float]:
        x = left + (step - x_low) / (x_high - x_low) * (width - left - right)
        y = height - bottom - (value - y_low) / (y_high - y_low) * (height - top - bottom)
        return x, y

    for tick in _nice_ticks(y_low, y_high):
        _, y = to_pixel(x_low, tick)
        draw.line([(left, y), (width - right, y)], fill=(230, 230, 230))
        draw.text((4, y - 6), f"{tick:.3g}", fill=(0, 0, 0))
    for tick in _nice_ticks(x_low, x_high, 6):
        x, _ = to_pixel(tick, y_low)
        draw.line([(x, height - bottom), (x, height - bottom + 4)], fill=(0, 0, 0))
        draw.text((x - 10, height - bottom + 6), f"{tick:.0f}", fill=(0, 0, 0))
    draw.line([(left, top), (left, height - bottom), (width - right, height - bottom)], fill=(0, 0, 0))
    draw.text(((width - left) // 2 + left - 14, height - 16), "step", fill=(0, 0, 0))
    draw.text((4, top - 14 if title else 2), y_label, fill=(0, 0, 0))
    if title:
        draw.text((left, 8), title, fill=(0, 0, 0))
    for index, (name, steps, values) in enumerate(series):
        colour = COLOURS[index % len(COLOURS)]
        points = [to_pixel(float(s), float(v)) for s, v in zip(steps, values)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        elif points:
            x, y = points[0]
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        legend_y = top + 6 + 16 * index
        draw.line([(width - right - 200, legend_y + 6), (width - right - 176, legend_y + 6)], fill=colour, width=3)
        draw.text((width - right - 170, legend_y), name, fill=(0, 0, 0))
    return np.asarray(image)
