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
`round(255 * truth)`, the predicted cumulative probability strictly below
it and the CRPS. `isl evaluate` turns them into the log score, the
information gain, the CRPS and the randomized probability integral transform
(PIT), whose uniformity is the calibration check (`isl.eval.calibration`).

Temperature. A model calibrated with `isl calibrate` divides each target
head's logits by its fitted temperature before the softmax
(`make_run_function(temperatures=...)`); every statistic is then computed
from the calibrated distribution.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from isl import errors
from isl.infer import stitch as stitch_lib
from isl.infer import tiling
from isl.model import geometry as geometry_lib
from isl.model import statistic_names

# The border modes and their windows are owned by `isl.model.geometry`.
BORDER_MODES = geometry_lib.BORDER_MODES
ORIGINAL_BLOCKS_PER_SIDE = geometry_lib.ORIGINAL_BLOCKS_PER_SIDE
OutputRegion = geometry_lib.OutputRegion
output_region = geometry_lib.output_region
# Statistic names (the paper's six and quantiles "qNN") are owned by `isl.model.statistic_names`.
QUANTILE_PREFIX = statistic_names.QUANTILE_PREFIX
quantile_name = statistic_names.quantile_name
CALIBRATION_KEYS = ("true_bin_probability", "cdf_below_true", "crps")


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


def window_region(
    region: OutputRegion,
    window: tuple[int, int, int, int],
    geometry: geometry_lib.Geometry,
    plan_name: str = "exact",
) -> tuple[OutputRegion, OutputRegion]:
    """The region to compute for a window, and the window as a region.

    The computed region starts on the whole region's block grid, a multiple
    of `lcm(block, phase)` from its origin, so the window's pixels equal the
    whole-image prediction's.

    Args:
        region: the border mode's region of the whole image.
        window: (row0, row1, column0, column1) in image pixels, ends exclusive.

    Raises:
        InputError: when the window is empty or not inside `region`.
    """
    row0, row1, column0, column1 = window
    bottom = region.row_offset + region.height
    right = region.column_offset + region.width
    if not (region.row_offset <= row0 < row1 <= bottom and region.column_offset <= column0 < column1 <= right):
        raise errors.InputError(
            f"--region {row0}:{row1},{column0}:{column1} is not inside the predictable region "
            f"{region.row_offset}:{bottom},{region.column_offset}:{right} of this image and --border."
        )
    block = tiling.block_size(geometry, plan_name)
    align = block * geometry.phase // math.gcd(block, geometry.phase)
    start_row = region.row_offset + align * ((row0 - region.row_offset) // align)
    start_column = region.column_offset + align * ((column0 - region.column_offset) // align)
    computed = OutputRegion(start_row, start_column, row1 - start_row, column1 - start_column)
    return computed, OutputRegion(row0, column0, row1 - row0, column1 - column0)


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
    """Splits statistic names into the paper's six and quantiles ("q05" -> 0.05)
    (`isl.model.statistic_names.parse_statistic_names`).

    Raises:
        InputError: for an unknown name.
    """
    return statistic_names.parse_statistic_names(names)


class Network:
    """Kept-pixel logits of a network, the one thing a run needs.

    Calling it with `(inputs, keep_rows, keep_columns)` returns the logits
    `[batch, len(keep_rows), len(keep_columns), heads, classes]` of the dense
    output pixels at those row and column indices. Only a quarter of a dense
    run's output pixels are kept for the paper model (the blocks of its phase
    class), so a model split into core and heads (`from_keras`) gathers the
    embedding first and runs the heads, the softmax and the statistics on the
    kept pixels only. Any other model (`from_logits`, e.g. a SavedModel's
    `logits` signature) computes all its heads on every pixel, then gathers.

    Attributes:
        logits_fn: `inputs -> [batch, height, width, heads, classes]` logits, or None.
        head_indices: the heads to return, in this order (None: all).
        embedding_fn, heads_fn: the core (`inputs -> embedding`) and the heads
            (`embedding -> logits`) of a split model, or None.
    """

    def __init__(
        self,
        logits_fn: Callable[[Any], Any] | None = None,
        head_indices: Sequence[int] | None = None,
        embedding_fn: Callable[[Any], Any] | None = None,
        heads_fn: Callable[[Any], Any] | None = None,
    ) -> None:
        if (logits_fn is None) == (embedding_fn is None or heads_fn is None):
            raise ValueError("Give either logits_fn, or embedding_fn and heads_fn.")
        self.logits_fn = logits_fn
        self.head_indices = None if head_indices is None else list(head_indices)
        self.embedding_fn = embedding_fn
        self.heads_fn = heads_fn

    def __call__(self, inputs: Any, keep_rows: Any, keep_columns: Any) -> Any:
        import tensorflow as tf

        if self.embedding_fn is not None:
            return self.heads_fn(self.kept_embedding(inputs, keep_rows, keep_columns))
        logits = self.logits_fn(inputs)
        if self.head_indices is not None:
            logits = tf.gather(logits, self.head_indices, axis=3)
        return tf.gather(tf.gather(logits, keep_rows, axis=1), keep_columns, axis=2)

    def kept_embedding(self, inputs: Any, keep_rows: Any, keep_columns: Any) -> Any:
        """A split model's embedding at the kept pixels, `[batch, len(keep_rows), len(keep_columns), E]`."""
        import tensorflow as tf

        embedding = self.embedding_fn(inputs)
        return tf.gather(tf.gather(embedding, keep_rows, axis=1), keep_columns, axis=2)

    @classmethod
    def from_logits(cls, logits_fn: Callable[[Any], Any], head_indices: Sequence[int] | None = None) -> Network:
        """`logits_fn`: `[batch, H, W, 2Z]` -> `[batch, h, w, heads, classes]`."""
        return cls(logits_fn=logits_fn, head_indices=head_indices)

    @classmethod
    def from_keras(cls, model: Any, head_indices: Sequence[int] | None = None) -> Network:
        """A Keras model in inference mode (batch norm with moving averages).

        For a model from `isl.model.builder` (embedding layer, heads feeding
        one stacking layer) it is split into the core and a sub-model of the
        chosen heads, so unused heads cost nothing and the heads run on kept
        pixels only. Other models are wrapped whole.
        """
        import keras
        import tensorflow as tf

        from isl.model import builder
        from isl.model import heads as heads_lib

        try:
            embedding = model.get_layer(builder.EMBEDDING_LAYER).output
            head_outputs = model.get_layer(heads_lib.LOGITS_LAYER).input
        except (ValueError, AttributeError):
            embedding = head_outputs = None
        indices = list(range(len(head_outputs))) if head_indices is None and head_outputs else head_indices
        if embedding is None or not isinstance(head_outputs, (list, tuple)) or len(head_outputs) <= max(indices):
            return cls.from_logits(lambda inputs: model(inputs, training=False), head_indices)
        core = keras.Model(model.input, embedding, name=f"{model.name}_core")
        heads = keras.Model(embedding, [head_outputs[index] for index in indices], name=f"{model.name}_heads")

        def heads_fn(features: Any) -> Any:
            outputs = heads(features, training=False)
            if not isinstance(outputs, (list, tuple)):
                outputs = [outputs]
            return tf.stack([tf.cast(output, tf.float32) for output in outputs], axis=3)

        return cls(embedding_fn=lambda inputs: core(inputs, training=False), heads_fn=heads_fn)


def quantile_indices(probabilities: Any, quantiles: Sequence[float]) -> Any:
    """Per distribution, the number of bins whose cumulative probability is < q.

    The median rule of isl_reference.md §2 (`isl.model.statistics`) for any
    q, clipped to classes - 1, without materialising the cumulative sums of
    every bin (a `[..., 256]` cumsum is the slowest op of a run on CPU): the
    bins are cut into groups of 16; the group sums' cumulative sums locate the
    group where the cumulative probability reaches q, and only that group's
    16 bins are accumulated. The sums run in a different order than one long
    cumsum, so a pixel whose cumulative probability lies within float
    rounding (~1e-7) of q can land one bin away; the tests bound how rare.

    Args:
        probabilities: `[..., classes]`, each summing to 1.
        quantiles: the q values in (0, 1).

    Returns:
        `[..., len(quantiles)]` float32 bin indices.
    """
    import tensorflow as tf

    num_classes = int(probabilities.shape[-1])
    group = 16 if num_classes % 16 == 0 and num_classes >= 32 else num_classes
    num_groups = num_classes // group
    grouped = tf.reshape(probabilities, [-1, num_groups, group])
    sums = tf.reduce_sum(grouped, axis=-1)
    group_upper = tf.constant(np.triu(np.ones((num_groups, num_groups), np.float32)))
    inner_upper = tf.constant(np.triu(np.ones((group, group), np.float32)))
    group_cumulative = tf.matmul(sums, group_upper)  # [N, groups], inclusive
    results = []
    for quantile in quantiles:
        below = tf.reduce_sum(tf.cast(group_cumulative < quantile, tf.int32), axis=-1)
        index = tf.minimum(below, num_groups - 1)
        offset = tf.gather(group_cumulative, index, batch_dims=1) - tf.gather(sums, index, batch_dims=1)
        inner = tf.matmul(tf.gather(grouped, index, batch_dims=1), inner_upper) + offset[:, tf.newaxis]
        count = tf.reduce_sum(tf.cast(inner < quantile, tf.int32), axis=-1)
        results.append(tf.minimum(index * group + count, num_classes - 1))
    stacked = tf.cast(tf.stack(results, axis=-1), tf.float32)
    return tf.reshape(stacked, tf.concat([tf.shape(probabilities)[:-1], [len(quantiles)]], axis=0))


def logits_statistics(
    logits: Any, statistics: Sequence[str], quantiles: Sequence[float] = (), inverse_temperatures: Any = None
) -> tuple[dict[str, Any], Any]:
    """Per-pixel statistics of 256-bin logits: the one place where logits become statistics.

    `isl predict`'s runs and the bioimage.io export both call it, so a change
    of rule (e.g. a calibration of the logits) applies to both.

    Args:
        logits: `[..., classes]` (any float type).
        statistics: names from `isl.model.statistics.STATISTICS`; the median
            uses `quantile_indices` (q = 0.5).
        quantiles: extra quantiles in (0, 1), named by `quantile_name`.
        inverse_temperatures: None, or float32 `[heads, 1]` (NumPy, so a trace
            embeds it as a constant): `isl calibrate`'s 1 / temperature of each
            head, multiplying its logits before the softmax.

    Returns:
        (name -> `[...]` float32, probabilities `[..., classes]` float32).
    """
    import tensorflow as tf

    others = tuple(name for name in statistics if name != "median")
    searched = ((0.5,) if "median" in statistics else ()) + tuple(quantiles)
    logits = tempered(logits, inverse_temperatures)
    probabilities = tf.nn.softmax(logits, axis=-1)
    scale = float(probabilities.shape[-1] - 1)
    results = {}
    if others:
        from isl.model import statistics as statistics_lib

        results = dict(statistics_lib.distribution_statistics(probabilities, others))
    if searched:
        indices = quantile_indices(probabilities, searched) / scale
        names = (["median"] if "median" in statistics else []) + [quantile_name(q) for q in quantiles]
        for position, name in enumerate(names):
            results[name] = indices[..., position]
    return {name: tf.cast(value, tf.float32) for name, value in results.items()}, probabilities


def inverse_temperatures_of(temperatures: Sequence[float] | None) -> np.ndarray | None:
    """float32 `[heads, 1]` of 1 / temperature (`logits_statistics`), or None without temperatures."""
    if temperatures is None:
        return None
    return np.array([1.0 / float(value) for value in temperatures], np.float32)[:, np.newaxis]


def tempered(logits: Any, inverse_temperatures: np.ndarray | None) -> Any:
    """float32 logits `[..., heads, classes]`, divided by each head's temperature when given."""
    import tensorflow as tf

    logits = tf.cast(logits, tf.float32)
    if inverse_temperatures is None:
        return logits
    return logits * tf.constant(inverse_temperatures)


def make_run_function(
    network: Network | Callable[[Any], Any],
    statistics: Sequence[str],
    quantiles: Sequence[float] = (),
    with_truth: bool = False,
    with_distributions: bool = False,
    jit_compile: bool = False,
    temperatures: Sequence[float] | None = None,
    with_log_probabilities: bool = False,
    calibration_heads: int | None = None,
    head_chunk_rows: int | None = None,
) -> Callable[..., dict[str, Any]]:
    """A `tf.function` from a batch of run inputs to kept-pixel statistics.

    The function takes `(inputs [batch, H, W, 2Z] float32, keep_rows int32,
    keep_columns int32)` and, with `with_truth`, the true bins `[batch,
    len(keep_rows), len(keep_columns), heads]` int32.

    Args:
        network: a `Network`, or a plain logits function (all heads).
        statistics: names from `isl.model.statistics.STATISTICS`. The median
            is computed here with the same rule as the quantiles
            (`quantile_indices`; equal to `isl.model.statistics`, tested).
        quantiles: extra quantiles in (0, 1): the first bin whose cumulative
            probability reaches q, divided by classes - 1 (the median rule).
        with_truth: also return `CALIBRATION_KEYS`.
        with_distributions: also return "distribution", the probabilities
            `[batch, rows, columns, heads, classes]` (tests; large).
        jit_compile: XLA-compile the whole run (inference only; an
            experiment of `isl benchmark predict --plans=new_xla`).
        temperatures: one per returned head (the network's head order), or
            None: each head's logits are divided by its temperature before
            the softmax (`isl calibrate`; 1 leaves a head as trained).
        with_log_probabilities: also return "log_probabilities", the
            log-softmax `[batch, rows, columns, heads, classes]` (what
            `isl calibrate` fits the temperatures on; large).
        calibration_heads: with `with_truth`, compute `CALIBRATION_KEYS`
            for the first this many heads only (the true bins then have
            this many heads); None: every head.
        head_chunk_rows: for a split `Network` (`from_keras`), run the
            heads, the softmax and the statistics on this many kept rows at
            a time, one chunk after the other (`tf.map_fn`), so the 256-bin
            logits of a whole tile never exist at once: the same values in a
            fraction of the memory. None: all rows at once.

    Returns:
        A function returning name -> `[batch, rows, columns, heads]` float32.
    """
    import tensorflow as tf

    if not isinstance(network, Network):
        network = Network.from_logits(network)

    inverse_temperatures = inverse_temperatures_of(temperatures)  # NumPy: each trace embeds it as a constant.

    def from_logits(logits: Any, true_bins: Any = None) -> dict[str, Any]:
        logits = tempered(logits, inverse_temperatures)
        results, probabilities = logits_statistics(logits, statistics, quantiles)
        if with_distributions:
            results["distribution"] = probabilities
        if with_log_probabilities:
            results["log_probabilities"] = tf.nn.log_softmax(logits, axis=-1)
        if true_bins is not None:
            bins = tf.cast(true_bins, tf.int32)
            if calibration_heads is not None:
                probabilities = probabilities[..., :calibration_heads, :]
            results["true_bin_probability"] = tf.gather(probabilities, bins[..., tf.newaxis], batch_dims=4)[..., 0]
            num_classes = int(probabilities.shape[-1])
            classes = tf.range(num_classes, dtype=tf.int32)
            below = tf.cast(classes < bins[..., tf.newaxis], tf.float32)
            results["cdf_below_true"] = tf.reduce_sum(probabilities * below, axis=-1)
            # CRPS (isl.eval.calibration): sum over k < C - 1 of (C_k - [k >= t])^2 / (C - 1);
            # the cumulative sums as one matmul with an upper-triangular matrix.
            upper = tf.constant(np.triu(np.ones((num_classes, num_classes), np.float32)))
            flat = tf.reshape(probabilities, [-1, num_classes])
            cumulative = tf.reshape(tf.matmul(flat, upper), tf.shape(probabilities))
            difference = (cumulative - (1.0 - below))[..., :-1]
            results["crps"] = tf.reduce_sum(difference * difference, axis=-1) / float(num_classes - 1)
        return results

    chunked = head_chunk_rows is not None and network.embedding_fn is not None and not (
        with_distributions or with_log_probabilities)

    def compute(inputs: Any, keep_rows: Any, keep_columns: Any, true_bins: Any = None) -> dict[str, Any]:
        if not chunked:
            return from_logits(network(inputs, keep_rows, keep_columns), true_bins)
        embedding = network.kept_embedding(inputs, keep_rows, keep_columns)  # [batch, rows, columns, E]
        names = list(statistics) + [quantile_name(q) for q in quantiles]
        names += list(CALIBRATION_KEYS) if true_bins is not None else []
        return _in_row_chunks(embedding, true_bins, int(head_chunk_rows),
                              lambda part, bins: from_logits(network.heads_fn(part), bins), names)

    if with_truth:
        return tf.function(compute, reduce_retracing=True, jit_compile=jit_compile or None)
    return tf.function(
        lambda inputs, keep_rows, keep_columns: compute(inputs, keep_rows, keep_columns),
        reduce_retracing=True, jit_compile=jit_compile or None,
    )


def _in_row_chunks(embedding: Any, true_bins: Any, chunk: int, function: Callable[..., dict[str, Any]],
                   names: Sequence[str]) -> dict[str, Any]:
    """`function(embedding, true_bins)` over chunks of `chunk` rows, one after the other; results re-joined.

    Args:
        embedding: `[batch, rows, columns, E]`; padded with zeros to whole chunks (the padding is cut off).
        true_bins: `[batch, rows, columns, heads]` or None.
        function: `(embedding part, bins part or None) -> name -> [batch, chunk, columns, heads]` float32.
        names: the names `function` returns.
    """
    import tensorflow as tf

    shape = tf.shape(embedding)
    batch, rows = shape[0], shape[1]
    count = (rows + chunk - 1) // chunk
    pad = count * chunk - rows

    def split(tensor: Any) -> Any:
        tensor = tf.pad(tensor, [[0, 0], [0, pad]] + [[0, 0]] * (len(tensor.shape) - 2))
        tail = tf.shape(tensor)[2:]
        tensor = tf.reshape(tensor, tf.concat([[batch, count, chunk], tail], 0))
        return tf.transpose(tensor, [1, 0] + list(range(2, len(tensor.shape))))

    def join(tensor: Any) -> Any:
        tensor = tf.transpose(tensor, [1, 0] + list(range(2, len(tensor.shape))))
        tail = tf.shape(tensor)[3:]
        return tf.reshape(tensor, tf.concat([[batch, count * chunk], tail], 0))[:, :rows]

    elements = (split(embedding),) if true_bins is None else (split(embedding), split(true_bins))
    signature = {name: tf.TensorSpec(shape=None, dtype=tf.float32) for name in names}
    results = tf.map_fn(lambda parts: function(parts[0], parts[1] if len(parts) > 1 else None), elements,
                        fn_output_signature=signature, parallel_iterations=1)
    return {name: join(value) for name, value in results.items()}


def keep_indices(axis_plan: tiling.AxisPlan, geometry: geometry_lib.Geometry) -> np.ndarray:
    """Dense output indices a run keeps along an axis (the same for every run).

    Block j of a run starts `j * lcm(w, phase)` after the run (w: the plan's
    block width); its `w` pixels are kept. Returns int32
    `[max_blocks_per_run * w]`.
    """
    width = axis_plan.block
    spacing = width * geometry.phase // math.gcd(width, geometry.phase)
    count = max(len(run.blocks) for run in axis_plan.runs)
    return np.concatenate([spacing * block + np.arange(width) for block in range(count)]).astype(np.int32)


def keras_logits_fn(model: Any, head_indices: Sequence[int] | None = None) -> Network:
    """Alias of `Network.from_keras` (kept for callers of the first version)."""
    return Network.from_keras(model, head_indices)


def _default_network_input(num_z_values: int) -> Callable[[np.ndarray], np.ndarray]:
    from isl.data import assemble

    return lambda stack: assemble.network_input(stack, num_z_values)


def predict_image(
    network: Network | Callable[[Any], Any] | None,
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
    plan_name: str = "exact",
    window: tuple[int, int, int, int] | None = None,
) -> Prediction:
    """Predicts whole images of per-pixel statistics from one source stack.

    The whole-image form of `stream_image` (which hands out bands of rows
    and never holds the whole output): for tests, the benchmark and callers
    whose images are small. `isl predict` streams.

    Args:
        network: a `Network`, or a logits function `[batch, H, W, 2Z]` ->
            `[batch, H - 2b, W - 2b, heads, classes]`; unused when
            `run_function` is given.
        stack: `[num_source_z, height, width]` float32 in [0, 1].
        geometry: the model's geometry (border, phase, output size).
        num_z_values: the model's z values (network input depth / 2).
        head_indices: heads to keep from a plain logits function (None: all).
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
        plan_name: `isl.infer.tiling.PLANS`: "exact" (default: the model's
            own patch-wise reference in the fewest runs), "output" (the first
            version's `out`-wide blocks), "one" (one run per tile;
            approximate for models trained with 8-px outputs).
        window: optional (row0, row1, column0, column1) in image pixels:
            predict only this window of the `border_mode` region (the block
            grid starts at row0, column0; context is read from the image
            around it, reflected only beyond the image).

    Returns:
        A Prediction; statistics `[height, width, kept_heads]`.
    """
    if stack.ndim != 3:
        raise errors.InputError(f"A source stack must be [num_source_z, height, width]; got shape {stack.shape}.")
    known, quantiles = parse_statistics(statistics)
    region, wanted, plan = plan_image(stack.shape[1:], geometry, border_mode, tile_size, plan_name, window)
    if run_function is None:
        if not isinstance(network, Network):
            network = Network.from_logits(network, head_indices)
        run_function = make_run_function(network, known, quantiles, with_truth=truth is not None)
    truth_fn = None
    if truth is not None:
        values, masks = truth
        truth_fn = _array_truth(values, wanted)
    bands: dict[str, list[np.ndarray]] = {}

    def collect(row0: int, images: dict[str, np.ndarray]) -> None:
        for name, image in images.items():
            bands.setdefault(name, []).append(np.array(image))  # A copy: the stitcher reuses its buffer.

    start = time.perf_counter()
    stream_image(plan, region, wanted, stack, network_input_fn or _default_network_input(num_z_values),
                 run_function, collect, truth_fn, batch_size, progress)
    seconds = time.perf_counter() - start
    images = {name: np.concatenate(parts, axis=0) for name, parts in bands.items()}
    calibration = None
    if truth is not None:
        window_masks = masks[wanted.row_offset : wanted.row_offset + wanted.height,
                             wanted.column_offset : wanted.column_offset + wanted.width] > 0
        calibration = _calibration(images, window_masks)
    ordered = _ordered(images, list(known) + [quantile_name(q) for q in quantiles])
    return Prediction(ordered, tuple(channel_names), wanted, calibration, _plan_info(plan, plan_name, seconds))


def _array_truth(values: np.ndarray, wanted: OutputRegion) -> Callable[[int, int, int, int], np.ndarray]:
    """A `stream_image` truth function over whole-image truth values `[height, width, heads]`."""

    def truth_fn(row0: int, row1: int, column0: int, column1: int) -> np.ndarray:
        return values[row0:row1, column0:column1]

    return truth_fn


def plan_image(
    image_shape: tuple[int, int],
    geometry: geometry_lib.Geometry,
    border_mode: str,
    tile_size: int | None,
    plan_name: str,
    window: tuple[int, int, int, int] | None,
) -> tuple[OutputRegion, OutputRegion, tiling.TilePlan]:
    """The region to compute, the region wanted (a window of it, or the same) and the tile plan."""
    region = output_region(image_shape, geometry, border_mode)
    wanted = region
    if window is not None:
        region, wanted = window_region(region, window, geometry, plan_name)
    if tile_size is not None:
        tile_size = tiling.valid_tile_size(geometry, tile_size, plan_name)
    return region, wanted, tiling.plan_tiles((region.height, region.width), geometry, tile_size, plan_name)


class BandStitcher:
    """Collects run outputs into bands of complete output rows.

    Runs are added row run by row run, in the order of their starts
    (`stream_image`); every output block belongs to one run starting at or
    before it, so once the runs starting below row `r` are done, every row
    below `r` is complete and `pop(r)` hands it out. Memory: one buffer of
    about two row runs times the output width, never the whole image. The
    buffer is reused: the rows still to come are moved to its top when a run
    needs the room (`_compact`), and it grows only while the first row runs
    arrive, so a band that `pop` returned is a view valid until the next
    `add` (copy it to keep it). Growing a fresh buffer per row run instead
    held the old one (viewed by the popped band) beside the new one: twice
    the modelled rows at the peak.

    Args:
        plan: the tile plan.
        trailing_shape: shape of the per-pixel values, e.g. `(heads,)`.
    """

    def __init__(self, plan: tiling.TilePlan, trailing_shape: tuple[int, ...] = ()) -> None:
        self.plan = plan
        self.trailing_shape = tuple(trailing_shape)
        self.base = 0  # The first row not yet handed out (grid coordinates).
        self._top = 0  # The buffer row holding grid row `base`.
        self._columns = plan.columns.grid_length
        self._band = np.full((0, self._columns) + self.trailing_shape, np.nan, np.float32)
        self._written = np.zeros((0, self._columns), bool)

    def add(self, row_run: tiling.AxisRun, column_run: tiling.AxisRun, value: np.ndarray) -> None:
        """Copies the owned blocks of a run's compact output `[blocks_r * w, blocks_c * w, ...]`."""
        dense_rows, output_rows = stitch_lib._axis_indices(row_run, self.plan.rows.block, True)
        dense_columns, output_columns = stitch_lib._axis_indices(column_run, self.plan.columns.block, True)
        if value.shape[2:] != self.trailing_shape:
            raise ValueError(f"Run output of shape {value.shape} does not end in {self.trailing_shape}.")
        if int(output_rows.min()) < self.base:
            raise ValueError(f"Rows from {int(output_rows.min())} were already handed out (up to {self.base}).")
        needed = int(output_rows.max()) + 1 - self.base
        if self._top + needed > self._band.shape[0]:
            self._compact()
        if needed > self._band.shape[0]:
            grow = needed - self._band.shape[0]
            self._band = np.concatenate(
                [self._band, np.full((grow, self._columns) + self.trailing_shape, np.nan, np.float32)])
            self._written = np.concatenate([self._written, np.zeros((grow, self._columns), bool)])
        rows = output_rows - self.base + self._top
        self._band[np.ix_(rows, output_columns)] = value[np.ix_(dense_rows, dense_columns)]
        self._written[np.ix_(rows, output_columns)] = True

    def _compact(self) -> None:
        """Moves the rows from `base` on to the buffer's top (in chunks that never overlap) and clears the rest."""
        top, size = self._top, self._band.shape[0]
        if top == 0:
            return
        live = size - top
        for first in range(0, live, top):  # Each chunk moves up by `top` rows, so no more than `top` at a time.
            last = min(live, first + top)
            self._band[first:last] = self._band[top + first : top + last]
            self._written[first:last] = self._written[top + first : top + last]
        self._band[live:] = np.nan
        self._written[live:] = False
        self._top = 0

    def pop(self, upto: int) -> np.ndarray:
        """Rows `[base, upto)` cropped to the plan's output width (a view valid until the next `add`); the base
        moves to `upto`.

        Raises:
            ValueError: when a pixel of those rows was never written.
        """
        count = max(0, upto - self.base)
        end = self._top + count
        if end > self._band.shape[0] or not self._written[self._top : end].all():
            raise ValueError(f"Output rows {self.base}..{upto} are not complete; the plan does not cover the grid.")
        band = self._band[self._top : end, : self.plan.columns.output_length]
        self._top = end
        self.base = upto
        return band


def input_rows_and_columns(
    image_shape: tuple[int, int], region: OutputRegion, geometry: geometry_lib.Geometry
) -> Callable[[tiling.AxisRun, tiling.AxisRun, int, int], tuple[np.ndarray, np.ndarray]]:
    """Image row and column indices a run reads (reflected beyond the image): `padded_stack` without the copy."""
    border = geometry.border

    def indices(row: tiling.AxisRun, column: tiling.AxisRun, rows: int, columns: int) -> tuple[np.ndarray, np.ndarray]:
        row_indices = reflect_indices(np.arange(row.start, row.start + rows) + region.row_offset - border,
                                      image_shape[0])
        column_indices = reflect_indices(np.arange(column.start, column.start + columns) + region.column_offset
                                         - border, image_shape[1])
        return row_indices, column_indices

    return indices


def stream_image(
    plan: tiling.TilePlan,
    region: OutputRegion,
    wanted: OutputRegion,
    stack: np.ndarray,
    network_input_fn: Callable[[np.ndarray], np.ndarray],
    run_function: Callable[..., dict[str, Any]],
    on_rows: Callable[[int, dict[str, np.ndarray]], None],
    truth_fn: Callable[[int, int, int, int], np.ndarray] | None = None,
    batch_size: int = 1,
    progress: Any = None,
) -> None:
    """Runs every tile of `plan` and hands out the `wanted` output in bands of complete rows, top to bottom.

    Memory: one batch of runs, the truth of one run and the stitched rows of
    about two row runs times the output width; neither the padded input nor
    any whole-image output is made.

    Args:
        plan: from `plan_image`, over `region` (image coordinates: output
            pixel o of the plan shows image pixel o + region offset).
        wanted: the window of `region` to hand out (`window_region`), or `region`.
        stack: `[num_source_z, height, width]` float32 (read one run at a time).
        network_input_fn: a stack slice `[num_source_z, h, w]` -> `[h, w, 2Z]`.
        run_function: `make_run_function(...)`; with `truth_fn`, the truth form.
        on_rows: called as `on_rows(row0, {name: [rows, wanted.width, ...]})`
            with `row0` in `wanted`'s coordinates, rows in order, each once;
            the arrays are views of `BandStitcher`'s reused buffer, valid
            until `on_rows` returns (copy what must be kept).
        truth_fn: `(row0, row1, column0, column1)` in image pixels (inside
            the image) -> true values `[rows, columns, heads]` in [0, 1], or None.
        batch_size: runs per network call.
        progress: optional object with `update(count)`.
    """
    keep_rows = keep_indices(plan.rows, plan.geometry)
    keep_columns = keep_indices(plan.columns, plan.geometry)
    run_rows, run_columns = plan.run_input_shape
    out_rows, out_columns = plan.run_output_shape
    image_shape = (int(stack.shape[1]), int(stack.shape[2]))
    indices = input_rows_and_columns(image_shape, region, plan.geometry)
    row_runs = sorted(plan.rows.runs, key=lambda run: run.start)
    stitchers: dict[str, BandStitcher] = {}
    top = wanted.row_offset - region.row_offset
    left = wanted.column_offset - region.column_offset
    popped = 0  # Region rows handed to `on_rows` or dropped (outside `wanted`) so far.
    step = max(1, batch_size)

    def hand_out(upto: int) -> None:
        nonlocal popped
        bands = {name: stitcher.pop(upto) for name, stitcher in stitchers.items()}
        start, end = max(popped, top), min(upto, top + wanted.height)
        if end > start:
            on_rows(start - top, {name: band[start - popped : end - popped, left : left + wanted.width]
                                  for name, band in bands.items()})
        popped = upto

    for position, row in enumerate(row_runs):
        runs = [(row, column) for column in plan.columns.runs]
        for first in range(0, len(runs), step):
            batch_runs = runs[first : first + step]
            inputs = []
            for run_row, run_column in batch_runs:
                rows, columns = indices(run_row, run_column, run_rows, run_columns)
                inputs.append(network_input_fn(stack[np.ix_(np.arange(stack.shape[0]), rows, columns)]))
            arguments = [np.stack(inputs).astype(np.float32, copy=False), keep_rows, keep_columns]
            if truth_fn is not None:
                arguments.append(np.stack([_run_truth(truth_fn, region, run_row, run_column, out_rows, out_columns,
                                                      keep_rows, keep_columns) for run_row, run_column in batch_runs]))
            for name, value in run_function(*arguments).items():
                value = np.asarray(value)
                if name not in stitchers:
                    stitchers[name] = BandStitcher(plan, value.shape[3:])
                for index, (run_row, run_column) in enumerate(batch_runs):
                    stitchers[name].add(run_row, run_column, value[index])
            if progress is not None:
                progress.update(len(batch_runs))
        complete = row_runs[position + 1].start if position + 1 < len(row_runs) else plan.rows.grid_length
        hand_out(min(complete, plan.rows.output_length))


def _run_truth(
    truth_fn: Callable[[int, int, int, int], np.ndarray],
    region: OutputRegion,
    row: tiling.AxisRun,
    column: tiling.AxisRun,
    out_rows: int,
    out_columns: int,
    keep_rows: np.ndarray,
    keep_columns: np.ndarray,
) -> np.ndarray:
    """True 8-bit bins of a run's kept pixels `[len(keep_rows), len(keep_columns), heads]` int32 (0 outside)."""
    row0 = row.start + region.row_offset
    column0 = column.start + region.column_offset
    row1 = min(row.start + out_rows, region.height) + region.row_offset
    column1 = min(column.start + out_columns, region.width) + region.column_offset
    values = truth_fn(row0, max(row0, row1), column0, max(column0, column1))
    bins = np.zeros((out_rows, out_columns, values.shape[-1]), np.int32)
    bins[: values.shape[0], : values.shape[1]] = np.clip(np.round(values * 255), 0, 255).astype(np.int32)
    return bins[np.ix_(keep_rows, keep_columns)]


def _calibration(images: dict[str, np.ndarray], truth_masks: np.ndarray) -> dict[str, np.ndarray]:
    """Takes the `CALIBRATION_KEYS` out of `images`, NaN where the truth is missing."""
    calibration = {key: images.pop(key) for key in CALIBRATION_KEYS}
    for value in calibration.values():
        value[~truth_masks] = np.nan
    return calibration


def _ordered(images: dict[str, np.ndarray], order: list[str]) -> dict[str, np.ndarray]:
    """`images` in the requested statistics' order, then any others (custom run functions) sorted."""
    order = order + sorted(name for name in images if name not in order)
    return {name: images[name] for name in order}


def _plan_info(plan: tiling.TilePlan, plan_name: str, seconds: float) -> dict[str, Any]:
    """The plan and timing figures of `Prediction.info`."""
    return {
        "tile_size": plan.run_input_shape,
        "num_runs": plan.num_runs,
        "phase_classes": len(tiling.block_classes(plan.geometry, plan_name)),
        "plan": plan_name,
        "block": plan.rows.block,
        "exact": tiling.is_exact(plan.geometry, plan_name),
        "computed_input_pixels": plan.computed_input_pixels,
        "seconds": seconds,
    }


def predict_patchwise(
    network: Network | Callable[[Any], Any] | None,
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
    plan_name: str = "exact",
) -> dict[str, np.ndarray]:
    """The brute-force reference: one `input_size` patch per output block.

    For 8-px models this is the original's method (stride = output size,
    edge-to-edge blocks); for models trained with outputs wider than the
    phase (24 = 8 + 16) patches lie on a stride-`phase` grid and each gives
    the first `phase` pixels of its output (`tiling.block_size`). Same padded
    input as `predict_image`. Slow; for tests and the benchmark.

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
    if not tiling.is_exact(geometry, plan_name):
        raise ValueError(f"Plan {plan_name!r} has no patch-wise reference for output size {geometry.output_size}.")
    plan = tiling.plan_tiles((region.height, region.width), geometry, geometry.input_size, plan_name)
    padded = padded_stack(np.asarray(stack, dtype=np.float32), region, plan)
    network_input_fn = network_input_fn or _default_network_input(num_z_values)
    if run_function is None:
        if not isinstance(network, Network):
            network = Network.from_logits(network, head_indices)
        run_function = make_run_function(network, known, quantiles)
    out = plan.rows.block
    keep = np.arange(out, dtype=np.int32)
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
        results = run_function(inputs.astype(np.float32, copy=False), keep, keep)
        for name, value in results.items():
            value = np.asarray(value)
            if name not in images:
                images[name] = np.full(
                    (plan.rows.grid_length, plan.columns.grid_length) + value.shape[3:], np.nan, np.float32
                )
            for index, (r, c) in enumerate(batch):
                images[name][r : r + out, c : c + out] = value[index]
    return {name: image[: region.height, : region.width] for name, image in images.items()}


# Measured peak RSS per run input pixel of the inference graph (`isl.infer.graph`)
# of the paper-size network (base depth 400) with 4 target heads and the median:
# the slope between 330 px and 522 px tiles of checkpoints/condition_b_sample
# (BUILD_NOTES.md, issue 13). Keyed by the compute dtype.
MEASURED_BYTES_PER_INPUT_PIXEL = {"float32": 5990.0, "bfloat16": 4100.0}
MEASURED_HEADS = 4
# The model, TensorFlow and the graph, outside the per-pixel part: 0.8 GB after loading the shipped
# checkpoint, 1.0 GB with the traced run (issue 25: the modelled peak was 0.2 GB under the measured one).
RUNTIME_BYTES = 1.0e9
# The largest activation budget chosen automatically (a quarter of the
# available RAM below it): fewer, larger tiles waste less overlap.
MAX_AUTO_BUDGET_BYTES = 4e9


# `make_run_function(head_chunk_rows=...)`: the heads, softmax and statistics run on about this many kept
# pixels at a time, so their 256-bin tensors are bounded whatever the tile (`head_chunk_rows`).
HEAD_CHUNK_PIXELS = 4096


def head_chunk_rows(kept_columns: int) -> int:
    """Kept rows per heads chunk for a run keeping `kept_columns` columns (`HEAD_CHUNK_PIXELS` pixels)."""
    return max(1, HEAD_CHUNK_PIXELS // max(1, kept_columns))


def head_chunk_bytes(num_heads: int, num_classes: int) -> float:
    """Modelled memory of one heads chunk: float32 logits and probabilities of `HEAD_CHUNK_PIXELS` pixels."""
    return HEAD_CHUNK_PIXELS * num_heads * 2.0 * num_classes * 4


def memory_per_pixel(
    model_config: Any, num_heads: int, num_classes: int, dtype: str = "float32", chunked_heads: bool = False
) -> tuple[float, float]:
    """Modelled bytes per run input pixel and per run output pixel.

    Input pixels: the measured peak per input pixel (`MEASURED_BYTES_PER_INPUT_PIXEL`,
    which includes 4 heads' logits and probabilities), scaled by base depth;
    output pixels: each head beyond those 4 adds its float32 logits and
    probabilities, `2 * num_classes * 4` bytes, unless the heads run in
    chunks (`chunked_heads`; then `head_chunk_bytes` in all).
    """
    scale = max(model_config.base_depth / 400, 0.05)
    per_input = MEASURED_BYTES_PER_INPUT_PIXEL.get(dtype, MEASURED_BYTES_PER_INPUT_PIXEL["float32"]) * scale
    per_output = 0.0 if chunked_heads else max(0, num_heads - MEASURED_HEADS) * 2.0 * num_classes * 4
    return per_input, per_output


def auto_tile_size(
    geometry: geometry_lib.Geometry,
    model_config: Any,
    num_heads: int,
    memory_budget_bytes: float | None = None,
    plan_name: str = "exact",
    dtype: str = "float32",
) -> int:
    """A tile side from available RAM (psutil): a quarter of it, at most
    `MAX_AUTO_BUDGET_BYTES`, with the measured bytes per pixel."""
    if memory_budget_bytes is None:
        import psutil

        available = psutil.virtual_memory().available
        memory_budget_bytes = min(max(available / 4, 0.5e9), MAX_AUTO_BUDGET_BYTES)
    per_input, per_output = memory_per_pixel(model_config, num_heads, model_config.num_classes, dtype)
    return tiling.auto_tile_size(geometry, memory_budget_bytes, per_input, per_output, plan_name)
