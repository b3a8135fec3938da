"""The Keras Tuner search space: names, defaults, overrides, invalid geometry."""

from __future__ import annotations

import dataclasses

import keras_tuner
import pytest

from isl import errors
from isl import presets
from isl.model import builder
from isl.model import geometry
from isl.model import hypermodel

PAPER_DEFAULTS = {
    "base_depth": 400,
    "expansion_factor": 211 / 39,
    "projection_depth": 16,
    "in_scale_kernel": 3,
    "down_kernel": 4,
    "up_kernel": 4,
    "activation": "relu_tanh",
    "lower_modules_scale_0": 18,
    "lower_modules_step": 4,
    "upper_tower_modules": 14,
    "learning_rate": 1e-4,
}


def _weight_shapes(model):
    return [(weight.path, tuple(weight.shape)) for weight in model.weights]


def test_search_space_names_and_defaults_are_the_paper_values():
    hp = keras_tuner.HyperParameters()
    hypermodel.ISLHyperModel(presets.get_preset("paper")).declare_hyperparameters(hp)

    assert tuple(hp.values) == hypermodel.SEARCH_SPACE_NAMES
    assert hp.values == PAPER_DEFAULTS
    space = {parameter.name: parameter for parameter in hp.space}
    assert space["base_depth"].values == [200, 300, 400, 500, 600]
    assert space["expansion_factor"].values == [3.0, 4.0, 211 / 39, 6.0, 8.0]
    assert space["activation"].values == ["relu_tanh", "relu", "silu_tanh"]
    # The blocks implement one passthrough per kernel (3x3 in-scale, 4x4/2
    # down); a 2x2 up kernel gives no valid geometry around the paper's.
    assert all(space[name].__class__.__name__ == "Fixed" for name in ("in_scale_kernel", "down_kernel", "up_kernel"))
    assert (space["learning_rate"].min_value, space["learning_rate"].max_value) == pytest.approx((1e-5, 1e-3))
    assert space["learning_rate"].sampling == "log"
    assert (space["upper_tower_modules"].min_value, space["upper_tower_modules"].max_value) == (7, 21)


def test_defaults_build_exactly_the_paper_preset(paper_model_and_records):
    paper = presets.get_preset("paper")
    model_builder = hypermodel.ISLHyperModel(paper)
    hp = keras_tuner.HyperParameters()

    model = model_builder.build(hp)

    assert model_builder.config_for(hp) == paper
    reference, _ = paper_model_and_records  # The paper preset at 250 px, built once per session.
    assert _weight_shapes(model) == _weight_shapes(reference)
    assert model.count_params() == reference.count_params()


def test_fixed_override_changes_only_that_value(tiny_model):
    tiny = presets.get_preset("tiny")
    model_builder = hypermodel.ISLHyperModel(tiny)
    hp = keras_tuner.HyperParameters()
    hp.Fixed("base_depth", 12)
    hp.Fixed("learning_rate", 3e-3)

    model = model_builder.build(hp)

    config = model_builder.config_for(hp)
    assert config.model == dataclasses.replace(tiny.model, base_depth=12)
    assert config.train.learning_rate == 3e-3
    assert not model.compiled  # No compile function given: the hypermodel only builds.
    reference = builder.build_model(config, input_size=geometry.geometry(config.model).input_size)
    assert _weight_shapes(model) == _weight_shapes(reference)
    assert model.count_params() < tiny_model.count_params()  # The session's build of the tiny preset.


def test_compiled_model_uses_the_sampled_learning_rate():
    from isl.train import step

    model_builder = hypermodel.ISLHyperModel(presets.get_preset("tiny"), compile_fn=step.compile_for_training)
    hp = keras_tuner.HyperParameters()
    hp.Fixed("learning_rate", 2e-3)

    model = model_builder.build(hp)

    assert float(model.optimizer.learning_rate) == pytest.approx(2e-3)
    assert model.loss is not None


def test_invalid_geometry_is_rejected_cleanly():
    tiny = presets.get_preset("tiny")
    space = hypermodel.search_space(tiny, {"up_kernel": [2, 4]})
    model_builder = hypermodel.ISLHyperModel(tiny, space)
    hp = keras_tuner.HyperParameters()
    hp.Fixed("up_kernel", 2)

    assert "not reachable" in model_builder.invalid_reason({"up_kernel": 2})
    assert model_builder.invalid_reason({"up_kernel": 4}) is None
    with pytest.raises(keras_tuner.errors.FailedTrialError, match="up_kernel"):
        model_builder.build(hp)


def test_search_space_json_forms():
    tiny = presets.get_preset("tiny")
    space = hypermodel.search_space(
        tiny,
        {
            "base_depth": [16, 24, 32],
            "learning_rate": {"min": 1e-4, "max": 1e-2, "sampling": "log"},
            "upper_tower_modules": 3,
            "num_scales": {"values": [2, 3], "default": 3},
        },
    )

    assert space["base_depth"] == hypermodel.Dimension("base_depth", "model", "choice", 24, values=(16, 24, 32))
    assert space["learning_rate"].kind == "float" and space["learning_rate"].default == 1e-3
    assert space["upper_tower_modules"] == hypermodel.Dimension("upper_tower_modules", "model", "fixed", 3)
    assert space["num_scales"].kind == "choice" and space["num_scales"].values == (2, 3)
    for bad in ({"no_such_field": 3}, {"base_depth": {"min": 8}}, {"base_depth": [8, 1.5]},
                {"learning_rate": {"min": 0.0, "max": 1.0, "sampling": "log"}},
                {"base_depth": {"values": [8, 16], "default": 12}}):
        with pytest.raises(errors.InputError):
            hypermodel.search_space(tiny, bad)


def test_a_larger_network_input_grows_the_training_crop_by_the_same_amount():
    tiny = presets.get_preset("tiny")
    model_builder = hypermodel.ISLHyperModel(tiny)

    config = model_builder.config_from_values({"upper_tower_modules": 4})

    growth = geometry.geometry(config.model).input_size - geometry.geometry(tiny.model).input_size
    assert growth > 0
    assert config.data.crop_size == tiny.data.crop_size + growth


def test_the_model_package_never_imports_the_training_package():
    """`isl.model` sits below `isl.train`: the hypermodel gets its compile function injected."""
    import ast
    import pathlib

    package = pathlib.Path(hypermodel.__file__).parent
    upward = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            upward += [f"{path.name}: {name}" for name in names if name == "isl.train" or name.startswith("isl.train.")]
    assert upward == []
