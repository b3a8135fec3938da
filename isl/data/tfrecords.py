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

    # Filled in place, the pixel bytes made one field at a time: building `Feature`s first and handing them to
    # `Features(feature=...)` copied each once more (two whole copies of the well besides the serialized one).
    example = tf.train.Example()
    feature = example.features.feature
    for key, (kind, values) in _fields(raw).items():
        if kind == "int64":
            feature[key].int64_list.value.extend(values)
        else:
            for value in values:
                feature[key].bytes_list.value.append(value() if callable(value) else value)
    return example.SerializeToString()


def _fields(raw: wells_lib.RawWell) -> dict[str, tuple[str, list]]:
    """The Example's fields in order: key -> ("bytes" or "int64", values); pixel bytes as callables (made late)."""
    source = raw.source
    height, width, num_z = raw.inputs.shape
    metadata = source.metadata
    return {
        schema.WELL_NAME: ("bytes", [source.name.encode()]),
        schema.WELL_LAB: ("bytes", [metadata.get("lab", "").encode()]),
        schema.WELL_CONDITION: ("bytes", [metadata.get("condition", "").encode()]),
        schema.WELL_WELL: ("bytes", [metadata.get("well", "").encode()]),
        schema.WELL_DATE: ("bytes", [metadata.get("date", "").encode()]),
        schema.WELL_SOURCE_FILES: ("bytes", [path.encode() for path in source.source_files]),
        schema.IMAGE_HEIGHT: ("int64", [height]),
        schema.IMAGE_WIDTH: ("int64", [width]),
        schema.INPUTS_MODALITY: ("bytes", [source.modality.encode()]),
        schema.INPUTS_NUM_Z: ("int64", [num_z]),
        schema.INPUTS_MAX_VALUE: ("int64", [raw.input_max_value]),
        schema.INPUTS_DATA: ("bytes", [lambda: np.ascontiguousarray(raw.inputs, dtype="<u2").tobytes()]),
        schema.TARGETS_CHANNELS: ("bytes", [channel.encode() for channel in source.target_channels]),
        schema.TARGETS_MAX_VALUES: ("int64", list(raw.target_max_values)),
        schema.TARGETS_DATA: ("bytes", [lambda: np.ascontiguousarray(raw.targets, dtype="<u2").tobytes()]),
        **({} if raw.embedding is None else {
            schema.EMBEDDING_SIZE: ("int64", [raw.embedding.shape[-1]]),
            schema.EMBEDDING_DATA: ("bytes", [lambda: np.ascontiguousarray(raw.embedding, dtype="<f2").tobytes()]),
        }),
    }

