"""Runs a model over a whole image: dense tiles, phase classes, in-graph statistics.

The result equals the original's patch-by-patch prediction (a 250 px patch
per 8 x 8 output block, stride 8, isl_reference.md §5.1) to float rounding,
but the network runs fully convolutionally on large tiles, once per phase
class and axis (`isl.infer.tiling`), and the per-pixel statistics (§2) are
computed inside the `tf.function` of each tile, so the full 256-bin
distributions of the whole image never exist in memory.

Coordinates. The source stack is `[num_source_z, height, width]`. An
`OutputRegion` says which image pixels the output covers:

* `reflect` (default): the whole image; the input is reflection-padded by
  the network border (121 px), so the output has the input's height and width.
  When a side is not a multiple of the output block (8), the last block's
  patch reads reflected pixels beyond the far border too.
* `valid`: the interior `[border, border + 8 * floor((H - 2 * border) / 8))`,
  every patch inside the image; no padding at all.
* `original`: exactly the window of the released `infer.py`:
  `[121, 121 + 128 * floor((H - 250) / 128))` (blocks of 16 x 8 px).

Calibration. When the truth is given, each run also returns, per pixel and
target channel, the predicted probability of the true 8-bit bin
`round(255 * truth)` and the predicted cumulative probability strictly below
it. `isl evaluate` turns them into the negative log-likelihood and the
randomized probability integral transform (PIT), whose uniformity is the
calibration check (`isl.eval.calibration`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from isl import errors
from isl.infer import stitch as stitch_lib
from isl.infer import tiling
from isl.model import geometry as geometry_lib

BORDER_MODES = ("reflect", "valid", "original")
# The released infer.py's block: infer_size 16 output blocks of 8 px (§5.1).
ORIGINAL_BLOCKS_PER_SIDE = 16
# Quantile statistics beyond the paper's six: "q05" .. "q95" (percent).
QUANTILE_PREFIX = "q"
CALIBRATION_KEYS = ("true_bin_probability", "cdf_below_true")


@dataclasses.dataclass(frozen=True)
class OutputRegion:
    """Where the output lies in the image.

    Attributes:
        row_offset, column_offset: image coordinates of output pixel (0, 0).
        height, width: output size in pixels.
    """

    row_offset: int
    column_offset: int
    height: int
    width: int


@dataclasses.dataclass
class Prediction:
    """Whole-image predictions for a set of heads.

    Attributes:
        statistics: name -> `[height, width, num_channels]` float32 in [0, 1].
        channels: the channel (head) names along the last axis.
        region: where the output lies in the image.
        calibration: None, or `CALIBRATION_KEYS` -> `[height, width,
            num_channels]` float32 (NaN where the truth is missing).
        info: plan and timing figures (tile size, runs, seconds).
    """

    statistics: dict[str, np.ndarray]
    channels: tuple[str, ...]
    region: OutputRegion
    calibration: dict[str, np.ndarray] | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def output_region(image_shape: tuple[int, int], geometry: geometry_lib.Geometry, border_mode: str) -> OutputRegion:
    """The output region of an image of `image_shape` = (height, width).

    Raises:
        InputError: for an unknown mode, or an image too small for `valid`
            or `original`.
    """
    height, width = image_shape
    if border_mode == "reflect":
        return OutputRegion(0, 0, height, width)
    if border_mode == "valid":
        block = geometry.output_size
        sizes = [block * ((side - 2 * geometry.border) // block) for side in (height, width)]
    elif border_mode == "original":
        block = geometry.output_size * ORIGINAL_BLOCKS_PER_SIDE
        sizes = [block * ((side - geometry.input_size) // block) for side in (height, width)]
    else:
        raise errors.InputError(f"Unknown border mode {border_mode!r}; use one of {', '.join(BORDER_MODES)}.")
    if min(sizes) < 1:
        raise errors.InputError(
            f"An image of {height} x {width} px is too small for --border={border_mode}: the model needs "
            f"{geometry.input_size} px of input per side (border {geometry.border}); use --border=reflect."
        )
    return OutputRegion(geometry.border, geometry.border, sizes[0], sizes[1])


def reflect_indices(indices: np.ndarray, length: int) -> np.ndarray:
    """Maps any integer indices into `[0, length)` by mirror reflection.

    The same rule as `numpy.pad(mode="reflect")` (the edge pixel is not
    repeated), applied as often as needed, so pads may exceed the image.
    """
    if length == 1:
        return np.zeros_like(indices)
    period = 2 * (length - 1)
    indices = np.mod(indices, period)
    return np.where(indices < length, indices, period - indices)


def padded_stack(
    stack: np.ndarray, region: OutputRegion, plan: tiling.TilePlan
) -> np.ndarray:
    """The padded input every run reads: `[num_source_z, rows, columns]`.

    Padded index p shows image pixel `p + offset - border` (reflected when
    outside the image), so output coordinate o shows image pixel `o + offset`.
    """
    border = plan.geometry.border
    rows = reflect_indices(
        np.arange(plan.rows.required_input_length) + region.row_offset - border, stack.shape[1]
    )
    columns = reflect_indices(
        np.arange(plan.columns.required_input_length) + region.column_offset - border, stack.shape[2]
    )
    return stack[:, rows][:, :, columns]


def parse_statistics(names: Sequence[str]) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Splits statistic names into the paper's six and quantiles ("q05" -> 0.05).

    Raises:
        InputError: for an unknown name.
    """
    known, quantiles = [], []
    for name in names:
        from isl.model import statistics as statistics_lib

        if name in statistics_lib.STATISTICS:
            known.append(name)
        elif name.startswith(QUANTILE_PREFIX) and name[1:].isdigit() and 0 < int(name[1:]) < 100:
            quantiles.append(int(name[1:]) / 100)
        else:
            raise errors.InputError(
                f"Unknown statistic {name!r}. Known: {', '.join(statistics_lib.STATISTICS)}, "
                "and quantiles q01 .. q99."
            )
    return tuple(known), tuple(quantiles)


def quantile_name(quantile: float) -> str:
    return f"{QUANTILE_PREFIX}{round(quantile * 100):02d}"


def make_run_function(
    logits_fn: Callable[[Any], Any],
    head_indices: Sequence[int] | None,
    statistics: Sequence[str],
    quantiles: Sequence[float] = (),
    with_truth: bool = False,
    with_distributions: bool = False,
) -> Callable[..., dict[str, Any]]:
    """A `tf.function` from a batch of run inputs to per-pixel statistics.

    Args:
        logits_fn: maps `[batch, H, W, 2Z]` float32 to logits
            `[batch, H - 2 * border, W - 2 * border, heads, classes]`.
        head_indices: heads to keep (None: all), in output order.
        statistics: names from `isl.model.statistics.STATISTICS`.
        quantiles: extra quantiles in (0, 1): the first bin whose cumulative
            probability reaches q, divided by classes - 1 (the median rule).
        with_truth: the function then takes a second argument, the true bins
            `[batch, h, w, kept_heads]` int32, and also returns
            `CALIBRATION_KEYS`.
        with_distributions: also return "distribution", the probabilities
            `[batch, h, w, kept_heads, classes]` (tests; large).

    Returns:
        A function returning name -> `[batch, h, w, kept_heads]` float32.
    """
    import tensorflow as tf

    def compute(inputs: Any, true_bins: Any = None) -> dict[str, Any]:
        logits = logits_fn(inputs)
        if head_indices is not None:
            logits = tf.gather(logits, list(head_indices), axis=3)
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
        results = {}
        if statistics:
            from isl.model import statistics as statistics_lib

            results = dict(statistics_lib.distribution_statistics(probabilities, tuple(statistics)))
        results = {name: tf.cast(value, tf.float32) for name, value in results.items()}
        if with_distributions:
            results["distribution"] = probabilities
        if quantiles or true_bins is not None:
            cumulative = tf.cumsum(probabilities, axis=-1)
            num_classes = probabilities.shape[-1] or tf.shape(probabilities)[-1]
            scale = tf.cast(num_classes - 1, tf.float32)
            for quantile in quantiles:
                below = tf.reduce_sum(tf.cast(cumulative < quantile, tf.float32), axis=-1)
                results[quantile_name(quantile)] = tf.minimum(below, scale) / scale
            if true_bins is not None:
                bins = true_bins[..., tf.newaxis]
                results["true_bin_probability"] = tf.gather(probabilities, bins, batch_dims=4)[..., 0]
                results["cdf_below_true"] = (
                    tf.gather(cumulative, bins, batch_dims=4)[..., 0] - results["true_bin_probability"]
                )
        return results

    if with_truth:
        return tf.function(compute, reduce_retracing=True)
    return tf.function(lambda inputs: compute(inputs), reduce_retracing=True)


def keras_logits_fn(model: Any, head_indices: Sequence[int] | None = None) -> Callable[[Any], Any]:
    """Wraps a Keras model as `logits_fn` (inference mode: moving BN averages).

    With `head_indices`, and a model from `isl.model.builder` (whose heads
    feed one stacking layer), only those heads are computed: a sub-model
    from the input to the chosen heads' logits. The 26 input heads and the
    unused target heads then cost neither time nor the memory of their
    `[h, w, 256]` logits. The result is `[batch, h, w, len(head_indices),
    classes]`; the caller must then not select heads again (pass
    `head_indices=None` to `predict_image`).

    Args:
        model: a Keras model `[batch, H, W, 2Z]` -> `[batch, h, w, heads, C]`.
        head_indices: heads to keep, or None for all.
    """
    import keras
    import tensorflow as tf

    if head_indices is None:
        return lambda inputs: model(inputs, training=False)
    from isl.model import heads as heads_lib

    try:
        head_outputs = model.get_layer(heads_lib.LOGITS_LAYER).input
    except ValueError:
        head_outputs = None
    if not isinstance(head_outputs, (list, tuple)) or len(head_outputs) <= max(head_indices):
        indices = list(head_indices)
        return lambda inputs: tf.gather(model(inputs, training=False), indices, axis=3)
    subset = keras.Model(model.input, [head_outputs[index] for index in head_indices], name=f"{model.name}_heads")

    def logits_fn(inputs: Any) -> Any:
        outputs = subset(inputs, training=False)
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        return tf.stack([tf.cast(output, tf.float32) for output in outputs], axis=3)

    return logits_fn


def _default_network_input(num_z_values: int) -> Callable[[np.ndarray], np.ndarray]:
    from isl.data import assemble

    return lambda stack: assemble.network_input(stack, num_z_values)


def predict_image(
    logits_fn: Callable[[Any], Any],
    stack: np.ndarray,
    geometry: geometry_lib.Geometry,
    num_z_values: int,
    head_indices: Sequence[int] | None = None,
    channel_names: Sequence[str] = (),
    statistics: Sequence[str] = ("median",),
    border_mode: str = "reflect",
    tile_size: int | None = None,
    batch_size: int = 1,
    truth: tuple[np.ndarray, np.ndarray] | None = None,
    network_input_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    run_function: Callable[..., dict[str, Any]] | None = None,
    progress: Any = None,
) -> Prediction:
    """Predicts whole images of per-pixel statistics from one source stack.

    Args:
        logits_fn: `[batch, H, W, 2Z]` -> `[batch, H - 2b, W - 2b, heads, classes]`.
        stack: `[num_source_z, height, width]` float32 in [0, 1].
        geometry: the model's geometry (border, phase, output size).
        num_z_values: the model's z values (network input depth / 2).
        head_indices: heads to predict (None: all heads of `logits_fn`).
        channel_names: names of those heads, for `Prediction.channels`.
        statistics: the paper's statistic names and/or quantiles "qNN".
        border_mode: "reflect", "valid" or "original" (module docstring).
        tile_size: largest run input side (memory bound); None: whole image.
        batch_size: runs per network call.
        truth: optional (values, masks), each `[height, width, kept_heads]`
            in image coordinates, for calibration.
        network_input_fn: maps a source stack slice `[num_source_z, h, w]` to
            `[h, w, 2Z]`; default `isl.data.assemble.network_input`.
        run_function: a prebuilt `make_run_function(...)` (reuses its trace).
        progress: optional `isl.progress.Progress`-like object (`update()`).

    Returns:
        A Prediction; statistics `[height, width, kept_heads]`.
    """
    if stack.ndim != 3:
        raise errors.InputError(f"A source stack must be [num_source_z, height, width]; got shape {stack.shape}.")
    known, quantiles = parse_statistics(statistics)
    region = output_region(stack.shape[1:], geometry, border_mode)
    if tile_size is not None:
        tile_size = tiling.valid_tile_size(geometry, tile_size)
    plan = tiling.plan_tiles((region.height, region.width), geometry, tile_size)
    padded = padded_stack(np.asarray(stack, dtype=np.float32), region, plan)
    network_input_fn = network_input_fn or _default_network_input(num_z_values)
    if run_function is None:
        run_function = make_run_function(logits_fn, head_indices, known, quantiles, with_truth=truth is not None)
    true_bins = None
    if truth is not None:
        true_bins, truth_masks = _output_truth(truth, region, plan)
    start = time.perf_counter()
    stitchers: dict[str, stitch_lib.Stitcher] = {}
    runs = list(plan.runs())
    run_rows, run_columns = plan.run_input_shape
    out_rows, out_columns = plan.run_output_shape
    for first in range(0, len(runs), max(1, batch_size)):
        batch_runs = runs[first : first + max(1, batch_size)]
        inputs = np.stack(
            [
                network_input_fn(padded[:, row.start : row.start + run_rows, column.start : column.start + run_columns])
                for row, column in batch_runs
            ]
        ).astype(np.float32, copy=False)
        if true_bins is not None:
            bins = np.stack(
                [
                    true_bins[row.start : row.start + out_rows, column.start : column.start + out_columns]
                    for row, column in batch_runs
                ]
            )
            results = run_function(inputs, bins)
        else:
            results = run_function(inputs)
        for name, value in results.items():
            value = np.asarray(value)
            if name not in stitchers:
                stitchers[name] = stitch_lib.Stitcher(plan, value.shape[3:])
            for index, (row, column) in enumerate(batch_runs):
                stitchers[name].add(row, column, value[index])
        if progress is not None:
            progress.update(len(batch_runs))
    seconds = time.perf_counter() - start
    images = {name: stitcher.result() for name, stitcher in stitchers.items()}
    calibration = None
    if truth is not None:
        calibration = {key: images.pop(key) for key in CALIBRATION_KEYS}
        for value in calibration.values():
            value[~truth_masks] = np.nan
    order = list(known) + [quantile_name(q) for q in quantiles]
    order += sorted(name for name in images if name not in order)  # Custom run functions.
    ordered = {name: images[name] for name in order}
    info = {
        "tile_size": plan.run_input_shape,
        "num_runs": plan.num_runs,
        "phase_classes": len(tiling.block_classes(geometry)),
        "computed_input_pixels": plan.computed_input_pixels,
        "seconds": seconds,
    }
    return Prediction(ordered, tuple(channel_names), region, calibration, info)


def _output_truth(
    truth: tuple[np.ndarray, np.ndarray], region: OutputRegion, plan: tiling.TilePlan
) -> tuple[np.ndarray, np.ndarray]:
    """True bins on the whole run grid and the output-region masks.

    Returns:
        bins `[grid_rows + run_out, grid_columns + run_out, T]` int32 in
        output coordinates (zero beyond the region), and masks
        `[height, width, T]` bool.
    """
    values, masks = truth
    height, width = region.height, region.width
    values = values[region.row_offset : region.row_offset + height, region.column_offset : region.column_offset + width]
    masks = masks[region.row_offset : region.row_offset + height, region.column_offset : region.column_offset + width]
    rows = plan.rows.grid_length + plan.rows.run_output_length
    columns = plan.columns.grid_length + plan.columns.run_output_length
    bins = np.zeros((rows, columns, values.shape[-1]), dtype=np.int32)
    bins[:height, :width] = np.clip(np.round(values * 255), 0, 255).astype(np.int32)
    return bins, masks > 0


def predict_patchwise(
    logits_fn: Callable[[Any], Any],
    stack: np.ndarray,
    geometry: geometry_lib.Geometry,
    num_z_values: int,
    head_indices: Sequence[int] | None = None,
    statistics: Sequence[str] = ("median",),
    border_mode: str = "reflect",
    batch_size: int = 16,
    network_input_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    max_blocks: int | None = None,
    run_function: Callable[..., dict[str, Any]] | None = None,
) -> dict[str, np.ndarray]:
    """The brute-force reference: one `input_size` patch per output block.

    This is the original's method (stride = output size, edge-to-edge
    blocks), on the same padded input as `predict_image`. Slow; for tests
    and the benchmark.

    Args:
        max_blocks: stop after this many blocks (timing on part of an image);
            unpredicted pixels are NaN.
        run_function: a prebuilt `make_run_function(...)`.
        Other arguments: as `predict_image`.

    Returns:
        name -> `[height, width, kept_heads]`.
    """
    known, quantiles = parse_statistics(statistics)
    region = output_region(stack.shape[1:], geometry, border_mode)
    plan = tiling.plan_tiles((region.height, region.width), geometry, geometry.input_size)
    padded = padded_stack(np.asarray(stack, dtype=np.float32), region, plan)
    network_input_fn = network_input_fn or _default_network_input(num_z_values)
    if run_function is None:
        run_function = make_run_function(logits_fn, head_indices, known, quantiles)
    out = geometry.output_size
    blocks = [
        (row, column)
        for row in range(0, plan.rows.grid_length, out)
        for column in range(0, plan.columns.grid_length, out)
    ]
    if max_blocks is not None:
        blocks = blocks[:max_blocks]
    images: dict[str, np.ndarray] = {}
    size = geometry.input_size
    for first in range(0, len(blocks), batch_size):
        batch = blocks[first : first + batch_size]
        inputs = np.stack([network_input_fn(padded[:, r : r + size, c : c + size]) for r, c in batch])
        results = run_function(inputs.astype(np.float32, copy=False))
        for name, value in results.items():
            value = np.asarray(value)
            if name not in images:
                images[name] = np.full(
                    (plan.rows.grid_length, plan.columns.grid_length) + value.shape[3:], np.nan, np.float32
                )
            for index, (r, c) in enumerate(batch):
                images[name][r : r + out, c : c + out] = value[index]
    return {name: image[: region.height, : region.width] for name, image in images.items()}


def memory_per_pixel(model_config: Any, num_heads: int, num_classes: int) -> tuple[float, float]:
    """Modelled bytes per run input pixel and per run output pixel.

    Input pixels: the paper's 267 MB of activations per 250 px patch
    (isl_reference.md §1.9), scaled by base depth; output pixels: logits,
    probabilities and cumulative sums of the kept heads in float32.
    """
    scale = max(model_config.base_depth / 400, 0.05)
    per_input = tiling.PAPER_ACTIVATION_BYTES_PER_PIXEL * scale
    per_output = 4.0 * num_heads * num_classes * 4
    return per_input, per_output


def auto_tile_size(
    geometry: geometry_lib.Geometry,
    model_config: Any,
    num_heads: int,
    memory_budget_bytes: float | None = None,
) -> int:
    """A tile side from available RAM (psutil): a quarter of it, at most 4 GB."""
    if memory_budget_bytes is None:
        import psutil

        available = psutil.virtual_memory().available
        memory_budget_bytes = min(max(available / 4, 0.5e9), 4e9)
    per_input, per_output = memory_per_pixel(model_config, num_heads, model_config.num_classes)
    return tiling.auto_tile_size(geometry, memory_budget_bytes, per_input, per_output)
