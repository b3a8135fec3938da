"""Serialized `tf.train.Example` -> tensors (the record format only, no preprocessing)."""

from __future__ import annotations

import tensorflow as tf

from isl.data import schema


def decode(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Decodes one well.

    Args:
        serialized: a scalar string tensor, one Example written by `isl convert`.

    Returns:
        A dict of tensors:
        * "inputs": `[height, width, num_source_z]` uint16;
        * "input_max_value": float32 scalar (255 or 65535);
        * "modality": string scalar;
        * "num_source_z": int32 scalar;
        * "targets": `[height, width, T]` uint16, the T real channels present;
        * "target_channels": `[T]` string;
        * "target_max_values": `[T]` float32;
        * "height", "width": int32 scalars; "name": string scalar;
        * "embedding": `[height, width, E]` float16, the hybrid's frozen-core
          embedding (E = 0 when the record has none).
    """
    features = tf.io.parse_single_example(serialized, schema.feature_spec())
    height = tf.cast(features[schema.IMAGE_HEIGHT], tf.int32)
    width = tf.cast(features[schema.IMAGE_WIDTH], tf.int32)
    num_z = tf.cast(features[schema.INPUTS_NUM_Z], tf.int32)
    target_channels = tf.sparse.to_dense(features[schema.TARGETS_CHANNELS], default_value="")
    target_max_values = tf.cast(tf.sparse.to_dense(features[schema.TARGETS_MAX_VALUES]), tf.float32)
    num_targets = tf.shape(target_channels)[0]
    inputs = tf.reshape(
        tf.io.decode_raw(features[schema.INPUTS_DATA], tf.uint16, little_endian=True),
        tf.stack([height, width, num_z]),
    )
    targets = tf.reshape(
        tf.io.decode_raw(features[schema.TARGETS_DATA], tf.uint16, little_endian=True),
        tf.stack([height, width, num_targets]),
    )
    embedding_size = tf.cast(features[schema.EMBEDDING_SIZE], tf.int32)
    embedding = tf.cond(
        embedding_size > 0,
        lambda: tf.io.decode_raw(features[schema.EMBEDDING_DATA], tf.float16, little_endian=True),
        lambda: tf.zeros([0], tf.float16))
    return {
        "embedding": tf.reshape(embedding, tf.stack([height, width, embedding_size])),
        "inputs": inputs,
        "input_max_value": tf.cast(features[schema.INPUTS_MAX_VALUE], tf.float32),
        "modality": features[schema.INPUTS_MODALITY],
        "num_source_z": num_z,
        "targets": targets,
        "target_channels": target_channels,
        "target_max_values": target_max_values,
        "height": height,
        "width": width,
        "name": features[schema.WELL_NAME],
    }
