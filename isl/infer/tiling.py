"""Plans fully convolutional runs that reproduce the original patch-wise stitching.

NumPy only; no TensorFlow.

The original `infer.py` (isl_reference.md §5.1) predicted each `out x out`
output block (out = 8) from its own `input_size` patch (250 px), with the
patches on a stride-`out` grid, and tiled the blocks edge to edge. A fully
convolutional run of the network on a larger input of side
`input_size + phase * k` is shift-equivariant only by `phase` pixels
(16 for the paper model, `geometry().phase`): its dense output window
`[phase * j, phase * j + out)` equals the output of the patch that starts at
input offset `phase * j`, but a window starting anywhere else is not the
output of any single patch.

So every output block `s` (a multiple of `out`) belongs to a *class*
`s mod phase`. Blocks of one class are spaced by `lcm(out, phase)` and can all
be read from one dense run whose input starts on that class; the classes are
the multiples of `gcd(out, phase)` below `phase`, i.e. `phase / gcd(out, phase)`
runs per axis cover every block (2 for the paper model: shifts 0 and 8;
1 for the `tiny` preset, whose phase 4 divides its output 8). A 2-D plan is
the product of the per-axis runs.

Coordinates: "output coordinate" `o` is the output pixel predicted from the
patch of the (padded) network input that starts at `o - o mod out`; it shows
padded-input pixel `o + border`. A run that starts at input offset `u` (of
the padded input) produces dense output coordinates `[u, u + run_output)`;
it owns the blocks of its class inside that span.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator

from isl.model import geometry as geometry_lib

# Forward float32 activations of the paper model per input pixel:
# about 267 MB per 250 x 250 patch (isl_reference.md §1.9).
PAPER_ACTIVATION_BYTES_PER_PIXEL = 267e6 / (250 * 250)


@dataclasses.dataclass(frozen=True)
class AxisRun:
    """One run along one axis.

    Attributes:
        start: first input index of the run in the padded input; also the
            output coordinate of its first dense output pixel.
        blocks: output-coordinate starts of the `out`-wide blocks it owns.
    """

    start: int
    blocks: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class AxisPlan:
    """The runs along one axis; every run has the same input length.

    Attributes:
        output_length: requested output length along this axis.
        grid_length: `output_length` rounded up to a multiple of `out`.
        run_input_length: input side of every run, `input_size + phase * k`.
        run_output_length: dense output side of every run, `out + phase * k`.
        runs: the runs, grouped by class.
    """

    output_length: int
    grid_length: int
    run_input_length: int
    run_output_length: int
    runs: tuple[AxisRun, ...]

    @property
    def required_input_length(self) -> int:
        """Input length (padded input) the runs read, from index 0."""
        return max(run.start for run in self.runs) + self.run_input_length


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """A 2-D plan: the product of a row plan and a column plan.

    Attributes:
        rows: plan along the height axis.
        columns: plan along the width axis.
        geometry: the network geometry the plan was made for.
    """

    rows: AxisPlan
    columns: AxisPlan
    geometry: geometry_lib.Geometry

    @property
    def output_shape(self) -> tuple[int, int]:
        return (self.rows.output_length, self.columns.output_length)

    @property
    def run_input_shape(self) -> tuple[int, int]:
        return (self.rows.run_input_length, self.columns.run_input_length)

    @property
    def run_output_shape(self) -> tuple[int, int]:
        return (self.rows.run_output_length, self.columns.run_output_length)

    @property
    def num_runs(self) -> int:
        return len(self.rows.runs) * len(self.columns.runs)

    def runs(self) -> Iterator[tuple[AxisRun, AxisRun]]:
        """All (row run, column run) pairs, row-major."""
        return itertools.product(self.rows.runs, self.columns.runs)

    @property
    def computed_input_pixels(self) -> int:
        """Input pixels the network processes in total (a cost measure)."""
        return self.num_runs * self.rows.run_input_length * self.columns.run_input_length


def block_classes(geometry: geometry_lib.Geometry) -> tuple[int, ...]:
    """Residues `s mod phase` of the block starts `s` (multiples of `out`).

    These are the input shifts, per axis, that a dense plan needs:
    `(0, 8)` for the paper model, `(0,)` when `phase` divides `out`.
    """
    step = math.gcd(geometry.output_size, geometry.phase)
    return tuple(range(0, geometry.phase, step))


def plan_axis(output_length: int, geometry: geometry_lib.Geometry, max_run_input: int | None = None) -> AxisPlan:
    """Plans the runs along one axis.

    Args:
        output_length: output pixels wanted along the axis (>= 1).
        geometry: network geometry (`input_size`, `output_size`, `phase`).
        max_run_input: the largest run input side allowed (memory bound);
            None means one run per class. Values below `input_size` are
            raised to `input_size` (a single patch per run).

    Returns:
        An AxisPlan whose runs, taken together, own every block of
        `[0, grid_length)` exactly once.
    """
    if output_length < 1:
        raise ValueError(f"output_length must be >= 1. Received: {output_length}")
    out = geometry.output_size
    phase = geometry.phase
    spacing = out * phase // math.gcd(out, phase)  # Blocks of one class are lcm apart.
    grid_length = out * math.ceil(output_length / out)
    blocks = range(0, grid_length, out)
    by_class = {residue: [s for s in blocks if s % phase == residue] for residue in block_classes(geometry)}
    by_class = {residue: starts for residue, starts in by_class.items() if starts}
    longest = max(len(starts) for starts in by_class.values())
    if max_run_input is None:
        max_blocks = longest
    else:
        max_k = max(0, (max_run_input - geometry.input_size) // phase)
        max_blocks = max_k * phase // spacing + 1
    # Balance: the same number of runs per class, each as short as possible.
    blocks_per_run = 1
    for starts in by_class.values():
        num_runs = math.ceil(len(starts) / max_blocks)
        blocks_per_run = max(blocks_per_run, math.ceil(len(starts) / num_runs))
    k = math.ceil((blocks_per_run - 1) * spacing / phase)
    runs = []
    for starts in by_class.values():
        for first in range(0, len(starts), blocks_per_run):
            owned = tuple(starts[first : first + blocks_per_run])
            runs.append(AxisRun(start=owned[0], blocks=owned))
    return AxisPlan(
        output_length=output_length,
        grid_length=grid_length,
        run_input_length=geometry.input_size + phase * k,
        run_output_length=out + phase * k,
        runs=tuple(runs),
    )


def plan_tiles(
    output_shape: tuple[int, int],
    geometry: geometry_lib.Geometry,
    tile_size: int | None = None,
) -> TilePlan:
    """Plans the dense runs for an output of `output_shape` = (height, width).

    Args:
        output_shape: output pixels wanted, (height, width).
        geometry: the network geometry.
        tile_size: the largest run input side (memory bound); None means
            the whole image in one run per phase class.
    """
    height, width = output_shape
    return TilePlan(
        rows=plan_axis(height, geometry, tile_size),
        columns=plan_axis(width, geometry, tile_size),
        geometry=geometry,
    )


def valid_tile_size(geometry: geometry_lib.Geometry, tile_size: int) -> int:
    """The largest valid input side `input_size + phase * k` <= tile_size."""
    if tile_size < geometry.input_size:
        return geometry.input_size
    return geometry.input_size + geometry.phase * ((tile_size - geometry.input_size) // geometry.phase)


def auto_tile_size(
    geometry: geometry_lib.Geometry,
    memory_budget_bytes: float,
    bytes_per_input_pixel: float,
    bytes_per_output_pixel: float = 0.0,
) -> int:
    """The largest valid square run input side whose memory fits the budget.

    Memory of a run of side n is modelled as
    `n**2 * bytes_per_input_pixel + (n - 2 * border)**2 * bytes_per_output_pixel`.
    """
    if memory_budget_bytes <= 0:
        raise ValueError(f"memory_budget_bytes must be > 0. Received: {memory_budget_bytes}")
    best = geometry.input_size
    size = geometry.input_size
    while True:
        output = size - 2 * geometry.border
        cost = size * size * bytes_per_input_pixel + output * output * bytes_per_output_pixel
        if cost > memory_budget_bytes:
            return best
        best = size
        size += geometry.phase
        if size > 1 << 16:
            return best
