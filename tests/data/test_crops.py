"""Tests for reading windows of converted wells without decoding them (`isl.data.crops`)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from isl import errors
from isl import presets
from isl.data import convert
from isl.data import crops
from isl.data import decoder
from isl.data import parser as parser_lib
from isl.data import pipeline
from tests.data import wellmaker

TINY = presets.get_preset("tiny")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Two wells of different sizes and depths, one with a missing target, in one shard."""
    tmp_path = tmp_path_factory.mktemp("crops")
    rng = np.random.default_rng(3)
    stack = rng.integers(0, 65536, (13, 90, 70), dtype=np.uint16)
    targets = {"DAPI_CONFOCAL": rng.integers(0, 65536, (90, 70), dtype=np.uint16),
               "MAP2_CONFOCAL": rng.integers(0, 256, (90, 70), dtype=np.uint8)}
    wellmaker.write_well(str(tmp_path / "wells" / "b2"), stack, targets, well="B2")
    wellmaker.random_well(str(tmp_path / "wells" / "c3"), num_z=26, height=110, width=100, well="C3")
    output = str(tmp_path / "records")
    convert.convert([str(tmp_path / "wells")], output, TINY.channels)
    return output


def _shard(records):
    return pipeline.list_shards(records, "train")[0]


def test_index_matches_the_decoded_records(records):
    shard = _shard(records)
    infos = crops.index_shard(shard)
    assert len(infos) == 2
    for info, serialized in zip(infos, tf.data.TFRecordDataset(shard)):
        decoded = decoder.decode(serialized)
        assert info.name == decoded["name"].numpy().decode()
        assert (info.height, info.width, info.num_source_z) == (
            decoded["height"].numpy(), decoded["width"].numpy(), decoded["num_source_z"].numpy())
        assert info.target_channels == tuple(name.decode() for name in decoded["target_channels"].numpy())
        assert info.target_max_values == tuple(int(v) for v in decoded["target_max_values"].numpy())
        shape = (info.height, info.width, info.num_source_z)
        # Whole image and a window hanging over the top-left and bottom-right corners.
        whole = crops.read_window(info.path, info.inputs_offset, shape, 0, 0, max(shape[:2]))
        np.testing.assert_array_equal(whole[: info.height, : info.width], decoded["inputs"].numpy())
        window = crops.read_window(info.path, info.inputs_offset, shape, -5, info.width - 20, 40)
        expected = np.zeros((40, 40, info.num_source_z), np.uint16)
        expected[5:, :20] = decoded["inputs"].numpy()[:35, -20:]
        np.testing.assert_array_equal(window, expected)
        rows = crops.read_rows(info, "targets", 10, 30)
        np.testing.assert_array_equal(rows, decoded["targets"].numpy()[10:30])


def test_crop_patches_equal_the_whole_well_patches(records):
    """The crop reader gives the same training patches as decoding the whole well, for the same seeds."""
    shard = _shard(records)
    layout = parser_lib.patch_layout(TINY)
    parser = parser_lib.Parser(TINY, layout, 26)
    source = pipeline.RecordSource([shard], layout.crop_size)
    for record, serialized in enumerate(tf.data.TFRecordDataset(shard)):
        decoded = decoder.decode(serialized)
        for index in range(4):
            seed = tf.constant([7, index], tf.int64)
            expected = parser.train_patches(decoded, seed)
            offset_y, offset_x, flip = parser.train_crop(source.metadata(tf.constant(record, tf.int64)), seed)
            got = source.patches(parser, tf.constant(record, tf.int64), offset_y, offset_x, flip)
            assert sorted(got) == sorted(expected)
            for key in expected:
                np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy(), err_msg=key)


def test_eval_batches_equal_the_whole_well_patches(records):
    layout = parser_lib.patch_layout(TINY)
    parser = parser_lib.Parser(TINY, layout, 26)
    shard = _shard(records)
    expected = []
    for serialized in tf.data.TFRecordDataset(shard):
        for patches in parser.eval_patches(decoder.decode(serialized)):
            expected.append(patches["inputs"].numpy())
    dataset = pipeline.build_dataset(records, TINY, split="train", repeat=False, batch_size=4)
    assert sum(1 for _ in dataset) == 2  # the training path: 2 wells x 4 patches
    source = pipeline.RecordSource([shard], layout.crop_size)
    batches = pipeline._eval_batches(pipeline._records(source.counts, False, False, True, 0, 0, 1), source, parser,
                                     1000, drop_remainder=False)
    got = np.concatenate([batch["inputs"].numpy() for batch in batches])
    np.testing.assert_array_equal(got, np.concatenate(expected))


def test_a_truncated_shard_is_refused_naming_it(records, tmp_path):
    data = open(_shard(records), "rb").read()
    path = tmp_path / "train-00000-of-00001.tfrecord"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(errors.InputError, match=os.path.basename(path)):
        crops.index_shard(str(path))
