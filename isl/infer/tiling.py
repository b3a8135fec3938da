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

The reference's blocks. A model trained with `out < phase` outputs (the
paper's 8) has learned only the output positions `0 .. out - 1` modulo
`phase` of a patch, so its reference is the original's: `out`-wide blocks,
each from its own patch on a stride-`out` grid. A model trained with
`out > phase` outputs (e.g. 8 + 16k, k >= 1; the shipped checkpoint uses 24)
has learned every position modulo `phase`; its reference is the
*stride-phase* patch-wise prediction: patches on a stride-`phase` grid, each
giving the first `phase` pixels of its output as one `phase`-wide block
(`block_size`). When `phase` divides `out` the two coincide in value.

So every output block `s` (a multiple of the block width `w`) belongs to a
*class* `s mod phase`. Blocks of one class are spaced by `lcm(w, phase)` and
can all be read from one dense run whose input starts on that class; the
classes are the multiples of `gcd(w, phase)` below `phase`, i.e.
`phase / gcd(w, phase)` runs per axis cover every block (2 for the paper
model: shifts 0 and 8; 1 for a model with `out > phase` or `phase | out`,
e.g. the shipped 24-px checkpoint or the `tiny` preset). A 2-D plan is the
product of the per-axis runs.

`phases=1` (`block_size(..., phases=1)`) reads `phase`-wide blocks from one
run for any model: exact when `out >= phase`, an approximation for 8-px
models (positions 8..15 of each 16 were never trained).

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
        block: width of the output blocks (`block_size`).
    """

    output_length: int
    grid_length: int
    run_input_length: int
    run_output_length: int
    runs: tuple[AxisRun, ...]
    block: int = 8

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


# Plans: "exact" (default) reproduces the model's own patch-wise reference
# in the fewest runs; "output" is the first version's plan (`out`-wide blocks
# for every model, kept for the benchmark's side-by-side comparison);
# "one" reads `phase`-wide blocks from one run per tile (`--phases=1`).
PLANS = ("exact", "output", "one")


def block_size(geometry: geometry_lib.Geometry, plan: str = "exact") -> int:
    """Width of the output blocks of the patch-wise reference (module docstring).

    "exact": `phase` when the model's output exceeds the phase and is not a
    multiple of it (24 -> 16: one run per tile), else `out`; "output": `out`;
    "one": `phase` (approximate for `out < phase`).
    """
    out, phase = geometry.output_size, geometry.phase
    if plan == "output":
        return out
    if plan == "one":
        return phase
    if plan != "exact":
        raise ValueError(f"Unknown plan {plan!r}; use one of {', '.join(PLANS)}.")
    return phase if out > phase and out % phase else out


def is_exact(geometry: geometry_lib.Geometry, plan: str = "exact") -> bool:
    """Whether the plan reproduces a patch-wise reference of the trained model."""
    return plan != "one" or geometry.output_size >= geometry.phase


def block_classes(geometry: geometry_lib.Geometry, plan: str = "exact") -> tuple[int, ...]:
    """Residues `s mod phase` of the block starts `s` (multiples of the block).

    These are the input shifts, per axis, that a dense plan needs:
    `(0, 8)` for the paper model, `(0,)` when the block is a multiple of
    `phase` or `phase` divides it.
    """
    step = math.gcd(block_size(geometry, plan), geometry.phase)
    return tuple(range(0, geometry.phase, step))


def run_blocks(geometry: geometry_lib.Geometry, k: int, plan: str = "exact") -> int:
    """Blocks of one class a run of input `input_size + phase * k` owns."""
    block = block_size(geometry, plan)
    spacing = block * geometry.phase // math.gcd(block, geometry.phase)
    dense = geometry.output_size + geometry.phase * k
    return max(0, (dense - block) // spacing + 1)


def plan_axis(
    output_length: int,
    geometry: geometry_lib.Geometry,
    max_run_input: int | None = None,
    plan: str = "exact",
) -> AxisPlan:
    """Plans the runs along one axis.

    Args:
        output_length: output pixels wanted along the axis (>= 1).
        geometry: network geometry (`input_size`, `output_size`, `phase`).
        max_run_input: the largest run input side allowed (memory bound);
            None means one run per class. Values below the smallest run
            are raised to it (one block per run).
        plan: one of `PLANS`.

    Returns:
        An AxisPlan whose runs, taken together, own every block of
        `[0, grid_length)` exactly once.
    """
    if output_length < 1:
        raise ValueError(f"output_length must be >= 1. Received: {output_length}")
    out = geometry.output_size
    phase = geometry.phase
    block = block_size(geometry, plan)
    spacing = block * phase // math.gcd(block, phase)  # Blocks of one class are lcm apart.
    grid_length = block * math.ceil(output_length / block)
    blocks = range(0, grid_length, block)
    by_class = {residue: [s for s in blocks if s % phase == residue] for residue in block_classes(geometry, plan)}
    by_class = {residue: starts for residue, starts in by_class.items() if starts}
    longest = max(len(starts) for starts in by_class.values())
    if max_run_input is None:
        max_blocks = longest
    else:
        max_k = max(0, (max_run_input - geometry.input_size) // phase)
        max_blocks = max(1, run_blocks(geometry, max_k, plan))
    # Balance: the same number of runs per class, each as short as possible.
    blocks_per_run = 1
    for starts in by_class.values():
        num_runs = math.ceil(len(starts) / max_blocks)
        blocks_per_run = max(blocks_per_run, math.ceil(len(starts) / num_runs))
    # The smallest k whose dense output holds blocks_per_run blocks.
    k = max(0, math.ceil(((blocks_per_run - 1) * spacing + block - out) / phase))
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
        block=block,
    )


def plan_tiles(
    output_shape: tuple[int, int],
    geometry: geometry_lib.Geometry,
    tile_size: int | None = None,
    plan: str = "exact",
) -> TilePlan:
    """Plans the dense runs for an output of `output_shape` = (height, width).

    Args:
        output_shape: output pixels wanted, (height, width).
        geometry: the network geometry.
        tile_size: the largest run input side (memory bound); None means
            the whole image in one run per phase class.
        plan: one of `PLANS` ("exact" by default).
    """
    height, width = output_shape
    return TilePlan(
        rows=plan_axis(height, geometry, tile_size, plan),
        columns=plan_axis(width, geometry, tile_size, plan),
        geometry=geometry,
    )


def smallest_tile_size(geometry: geometry_lib.Geometry, plan: str = "exact") -> int:
    """The smallest run input side that owns a block: `input_size + phase * k`."""
    k = 0
    while run_blocks(geometry, k, plan) < 1:
        k += 1
    return geometry.input_size + geometry.phase * k


def valid_tile_size(geometry: geometry_lib.Geometry, tile_size: int, plan: str = "exact") -> int:
    """The largest valid input side `input_size + phase * k` <= tile_size.

    Raises:
        InputError: when `tile_size` is below the smallest valid side; the
            message names the valid sizes.
    """
    from isl import errors

    smallest = smallest_tile_size(geometry, plan)
    if tile_size < smallest:
        examples = ", ".join(str(smallest + geometry.phase * j) for j in range(4))
        raise errors.InputError(
            f"--tile_size={tile_size} is below the smallest tile this model can run ({smallest} px); valid sizes are "
            f"{smallest} + {geometry.phase}k: {examples}, ... (0 chooses the size from memory)."
        )
    return geometry.input_size + geometry.phase * ((tile_size - geometry.input_size) // geometry.phase)


def auto_tile_size(
    geometry: geometry_lib.Geometry,
    memory_budget_bytes: float,
    bytes_per_input_pixel: float,
    bytes_per_output_pixel: float = 0.0,
    plan: str = "exact",
) -> int:
    """The largest valid square run input side whose memory fits the budget.

    Memory of a run of side n is modelled as
    `n**2 * bytes_per_input_pixel + (n - 2 * border)**2 * bytes_per_output_pixel`.
    """
    if memory_budget_bytes <= 0:
        raise ValueError(f"memory_budget_bytes must be > 0. Received: {memory_budget_bytes}")
    best = size = smallest_tile_size(geometry, plan)
    while True:
        output = size - 2 * geometry.border
        cost = size * size * bytes_per_input_pixel + output * output * bytes_per_output_pixel
        if cost > memory_budget_bytes:
            return best
        best = size
        size += geometry.phase
        if size > 1 << 16:
            return best
