"""Tests for isl.config and isl.presets."""

from __future__ import annotations

import json

import pytest

from isl import config as config_lib
from isl import errors
from isl import presets


def test_paper_vocabulary_has_26_input_and_9_target_heads():
    channels = config_lib.ChannelConfig()
    assert channels.num_input_heads == 26
    assert channels.num_target_heads == 9
    assert channels.num_heads == 35
    assert channels.num_input_features == 52
    assert channels.output_target_channels[-1] == "NEURITE_CONFOCAL"
    assert channels.head_names[1] == "0.04/TRANSMISSION"
    assert channels.head_names[26] == "MAXPROJECT/DAPI_CONFOCAL"


def test_z_values_are_rounded_linspace():
    z_values = config_lib.ChannelConfig().z_values
    assert z_values[0] == 0.0 and z_values[-1] == 1.0
    assert z_values[1] == 0.04 and len(z_values) == 26


def test_user_channel_is_added_without_code():
    config = config_lib.apply_overrides(
        presets.get_preset("paper"),
        ['channels.target_channels=["DAPI_CONFOCAL","GFAP_CONFOCAL"]'],
    )
    # NEURITE needs MAP2 and NFH, which are now absent: it is dropped.
    assert config.channels.output_target_channels == ("DAPI_CONFOCAL", "GFAP_CONFOCAL")


def test_layering_preset_then_file_then_overrides(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model": {"base_depth": 100}, "train": {"batch_size": 8}}))
    config = presets.resolve_config("tiny", str(path), ["train.batch_size=4"])
    assert config.name == "tiny"
    assert config.model.base_depth == 100
    assert config.train.batch_size == 4


def test_round_trip_through_json(tmp_path):
    config = presets.get_preset("condition_e")
    path = tmp_path / "config.json"
    config_lib.save_config(config, path)
    assert config_lib.load_config(path) == config


def test_unknown_key_and_bad_values_are_input_errors(tmp_path):
    with pytest.raises(errors.InputError, match="model.no_such_key"):
        config_lib.apply_overrides(presets.get_preset("tiny"), ["model.no_such_key=3"])
    with pytest.raises(errors.InputError, match="integer"):
        config_lib.apply_overrides(presets.get_preset("tiny"), ["model.base_depth=abc"])
    with pytest.raises(errors.InputError, match="Unknown preset"):
        presets.get_preset("nope")


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_preset_validates(name):
    assert presets.get_preset(name).name == name
