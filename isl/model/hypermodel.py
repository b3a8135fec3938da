"""The Keras Tuner search space of the ISL network: the only module calling `hp.*`.

The paper designed its micro-architecture with a hyperparameter search (the
211/39 expansion factor is "an artifact of an old hyperparameter search",
isl_reference.md §1.5). `ISLHyperModel` reopens that search over the values
the builder exposes in `ModelConfig` (and the learning rate of
`TrainConfig`); blocks and builder take plain values and never see `hp`.

Every hyperparameter is named after the config field it sets
(`base_depth`, `expansion_factor`, `learning_rate`, ...). Its default is the
base preset's value, so with every hyperparameter at its default the
HyperModel builds exactly the base preset (`paper` by default).

Some combinations have no valid geometry (e.g. a 5x5 in-scale kernel with
the paper's 4x4 up kernel, §1.4): `invalid_reason` names the problem, the
tuning oracles (`isl.train.tuning`) skip such samples, and `build` raises
`keras_tuner.errors.FailedTrialError` for any that still arrive.

Compiling is injected: the HyperModel builds, and `compile_fn(model, config)`
compiles (`isl tune` passes `isl.train.step.compile_for_training`), so
this module never imports the trainer (`isl.model` sits below `isl.train`).

Example:

    hypermodel = ISLHyperModel(presets.get_preset("tiny"), compile_fn=step.compile_for_training)
    hp = keras_tuner.HyperParameters()
    hp.Fixed("base_depth", 32)
    model = hypermodel.build(hp)        # compiled tiny model, base_depth 32
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from typing import Any

import keras_tuner

from isl import config as config_lib
from isl import errors
from isl.model import geometry as geometry_lib

# The sampled hyperparameters, in the order they are declared.
SEARCH_SPACE_NAMES = (
    "base_depth",
    "expansion_factor",
    "projection_depth",
    "in_scale_kernel",
    "down_kernel",
    "up_kernel",
    "activation",
    "lower_modules_scale_0",
    "lower_modules_step",
    "upper_tower_modules",
    "learning_rate",
)

# Sections of ExperimentConfig whose fields can be searched, in lookup order.
_SECTIONS = ("model", "train")


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One hyperparameter: which config field it sets and how it is sampled.

    Attributes:
        name: the hyperparameter name, equal to the config field name.
        section: "model" or "train", the ExperimentConfig section of the field.
        kind: "choice", "int", "float" or "fixed".
        default: the value at which the search starts (the base preset's).
        values: the candidates of a "choice".
        min_value, max_value, step, sampling: the range of an "int"/"float"
            (sampling "linear", "log" or "reverse_log").
    """

    name: str
    section: str
    kind: str
    default: Any
    values: tuple[Any, ...] = ()
    min_value: float | None = None
    max_value: float | None = None
    step: float | None = None
    sampling: str = "linear"

    def to_dict(self) -> dict[str, Any]:
        """A JSON form, as `--search_space` accepts it."""
        if self.kind == "fixed":
            return {"fixed": self.default}
        if self.kind == "choice":
            return {"values": list(self.values), "default": self.default}
        result = {"min": self.min_value, "max": self.max_value, "default": self.default}
        if self.step is not None:
            result["step"] = self.step
        if self.sampling != "linear":
            result["sampling"] = self.sampling
        return result


# Kernels the blocks' parameter-free passthrough implements
# (isl/model/blocks.py `passthrough`): 3x3/1 in-scale, 4x4/2 down, 2x2/2 and
# 4x4/2 transposed up. Extend these when the blocks do.
IN_SCALE_KERNELS = (3,)
DOWN_KERNELS = (4,)
UP_KERNELS = (2, 4)


def available_activations() -> tuple[str, ...]:
    """The dual pre-activations the blocks implement (§1.2; the paper's is relu_tanh)."""
    from isl.model import blocks

    return tuple(blocks.ACTIVATIONS)


def _valid_alternatives(base: config_lib.ExperimentConfig, name: str, candidates: tuple[Any, ...]) -> tuple[Any, ...]:
    """The candidates for model field `name` that keep base's geometry valid."""
    valid = []
    for candidate in dict.fromkeys((getattr(base.model, name), *candidates)):
        try:
            geometry_lib.geometry(dataclasses.replace(base.model, **{name: candidate}))
        except ValueError:
            continue
        valid.append(candidate)
    return tuple(sorted(valid))


def _choice_or_fixed(name: str, section: str, default: Any, values: tuple[Any, ...]) -> Dimension:
    """A choice, or a fixed value when there is nothing to choose from."""
    values = tuple(dict.fromkeys(values))
    if len(values) <= 1:
        return Dimension(name, section, "fixed", default)
    return Dimension(name, section, "choice", default, values=values)


def _field_section(name: str) -> str:
    for section in _SECTIONS:
        section_type = typing.get_type_hints(config_lib.ExperimentConfig)[section]
        if name in {field.name for field in dataclasses.fields(section_type)}:
            return section
    raise errors.InputError(
        f"Unknown hyperparameter {name!r}: it must name a field of model or train config."
    )


def _field_type(section: str, name: str) -> Any:
    section_type = typing.get_type_hints(config_lib.ExperimentConfig)[section]
    return typing.get_type_hints(section_type)[name]


def _spread(center: int, factors: tuple[float, ...], multiple: int, minimum: int) -> tuple[int, ...]:
    """Integers around `center` (scaled by `factors`), rounded to `multiple`."""
    values = {center}
    for factor in factors:
        value = int(round(center * factor / multiple)) * multiple
        if value >= minimum:
            values.add(value)
    return tuple(sorted(values))


def default_search_space(base: config_lib.ExperimentConfig) -> dict[str, Dimension]:
    """The default search space around `base`; every default is base's value.

    Ranges scale with the base so the same space makes sense for `paper` and
    `tiny`: depths from half to one and a half times the base, module counts
    around the base counts, kernels among the sizes the blocks support, the
    learning rate a decade either side on a log scale.
    """
    model, train = base.model, base.train
    expansion_values = tuple(sorted({3.0, 4.0, 6.0, 8.0, float(model.expansion_factor)}))
    activations = available_activations()
    minimum_scale_0 = model.lower_modules_step * (model.num_scales - 1)
    space = [
        Dimension(
            "base_depth", "model", "choice", model.base_depth,
            values=_spread(model.base_depth, (0.5, 0.75, 1.25, 1.5), 4 if model.base_depth >= 40 else 2, 2),
        ),
        Dimension("expansion_factor", "model", "choice", float(model.expansion_factor), values=expansion_values),
        (
            Dimension(
                "projection_depth", "model", "choice", model.projection_depth,
                values=_spread(model.projection_depth, (0.5, 1.5, 2.0), 2, 2),
            )
            if model.projection_depth > 0
            else Dimension("projection_depth", "model", "fixed", 0)
        ),
        _choice_or_fixed("in_scale_kernel", "model", model.in_scale_kernel,
                         _valid_alternatives(base, "in_scale_kernel", IN_SCALE_KERNELS)),
        _choice_or_fixed("down_kernel", "model", model.down_kernel,
                         _valid_alternatives(base, "down_kernel", DOWN_KERNELS)),
        _choice_or_fixed("up_kernel", "model", model.up_kernel,
                         _valid_alternatives(base, "up_kernel", UP_KERNELS)),
        _choice_or_fixed("activation", "model", model.activation, (model.activation, *activations)),
        Dimension(
            "lower_modules_scale_0", "model", "int", model.lower_modules_scale_0,
            min_value=max(minimum_scale_0, model.lower_modules_scale_0 // 2, 1),
            max_value=model.lower_modules_scale_0 + max(2, model.lower_modules_scale_0 // 2),
        ),
        Dimension(
            "lower_modules_step", "model", "int", model.lower_modules_step,
            min_value=max(0, model.lower_modules_step - 2), max_value=model.lower_modules_step + 2,
        ),
        Dimension(
            "upper_tower_modules", "model", "int", model.upper_tower_modules,
            min_value=max(1, model.upper_tower_modules // 2),
            max_value=model.upper_tower_modules + max(2, model.upper_tower_modules // 2),
        ),
        Dimension(
            "learning_rate", "train", "float", train.learning_rate,
            min_value=train.learning_rate / 10, max_value=train.learning_rate * 10, sampling="log",
        ),
    ]
    return {dimension.name: dimension for dimension in space}


def _convert(value: Any, field_type: Any, name: str) -> Any:
    if field_type is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise errors.InputError(f"Search space {name!r}: {value!r} is not an integer.")
        return int(value)
    if field_type is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise errors.InputError(f"Search space {name!r}: {value!r} is not a number.")
        return float(value)
    if field_type is str:
        if not isinstance(value, str):
            raise errors.InputError(f"Search space {name!r}: {value!r} is not a string.")
        return value
    if field_type is bool:
        if not isinstance(value, bool):
            raise errors.InputError(f"Search space {name!r}: {value!r} is not true/false.")
        return value
    raise errors.InputError(f"Search space {name!r}: field of type {field_type} cannot be searched.")


def _dimension_from_spec(name: str, spec: Any, base: config_lib.ExperimentConfig) -> Dimension:
    """Parses one `--search_space` entry (scalar, list or object)."""
    section = _field_section(name)
    field_type = _field_type(section, name)
    base_value = getattr(getattr(base, section), name)
    if isinstance(spec, dict) and "fixed" in spec:
        spec = spec["fixed"]
    if isinstance(spec, list):
        spec = {"values": spec}
    if not isinstance(spec, dict):
        return Dimension(name, section, "fixed", _convert(spec, field_type, name))
    unknown = sorted(set(spec) - {"values", "default", "min", "max", "step", "sampling"})
    if unknown:
        raise errors.InputError(f"Search space {name!r}: unknown key(s) {unknown}.")
    if "values" in spec:
        values = tuple(_convert(value, field_type, name) for value in spec["values"])
        if not values:
            raise errors.InputError(f"Search space {name!r}: the list of values is empty.")
        default = spec.get("default", base_value if base_value in values else values[0])
        default = _convert(default, field_type, name)
        if default not in values:
            raise errors.InputError(f"Search space {name!r}: default {default!r} is not among {list(values)}.")
        return Dimension(name, section, "choice", default, values=values)
    if "min" not in spec or "max" not in spec:
        raise errors.InputError(
            f"Search space {name!r}: give a value, a list of values, or an object with min and max."
        )
    if field_type not in (int, float):
        raise errors.InputError(f"Search space {name!r}: a range needs a numeric field.")
    kind = "int" if field_type is int else "float"
    minimum = _convert(spec["min"], field_type, name)
    maximum = _convert(spec["max"], field_type, name)
    if minimum > maximum:
        raise errors.InputError(f"Search space {name!r}: min {minimum} > max {maximum}.")
    default = _convert(spec.get("default", min(max(base_value, minimum), maximum)), field_type, name)
    sampling = spec.get("sampling", "linear")
    if sampling not in ("linear", "log", "reverse_log"):
        raise errors.InputError(f"Search space {name!r}: sampling must be linear, log or reverse_log.")
    if sampling != "linear" and minimum <= 0:
        raise errors.InputError(f"Search space {name!r}: {sampling} sampling needs min > 0.")
    step = spec.get("step")
    return Dimension(name, section, kind, default, min_value=minimum, max_value=maximum,
                     step=None if step is None else _convert(step, field_type, name), sampling=sampling)


def search_space(
    base: config_lib.ExperimentConfig, overrides: Mapping[str, Any] | None = None
) -> dict[str, Dimension]:
    """The default space around `base`, with `overrides` (parsed JSON) on top.

    An override is a value (fixed), a list (choice; its default is base's value
    when listed, else the first), `{"values": [...], "default": v}`,
    `{"min": a, "max": b, "step": s, "sampling": "log", "default": v}` or
    `{"fixed": v}`. Names must be fields of the model or train config; a name
    outside the default space adds a dimension.

    Raises:
        InputError: for an unknown name or a malformed entry.
    """
    space = default_search_space(base)
    for name, spec in (overrides or {}).items():
        space[name] = _dimension_from_spec(name, spec, base)
    return space


class ISLHyperModel(keras_tuner.HyperModel):
    """Samples ModelConfig/TrainConfig values and builds the ISL network.

    Args:
        base_config: the preset the search starts from; every unsampled value
            and every hyperparameter default comes from it.
        space: the search space (`search_space(...)`); default: the default
            space around `base_config`.
        compile_fn: `compile_fn(model, config)` compiles each built model with
            the sampled config (a tuner needs a compiled model; `isl tune`
            passes `isl.train.step.compile_for_training`); None returns
            the model uncompiled.
    """

    def __init__(
        self,
        base_config: config_lib.ExperimentConfig,
        space: Mapping[str, Dimension] | None = None,
        compile_fn: Callable[[Any, config_lib.ExperimentConfig], None] | None = None,
    ) -> None:
        super().__init__(name=f"isl_{base_config.name}")
        self.base_config = base_config
        self.space = dict(space if space is not None else default_search_space(base_config))
        self.compile_fn = compile_fn
        self._base_input_size = geometry_lib.geometry(base_config.model).input_size

    # -- sampling: the only hp.* calls of the project ------------------------

    def sample(self, hp: keras_tuner.HyperParameters) -> dict[str, Any]:
        """Registers every dimension on `hp` and returns the current values."""
        values = {}
        for dimension in self.space.values():
            if dimension.kind == "fixed":
                value = hp.Fixed(dimension.name, dimension.default)
            elif dimension.kind == "choice":
                value = hp.Choice(dimension.name, list(dimension.values), default=dimension.default)
            elif dimension.kind == "int":
                value = hp.Int(
                    dimension.name, int(dimension.min_value), int(dimension.max_value),
                    step=None if dimension.step is None else int(dimension.step),
                    sampling=dimension.sampling, default=dimension.default,
                )
            else:
                value = hp.Float(
                    dimension.name, dimension.min_value, dimension.max_value, step=dimension.step,
                    sampling=dimension.sampling, default=dimension.default,
                )
            values[dimension.name] = value
        return values

    def declare_hyperparameters(self, hp: keras_tuner.HyperParameters) -> None:
        self.sample(hp)

    # -- plain values -> config ---------------------------------------------

    def config_from_values(self, values: Mapping[str, Any]) -> config_lib.ExperimentConfig:
        """The base config with `values` (hyperparameter name -> value) set.

        Values not in the space (e.g. Hyperband's `tuner/epochs`) are ignored.
        When the network input size changes (kernels, module counts), the
        training crop grows or shrinks by the same amount, so a crop still holds
        the same grid of patches (§3.5).

        Raises:
            ValueError: when the values give an inconsistent config.
        """
        updates: dict[str, dict[str, Any]] = {section: {} for section in _SECTIONS}
        for name, value in values.items():
            if name in self.space:
                updates[self.space[name].section][name] = value
        base = self.base_config
        config = dataclasses.replace(
            base,
            model=dataclasses.replace(base.model, **updates["model"]),
            train=dataclasses.replace(base.train, **updates["train"]),
        )
        config.validate()
        input_size = geometry_lib.geometry(config.model).input_size
        if input_size != self._base_input_size:
            crop_size = base.data.crop_size + input_size - self._base_input_size
            config = dataclasses.replace(config, data=dataclasses.replace(config.data, crop_size=crop_size))
            config.validate()
        return config

    def invalid_reason(self, values: Mapping[str, Any]) -> str | None:
        """Why `values` give no buildable network, or None when they do."""
        try:
            config = self.config_from_values(values)
            geometry_lib.geometry(config.model)
        except ValueError as error:
            return str(error)
        return None

    def config_for(self, hp: keras_tuner.HyperParameters) -> config_lib.ExperimentConfig:
        """The ExperimentConfig of `hp`'s current values.

        Raises:
            keras_tuner.errors.FailedTrialError: when they give no valid network.
        """
        values = self.sample(hp)
        try:
            config = self.config_from_values(values)
            geometry_lib.geometry(config.model)
        except ValueError as error:
            raise keras_tuner.errors.FailedTrialError(f"Invalid architecture {values}: {error}") from None
        return config

    # -- keras_tuner.HyperModel ---------------------------------------------

    def build(self, hp: keras_tuner.HyperParameters) -> Any:
        """Builds the network for `hp`'s values, compiled by `compile_fn` when given.

        The model takes `[batch, input, input, 2 * num_z_values]` at the
        training input size of the sampled geometry.
        """
        from isl.model import builder

        config = self.config_for(hp)
        input_size = geometry_lib.geometry(config.model).input_size
        try:
            model = builder.build_model(config, input_size=input_size)
        except ValueError as error:  # E.g. a kernel the blocks do not implement.
            raise keras_tuner.errors.FailedTrialError(f"Cannot build {config.model}: {error}") from None
        if self.compile_fn is not None:
            self.compile_fn(model, config)
        return model
