"""Whole-image prediction inside a TensorFlow graph: the exact tile plan as TF ops.

`isl predict` plans its runs in Python (`isl.infer.tiling.plan_axis`) for
the image size it is given. A SavedModel signature gets images of any size,
so the same plan is computed here from the size tensor with integer TF ops
(`axis_plan`), the runs execute one at a time in a `tf.map_fn`, and the
kept blocks are stitched by one gather per axis. The tests check the plan
against `tiling.plan_axis` for many lengths and tile sizes, and the whole
result against `isl.infer.predict.predict_image`.

Per axis, for a requested output length L (output coordinate o shows padded
input pixel o + border, as in `isl.infer.predict`):

* blocks `b = 0, out, 2 out, ...` below `grid = out * ceil(L / out)`; block b
  has class `b mod phase`; blocks of one class are `lcm(out, phase)` apart;
* every run owns `blocks_per_run` consecutive blocks of its class (the last
  run of a class fewer), with run input `input_size + phase * k`;
* output pixel o is kept pixel `(i mod blocks_per_run) * out + (o - b)` of
  run `first_run[class] + i // blocks_per_run`, where i is the block's index
  within its class.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from isl.infer import tiling
from isl.model import geometry as geometry_lib

# The graph tiles with blocks of the model's output size (`tiling`'s "output"
# plan). For the paper's 8-px models that is `isl predict`'s plan. For models
# whose output exceeds the phase and is not a multiple of it (24 px), `isl
# predict` defaults to 16-px blocks (one run per tile); both are exact
# patch-wise references, and they differ slightly (BUILD_NOTES, issue 13).
GRAPH_PLAN = "output"


def _class_firsts(geometry: geometry_lib.Geometry) -> tuple[int, ...]:
    """First block start (a multiple of `out`) of each class of `tiling.block_classes`."""
    out, phase = geometry.output_size, geometry.phase
    firsts = []
    for residue in tiling.block_classes(geometry, GRAPH_PLAN):
        firsts.append(next(m * out for m in range(phase) if (m * out) % phase == residue))
    return tuple(firsts)


def max_blocks_per_run(geometry: geometry_lib.Geometry, tile_size: int | None) -> int | None:
    """Blocks of one class a run of input side `tile_size` can own (None: unbounded)."""
    if tile_size is None:
        return None
    spacing = geometry.output_size * geometry.phase // math.gcd(geometry.output_size, geometry.phase)
    max_k = max(0, (tile_size - geometry.input_size) // geometry.phase)
    return max_k * geometry.phase // spacing + 1


def axis_plan(length: Any, geometry: geometry_lib.Geometry, tile_size: int | None) -> dict[str, Any]:
    """`tiling.plan_axis(length, geometry, tile_size, plan=GRAPH_PLAN)` as int32 TF tensors.

    Args:
        length: scalar int32 tensor, the output length (>= 1).
        geometry: the network geometry.
        tile_size: the largest run input side (already a valid size), or
            None for one run per class.

    Returns:
        starts `[runs]` (run input start = first output coordinate),
        run_input_length, run_output_length, blocks_per_run (scalars),
        keep `[blocks_per_run * out]` (kept dense indices of every run),
        run_of and position `[length]` (the run and kept index of each
        output pixel).
    """
    import tensorflow as tf

    out, phase = geometry.output_size, geometry.phase
    spacing = out * phase // math.gcd(out, phase)
    step = math.gcd(out, phase)
    firsts = tf.constant(_class_firsts(geometry), tf.int32)
    length = tf.cast(length, tf.int32)
    grid = (length + out - 1) // out * out
    counts = tf.maximum(0, (grid - firsts + spacing - 1) // spacing)
    nonempty = counts > 0
    limit = max_blocks_per_run(geometry, tile_size)
    max_blocks = tf.reduce_max(counts) if limit is None else tf.constant(limit, tf.int32)
    runs_needed = tf.maximum(1, (counts + max_blocks - 1) // max_blocks)
    balanced = (counts + runs_needed - 1) // runs_needed
    blocks_per_run = tf.maximum(1, tf.reduce_max(tf.where(nonempty, balanced, 1)))
    k = ((blocks_per_run - 1) * spacing + phase - 1) // phase
    runs_per_class = (counts + blocks_per_run - 1) // blocks_per_run
    first_run = tf.cumsum(runs_per_class, exclusive=True)
    run_index = tf.range(tf.reduce_sum(runs_per_class))
    run_class = tf.searchsorted(tf.cumsum(runs_per_class), run_index, side="right")
    starts = tf.gather(firsts, run_class) + (run_index - tf.gather(first_run, run_class)) * blocks_per_run * spacing
    pixels = tf.range(length)
    blocks = pixels - pixels % out
    block_class = (blocks % phase) // step
    within_class = (blocks - tf.gather(firsts, block_class)) // spacing
    keep = tf.reshape(spacing * tf.range(blocks_per_run)[:, None] + tf.range(out)[None, :], [-1])
    return {
        "starts": starts,
        "run_input_length": geometry.input_size + phase * k,
        "run_output_length": out + phase * k,
        "blocks_per_run": blocks_per_run,
        "keep": keep,
        "run_of": tf.gather(first_run, block_class) + within_class // blocks_per_run,
        "position": (within_class % blocks_per_run) * out + (pixels - blocks),
    }


def reflect_indices(indices: Any, length: Any) -> Any:
    """`isl.infer.predict.reflect_indices` in TF: mirror into `[0, length)`."""
    import tensorflow as tf

    period = tf.maximum(2 * (length - 1), 1)
    indices = tf.math.floormod(indices, period)
    return tf.where(length == 1, tf.zeros_like(indices), tf.where(indices < length, indices, period - indices))


def whole_image_function(
    run_function: Callable[..., dict[str, Any]],
    network_input: Callable[[Any], Any],
    geometry: geometry_lib.Geometry,
    statistics: tuple[str, ...],
    num_heads: int,
    tile_size: int | None,
    border_mode: str = "reflect",
) -> Callable[[Any], dict[str, Any]]:
    """A function from one image to its stitched statistics.

    Args:
        run_function: `isl.infer.predict.make_run_function(...)`: (inputs
            `[1, H, W, 2Z]`, keep_rows, keep_columns) -> name -> `[1, rows,
            columns, heads]`.
        network_input: `[1, H, W, n]` float32 -> `[1, H, W, 2Z]`.
        geometry: the network geometry.
        statistics: the names `run_function` returns.
        num_heads: heads it returns.
        tile_size: the largest run input side (valid), or None.
        border_mode: "reflect" (output = the image's size) or "valid" (the
            interior `[border, side - border)`: the blocks of `isl predict
            --border=valid`, plus, when `side - 2 border` is not a multiple
            of `out`, a last partial block whose patch reflects past the far
            edge, as in "reflect" mode).

    Returns:
        `image [H, W, n]` float32 in [0, 1] -> name -> `[h, w, heads]` float32.
    """
    import tensorflow as tf

    border = geometry.border

    def predict(image: Any) -> dict[str, Any]:
        shape = tf.shape(image)
        height, width = shape[0], shape[1]
        if border_mode == "reflect":
            offset, sizes = 0, (height, width)
        elif border_mode == "valid":
            offset = border
            sizes = (tf.maximum(height - 2 * border, 1), tf.maximum(width - 2 * border, 1))
        else:
            raise ValueError(f"Unknown border mode {border_mode!r}.")
        rows, columns = (axis_plan(size, geometry, tile_size) for size in sizes)
        row_indices = reflect_indices(
            tf.range(tf.reduce_max(rows["starts"]) + rows["run_input_length"]) + offset - border, height)
        column_indices = reflect_indices(
            tf.range(tf.reduce_max(columns["starts"]) + columns["run_input_length"]) + offset - border, width)
        padded = tf.gather(tf.gather(image, row_indices, axis=0), column_indices, axis=1)
        num_columns = tf.size(columns["starts"])

        def one_run(index: Any) -> dict[str, Any]:
            row_start = rows["starts"][index // num_columns]
            column_start = columns["starts"][index % num_columns]
            tile = padded[row_start : row_start + rows["run_input_length"],
                          column_start : column_start + columns["run_input_length"]]
            results = run_function(network_input(tile[tf.newaxis]), rows["keep"], columns["keep"])
            return {name: results[name][0] for name in statistics}

        signature = {name: tf.TensorSpec([None, None, num_heads], tf.float32) for name in statistics}
        runs = tf.map_fn(one_run, tf.range(tf.size(rows["starts"]) * num_columns),
                         fn_output_signature=signature, parallel_iterations=1)
        kept_rows, kept_columns = tf.size(rows["keep"]), tf.size(columns["keep"])
        row_index = rows["run_of"] * kept_rows + rows["position"]
        column_index = columns["run_of"] * kept_columns + columns["position"]
        stitched = {}
        for name, value in runs.items():
            # [runs_r * runs_c, kr, kc, heads] -> [runs_r * kr, runs_c * kc, heads]
            value = tf.reshape(value, [-1, num_columns, kept_rows, kept_columns, num_heads])
            value = tf.reshape(tf.transpose(value, [0, 2, 1, 3, 4]), [-1, num_columns * kept_columns, num_heads])
            stitched[name] = tf.gather(tf.gather(value, row_index, axis=0), column_index, axis=1)
        return stitched

    return predict
