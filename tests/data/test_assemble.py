"""Tests for the faithful tensor assembly: z mapping, interleaving, targets."""

from __future__ import annotations

import numpy as np
import pytest

from isl import config as config_lib
from isl.data import assemble


def test_13_slices_give_each_slice_twice():
    assert assemble.z_slice_indices(13, 26) == tuple(index // 2 for index in range(26))


def test_26_slices_map_to_themselves():
    assert assemble.z_slice_indices(26, 26) == tuple(range(26))


@pytest.mark.parametrize("count", [1, 2, 7, 13, 26, 40])
def test_mapping_is_pythons_round_half_to_even_of_the_rounded_z_values(count):
    z_values = [round(index / 25, 4) for index in range(26)]
    assert assemble.z_slice_indices(count, 26) == tuple(round((count - 1) * z) for z in z_values)


def test_network_input_interleaves_values_and_masks_z_by_z():
    stack = np.stack([np.full((2, 3), z / 20, np.float32) for z in range(13)])
    mask = np.array([[1, 0, 1], [1, 1, 0]], np.float32)
    inputs = assemble.network_input(stack, 26, mask)
    assert inputs.shape == (2, 3, 52)
    assert np.array_equal(inputs[0, 0, 0::2], np.array([index // 2 / 20 for index in range(26)], np.float32))
    assert np.array_equal(inputs[..., 1::2], np.broadcast_to(mask[..., None], (2, 3, 26)))


def test_missing_labels_are_zero_with_zero_mask_and_neurite_is_mean_with_sqrt_mask():
    channels = config_lib.ChannelConfig()
    nfh = np.full((2, 2), 0.5, np.float32)
    map2 = np.array([[0.1, 0.2], [0.3, 0.4]], np.float32)
    mask = np.array([[1, 1], [0, 1]], np.float32)
    values, masks = assemble.target_stack({"NFH_CONFOCAL": nfh, "MAP2_CONFOCAL": map2}, channels, mask=mask)
    names = channels.output_target_channels
    assert values.shape == (2, 2, 9) and names[-1] == "NEURITE_CONFOCAL"
    assert np.array_equal(values[..., names.index("NEURITE_CONFOCAL")], (nfh + map2) / 2)
    assert np.array_equal(masks[..., names.index("NEURITE_CONFOCAL")], mask)
    dapi = names.index("DAPI_CONFOCAL")
    assert not values[..., dapi].any() and not masks[..., dapi].any()
    # MAP2 alone: NEURITE keeps MAP2/2 as value but its mask sqrt(1 * 0) is 0.
    values, masks = assemble.target_stack({"MAP2_CONFOCAL": map2}, channels)
    assert np.array_equal(values[..., -1], map2 / 2) and not masks[..., -1].any()


def test_a_user_channel_is_a_head_without_code_changes():
    channels = config_lib.ChannelConfig(target_channels=("DAPI_CONFOCAL", "GFAP_CONFOCAL"))
    gfap = np.full((1, 1), 0.7, np.float32)
    values, masks = assemble.target_stack({"GFAP_CONFOCAL": gfap}, channels)
    assert channels.output_target_channels == ("DAPI_CONFOCAL", "GFAP_CONFOCAL")
    assert values[0, 0].tolist() == [0.0, np.float32(0.7)] and masks[0, 0].tolist() == [0.0, 1.0]
