"""Encoding one well as a `tf.train.Example` (the format is in `isl.data.schema`)."""

from __future__ import annotations

import numpy as np

from isl.data import schema
from isl.data import wells as wells_lib


def _bytes(values: list[bytes]):
    import tensorflow as tf

    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _ints(values: list[int]):
    import tensorflow as tf

    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def encode_well(raw: wells_lib.RawWell) -> bytes:
    """Serializes a well losslessly.

    Args:
        raw: the well's uint16 pixels, `inputs` `[H, W, Z]`, `targets` `[H, W, T]`.

    Returns:
        The serialized `tf.train.Example`.
    """
    import tensorflow as tf

    source = raw.source
    height, width, num_z = raw.inputs.shape
    metadata = source.metadata
    features = {
        schema.WELL_NAME: _bytes([source.name.encode()]),
        schema.WELL_LAB: _bytes([metadata.get("lab", "").encode()]),
        schema.WELL_CONDITION: _bytes([metadata.get("condition", "").encode()]),
        schema.WELL_WELL: _bytes([metadata.get("well", "").encode()]),
        schema.WELL_DATE: _bytes([metadata.get("date", "").encode()]),
        schema.WELL_SOURCE_FILES: _bytes([path.encode() for path in source.source_files]),
        schema.IMAGE_HEIGHT: _ints([height]),
        schema.IMAGE_WIDTH: _ints([width]),
        schema.INPUTS_MODALITY: _bytes([source.modality.encode()]),
        schema.INPUTS_NUM_Z: _ints([num_z]),
        schema.INPUTS_MAX_VALUE: _ints([raw.input_max_value]),
        schema.INPUTS_DATA: _bytes([np.ascontiguousarray(raw.inputs, dtype="<u2").tobytes()]),
        schema.TARGETS_CHANNELS: _bytes([channel.encode() for channel in source.target_channels]),
        schema.TARGETS_MAX_VALUES: _ints(list(raw.target_max_values)),
        schema.TARGETS_DATA: _bytes([np.ascontiguousarray(raw.targets, dtype="<u2").tobytes()]),
    }
    example = tf.train.Example(features=tf.train.Features(feature=features))
    return example.SerializeToString()
