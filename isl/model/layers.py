"""The few custom Keras layers the ISL network needs.

Everything else is a stock Keras layer (BatchNormalization, Conv2D,
Conv2DTranspose, MaxPooling2D, AveragePooling2D, Cropping2D, UpSampling2D,
Concatenate). Each layer here has `get_config` and is registered as
serializable under the package name "isl", so `.keras` files load without
`custom_objects` once `isl.model` is imported.

All tensors are channels-last: `[batch, rows, columns, channels]`.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

PACKAGE = "isl"


# The pre-activations the blocks offer, by `ModelConfig.activation` name.
# "relu_tanh" is the paper's; the others are options for hyperparameter search.
ACTIVATIONS: dict[str, tuple[str, ...]] = {
    "relu_tanh": ("relu", "tanh"),
    "relu": ("relu",),
    "silu_tanh": ("silu", "tanh"),
}


# ---------------------------------------------------------------------------
# XLA-fused element-wise kernels (TensorFlow backend, CPU speed)
# ---------------------------------------------------------------------------
#
# The TF graph runs each element-wise op as its own pass over memory (ReLU,
# tanh, concat; in the backward pass ReluGrad, TanhGrad, AddN and the Slice
# ops that split a concat's gradient). On CPU those passes cost as much as
# the convolutions. With `fused=True` the layers below run their forward and
# their backward pass each as one small XLA-compiled function (a custom
# gradient), i.e. one fused loop. The values are the same functions (up to
# the last bit of XLA's tanh, and bfloat16 intermediates kept in float32).

_FUSED_CACHE: dict[str, Any] = {}


def _fused_kernels() -> dict[str, Any]:
    """Builds (once) the custom-gradient TF functions of the fused layers."""
    if _FUSED_CACHE:
        return _FUSED_CACHE
    import tensorflow as tf  # Only the TensorFlow backend takes this path.

    @tf.function(jit_compile=True, autograph=False)
    def relu_tanh_forward(inputs):
        return tf.concat([tf.nn.relu(inputs), tf.math.tanh(inputs)], axis=-1)

    @tf.function(jit_compile=True, autograph=False)
    def relu_tanh_backward(outputs, upstream):
        # outputs = [relu(x) || tanh(x)]: relu(x) > 0 iff x > 0, and
        # d tanh / dx = 1 - tanh(x)^2, so the input is not needed.
        depth = outputs.shape[-1] // 2  # channels are static
        relu_part = outputs[..., :depth]
        tanh_part = outputs[..., depth:]
        relu_grad = tf.where(relu_part > 0, upstream[..., :depth], tf.zeros_like(relu_part))
        return relu_grad + upstream[..., depth:] * (1 - tanh_part * tanh_part)

    @tf.custom_gradient
    def relu_tanh(inputs):
        outputs = relu_tanh_forward(inputs)

        def gradient(upstream):
            return relu_tanh_backward(outputs, upstream)

        return outputs, gradient

    @tf.function(jit_compile=True, autograph=False)
    def concat_forward(first, second):
        return tf.concat([first, second], axis=-1)

    @tf.function(jit_compile=True, autograph=False)
    def split_backward(upstream, first_depth):
        return upstream[..., :first_depth], upstream[..., first_depth:]

    @tf.custom_gradient
    def concat_channels(first, second):
        first_depth = int(first.shape[-1])

        def gradient(upstream):
            return split_backward(upstream, first_depth)

        return concat_forward(first, second), gradient

    @tf.function(jit_compile=True, autograph=False)
    def padded_add_forward(deeper, shallower):
        extra = deeper.shape[-1] - shallower.shape[-1]
        return deeper + tf.pad(shallower, [[0, 0], [0, 0], [0, 0], [0, extra]])

    @tf.function(jit_compile=True, autograph=False)
    def padded_add_backward(upstream, shallow_depth):
        return upstream[..., :shallow_depth]

    @tf.custom_gradient
    def padded_add(deeper, shallower):
        shallow_depth = int(shallower.shape[-1])

        def gradient(upstream):
            return upstream, padded_add_backward(upstream, shallow_depth)

        return padded_add_forward(deeper, shallower), gradient

    _FUSED_CACHE.update(relu_tanh=relu_tanh, concat_channels=concat_channels, padded_add=padded_add)
    return _FUSED_CACHE


def _can_fuse() -> bool:
    return keras.backend.backend() == "tensorflow"


@keras.saving.register_keras_serializable(package=PACKAGE)
class DualActivation(keras.layers.Layer):
    """concat([ReLU(x), tanh(x)]) along channels, ReLU first (§1.2).

    `activations` names the parts, in channel order (default the paper's
    ("relu", "tanh")). With `fused` (TensorFlow backend, ("relu", "tanh")
    only), forward and backward each run as one XLA-fused pass (see
    `_fused_kernels`). Shape: `[batch, rows, columns, C]` ->
    `[batch, rows, columns, len(activations) * C]`.
    """

    def __init__(
        self,
        activations: tuple[str, ...] | list[str] = ("relu", "tanh"),
        fused: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.activations = tuple(activations)
        self.fused = bool(fused)
        self._functions = [keras.activations.get(name) for name in self.activations]

    def call(self, inputs):
        if self.fused and self.activations == ("relu", "tanh") and _can_fuse():
            return _fused_kernels()["relu_tanh"](inputs)
        if len(self._functions) == 1:
            return self._functions[0](inputs)
        return ops.concatenate([function(inputs) for function in self._functions], axis=-1)

    def compute_output_shape(self, input_shape):
        channels = input_shape[-1]
        count = len(self.activations)
        return tuple(input_shape[:-1]) + (None if channels is None else count * channels,)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "activations": list(self.activations), "fused": self.fused}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SymmetricPad2D(keras.layers.Layer):
    """Pads rows and columns by `padding` pixels, mirroring the edge (§1.3).

    For `padding=1` this is edge replication, as the released code's
    `tf.pad(..., mode="SYMMETRIC")` of the upsampled residual.
    Shape: `[batch, n, m, C]` -> `[batch, n + 2p, m + 2p, C]`.
    """

    def __init__(self, padding: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.padding = int(padding)

    def call(self, inputs):
        pad = self.padding
        return ops.pad(inputs, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="symmetric")

    def compute_output_shape(self, input_shape):
        batch, rows, columns, channels = input_shape
        grow = lambda size: None if size is None else size + 2 * self.padding  # noqa: E731
        return (batch, grow(rows), grow(columns), channels)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "padding": self.padding}


@keras.saving.register_keras_serializable(package=PACKAGE)
class MismatchedDepthAdd(keras.layers.Layer):
    """Residual sum of two tensors whose channel depths may differ (§1.3).

    Called on `[passthrough, reduced]`, both `[batch, rows, columns, C_i]`.

    * `pad=True` (convolution modules): the shallower tensor is zero-padded
      at the END of the channel axis; output depth max(C_0, C_1).
    * `pad=False` (transposed-convolution modules): the deeper tensor is
      cropped to its FIRST min(C_0, C_1) channels.

    With `fused` (TensorFlow backend), the pad-and-add and its gradient run as
    XLA-fused passes.
    """

    def __init__(self, pad: bool = True, fused: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pad = bool(pad)
        self.fused = bool(fused)

    def call(self, inputs):
        first, second = inputs
        first_depth, second_depth = first.shape[-1], second.shape[-1]
        if first_depth == second_depth:
            return ops.add(first, second)
        if self.pad:
            if first_depth < second_depth:
                first, second = second, first
            if self.fused and _can_fuse():
                return _fused_kernels()["padded_add"](first, second)
            extra = first.shape[-1] - second.shape[-1]
            second = ops.pad(second, [[0, 0], [0, 0], [0, 0], [0, extra]])
            return ops.add(first, second)
        depth = min(first_depth, second_depth)
        return ops.add(first[..., :depth], second[..., :depth])

    def compute_output_shape(self, input_shapes):
        first, second = input_shapes
        depth = max(first[-1], second[-1]) if self.pad else min(first[-1], second[-1])
        return tuple(second[:-1]) + (depth,)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "pad": self.pad, "fused": self.fused}


@keras.saving.register_keras_serializable(package=PACKAGE)
class StackHeads(keras.layers.Layer):
    """Stacks per-head logits into the canonical prediction layout.

    Called on a list of `num_heads` tensors `[batch, rows, columns, classes]`;
    returns `[batch, rows, columns, num_heads, classes]` in this layer's
    dtype (float32 by default, also under a mixed-precision policy).
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs):
        # Concatenation of [b, r, c, 1, classes] slices, not `ops.stack`: the
        # gradient of a stack is one Unpack node shared by every head, and
        # oneDNN's MergeConv2DBackpropFilterWithBiasAddGrad rewrite then
        # sometimes pairs one head's filter gradient with another head's bias
        # gradient (measured: head-bias gradients 8-110% off in 4 of 12
        # traces, also on one device). Same values and shape.
        return ops.concatenate(
            [ops.expand_dims(ops.cast(head, self.compute_dtype), 3) for head in inputs], axis=3
        )

    def compute_output_shape(self, input_shapes):
        first = input_shapes[0]
        return tuple(first[:3]) + (len(input_shapes), first[3])


@keras.saving.register_keras_serializable(package=PACKAGE)
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` computed by one fused kernel.

    Same constructor, weights (gamma, beta, moving_mean, moving_variance),
    config and semantics as the stock layer, which it falls back to for
    anything but a 4-D channels-last input on the TensorFlow backend. On
    that path it calls TF's FusedBatchNormV3 (oneDNN on CPU), which is what
    the released TF1 code's slim `batch_norm` ran too: one pass forward and
    one backward instead of about ten element-wise ops each way. This is a
    performance choice (the stock layer made batch norm over half of the
    CPU training step). As in TF1's fused kernel, the moving variance is
    updated with the Bessel-corrected batch variance.

    With `eigen_odd_depths` (`TrainConfig.fast_batch_norm`), a depth that
    oneDNN has no vectorised kernel for (not a multiple of 16 in bfloat16, of
    8 in float32; oneDNN then runs its generic `nspc_bnorm:any`) runs TF's
    own (Eigen) kernel of the same FusedBatchNormV3 op instead, on a 5-D view
    `[b, h, w, 1, C]` (oneDNN takes only 4-D): the same two-pass algorithm,
    1.4-2x faster there on this CPU, equal up to float rounding.
    """

    def __init__(self, *args: Any, eigen_odd_depths: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eigen_odd_depths = bool(eigen_odd_depths)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "eigen_odd_depths": self.eigen_odd_depths}

    def _fused(self, tf, inputs, gamma, beta, mean, variance, **kwargs):
        depth = inputs.shape[-1]
        vector = 16 if inputs.dtype == tf.bfloat16 else 8
        if not (self.eigen_odd_depths and depth is not None and depth % vector):
            return tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, mean=mean, variance=variance, data_format="NHWC", **kwargs
            )
        shape = tf.shape(inputs)
        view = tf.reshape(inputs, tf.concat([shape[:3], [1, depth]], axis=0))
        outputs, batch_mean, batch_variance = tf.compat.v1.nn.fused_batch_norm(
            view, gamma, beta, mean=mean, variance=variance, data_format="NDHWC", **kwargs
        )
        return tf.reshape(outputs, shape), batch_mean, batch_variance

    def call(self, inputs, training=None, mask=None):
        if (
            keras.backend.backend() != "tensorflow"
            or mask is not None
            or len(inputs.shape) != 4
            or self.axis not in (-1, 3)
            or self.renorm
            or self.synchronized
        ):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf  # The fused kernel exists only in TensorFlow.

        if inputs.dtype not in (tf.float32, tf.bfloat16, tf.float16):
            inputs = tf.cast(inputs, tf.float32)
        depth = inputs.shape[-1]
        gamma = self.gamma if self.scale else tf.ones([depth], tf.float32)
        beta = self.beta if self.center else tf.zeros([depth], tf.float32)
        gamma = tf.cast(gamma, tf.float32)
        beta = tf.cast(beta, tf.float32)
        moving_mean = tf.cast(self.moving_mean, tf.float32)
        moving_variance = tf.cast(self.moving_variance, tf.float32)
        if training and self.trainable:
            outputs, mean, variance = self._fused(
                tf,
                inputs,
                gamma,
                beta,
                moving_mean,
                moving_variance,
                epsilon=self.epsilon,
                is_training=True,
                exponential_avg_factor=1.0 - self.momentum,
            )
            self.moving_mean.assign(tf.cast(mean, self.moving_mean.dtype))
            self.moving_variance.assign(tf.cast(variance, self.moving_variance.dtype))
        else:
            outputs, _, _ = self._fused(
                tf, inputs, gamma, beta, moving_mean, moving_variance, epsilon=self.epsilon, is_training=False
            )
        return tf.cast(outputs, self.compute_dtype)


@keras.saving.register_keras_serializable(package=PACKAGE)
class CenterCrop2D(keras.layers.Layer):
    """Removes `crop` pixels from each side of the rows and columns.

    Like `keras.layers.Cropping2D(crop)`, but a Slice op (whose gradient is a
    Pad) rather than a StridedSlice (whose generic gradient cost about 18 ms
    per crop in a batch-16 training step on CPU). Works with dynamic sizes.
    Shape: `[batch, n, m, C]` -> `[batch, n - 2 crop, m - 2 crop, C]`.
    """

    def __init__(self, crop: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.crop = int(crop)
        if self.crop < 0:
            raise ValueError(f"crop must be >= 0. Received: {crop}")

    def call(self, inputs):
        crop = self.crop
        if not crop:
            return inputs
        shape = ops.shape(inputs)
        return ops.slice(inputs, [0, crop, crop, 0], [shape[0], shape[1] - 2 * crop, shape[2] - 2 * crop, shape[3]])

    def compute_output_shape(self, input_shape):
        batch, rows, columns, channels = input_shape
        shrink = lambda size: None if size is None else size - 2 * self.crop  # noqa: E731
        return (batch, shrink(rows), shrink(columns), channels)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "crop": self.crop}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ChannelConcat(keras.layers.Concatenate):
    """`keras.layers.Concatenate(axis=-1)` of two tensors, optionally XLA-fused.

    Same output and config as the stock layer (plus `fused`). With `fused`
    (TensorFlow backend, two inputs), the concat and the split of its
    gradient each run as one XLA-compiled pass instead of TF's Slice ops.
    Shapes: `[b, n, m, C0]`, `[b, n, m, C1]` -> `[b, n, m, C0 + C1]`.
    """

    def __init__(self, fused: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("axis", -1)
        super().__init__(**kwargs)
        self.fused = bool(fused)

    def call(self, inputs):
        if self.fused and len(inputs) == 2 and self.axis in (-1, 3) and _can_fuse():
            return _fused_kernels()["concat_channels"](inputs[0], inputs[1])
        return super().call(inputs)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "fused": self.fused}
