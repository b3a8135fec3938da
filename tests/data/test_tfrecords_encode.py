"""`tfrecords.encode_well` fills the Example in place: the same record as building whole `Feature`s first."""

from __future__ import annotations

import numpy as np

from isl.data import schema
from isl.data import tfrecords
from isl.data import wells
from isl import config as config_lib
from tests.data import wellmaker


def _encode_by_features(raw):
    """The construction `encode_well` replaced (whole `Feature`s first)."""
    import tensorflow as tf

    source = raw.source
    height, width, num_z = raw.inputs.shape
    metadata = source.metadata
    features = {
        schema.WELL_NAME: tfrecords._bytes([source.name.encode()]),
        schema.WELL_LAB: tfrecords._bytes([metadata.get("lab", "").encode()]),
        schema.WELL_CONDITION: tfrecords._bytes([metadata.get("condition", "").encode()]),
        schema.WELL_WELL: tfrecords._bytes([metadata.get("well", "").encode()]),
        schema.WELL_DATE: tfrecords._bytes([metadata.get("date", "").encode()]),
        schema.WELL_SOURCE_FILES: tfrecords._bytes([path.encode() for path in source.source_files]),
        schema.IMAGE_HEIGHT: tfrecords._ints([height]),
        schema.IMAGE_WIDTH: tfrecords._ints([width]),
        schema.INPUTS_MODALITY: tfrecords._bytes([source.modality.encode()]),
        schema.INPUTS_NUM_Z: tfrecords._ints([num_z]),
        schema.INPUTS_MAX_VALUE: tfrecords._ints([raw.input_max_value]),
        schema.INPUTS_DATA: tfrecords._bytes([np.ascontiguousarray(raw.inputs, dtype="<u2").tobytes()]),
        schema.TARGETS_CHANNELS: tfrecords._bytes([channel.encode() for channel in source.target_channels]),
        schema.TARGETS_MAX_VALUES: tfrecords._ints(list(raw.target_max_values)),
        schema.TARGETS_DATA: tfrecords._bytes([np.ascontiguousarray(raw.targets, dtype="<u2").tobytes()]),
    }
    example = tf.train.Example(features=tf.train.Features(feature=features))
    return example.SerializeToString()


def test_encode_well_in_place_gives_the_same_bytes(tmp_path):
    directory = str(tmp_path / "w")
    wellmaker.random_well(directory, num_z=3, height=9, width=7)
    raw = wells.load_raw_well(wells.scan_wells([directory], config_lib.ChannelConfig()).wells[0])
    import tensorflow as tf

    # The same message: every field and value (a map's order on the wire is protobuf's, not ours, and readers,
    # `isl.data.crops` included, take fields in any order).
    records = (tfrecords.encode_well(raw), _encode_by_features(raw))
    new, old = (tf.train.Example.FromString(record) for record in records)
    assert new == old and len(new.features.feature) == len(old.features.feature) == 15
    assert new.features.feature[schema.INPUTS_DATA].bytes_list.value[0] == raw.inputs.astype("<u2").tobytes()
