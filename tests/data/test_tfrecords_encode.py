"""`tfrecords.encode_well` fills the Example in place: the same record as building whole `Feature`s first."""

from __future__ import annotations

import dataclasses
import errno

import numpy as np
import pytest

from isl import errors

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


def _tf_record(path, record: bytes) -> bytes:
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(record)
    with open(path, "rb") as handle:
        return handle.read()


def test_encode_well_is_the_same_bytes_every_time(tmp_path):
    directory = str(tmp_path / "w")
    wellmaker.random_well(directory, num_z=2, height=5, width=4)
    raw = wells.load_raw_well(wells.scan_wells([directory], config_lib.ChannelConfig()).wells[0])
    import tensorflow as tf

    # Protobuf's default map order changes from process to process; sorted by key it cannot.
    record = tfrecords.encode_well(raw)
    keys = list(tf.train.Example.FromString(record).features.feature)
    offsets = [record.index(key.encode()) for key in keys]
    assert [key for _, key in sorted(zip(offsets, keys))] == sorted(keys)


@pytest.mark.parametrize("region", [None, ((2, 9), (1, 6))])
@pytest.mark.parametrize("normalization", ["none", "paper"])
def test_record_file_streams_the_same_bytes_as_tfrecordwriter(tmp_path, region, normalization):
    """Streamed in bands of a few rows, from the well in memory or spilled: TFRecordWriter's file of encode_well."""
    directory = str(tmp_path / "w")
    wellmaker.random_well(directory, num_z=3, height=11, width=7)
    source = wells.scan_wells([directory], config_lib.ChannelConfig()).wells[0]
    raw, warning = wells.normalize_raw(wells.load_raw_well(source), normalization)
    if region is None:
        cropped = raw
    else:
        (row0, row1), (column0, column1) = region
        cropped = dataclasses.replace(raw, inputs=np.ascontiguousarray(raw.inputs[row0:row1, column0:column1]),
                                      targets=np.ascontiguousarray(raw.targets[row0:row1, column0:column1]))
    expected = _tf_record(tmp_path / "expected.tfrecord", tfrecords.encode_well(cropped))
    spilled, spilled_warning = wells.spill_raw_well(source, normalization, str(tmp_path))
    assert spilled_warning == warning
    for name, well in (("memory", raw), ("spilled", spilled)):
        path = str(tmp_path / f"{name}.tfrecord")
        with tfrecords.RecordFile(path) as records:
            records.write_well(well, region, band_bytes=100)  # A few rows a band.
        with open(path, "rb") as handle:
            assert handle.read() == expected, name


def test_record_file_full_disk_is_input_error_naming_the_file(tmp_path, monkeypatch):
    directory = str(tmp_path / "w")
    wellmaker.random_well(directory, num_z=2, height=6, width=5)
    raw = wells.load_raw_well(wells.scan_wells([directory], config_lib.ChannelConfig()).wells[0])
    path = str(tmp_path / "out.tfrecord")
    records = tfrecords.RecordFile(path)
    original, calls = records._stream.write, []

    def write(data):
        calls.append(len(data))
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(data)

    monkeypatch.setattr(records._stream, "write", write, raising=False)
    with pytest.raises(errors.InputError, match=r"out\.tfrecord: cannot write the record \(the disk is full\)"):
        records.write_well(raw, band_bytes=20)
    records.close()
