"""A lazily read well (`read_well(lazy=True)`): the same values as the whole read, by windows, nothing left behind."""

from __future__ import annotations

import os

import numpy as np
import pytest

from isl import config as config_lib
from isl import errors
from isl.data import wells
from tests.data import wellmaker


@pytest.mark.parametrize("normalization", ["none", "paper"])
def test_a_lazy_well_holds_the_same_values_as_the_whole_read(tmp_path, normalization):
    directory = str(tmp_path / "w")
    wellmaker.random_well(directory, num_z=4, height=37, width=29)
    channels = config_lib.ChannelConfig()
    whole = wells.read_well(directory, channels, normalization=normalization)
    lazy = wells.read_well(directory, channels, normalization=normalization, lazy=True,
                           spill_dir=str(tmp_path))
    assert isinstance(lazy.inputs, wells.SpilledStack)
    assert lazy.inputs.shape == whole.inputs.shape
    np.testing.assert_array_equal(np.asarray(lazy.inputs), whole.inputs)
    assert sorted(lazy.targets) == sorted(whole.targets)
    for channel, image in whole.targets.items():
        assert lazy.targets[channel].shape == image.shape
        np.testing.assert_array_equal(lazy.targets[channel][3:20, 5:11], image[3:20, 5:11])
        np.testing.assert_array_equal(np.asarray(lazy.targets[channel]), image)
    assert lazy.metadata == whole.metadata
    assert wells.held_bytes(lazy) == 0 and wells.held_bytes(whole) > 0
    assert os.listdir(tmp_path) == ["w"]  # The spill file is unlinked at once.


def test_a_spilled_stack_indexes_as_numpy(tmp_path):
    rng = np.random.default_rng(1)
    array = rng.random((5, 23, 17), dtype=np.float32)
    stack = wells.SpilledStack(array.shape, str(tmp_path))
    for index, plane in enumerate(array):
        stack.write_plane(index, plane)
    rows = np.array([2, 1, 0, 1, 2, 3, 22, 21])  # Reflected, repeated, out of order: as a run's rows.
    columns = np.array([0, 16, 3, 3])
    keys = [
        (slice(None), slice(4, 9), slice(2, 15)),
        (2, slice(None), slice(None)),
        (slice(1, 4), 7),
        (-1, 3, 4),
        np.ix_(np.arange(5), rows, columns),
        np.ix_(np.array([4, 0]), rows, columns),
        (slice(None), slice(5, 5), slice(None)),
    ]
    for key in keys:
        np.testing.assert_array_equal(stack[key], array[key])
    view = stack.planes(1, 3)
    np.testing.assert_array_equal(view[np.ix_(np.arange(3), rows, columns)], array[1:4][np.ix_(np.arange(3), rows,
                                                                                                columns)])
    np.testing.assert_array_equal(stack.plane(4)[2:9, 1:3], array[4, 2:9, 1:3])
    window = wells.window(view, 3, 20, 2, 15)  # A window of a view: offsets add up; nothing is read.
    assert window.shape == (3, 17, 13)
    np.testing.assert_array_equal(window[:, rows[:5]][:, :, [0, 12, 3]], array[1:4, 3:20, 2:15][:, rows[:5]][
        :, :, [0, 12, 3]])
    np.testing.assert_array_equal(wells.window(array, 3, 20, 2, 15), array[:, 3:20, 2:15])
    with pytest.raises(ValueError):
        window.write_plane(0, np.zeros((17, 13), np.float32))
    with pytest.raises(IndexError):
        stack[5]
    with pytest.raises(TypeError):
        stack[array > 0.5]


def test_an_unwritable_spill_folder_is_a_clear_error(tmp_path):
    with pytest.raises(errors.InputError, match="cannot hold the decoded well"):
        wells.SpilledStack((1, 2, 2), str(tmp_path / "missing"))


@pytest.mark.parametrize("normalization", ["none", "paper", "percentile"])
def test_normalize_raw_slice_by_slice_equals_the_whole_stack(tmp_path, normalization):
    from isl.data import normalization as normalization_lib

    directory = str(tmp_path / "w")
    stack, _ = wellmaker.random_well(directory, num_z=3, height=21, width=17)
    source = wells.scan_wells([directory], config_lib.ChannelConfig()).wells[0]
    raw = wells.load_raw_well(source)
    normalised, warning = wells.normalize_raw(raw, normalization)
    # The whole-stack computation (what normalize_raw did before it went slice by slice).
    whole = normalization_lib.normalize_stack(stack.astype(np.float32) / np.float32(65535), normalization)
    assert warning == normalization_lib.check_statistics(whole, f"well {source.name} ({source.directory})",
                                                         normalization)
    expected = stack if normalization == "none" else normalization_lib.to_uint16(whole)
    np.testing.assert_array_equal(np.moveaxis(normalised.inputs, -1, 0), expected)
    assert normalised.input_max_value == 65535
