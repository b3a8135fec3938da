"""Stand-ins for the model and data stages, with the contract's shapes.

They let the training machinery be tested on its own: a small functional
model named like the real one (`*projection*`, core layers, `head_*`), the
masked cross-entropy of isl_reference.md §2, and a tf.data of random
`(inputs, labels)` batches.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from isl import config as config_lib
from isl.model import geometry as geometry_lib


def build_model(config: config_lib.ExperimentConfig, input_size: int | None = None) -> keras.Model:
    """`[batch, n, n, 2Z]` -> `[batch, n - 2 border, ..., heads, classes]`."""
    geometry = geometry_lib.geometry(config.model)
    channels = config.channels
    inputs = keras.Input((input_size, input_size, channels.num_input_features))
    x = keras.layers.Conv2D(8, 1, name="projection")(inputs)
    x = keras.layers.Conv2D(12, 2 * geometry.border + 1, name="core_conv")(x)
    x = keras.layers.BatchNormalization(name="core_bn")(x)
    x = keras.layers.Activation("relu", name="core_act")(x)
    logits = [
        keras.layers.Conv2D(config.model.num_classes, 1, name="head_" + name.replace("/", "_") + "_conv")(x)
        for name in channels.head_names
    ]
    stacked = keras.layers.Lambda(lambda tensors: keras.ops.stack(tensors, axis=3), name="logits")(logits)
    return keras.Model(inputs, stacked)


def per_head_losses(labels, logits):
    """`[B, o, o, H, 2]`, `[B, o, o, H, C]` -> `[H]` masked CE / ln C."""
    num_classes = logits.shape[-1]
    classes = keras.ops.cast(keras.ops.round(labels[..., 0] * (num_classes - 1)), "int32")
    cross_entropy = keras.ops.sparse_categorical_crossentropy(classes, logits, from_logits=True)
    mask = labels[..., 1]
    total = keras.ops.sum(cross_entropy * mask, axis=(0, 1, 2))
    count = keras.ops.sum(keras.ops.cast(mask > 0, "float32"), axis=(0, 1, 2))
    return keras.ops.divide_no_nan(total, count) / math.log(num_classes)


class Loss(keras.losses.Loss):
    """0.5 mean(input heads) + 0.5 mean(target heads)."""

    def __init__(self, channels: config_lib.ChannelConfig) -> None:
        super().__init__(name="isl_loss", reduction=None)
        self.num_input_heads = channels.num_input_heads

    def call(self, y_true, y_pred):
        per_head = per_head_losses(y_true, y_pred)
        return 0.5 * keras.ops.mean(per_head[: self.num_input_heads]) + 0.5 * keras.ops.mean(
            per_head[self.num_input_heads :]
        )


def make_dataset(
    data_dir, config, split="train", input_context=None, seed=None, deterministic=False, repeat=True, batch_size=None
) -> tf.data.Dataset:
    """Random batches with learnable structure (labels follow the input)."""
    geometry = geometry_lib.geometry(config.model)
    channels = config.channels
    batch = batch_size or config.train.batch_size
    if input_context is not None:
        batch = input_context.get_per_replica_batch_size(config.train.batch_size)
    rng = np.random.default_rng(0 if split == "train" else 1)
    count = 64
    inputs = rng.random((count, geometry.input_size, geometry.input_size, channels.num_input_features), np.float32)
    border = geometry.border
    centre = inputs[:, border : border + geometry.output_size, border : border + geometry.output_size, 0]
    values = np.repeat(centre[..., np.newaxis], channels.num_heads, axis=-1)
    masks = np.ones_like(values)
    labels = np.stack([values, masks], axis=-1).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((inputs, labels))
    if input_context is not None:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if repeat:
        dataset = dataset.repeat()
    return dataset.batch(batch, drop_remainder=True)


def save_model_dir(model: keras.Model, config: config_lib.ExperimentConfig, directory: str) -> None:
    import os

    config_lib.save_config(config, os.path.join(directory, "config.json"))
    model.save_weights(os.path.join(directory, "model.weights.h5"))


STAND_INS = dict(
    build_model_fn=build_model,
    loss_fn=Loss,
    dataset_fn=make_dataset,
    save_model_dir_fn=save_model_dir,
    per_head_loss_fn=per_head_losses,
)
