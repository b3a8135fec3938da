"""The built networks against isl_reference.md §1.6-§1.9 and Appendix B."""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import pytest

from isl import presets
from isl.model import builder
from isl.model import geometry

APPENDIX_B = pathlib.Path(__file__).with_name("appendix_b.txt")


def _appendix_b_rows():
    rows = []
    for line in APPENDIX_B.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, *fields = line.split()
        values = [int(field) if field.isdigit() else field for field in fields]
        rows.append((name, *values))
    return rows


def _count(weights):
    return int(sum(np.prod(weight.shape) for weight in weights))


def test_paper_model_matches_appendix_b_row_by_row(paper_model_and_records):
    _, records = paper_model_and_records
    expected = _appendix_b_rows()
    assert len(expected) == 104
    actual = [record.as_tuple() for record in records]
    assert [row[0] for row in actual] == [row[0] for row in expected]
    for got, want in zip(actual, expected):
        assert got == want, f"{want[0]}: got {got}, Appendix B says {want}"


def test_paper_model_parameter_counts(paper_model_and_records):
    model, _ = paper_model_and_records
    heads = [layer for layer in model.layers if layer.name.startswith("head_")]
    head_trainable = _count(w for layer in heads for w in layer.trainable_weights)
    total_trainable = _count(model.trainable_weights)
    assert total_trainable == 9_273_708
    assert total_trainable - head_trainable == 8_113_388
    assert head_trainable == 35 * 33_152
    assert _count(model.non_trainable_weights) == 35_772
    assert _count(model.get_layer("projection").weights) == 848
    per_head = _count(
        w for layer in heads if layer.name.startswith("head_MAXPROJECT_DAPI_CONFOCAL") for w in layer.trainable_weights
    )
    assert per_head == 33_152


def test_paper_model_shapes_and_names(paper_model_and_records):
    model, _ = paper_model_and_records
    assert model.input_shape == (None, 250, 250, 52)
    assert model.output_shape == (None, 8, 8, 35, 256)
    assert model.get_layer("embedding").output.shape[1:] == (8, 8, 64)
    assert model.get_layer("merge").output.shape[1:] == (36, 36, 64)
    tower_depths = [int(tensor.shape[-1]) for tensor in model.get_layer("merge").input]
    assert tower_depths == [16, 12, 12, 12, 12]
    # Stable names a TF1 converter and transfer learning rely on (§1.10).
    for name in (
        "projection",
        "downscale_4_3_expand_rv2_conv",
        "lower_scale_0_recursion_5",
        "upscale_1_0_in_scale",
        "upper_recursion_13",
        "head_0.04_TRANSMISSION_conv",
        "head_MAXPROJECT_NEURITE_CONFOCAL_bn",
    ):
        model.get_layer(name)
    # The GitHub issue #1 shape: 12x12x218 at downscale_4_3's expansion.
    assert model.get_layer("downscale_4_3_expand_rv2_conv").output.shape[1:] == (12, 12, 218)
    conv_layers = [
        layer for layer in model.layers if layer.name.endswith("_conv") and not layer.name.startswith("head_")]
    assert len(conv_layers) + 1 == 209  # + the projection (§1.6).


def test_fovea_model_sizes():
    config = presets.get_preset("fovea")
    records = []
    model = builder.build_model(config, records=records)
    heads = _count(w for layer in model.layers if layer.name.startswith("head_") for w in layer.trainable_weights)
    core = _count(model.trainable_weights) - heads
    assert len(records) == 54  # 10 + 2*(1+8+1) + ... (§1.8)
    assert model.get_layer("embedding").output.shape[-1] == 156
    assert round(core / 1e6, 1) == 29.0  # §1.8: about 29.0 M core parameters.
    # §1.8's test configuration: base 50, 13 z values -> about 1.34 M core.
    small = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, base_depth=50),
        channels=dataclasses.replace(config.channels, num_z_values=13),
    )
    small_model = builder.build_model(small)
    small_heads = _count(
        w for layer in small_model.layers if layer.name.startswith("head_") for w in layer.trainable_weights)
    assert round((_count(small_model.trainable_weights) - small_heads) / 1e6, 2) == 1.34
    output = small_model(np.zeros((1, 110, 110, 26), np.float32), training=False)
    assert output.shape == (1, 8, 8, 13 + 9, 256)


def test_tiny_model_is_fast_and_dynamic(tiny_model, tiny_config):
    reference = geometry.reference_geometry(tiny_config.model)
    for extra in (0, reference.phase):
        size = reference.input_size + extra
        inputs = np.random.rand(2, size, size, tiny_config.channels.num_input_features).astype(np.float32)
        outputs = tiny_model(inputs, training=False)
        assert outputs.shape == (2, reference.output_size + extra, reference.output_size + extra, 35, 256)
        assert outputs.dtype == "float32"


def test_invalid_input_size_is_rejected(tiny_config):
    with pytest.raises(ValueError, match="not valid"):
        builder.build_model(presets.get_preset("paper"), input_size=258)


def test_number_of_z_values_sets_input_depth_and_heads():
    config = presets.get_preset("tiny")
    config = dataclasses.replace(config, channels=dataclasses.replace(config.channels, num_z_values=13))
    model = builder.build_model(config)
    assert model.input_shape[-1] == 26
    assert model.output_shape[3] == 13 + 9


def test_bfloat16_policy_keeps_float32_logits(tiny_config):
    config = dataclasses.replace(tiny_config, train=dataclasses.replace(tiny_config.train, mixed_precision="bfloat16"))
    model = builder.build_model(config)
    assert model.get_layer("lower_scale_0_recursion_0_expand_rv2_conv").compute_dtype == "bfloat16"
    assert model.get_layer("lower_scale_0_recursion_0_expand_rv2_conv").variable_dtype == "float32"
    outputs = model(np.random.rand(1, 38, 38, 52).astype(np.float32), training=False)
    assert outputs.dtype == "float32"


def test_core_model_outputs_the_embedding(tiny_model):
    core = builder.core_model(tiny_model)
    embedding = core(np.random.rand(1, 38, 38, 52).astype(np.float32), training=False)
    assert embedding.shape[1:3] == (4, 4)
    assert embedding.shape[-1] == tiny_model.get_layer("embedding").output.shape[-1]


def test_paper_style_input_without_projection_widens_the_network():
    config = presets.get_preset("tiny")
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, projection_depth=0))
    model = builder.build_model(config)
    with pytest.raises(ValueError):
        model.get_layer("projection")
    # The depth floor carries the 52 raw channels through tower 0 (§8.2 #1).
    assert model.get_layer("lower_scale_0_recursion_0").output.shape[-1] == 52
