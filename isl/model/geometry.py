"""Spatial geometry of the multi-scale networks, derived from a ModelConfig.

The one owner of the network border: every crop size, tower size and the
input size needed for a given output size is computed here from the config
(no size tables), and the data pipeline, the builder and the tiler all read
it from here.

Rules (isl_reference.md §1.2-§1.6, §1.8); all padding is VALID:

* in-scale module, kernel k: n -> n - (k - 1);
* concordance down block (k x k / 2 module, then one in-scale module):
  n -> (n - k) / 2 + 1 -> minus (in_scale_kernel - 1);
* concordance up block (k x k / 2 transposed module, centre crop by 2, then
  one in-scale module): n -> 2n + k - 2 -> 2n + k - 6 -> minus (k_in - 1);
* fovea down block: the k x k / 2 module alone; fovea up block: the k x k / 2
  transposed module alone (2n for k = 2);
* upper tower: `upper_tower_modules` in-scale modules after the merge.

The U-Net baseline (`architecture="unet"`, `isl.model.unet`) takes the
patches the concordance fields describe (250 + 16k -> 8 + 16k by default), so
it shares the pipeline and the tiler.

Tower s has s down blocks, `lower_modules_scale_0 - lower_modules_step * s`
in-scale modules, then s up blocks. Each tower takes a centre crop of the
(projected) input; the largest tower uses the whole input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

from isl import config as config_lib
from isl import errors

# Centre crop applied after each concordance transposed-convolution module.
UP_BLOCK_CROP = 2


@dataclasses.dataclass(frozen=True)
class TowerGeometry:
    """Sizes along one tower, for square inputs.

    Attributes:
        scale: tower index s (resolution 1 / 2**s).
        crop_size: side of the centre crop of the projected input it reads.
        down_sizes: output side after each down block.
        lower_sizes: output side after each lower in-scale module.
        up_sizes: output side after each up block.
    """

    scale: int
    crop_size: int
    down_sizes: tuple[int, ...]
    lower_sizes: tuple[int, ...]
    up_sizes: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Input/output geometry of a network for square patches.

    Attributes:
        input_size: side of the input patch (250 for the paper model).
        output_size: side of the output patch (8 for the paper model).
        border: context used up on each side, (input - output) / 2 (121).
        phase: shift-equivariance period in input pixels, 2**(num_scales-1)
            (16 for the paper model): shifting the input by `phase` shifts the
            output by `phase`; shifts by other amounts do not commute.
        merge_size: side at which the towers are concatenated (36).
        towers: per-tower sizes.
    """

    input_size: int
    output_size: int
    border: int
    phase: int
    merge_size: int
    towers: tuple[TowerGeometry, ...]


class PatchSizes(Protocol):
    """What the output region of an image depends on: a `Geometry`, or a
    `PatchGeometry` read back from `prediction.json`."""

    input_size: int
    output_size: int
    border: int


@dataclasses.dataclass(frozen=True)
class PatchGeometry:
    """The patch sizes of a Geometry, as `prediction.json` records them.

    Attributes: as `Geometry`'s of the same names.
    """

    input_size: int
    output_size: int
    border: int
    phase: int

    @classmethod
    def of(cls, geometry: PatchSizes) -> PatchGeometry:
        return cls(int(geometry.input_size), int(geometry.output_size), int(geometry.border), int(geometry.phase))

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> PatchGeometry:
        """From `dataclasses.asdict(PatchGeometry)`; raises KeyError, TypeError or ValueError when malformed."""
        return cls(*(int(record[field.name]) for field in dataclasses.fields(cls)))


# The border modes of `isl predict` (`output_region`).
BORDER_MODES = ("reflect", "valid", "original")
# The released infer.py's block: infer_size 16 output blocks of 8 px (isl_reference.md §5.1).
ORIGINAL_BLOCKS_PER_SIDE = 16


@dataclasses.dataclass(frozen=True)
class OutputRegion:
    """Where a prediction lies in its image.

    Attributes:
        row_offset, column_offset: image coordinates of output pixel (0, 0).
        height, width: output size in pixels.
    """

    row_offset: int
    column_offset: int
    height: int
    width: int

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """(row0, row1, column0, column1) in image pixels, ends exclusive."""
        return (self.row_offset, self.row_offset + self.height, self.column_offset, self.column_offset + self.width)


def output_region(image_shape: tuple[int, int], geometry: PatchSizes, border_mode: str) -> OutputRegion:
    """The output region of an image of `image_shape` = (height, width).

    The one owner of the border modes' windows (`isl predict --border`, and
    `isl evaluate --region=interior|original`):

    * "reflect": the whole image;
    * "valid": `[border, border + out * floor((side - 2 * border) / out))`,
      the whole output blocks whose patches lie inside the image;
    * "original": `[border, border + 16 out * floor((side - input) / (16 out)))`,
      the released `infer.py`'s window.

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


def _lower_module_count(model: config_lib.ModelConfig, scale: int) -> int:
    count = model.lower_modules_scale_0 - model.lower_modules_step * scale
    if count < 0:
        raise ValueError(
            f"Tower {scale} would have {count} lower in-scale modules "
            f"(lower_modules_scale_0={model.lower_modules_scale_0}, "
            f"lower_modules_step={model.lower_modules_step})."
        )
    return count


def _down_block(model: config_lib.ModelConfig, size: int) -> int:
    """Output side of one down block for input side `size` (forward)."""
    if (size - model.down_kernel) % 2:
        raise ValueError(f"Down block input {size} is not compatible with stride 2.")
    size = (size - model.down_kernel) // 2 + 1
    if model.architecture != "fovea":
        size -= model.in_scale_kernel - 1
    return size


def _down_block_inverse(model: config_lib.ModelConfig, size: int) -> int:
    if model.architecture != "fovea":
        size += model.in_scale_kernel - 1
    return 2 * (size - 1) + model.down_kernel


def _up_block(model: config_lib.ModelConfig, size: int) -> int:
    size = 2 * size + model.up_kernel - 2
    if model.architecture != "fovea":
        size -= 2 * UP_BLOCK_CROP + model.in_scale_kernel - 1
    return size


def _up_block_inverse(model: config_lib.ModelConfig, size: int) -> int | None:
    """Input side of an up block giving `size`, or None if none exists."""
    if model.architecture != "fovea":
        size += 2 * UP_BLOCK_CROP + model.in_scale_kernel - 1
    size -= model.up_kernel - 2
    if size % 2 or size < 2:
        return None
    return size // 2


def _tower_crop(model: config_lib.ModelConfig, scale: int, merge_size: int) -> int | None:
    """The crop side that tower `scale` needs to end at `merge_size`."""
    size = merge_size
    for _ in range(scale):
        size = _up_block_inverse(model, size)
        if size is None:
            return None
    size += (model.in_scale_kernel - 1) * _lower_module_count(model, scale)
    for _ in range(scale):
        size = _down_block_inverse(model, size)
    return size


def _trace_tower(model: config_lib.ModelConfig, scale: int, crop_size: int) -> TowerGeometry:
    size = crop_size
    down_sizes = []
    for _ in range(scale):
        size = _down_block(model, size)
        down_sizes.append(size)
    lower_sizes = []
    for _ in range(_lower_module_count(model, scale)):
        size -= model.in_scale_kernel - 1
        lower_sizes.append(size)
    up_sizes = []
    for _ in range(scale):
        size = _up_block(model, size)
        up_sizes.append(size)
    return TowerGeometry(scale, crop_size, tuple(down_sizes), tuple(lower_sizes), tuple(up_sizes))


def geometry(model: config_lib.ModelConfig, output_size: int | None = None) -> Geometry:
    """The geometry for square outputs of `output_size` (default: the config's).

    Raises:
        ValueError: if no input size gives exactly that output size.
    """
    output_size = model.output_size if output_size is None else output_size
    if model.architecture == "unet_regression":
        # 'same' convolutions: input = output, no border (isl.model.unet_regression).
        from isl.model import unet_regression

        unet_regression.check_size(model, output_size)
        return Geometry(
            input_size=output_size, output_size=output_size, border=0, phase=phase_of(model),
            merge_size=output_size, towers=(),
        )
    merge_size = output_size + (model.in_scale_kernel - 1) * model.upper_tower_modules
    towers = []
    for scale in range(model.num_scales):
        crop = _tower_crop(model, scale, merge_size)
        if crop is None:
            raise ValueError(
                f"Output size {output_size} is not reachable: tower {scale} cannot end at "
                f"merge size {merge_size}. Valid output sizes are {_smallest_output_size(model)} + "
                f"{phase_of(model)}k."
            )
        towers.append(_trace_tower(model, scale, crop))
    input_size = max(tower.crop_size for tower in towers)
    for tower in towers:
        if (input_size - tower.crop_size) % 2:
            raise ValueError(f"Tower {tower.scale} crop {tower.crop_size} cannot be centred in {input_size}.")
        end = (tower.up_sizes or tower.lower_sizes or tower.down_sizes or (tower.crop_size,))[-1]
        if end != merge_size:
            raise ValueError(f"Tower {tower.scale} ends at {end}, not {merge_size}.")
    return Geometry(
        input_size=input_size,
        output_size=output_size,
        border=(input_size - output_size) // 2,
        phase=phase_of(model),
        merge_size=merge_size,
        towers=tuple(towers),
    )


def _smallest_output_size(model: config_lib.ModelConfig) -> int | str:
    """The smallest reachable output size, for error messages ("?" if none)."""
    merge_offset = (model.in_scale_kernel - 1) * model.upper_tower_modules
    for size in range(1, phase_of(model) + 1):
        if all(_tower_crop(model, scale, size + merge_offset) is not None for scale in range(model.num_scales)):
            return size
    return "?"


def phase_of(model: config_lib.ModelConfig) -> int:
    """The shift-equivariance period in input pixels, 2**(num_scales - 1) (2**unet_levels for the regression U-Net)."""
    if model.architecture == "unet_regression":
        return 2**model.unet_levels
    return 2 ** (model.num_scales - 1)


def reference_geometry(model: config_lib.ModelConfig) -> Geometry:
    """The geometry with the smallest valid output congruent to the config's.

    Layer depths and per-side crops are taken from this geometry, so a config
    whose `output_size` is raised by multiples of the phase (the larger-output
    training option, 8 + 16k) builds the same layers and weights as the paper
    model; only the patch sizes grow. For the paper model it is the 250 -> 8
    geometry.

    Raises:
        ValueError: if no output size congruent to `model.output_size` is valid.
    """
    phase = phase_of(model)
    smallest = (model.output_size - 1) % phase + 1
    for size in range(smallest, model.output_size + 1, phase):
        try:
            return geometry(model, size)
        except ValueError:
            continue
    return geometry(model)  # Raises the explanatory error.


def output_size_for_input(model: config_lib.ModelConfig, input_size: int) -> int:
    """Output side for an input side; raises ValueError for an invalid side.

    Valid inputs are `reference_geometry(model).input_size + phase * k`,
    k >= 0 (250 + 16k -> 8 + 16k for the paper model).
    """
    base = reference_geometry(model)
    extra = input_size - base.input_size
    if extra < 0 or extra % base.phase:
        raise ValueError(
            f"Input side {input_size} is not valid for this model: it must be "
            f"{base.input_size} + {base.phase}k (k >= 0)."
        )
    return base.output_size + extra


# ---------------------------------------------------------------------------
# Receptive field: exact 1-D index dependencies through every layer
# ---------------------------------------------------------------------------

Interval = tuple[int, int]


def _conv_back(interval: Interval, kernel: int, stride: int) -> Interval:
    """Input rows a VALID k x k / s convolution reads for output rows [a, b].

    The module's passthrough (crop, crop + average pool) and max pool read a
    subset of these rows, so this is the whole module's dependency.
    """
    first, last = interval
    return stride * first, stride * last + kernel - 1


def _transposed_back(interval: Interval, kernel: int, input_size: int) -> Interval:
    """Input rows a k x k / 2 VALID transposed convolution uses for [a, b].

    Output row o receives input rows i with 2i <= o <= 2i + k - 1; the
    nearest-upsample + pad passthrough reads a subset of them.
    """
    first, last = interval
    return max(0, -((kernel - 1 - first) // 2)), min(input_size - 1, last // 2)


def _tower_back(model: config_lib.ModelConfig, tower: TowerGeometry, interval: Interval) -> Interval:
    """Maps merge rows [a, b] back to rows of the tower's centre crop."""
    concordance = model.architecture != "fovea"
    in_scale = model.in_scale_kernel
    sizes_before_up = (tower.lower_sizes or tower.down_sizes or (tower.crop_size,))[-1:]
    up_inputs = list(sizes_before_up) + list(tower.up_sizes[:-1])
    for input_size in reversed(up_inputs):
        if concordance:
            interval = _conv_back(interval, in_scale, 1)
            interval = (interval[0] + UP_BLOCK_CROP, interval[1] + UP_BLOCK_CROP)
        interval = _transposed_back(interval, model.up_kernel, input_size)
    for _ in tower.lower_sizes:
        interval = _conv_back(interval, in_scale, 1)
    for _ in tower.down_sizes:
        if concordance:
            interval = _conv_back(interval, in_scale, 1)
        interval = _conv_back(interval, model.down_kernel, 2)
    return interval


def dependency_interval(model: config_lib.ModelConfig, output_index: int, output_size: int | None = None) -> Interval:
    """The input rows (inclusive, 0-based) that output row `output_index` uses.

    Exact for the graph the builder makes: the union over towers of the rows
    every convolution, pool, crop, transposed convolution and passthrough
    reads. The same holds for columns.
    """
    geo = geometry(model, output_size)
    if not 0 <= output_index < geo.output_size:
        raise ValueError(f"Output row {output_index} is outside 0..{geo.output_size - 1}.")
    interval = (output_index, output_index)
    for _ in range(model.upper_tower_modules):
        interval = _conv_back(interval, model.in_scale_kernel, 1)
    first, last = geo.input_size, -1
    for tower in geo.towers:
        tower_first, tower_last = _tower_back(model, tower, interval)
        offset = (geo.input_size - tower.crop_size) // 2
        first = min(first, tower_first + offset)
        last = max(last, tower_last + offset)
    return max(first, 0), min(last, geo.input_size - 1)


def receptive_field(model: config_lib.ModelConfig) -> int:
    """Side of the input region one output pixel depends on, unclipped.

    Measured on the central output pixel of an input large enough that no
    tower's borders clip it (the paper model: larger than the 250 patch, so
    every output pixel of a 250 patch depends on the whole patch).
    """
    base = reference_geometry(model)
    extra_phases = 2 * (base.input_size // base.phase + 1)
    output_size = base.output_size + extra_phases * base.phase
    first, last = dependency_interval(model, output_size // 2, output_size)
    return last - first + 1
