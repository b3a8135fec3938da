"""The frozen core of a network with 256-bin heads, run over whole images in tiles: the embedding a ridge
read-out (`isl.model.readout`) maps to its targets (`isl readout` fits on it, `isl predict` runs it).

It runs a model, so it lives here beside the other runners, not with the read-out's arithmetic in `isl/model/`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from isl import config as config_lib
from isl import errors
from isl.data import assemble
from isl.infer import graph as graph_lib
from isl.model import builder
from isl.model import geometry as geometry_lib
from isl.model import readout as readout_lib

# Requested output side of one embedding tile (input 506 px for the paper network): modest memory.
TILE_OUTPUT = 264


class Embedder:
    """Runs a model's frozen core over whole images in tiles.

    Tiles start on multiples of the network's shift period, so every tile
    sees the same alignment and the embedding has no seams.

    Args:
        model: a built model with 256-bin heads (`isl.model.builder`), any input size.
        config: its config.
    """

    def __init__(self, model: Any, config: config_lib.ExperimentConfig) -> None:
        if config.model.architecture == "unet_regression":
            raise errors.InputError(
                "A read-out needs a network with a core embedding and 256-bin heads; the U-Net regression has none."
            )
        # The largest valid output side <= TILE_OUTPUT: the smallest one plus whole shift periods.
        smallest = geometry_lib.reference_geometry(config.model)
        periods = max(0, (TILE_OUTPUT - smallest.output_size) // smallest.phase)
        tile = geometry_lib.geometry(config.model, smallest.output_size + smallest.phase * periods)
        self.border = tile.border
        self.input_size = tile.input_size
        self.output_size = tile.output_size
        self.stride = max(tile.phase, (tile.output_size // tile.phase) * tile.phase)
        self.phase = tile.phase
        self.num_z_values = config.channels.num_z_values
        self.core = builder.core_model(graph_lib.inference_model(model))
        self.embedding_size = int(self.core.output.shape[-1])

    def crop_for(self, shape: tuple[int, int], window: tuple[int, int, int, int], radius: int = 0
                 ) -> tuple[int, int, int, int]:
        """The input crop whose embedding equals the whole image's on `window` widened by `radius`.

        Args:
            shape: the image's (height, width).
            window: (row0, row1, column0, column1) inside the image, ends exclusive.
            radius: extra embedding pixels needed around the window (the
                read-out's largest box-mean radius).

        Returns:
            (row0, row1, column0, column1) of the crop: the window plus the
            network's border and `radius` on each side, clipped to the image,
            starting on multiples of the shift period (so the tiles align with
            the whole image's and each embedding pixel is computed from the
            same inputs as there).
        """
        margin = self.border + radius
        row0, row1, column0, column1 = window
        top = max(0, row0 - margin) // self.phase * self.phase
        left = max(0, column0 - margin) // self.phase * self.phase
        return top, min(shape[0], row1 + margin), left, min(shape[1], column1 + margin)

    def num_tiles(self, shape: tuple[int, int]) -> int:
        """Tiles for an image of (height, width)."""
        return (-(-shape[0] // self.stride)) * (-(-shape[1] // self.stride))

    def __call__(self, stack: np.ndarray, progress: Callable[[], None] | None = None) -> np.ndarray:
        """`[num_source_z, H, W]` in [0, 1] -> `[H, W, E]` float32 embedding (the `rows` bands joined)."""
        return np.concatenate([band for _, band in self.rows(stack, progress)], axis=0)

    def rows(
        self, stack: np.ndarray, progress: Callable[[], None] | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """The embedding of a `[num_source_z, H, W]` stack in bands of rows, top to bottom.

        Each band is one row of tiles: `stride` rows (fewer at the bottom),
        computed from the stack's reflect-padded rows it needs only (no
        padded copy of the whole image is made, and each tile makes its own
        network input), so memory is one band's whatever the image height.

        Yields:
            (first row, `[rows, W, E]` float32 embedding rows).
        """
        height, width = self._check(stack)
        for top, count in self.row_tops(height):
            band = np.empty((count, width, self.embedding_size), np.float32)
            self.fill_rows(stack, top, band, progress)
            yield top, band

    def row_tops(self, height: int) -> Iterator[tuple[int, int]]:
        """(first row, rows) of each row of tiles of an image `height` rows high, top to bottom."""
        for top in range(0, height, self.stride):
            yield top, min(self.stride, height - top)

    def fill_rows(self, stack: np.ndarray, top: int, out: np.ndarray,
                  progress: Callable[[], None] | None = None) -> None:
        """Writes the embedding of image rows [top, top + len(out)) of a `[Z, H, W]` stack into `out`
        (`[rows <= stride, W, E]`, e.g. a slice of a caller's buffer): one row of tiles, tile by tile."""
        height, width = self._check(stack)
        if len(out) > self.stride or out.shape[1:] != (width, self.embedding_size):
            raise ValueError(f"fill_rows: out {out.shape} is not [<= {self.stride}, {width}, {self.embedding_size}].")
        columns = -(-width // self.stride) * self.stride + self.output_size - self.stride
        mode = "reflect" if min(height, width) > 1 else "edge"
        column_index = readout_lib.pad_index(np.arange(-self.border, columns + self.border), width, mode)
        row_index = readout_lib.pad_index(np.arange(top - self.border, top - self.border + self.input_size), height,
                                          mode)
        source = stack[:, row_index]  # [Z, input_size, W]: the raw rows; each tile makes its own network input.
        for left in range(0, columns - self.output_size + 1, self.stride):
            tile = assemble.network_input(source[:, :, column_index[left : left + self.input_size]],
                                          self.num_z_values)[np.newaxis]
            output = np.asarray(self.core.predict_on_batch(tile), np.float32)[0]
            take = min(self.stride, width - left)
            out[:, left : left + take] = output[: len(out), :take]
            if progress is not None:
                progress()

    def bands(
        self, stack: np.ndarray, radius: int, band_rows: int, start: int = 0, stop: int | None = None,
        progress: Callable[[], None] | None = None,
    ) -> Iterator[tuple[np.ndarray, int, int, int]]:
        """Rolling embedding rows for bands of image rows [start, stop) that need `radius` rows of context.

        Rows are computed a row of tiles at a time into one buffer that also holds the rows carried over (the
        unfinished band and `radius` rows above it); the carry is copied out and the buffer dropped before the next
        row of tiles, so at most about `stride + 2 (band_rows + 2 radius)` rows x W are held, whatever the height.

        Yields:
            (embedding `[n, W, E]` of image rows first .. first + n - 1, first, row0, row1): a band [row0, row1) of
            at most `band_rows` rows whose rows within `radius` (reflected at the image's edges) the embedding
            holds. The array is valid until the next band is asked for.
        """
        height, width = self._check(stack)
        stop = height if stop is None else stop
        band_rows = max(1, int(band_rows))
        empty = np.empty((0, width, self.embedding_size), np.float32)
        carry, first, next_row = empty, 0, start
        for top, count in self.row_tops(height):
            if next_row >= stop:
                return
            buffer = np.empty((len(carry) + count, width, self.embedding_size), np.float32)
            buffer[: len(carry)] = carry
            carry = empty  # The old carry is not held while the row of tiles is computed.
            self.fill_rows(stack, top, buffer[len(buffer) - count :], progress)
            available = top + count
            while next_row < stop:
                end = min(stop, next_row + band_rows)
                if available < height and available < end + radius:
                    break
                yield buffer, first, next_row, end
                next_row = end
            keep_from = max(0, min(next_row, available) - radius) - first
            carry, first = buffer[keep_from:].copy(), first + keep_from
            del buffer

    def _check(self, stack: np.ndarray) -> tuple[int, int]:
        if stack.ndim != 3:
            raise errors.InputError(f"A source stack must be [num_source_z, height, width]; got shape {stack.shape}.")
        return int(stack.shape[1]), int(stack.shape[2])
