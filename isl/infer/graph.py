"""The inference graph: batch norm folded into a scale and shift, fused with the activation.

At prediction time a batch-norm layer is the affine map
`y = x * scale + shift` with `scale = gamma / sqrt(moving_variance + eps)`
and `shift = beta - moving_mean * scale`. In the network every batch norm
feeds exactly one dual activation `[ReLU(y) || tanh(y)]`, so the pair is one
element-wise function of `x`. `inference_model` rebuilds a built Keras model
with each such pair replaced by one `FoldedNormActivation` layer, so the
full-resolution element-wise passes (normalise, then activate) are not paid
twice: one multiply-add feeding ReLU and tanh, no batch-norm kernel (with
`fused=True` one XLA-compiled loop; measured slower, see `inference_model`).
Convolutions keep the model's dtype policy (bfloat16 stays bfloat16, which
oneDNN runs on AMX where the CPU has it); the affine map and the activations
are computed in float32 and rounded once.

Outputs equal the original graph's up to float rounding (float32: ~1e-6;
bfloat16: one rounding less than the unfused graph; tested).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from isl.model import layers as isl_layers

_KERNELS: dict[str, Any] = {}


def _kernels() -> dict[str, Any]:
    """The XLA-compiled fused kernel (built once)."""
    if not _KERNELS:
        import tensorflow as tf

        @tf.function(jit_compile=True, autograph=False)
        def affine_relu_tanh(inputs, scale, shift, dtype_probe):
            normalized = tf.cast(inputs, tf.float32) * scale + shift
            outputs = tf.concat([tf.nn.relu(normalized), tf.math.tanh(normalized)], axis=-1)
            return tf.cast(outputs, dtype_probe.dtype)

        _KERNELS["relu_tanh"] = affine_relu_tanh
    return _KERNELS


class FoldedNormActivation(keras.layers.Layer):
    """`activations(x * scale + shift)`, concatenated along channels (TensorFlow backend).

    `[batch, rows, columns, C]` -> `[batch, rows, columns, len(activations) * C]`.
    The scale and shift are float32 constants `[C]`; the computation runs in
    float32 and the result is cast to the layer's compute dtype. Not meant
    to be saved: `inference_model` builds it from a trained model.
    """

    def __init__(
        self,
        activations: tuple[str, ...] | list[str] = ("relu", "tanh"),
        fused: bool = True,
        scale: Any = None,
        shift: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.activations = tuple(activations)
        self.fused = bool(fused)
        self._functions = [keras.activations.get(name) for name in self.activations]
        # Constants, not weights: Keras would autocast weights to bfloat16.
        self.scale = None if scale is None else np.asarray(scale, np.float32)
        self.shift = None if shift is None else np.asarray(shift, np.float32)

    def call(self, inputs, training=None, mask=None):
        del training, mask  # Inference only; the node of the batch norm it replaces passes them.
        import tensorflow as tf

        depth = inputs.shape[-1]
        scale = tf.constant(np.ones(depth, np.float32) if self.scale is None else self.scale)
        shift = tf.constant(np.zeros(depth, np.float32) if self.shift is None else self.shift)
        if self.fused and self.activations == ("relu", "tanh"):
            probe = tf.zeros([], self.compute_dtype)
            return _kernels()["relu_tanh"](inputs, scale, shift, probe)
        normalized = tf.cast(inputs, tf.float32) * scale + shift
        parts = [function(normalized) for function in self._functions]
        outputs = parts[0] if len(parts) == 1 else tf.concat(parts, axis=-1)
        return tf.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        channels = input_shape[-1]
        return tuple(input_shape[:-1]) + (None if channels is None else len(self.activations) * channels,)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "activations": list(self.activations), "fused": self.fused}


def _folded(layer: keras.layers.BatchNormalization) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) float32 `[C]` of an inference-mode batch norm."""
    variance = np.asarray(layer.moving_variance, np.float64)
    mean = np.asarray(layer.moving_mean, np.float64)
    gamma = np.asarray(layer.gamma, np.float64) if layer.scale else np.ones_like(variance)
    beta = np.asarray(layer.beta, np.float64) if layer.center else np.zeros_like(variance)
    scale = gamma / np.sqrt(variance + layer.epsilon)
    return scale.astype(np.float32), (beta - mean * scale).astype(np.float32)


def _pairs(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """Batch-norm layer name -> the dual activation that is its only consumer."""
    consumers: dict[str, list[keras.layers.Layer]] = {}
    for layer in model.layers:
        for node in getattr(layer, "_inbound_nodes", []):
            for tensor in node.input_tensors:
                history = getattr(tensor, "_keras_history", None)
                if history is not None:
                    consumers.setdefault(history.operation.name, []).append(layer)
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization) or layer.axis not in (-1, 3):
            continue
        after = consumers.get(layer.name, [])
        if len(after) == 1 and isinstance(after[0], isl_layers.DualActivation) and len(layer._inbound_nodes) == 1:
            pairs[layer.name] = after[0]
    return pairs


def inference_model(model: keras.Model, fused: bool = False) -> keras.Model:
    """`model` with every batch norm + dual activation pair folded into one layer.

    Other layers are copies with the same names and weights (so
    `get_layer` finds the embedding and the heads). Models without such
    pairs come back unchanged.

    Args:
        model: a functional Keras model (e.g. from `isl.model.builder`).
        fused: run each folded layer as one XLA-compiled loop. Off by
            default: measured slower on this CPU than TensorFlow's own ops
            (which oneDNN/Eigen run multi-threaded; BUILD_NOTES.md), and it
            compiles once per layer and tile shape.

    Returns:
        A functional model with the same inputs and outputs, for inference.
    """
    pairs = _pairs(model)
    if not pairs:
        return model
    activations = {pair.name for pair in pairs.values()}

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if layer.name in pairs:
            activation = pairs[layer.name]
            scale, shift = _folded(layer)
            return FoldedNormActivation(
                activation.activations, fused=fused, scale=scale, shift=shift, name=layer.name,
                dtype=layer.dtype_policy,
            )
        if layer.name in activations:
            return keras.layers.Identity(name=layer.name, dtype=layer.dtype_policy)
        # A new layer (a shared one would keep its first graph's `output`).
        return layer.__class__.from_config(layer.get_config())

    rebuilt = keras.models.clone_model(model, clone_function=clone)
    for layer in rebuilt.layers:
        if layer.name not in pairs and layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return rebuilt
