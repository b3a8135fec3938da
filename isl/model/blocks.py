"""Micro-architecture of the ISL networks as Keras functional builders.

Every function takes a Keras tensor `[batch, rows, columns, channels]`
(channels-last) and returns one; all padding is VALID (isl_reference.md
§1.2-§1.5). Layer names follow the released TF1 variable scopes with "/"
replaced by "_" (Keras 3 forbids "/"), so weights map across versions:

    <module>_expand_rv2_bn / _act / _conv / _pool / _concat
    <module>_reduce_rv2_bn / _act / _conv
    <module>_passthrough_crop / _pool / _upsample / _pad
    <module>                       (the residual sum: the module's output)

The depth rules (the schedule, the depth floor, the base_depth - 4 quirk of
the transposed-convolution modules) live here too, so a hyperparameter search
can vary them through `ModelConfig` alone.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras

from isl.model import layers as isl_layers

# Kernel of the reduction unit of every module (a 1x1 "bottleneck").
REDUCTION_KERNEL = 1

# `ModelConfig.activation` values the units implement ("relu_tanh": the paper).
ACTIVATIONS = tuple(isl_layers.ACTIVATIONS)


# ---------------------------------------------------------------------------
# Depth schedule (§1.5)
# ---------------------------------------------------------------------------


def next_even(value: float) -> int:
    """Rounds up to an integer, then up again to the next even integer."""
    integer = int(math.ceil(value))
    return integer + (integer % 2)


def size_to_depth(base_depth: int, size: int, expansion_factor: float, is_expand: bool) -> int:
    """The released `size_to_depth`: depth of a module whose output is `size`.

    r = ceil(base_depth / size); reduction depth next_even(r); expansion depth
    next_even(expansion_factor * r), evaluated as the original
    `(211.0 / 39.0) * r` in float64. (`211 * r / 39` gives the same depths
    for every r below 741, so Appendix B cannot tell them apart; at r = 741,
    i.e. base_depth / size > 740, the two differ by 2 channels.)
    """
    if size < 1:
        raise ValueError(f"Module output size must be >= 1. Received: {size}")
    reduction = math.ceil(base_depth / float(size))
    if is_expand:
        return next_even(expansion_factor * reduction)
    return next_even(reduction)


def module_depths(base_depth: int, size: int, expansion_factor: float) -> tuple[int, int]:
    """(expansion depth De, reduction depth Dr) for a module ending at `size`."""
    return (
        size_to_depth(base_depth, size, expansion_factor, is_expand=True),
        size_to_depth(base_depth, size, expansion_factor, is_expand=False),
    )


# ---------------------------------------------------------------------------
# Settings shared by every block of one network
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class BlockSettings:
    """Per-network settings every block needs.

    Attributes:
        batch_norm_momentum: moving-average decay (0.999 as slim's default).
        batch_norm_epsilon: 1e-3 as slim's default.
        activation: the pre-activation, a key of `ACTIVATIONS`.
        dtype: a Keras dtype policy name for every layer ("mixed_bfloat16"),
            or None for the global policy.
        records: if a list, each module appends one `ModuleRecord` to it.
        fused: run the dual activation, the unit's concat and the residual
            pad-and-add as XLA-fused passes (TensorFlow backend; same values,
            faster on CPU; `TrainConfig.fused_elementwise`).
        eigen_odd_depths: batch norm of depths without a vectorised oneDNN
            kernel runs TF's Eigen kernel (`TrainConfig.fast_batch_norm`).
    """

    batch_norm_momentum: float = 0.999
    batch_norm_epsilon: float = 1e-3
    activation: str = "relu_tanh"
    dtype: str | None = None
    records: list[ModuleRecord] | None = None
    fused: bool = False
    eigen_odd_depths: bool = False

    def layer_kwargs(self, name: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"name": name}
        if self.dtype is not None:
            kwargs["dtype"] = self.dtype
        return kwargs


@dataclasses.dataclass(frozen=True)
class ModuleRecord:
    """One row of the per-module table (Appendix B's columns).

    Sizes are the static row counts of the built graph (None if dynamic).
    """

    name: str
    input_size: int | None
    input_depth: int
    expansion_kernel: int
    expansion_stride: int
    kind: str
    expansion_depth: int
    reduction_depth: int
    expand_output_depth: int
    output_size: int | None
    output_depth: int

    def as_tuple(self) -> tuple[Any, ...]:
        return dataclasses.astuple(self)


# ---------------------------------------------------------------------------
# Units
# ---------------------------------------------------------------------------


def residual_v2_conv(
    inputs: keras.KerasTensor,
    *,
    kernel_size: int,
    stride: int,
    depth: int,
    transpose: bool = False,
    add_max_pool: bool = False,
    use_bias: bool = False,
    settings: BlockSettings,
    name: str,
) -> keras.KerasTensor:
    """The pre-activation unit: BN -> [ReLU || tanh] -> VALID (transposed) conv.

    With `add_max_pool`, a k x k / s VALID max pool of the RAW input (before
    batch norm) is concatenated after the convolution channels.

    Args:
        inputs: `[batch, n, n, C]`.
        kernel_size, stride: of the convolution (and the max pool).
        depth: convolution output channels d.
        transpose: transposed convolution (output side (n-1)*s + k).
        add_max_pool: add the parallel max pool (not with `transpose`).
        use_bias: add a bias to the convolution (only the heads do).
        settings: batch-norm constants and dtype policy.
        name: prefix of the layer names.

    Returns:
        `[batch, n', n', d]`, or `[batch, n', n', d + C]` with the max pool;
        n' = (n - k)/s + 1 for a convolution.
    """
    if add_max_pool and (transpose or kernel_size <= 1):
        raise ValueError(f"{name}: a parallel max pool needs a k > 1 ordinary convolution.")
    normalized = isl_layers.FusedBatchNormalization(
        momentum=settings.batch_norm_momentum,
        epsilon=settings.batch_norm_epsilon,
        center=True,
        scale=True,
        eigen_odd_depths=settings.eigen_odd_depths,
        **settings.layer_kwargs(f"{name}_bn"),
    )(inputs)
    if settings.activation not in isl_layers.ACTIVATIONS:
        raise ValueError(
            f"Unknown activation {settings.activation!r}. Known: {', '.join(isl_layers.ACTIVATIONS)}"
        )
    activated = isl_layers.DualActivation(
        isl_layers.ACTIVATIONS[settings.activation],
        fused=settings.fused,
        **settings.layer_kwargs(f"{name}_act"),
    )(normalized)
    conv_class = keras.layers.Conv2DTranspose if transpose else keras.layers.Conv2D
    convolved = conv_class(
        depth,
        kernel_size,
        strides=stride,
        padding="valid",
        use_bias=use_bias,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **settings.layer_kwargs(f"{name}_conv"),
    )(activated)
    if not add_max_pool:
        return convolved
    pooled = keras.layers.MaxPooling2D(
        kernel_size, stride, padding="valid", **settings.layer_kwargs(f"{name}_pool")
    )(inputs)
    return isl_layers.ChannelConcat(fused=settings.fused, **settings.layer_kwargs(f"{name}_concat"))(
        [convolved, pooled]
    )


def passthrough(
    inputs: keras.KerasTensor,
    *,
    kernel_size: int,
    stride: int,
    transpose: bool,
    settings: BlockSettings,
    name: str,
) -> keras.KerasTensor:
    """The parameter-free residual branch matching a module's expansion.

    The released code supports the first four; the general rules extend them
    to other kernel sizes for hyperparameter search:

    * 3x3 / 1 convolution: centre crop by 1 pixel per side (n -> n - 2);
      generally crop (k - 1)/2 for odd k;
    * 4x4 / 2 convolution: crop by 1, then 2x2 / 2 average pool ((n-2)/2);
      generally crop (k - 2)/2 for even k;
    * 2x2 / 2 transposed: 2x nearest-neighbour upsampling (2n);
    * 4x4 / 2 transposed: upsampling, then a 1-pixel edge ("symmetric") pad
      (2n + 2); generally a (k - 2)/2 symmetric pad for even k.
    """
    if transpose:
        if stride != 2 or kernel_size < 2 or kernel_size % 2:
            raise ValueError(
                f"{name}: no passthrough for a {kernel_size}x{kernel_size}/{stride} transposed "
                "convolution (needs stride 2 and an even kernel)."
            )
        upsampled = keras.layers.UpSampling2D(
            2, interpolation="nearest", **settings.layer_kwargs(f"{name}_upsample")
        )(inputs)
        pad = (kernel_size - 2) // 2
        if not pad:
            return upsampled
        return isl_layers.SymmetricPad2D(pad, **settings.layer_kwargs(f"{name}_pad"))(upsampled)
    if stride == 1 and kernel_size % 2 == 1:
        crop = (kernel_size - 1) // 2
    elif stride == 2 and kernel_size >= 2 and kernel_size % 2 == 0:
        crop = (kernel_size - 2) // 2
    else:
        raise ValueError(
            f"{name}: no passthrough for a {kernel_size}x{kernel_size}/{stride} convolution "
            "(needs stride 1 with an odd kernel or stride 2 with an even kernel)."
        )
    outputs = inputs
    if crop:
        outputs = isl_layers.CenterCrop2D(crop, **settings.layer_kwargs(f"{name}_crop"))(outputs)
    if stride == 2:
        outputs = keras.layers.AveragePooling2D(
            2, 2, padding="valid", **settings.layer_kwargs(f"{name}_pool")
        )(outputs)
    return outputs


def minception_module(
    inputs: keras.KerasTensor,
    *,
    expansion_kernel: int,
    expansion_stride: int,
    expansion_depth: int,
    reduction_depth: int,
    transpose: bool,
    depth_floor: bool,
    settings: BlockSettings,
    name: str,
) -> keras.KerasTensor:
    """A "Minception" residual module (§1.3).

    expand (k x k / s unit, + parallel max pool unless transposed) ->
    reduce (1x1 unit) -> + passthrough(inputs). With `depth_floor`, both
    depths are raised to at least C_in. The residual sum zero-pads the
    shallower tensor at the end of the channels (convolution modules) or
    crops the deeper one to its first channels (transposed modules).

    Args:
        inputs: `[batch, n, n, C_in]`.

    Returns:
        `[batch, n', n', C_out]` with C_out = Dr (convolution modules) or
        min(Dr, C_in) (transposed modules).
    """
    input_depth = int(inputs.shape[-1])
    if depth_floor:
        reduction_depth = max(reduction_depth, input_depth)
        expansion_depth = max(expansion_depth, input_depth)
    expanded = residual_v2_conv(
        inputs,
        kernel_size=expansion_kernel,
        stride=expansion_stride,
        depth=expansion_depth,
        transpose=transpose,
        add_max_pool=not transpose,
        settings=settings,
        name=f"{name}_expand_rv2",
    )
    reduced = residual_v2_conv(
        expanded,
        kernel_size=REDUCTION_KERNEL,
        stride=1,
        depth=reduction_depth,
        settings=settings,
        name=f"{name}_reduce_rv2",
    )
    residual = passthrough(
        inputs,
        kernel_size=expansion_kernel,
        stride=expansion_stride,
        transpose=transpose,
        settings=settings,
        name=f"{name}_passthrough",
    )
    outputs = isl_layers.MismatchedDepthAdd(pad=not transpose, fused=settings.fused, **settings.layer_kwargs(name))(
        [residual, reduced]
    )
    if settings.records is not None:
        settings.records.append(
            ModuleRecord(
                name=name,
                input_size=inputs.shape[1],
                input_depth=input_depth,
                expansion_kernel=expansion_kernel,
                expansion_stride=expansion_stride,
                kind="deconv" if transpose else "conv",
                expansion_depth=expansion_depth,
                reduction_depth=reduction_depth,
                expand_output_depth=int(expanded.shape[-1]),
                output_size=outputs.shape[1],
                output_depth=int(outputs.shape[-1]),
            )
        )
    return outputs


# ---------------------------------------------------------------------------
# The three building blocks (§1.4)
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BlockDepthRule:
    """How one network turns module output sizes into depths.

    Attributes:
        base_depth: the depth multiplier (400).
        expansion_factor: De / Dr ratio before rounding (211/39).
        up_depth_offset: transposed modules of overlap up blocks use
            base_depth - up_depth_offset (the released code's 4).
    """

    base_depth: int
    expansion_factor: float
    up_depth_offset: int = 4

    def depths(self, size: int, base_depth: int | None = None) -> tuple[int, int]:
        return module_depths(self.base_depth if base_depth is None else base_depth, size, self.expansion_factor)


def in_scale_module(
    inputs: keras.KerasTensor,
    *,
    depth_size: int,
    kernel_size: int,
    rule: BlockDepthRule,
    settings: BlockSettings,
    name: str,
) -> keras.KerasTensor:
    """In-scale module: k x k / 1 expansion, depth floor on (n -> n - k + 1).

    Args:
        depth_size: the output side the depth schedule uses.
    """
    expansion_depth, reduction_depth = rule.depths(depth_size)
    return minception_module(
        inputs,
        expansion_kernel=kernel_size,
        expansion_stride=1,
        expansion_depth=expansion_depth,
        reduction_depth=reduction_depth,
        transpose=False,
        depth_floor=True,
        settings=settings,
        name=name,
    )


def down_block(
    inputs: keras.KerasTensor,
    *,
    depth_size: int,
    down_kernel: int,
    in_scale_kernel: int,
    add_in_scale_module: bool,
    rule: BlockDepthRule,
    settings: BlockSettings,
    name: str,
) -> keras.KerasTensor:
    """Learned downscale ("fovea"): k x k / 2 module [+ in-scale module].

    Both modules take their depths from `depth_size`, the block's output side
    (the released code's `final_size`). n -> (n - k)/2 + 1 [- (k_in - 1)].
    """
    expansion_depth, reduction_depth = rule.depths(depth_size)
    outputs = minception_module(
        inputs,
        expansion_kernel=down_kernel,
        expansion_stride=2,
        expansion_depth=expansion_depth,
        reduction_depth=reduction_depth,
        transpose=False,
        depth_floor=True,
        settings=settings,
        name=name,
    )
    if add_in_scale_module:
        outputs = in_scale_module(
            outputs,
            depth_size=depth_size,
            kernel_size=in_scale_kernel,
            rule=rule,
            settings=settings,
            name=f"{name}_in_scale",
        )
    return outputs


def up_block(
    inputs: keras.KerasTensor,
    *,
    depth_size: int,
    up_kernel: int,
    in_scale_kernel: int,
    overlap_crop: int,
    add_in_scale_module: bool,
    rule: BlockDepthRule,
    settings: BlockSettings,
    name: str,
) -> keras.KerasTensor:
    """Learned upscale ("defovea"): transposed module [+ crop + in-scale module].

    * Concordance ("overlap", k = 4): the transposed module's depths use
      base_depth - up_depth_offset (the released quirk), no depth floor;
      then a centre crop of `overlap_crop` per side, then an in-scale module
      with depths from base_depth. n -> 2n + 2 -> 2n - 2 -> 2n - 4.
    * Fovea (k = 2): the transposed module alone with depths from base_depth
      (n -> 2n).

    Args:
        depth_size: the block's output side, used for both modules' depths.
        overlap_crop: pixels cropped per side after the transposed module.
    """
    overlap = up_kernel > 2
    base = rule.base_depth - rule.up_depth_offset if overlap else rule.base_depth
    expansion_depth, reduction_depth = rule.depths(depth_size, base_depth=base)
    outputs = minception_module(
        inputs,
        expansion_kernel=up_kernel,
        expansion_stride=2,
        expansion_depth=expansion_depth,
        reduction_depth=reduction_depth,
        transpose=True,
        depth_floor=False,
        settings=settings,
        name=name,
    )
    if overlap_crop:
        outputs = isl_layers.CenterCrop2D(overlap_crop, **settings.layer_kwargs(f"{name}_crop"))(outputs)
    if add_in_scale_module:
        outputs = in_scale_module(
            outputs,
            depth_size=depth_size,
            kernel_size=in_scale_kernel,
            rule=rule,
            settings=settings,
            name=f"{name}_in_scale",
        )
    return outputs


def head(
    embedding: keras.KerasTensor,
    *,
    num_classes: int,
    settings: BlockSettings,
    name: str,
) -> keras.KerasTensor:
    """One output head: BN -> [ReLU || tanh] -> 1x1 conv with bias (§1.7).

    `[batch, n, n, E]` -> `[batch, n, n, num_classes]` logits.
    """
    return residual_v2_conv(
        embedding,
        kernel_size=1,
        stride=1,
        depth=num_classes,
        use_bias=True,
        settings=settings,
        name=name,
    )
