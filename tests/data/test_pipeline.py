"""Tests for TFRecord conversion and the tf.data pipeline (tiny preset, small wells)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from isl import errors
from isl import presets
from isl.data import assemble
from isl.data import convert
from isl.data import parser
from isl.data import pipeline
from isl.io import images
from tests.data import wellmaker

TINY = presets.get_preset("tiny")


def _records(tmp_path, wells_dir, **kwargs):
    output = str(tmp_path / "records")
    convert.convert([wells_dir], output, TINY.channels, **kwargs)
    return output


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    """Well B2 (13 slices, 16-bit inputs and DAPI, 8-bit MAP2, no NFH) held out; C3 for training."""
    tmp_path = tmp_path_factory.mktemp("round_trip")
    rng = np.random.default_rng(5)
    height, width = 120, 80
    stack = rng.integers(0, 65536, (13, height, width), dtype=np.uint16)
    targets = {
        "DAPI_CONFOCAL": rng.integers(0, 65536, (height, width), dtype=np.uint16),
        "MAP2_CONFOCAL": rng.integers(0, 256, (height, width), dtype=np.uint8),
    }
    wellmaker.write_well(str(tmp_path / "wells" / "b2"), stack, targets, well="B2")
    wellmaker.random_well(str(tmp_path / "wells" / "c3"), num_z=26, height=110, width=100, well="C3")
    records = _records(tmp_path, str(tmp_path / "wells"), eval_wells=["B2"], num_shards=2)
    return records, stack, targets


def _eval_batch(records, stack, targets):
    """Reference patches and labels for the eval crop, from numpy."""
    layout = parser.patch_layout(TINY)
    height, width = stack.shape[1:]
    (offset_y, offset_x), = parser.eval_crop_offsets(height, width, layout).numpy().tolist()
    pad = layout.pad

    def padded_crop(image):
        padded = np.pad(image, [(0, 0)] * (image.ndim - 2) + [(pad, pad), (pad, pad)])
        return padded[..., offset_y : offset_y + layout.crop_size, offset_x : offset_x + layout.crop_size]

    stack_float = padded_crop(stack.astype(np.float32) / np.float32(65535))
    valid = padded_crop(np.ones((height, width), np.float32))
    target_float = {
        name: padded_crop(image.astype(np.float32) / np.float32(images.max_value(image.dtype)))
        for name, image in targets.items()
    }
    inputs, labels = [], []
    size, out, border = layout.patch_size, layout.output_size, layout.border
    for row, column in layout.patch_offsets:
        window = (slice(row, row + size), slice(column, column + size))
        inputs.append(assemble.network_input(stack_float[:, window[0], window[1]], 26, valid[window]))
        full = assemble.training_labels(
            stack_float[:, window[0], window[1]],
            {name: image[window] for name, image in target_float.items()},
            TINY.channels,
            valid[window],
        )
        labels.append(full[border : border + out, border : border + out])
    return np.stack(inputs), np.stack(labels)


def test_round_trip_images_to_records_to_pipeline_value_for_value(round_trip):
    records, stack, targets = round_trip
    description = json.load(open(os.path.join(records, "dataset.json")))
    assert description["splits"]["eval"]["num_examples"] == 1
    assert description["z_counts"] == {"13": 1, "26": 1} and description["max_source_z"] == 26
    dataset = pipeline.build_dataset(records, TINY, split="eval", repeat=False, batch_size=4)
    batches = list(dataset)
    assert len(batches) == 1  # One crop (4 patches) fits the padded 154 x 114 image.
    inputs, labels = (tensor.numpy() for tensor in batches[0])
    expected_inputs, expected_labels = _eval_batch(records, stack, targets)
    assert inputs.shape == (4, 42, 42, 52) and labels.shape == (4, 8, 8, 35, 2)
    assert np.array_equal(inputs, expected_inputs)
    assert np.array_equal(labels, expected_labels)
    names = TINY.channels.head_names
    neurite = labels[..., names.index("MAXPROJECT/NEURITE_CONFOCAL"), :]
    map2 = labels[..., names.index("MAXPROJECT/MAP2_CONFOCAL"), :]
    assert np.array_equal(neurite[..., 0], map2[..., 0] / 2)
    assert neurite[..., 1].max() == 0.0  # NFH missing: NEURITE mask sqrt(1 * 0) = 0.
    assert inputs[..., 1::2].min() == 0.0  # The crop reaches into the zero-mask padding.


def test_training_batches_have_the_contract_shapes_and_are_reproducible(round_trip):
    records = round_trip[0]

    def first_batches(seed):
        dataset = pipeline.build_dataset(records, TINY, seed=seed, deterministic=True, batch_size=8)
        return [tuple(tensor.numpy() for tensor in batch) for batch in dataset.take(3)]

    first, again, other = first_batches(3), first_batches(3), first_batches(4)
    inputs, labels = first[0]
    assert inputs.shape == (8, 42, 42, 52) and labels.shape == (8, 8, 8, 35, 2)
    assert inputs.dtype == np.float32 and 0.0 <= inputs.min() and inputs.max() <= 1.0
    for (a_inputs, a_labels), (b_inputs, b_labels) in zip(first, again):
        assert np.array_equal(a_inputs, b_inputs) and np.array_equal(a_labels, b_labels)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other))


def test_flip_and_rotation_move_inputs_targets_and_masks_together(tmp_path):
    # DAPI equals z slice 0, so its label must equal the centre of input channel 0
    # (and its mask the centre of input mask 1) under any dihedral transform.
    rng = np.random.default_rng(2)
    stack = rng.integers(0, 65536, (13, 90, 100), dtype=np.uint16)
    wellmaker.write_well(str(tmp_path / "wells" / "w"), stack, {"DAPI_CONFOCAL": stack[0]})
    records = _records(tmp_path, str(tmp_path / "wells"))
    layout = parser.patch_layout(TINY)
    border, out = layout.border, layout.output_size
    dapi = TINY.channels.head_names.index("MAXPROJECT/DAPI_CONFOCAL")
    for inputs, labels in pipeline.build_dataset(records, TINY, seed=1, batch_size=16).take(4):
        centre = inputs.numpy()[:, border : border + out, border : border + out]
        assert np.array_equal(labels.numpy()[..., dapi, 0], centre[..., 0])
        assert np.array_equal(labels.numpy()[..., dapi, 1], centre[..., 1])
        assert np.array_equal(labels.numpy()[..., :26, :].reshape(centre.shape), centre)


def test_missing_dataset_and_empty_split_are_input_errors(tmp_path, round_trip):
    with pytest.raises(errors.InputError, match="not a folder"):
        pipeline.build_dataset(str(tmp_path / "nowhere"), TINY)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(errors.InputError, match="no non-empty eval shards"):
        pipeline.build_dataset(str(tmp_path / "empty"), TINY, split="eval")
    condition_a = presets.get_preset("condition_a")
    with pytest.raises(errors.InputError, match="not among the config's input modalities"):
        pipeline.build_dataset(round_trip[0], condition_a)


def test_larger_outputs_unpadded_crops_and_input_context_sharding(round_trip):
    import tensorflow as tf

    records = round_trip[0]
    larger = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, output_size=24))
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=2)
    inputs, labels = next(iter(pipeline.build_dataset(records, larger, input_context=context, seed=0)))
    assert inputs.shape == (8, 58, 58, 52) and labels.shape == (8, 24, 24, 35, 2)
    unpadded = dataclasses.replace(TINY, data=dataclasses.replace(TINY.data, pad_border=False))
    inputs, labels = next(iter(pipeline.build_dataset(records, unpadded, seed=0)))
    assert inputs.numpy()[..., 1::2].min() == 1.0  # No padding: every input pixel is real.
    too_large = dataclasses.replace(unpadded, data=dataclasses.replace(unpadded.data, crop_size=160))
    with pytest.raises(errors.InputError, match="smaller than the 160-px crop"):
        pipeline.build_dataset(records, too_large)


def test_evaluation_accepts_images_smaller_than_the_crop_and_masks_the_padding(tmp_path):
    """A held-out region narrower than the crop (`isl convert --eval_region`) still evaluates."""
    from isl.data import convert, synthetic

    wells = tmp_path / "wells"
    synthetic.write_synthetic_dataset(str(wells), num_wells=1, size=160, num_z=13, seed=0)
    records = tmp_path / "records"
    convert.convert([str(wells)], str(records), TINY.channels, region="0:120,:", eval_region="130:160,:")
    large_crop = dataclasses.replace(TINY, data=dataclasses.replace(TINY.data, crop_size=100, pad_border=False))
    batches = list(pipeline.build_dataset(str(records), large_crop, split="eval", repeat=False))
    labels = np.concatenate([np.asarray(labels) for _, labels in batches])
    weights = labels[..., 1]
    # Rows 130:160 give 30 labelled rows; the crops' rows beyond them carry no weight.
    assert 0 < weights.mean() < 1
    with pytest.raises(errors.InputError, match="smaller than the"):
        too_large = dataclasses.replace(large_crop, data=dataclasses.replace(large_crop.data, crop_size=130))
        pipeline.build_dataset(str(records), too_large)


def test_eval_crops_are_a_centred_grid_of_whole_crops_in_eager_and_graph_mode():
    import tensorflow as tf

    layout = dataclasses.replace(parser.patch_layout(TINY), crop_size=10, pad=2)
    # 27 + 4 = 31 padded rows: 3 crops from 0 (31 - 30 = 1 left, start 0); 40 + 4 = 44 columns: 4 crops from 2.
    expected = [[row, column] for row in (0, 10, 20) for column in (2, 12, 22, 32)]
    assert parser.eval_crop_offsets(27, 40, layout).numpy().tolist() == expected
    graph = tf.function(lambda h, w: parser.eval_crop_offsets(h, w, layout))
    assert graph(tf.constant(27), tf.constant(40)).numpy().tolist() == expected
    # Smaller than one crop: one crop at 0.
    assert parser.eval_crop_offsets(3, 3, layout).numpy().tolist() == [[0, 0]]
