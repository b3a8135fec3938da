"""Transfer learning: restore by layer name into a new z count, new labels, frozen core."""

from __future__ import annotations

import os

import numpy as np
import pytest

from isl import errors
from isl.model import builder
from isl.model import saving
from isl.train import transfer
from tests.train.conftest import fast_config

NEW_LABEL = "GFAP_CONFOCAL"


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory) -> str:
    """A tiny model with recognisable weights (every weight + 0.5), saved as a model dir."""
    config = fast_config()
    model = builder.build_model(config)
    for variable in model.weights:
        variable.assign(variable.numpy() + 0.5)
    directory = str(tmp_path_factory.mktemp("source") / "model")
    saving.save_model_dir(model, config, directory)
    return directory


@pytest.fixture(scope="module")
def source_model(source_dir):
    return saving.load_model_dir(source_dir)


def _target(*overrides: str):
    config = fast_config(*overrides)
    return config, builder.build_model(config)


def _equal(left, right) -> bool:
    return all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(left.weights, right.weights))


def test_different_z_count_relearns_only_the_projection(source_dir, source_model):
    source, _ = source_model
    _, target = _target("channels.num_z_values=13")
    report = transfer.restore_from(target, source_dir)
    assert report.skipped_shape == ["projection"]
    # 26 -> 13 input heads: heads of z values absent from the new grid are new.
    new_heads = [name for name in report.skipped_absent if name.startswith("head_")]
    assert new_heads and all("TRANSMISSION" in name for name in new_heads)
    assert "head_0_TRANSMISSION_conv" in report.restored  # z = 0 exists in both grids.
    for name in report.restored:
        assert _equal(target.get_layer(name), source.get_layer(name)), name
    assert not _equal(target.get_layer("projection"), source.get_layer("projection"))
    assert "Re-learned (shape differs) 1: projection" in report.summary()


def test_new_label_gets_a_new_head_and_keeps_the_others(source_dir, source_model):
    source, source_config = source_model
    labels = list(source_config.channels.target_channels) + [NEW_LABEL]
    config, target = _target(f"channels.target_channels={','.join(labels)}")
    report = transfer.restore_from(target, source_dir)
    new_layers = [name for name in report.skipped_absent]
    assert new_layers and all(name.startswith(f"head_MAXPROJECT_{NEW_LABEL}") for name in new_layers)
    assert not report.skipped_shape
    dapi = "head_MAXPROJECT_DAPI_CONFOCAL_conv"
    assert _equal(target.get_layer(dapi), source.get_layer(dapi))
    assert _equal(target.get_layer("projection"), source.get_layer("projection"))
    assert config.channels.head_names[-2] == f"MAXPROJECT/{NEW_LABEL}"


def test_restore_heads_false_keeps_every_head_fresh(source_dir, source_model):
    source, _ = source_model
    _, target = _target()
    report = transfer.restore_from(target, source_dir, restore_heads=False)
    assert report.skipped_heads and all(name.startswith("head_") for name in report.skipped_heads)
    assert not any(name.startswith("head_") for name in report.restored)
    dapi = "head_MAXPROJECT_DAPI_CONFOCAL_conv"
    assert not _equal(target.get_layer(dapi), source.get_layer(dapi))
    assert _equal(target.get_layer("projection"), source.get_layer("projection"))


def test_weights_file_beside_its_config_and_errors(source_dir, tmp_path):
    _, target = _target()
    report = transfer.restore_from(target, os.path.join(source_dir, "model.weights.h5"))
    assert not report.skipped_shape and not report.skipped_absent
    lonely = tmp_path / "lonely.weights.h5"
    lonely.write_bytes(b"")
    with pytest.raises(errors.InputError, match="config.json is missing"):
        transfer.restore_from(target, str(lonely))
    with pytest.raises(errors.InputError, match="no such model directory"):
        transfer.restore_from(target, str(tmp_path / "absent"))


def test_freeze_core_leaves_projection_and_heads_trainable():
    _, model = _target()
    frozen = transfer.freeze_core(model)
    assert frozen and all(not name.startswith("head_") and name != "projection" for name in frozen)
    assert model.get_layer("projection").trainable
    trainable = {variable.path.split("/")[0] for variable in model.trainable_variables}
    assert trainable and all(name == "projection" or name.startswith("head_") for name in trainable)
