"""Assembles the dense outputs of planned runs into whole images; NumPy only.

Each run owns some `block x block` blocks (`out`, or `phase` for models
trained with outputs wider than the phase) of the output grid (see
`isl.infer.tiling`); its dense output pixel `d` (per axis) is output
coordinate `run.start + d`. The stitcher copies exactly the owned blocks,
so every output pixel is written once and there is no blending: the result
is the original's edge-to-edge tiling of 8 x 8 blocks (isl_reference.md §5.1).
"""

from __future__ import annotations

import numpy as np

from isl.infer import tiling


def _axis_indices(run: tiling.AxisRun, width: int, compact: bool) -> tuple[np.ndarray, np.ndarray]:
    """(run output indices, image indices) of the pixels a run owns along an axis.

    Dense: the run output holds every dense pixel, `block - run.start + r`.
    Compact: it holds only the owned blocks, block j at `j * width + r`.
    """
    offsets = np.arange(width)
    output_indices = np.concatenate([start + offsets for start in run.blocks])
    if compact:
        return np.arange(len(output_indices)), output_indices
    return output_indices - run.start, output_indices


class Stitcher:
    """Collects per-pixel arrays from runs into images of the plan's grid.

    Args:
        plan: the tile plan.
        trailing_shape: shape of the per-pixel values, e.g. `(num_channels,)`.
        dtype: dtype of the stitched arrays.
        fill_value: value of pixels no run has written yet.

    Example:
        stitcher = Stitcher(plan, (3,))
        for row_run, column_run in plan.runs():
            stitcher.add(row_run, column_run, dense)  # dense: [run_out_h, run_out_w, 3]
        image = stitcher.result()                     # [height, width, 3]
    """

    def __init__(
        self,
        plan: tiling.TilePlan,
        trailing_shape: tuple[int, ...] = (),
        dtype: np.dtype | type = np.float32,
        fill_value: float = np.nan,
    ) -> None:
        self.plan = plan
        self.trailing_shape = tuple(trailing_shape)
        grid = (plan.rows.grid_length, plan.columns.grid_length)
        self._image = np.full(grid + self.trailing_shape, fill_value, dtype=dtype)
        self._written = np.zeros(grid, dtype=bool)

    def add(self, row_run: tiling.AxisRun, column_run: tiling.AxisRun, dense: np.ndarray,
            compact: bool = False) -> None:
        """Copies the blocks `row_run x column_run` owns from its output.

        Args:
            row_run, column_run: the run's axis runs.
            dense: the run's output, `[rows, columns, *trailing_shape]`:
                the dense output `[run_out_h, run_out_w, ...]`, or with
                `compact` only its owned blocks, `[blocks_r * out,
                blocks_c * out, ...]` (`isl.infer.predict.keep_indices`).
                A larger array is fine: only the owned pixels are read.
            compact: see `dense`.
        """
        dense_rows, output_rows = _axis_indices(row_run, self.plan.rows.block, compact)
        dense_columns, output_columns = _axis_indices(column_run, self.plan.columns.block, compact)
        expected = (int(dense_rows.max()) + 1, int(dense_columns.max()) + 1)
        if dense.shape[0] < expected[0] or dense.shape[1] < expected[1] or dense.shape[2:] != self.trailing_shape:
            raise ValueError(
                f"Run output of shape {dense.shape} does not cover the owned blocks: need at least "
                f"{expected} + {self.trailing_shape}."
            )
        self._image[np.ix_(output_rows, output_columns)] = dense[np.ix_(dense_rows, dense_columns)]
        self._written[np.ix_(output_rows, output_columns)] = True

    @property
    def complete(self) -> bool:
        """True when every pixel of the grid has been written."""
        return bool(self._written.all())

    def result(self) -> np.ndarray:
        """The stitched image cropped to the plan's output shape.

        Raises:
            ValueError: if some pixel was never written (an incomplete plan).
        """
        if not self.complete:
            missing = int((~self._written).sum())
            raise ValueError(f"{missing} output pixels were never written; the plan does not cover the grid.")
        height, width = self.plan.output_shape
        return self._image[:height, :width]
