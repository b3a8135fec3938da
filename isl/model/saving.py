"""Model directories: the resolved config beside the weights.

    MODEL_DIR/config.json          the fully resolved ExperimentConfig
    MODEL_DIR/model.weights.h5     Keras weights, matched by layer name

`save_model_dir` writes both files atomically (temporary name, then rename);
`load_model_dir` rebuilds the network from `config.json` with
`isl.model.builder.build_model` and loads the weights, so any valid input
size can be chosen at load time (the network is fully convolutional).

Also here: `tf1_variable_names`, the map from this model's weights to the
variable names of the released TF1 checkpoint (isl_reference.md §1.10), and
`load_tf1_checkpoint`, which copies such a checkpoint into a built model.
"""

from __future__ import annotations

import os
from typing import Any

import keras
import numpy as np

from isl import config as config_lib
from isl import errors
from isl.io import atomic
from isl.io import model_dir as model_dir_lib
from isl.model import builder
from isl.model import heads as heads_lib


def save_model_dir(
    model: keras.Model, config: config_lib.ExperimentConfig, directory: str | os.PathLike[str]
) -> dict[str, str]:
    """Writes `config.json` and `model.weights.h5` into `directory`.

    Only the network's weights are written (no optimizer state). Each file is
    written under a temporary name and renamed, so a reader never sees a
    half-written file. Other files in `directory` (checkpoints,
    logs) are left alone.

    Returns:
        `{"config": path, "weights": path}`.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    layout = model_dir_lib.ModelDir(directory)
    weights_path, config_path = layout.weights, layout.config
    # A compiled model's weights file also holds the optimizer's slots (Adam:
    # 2x the weights). An uncompiled functional wrapper around the same layers
    # saves the network alone, under the same keys; the optimizer state lives
    # in the training checkpoints.
    compiled = getattr(model, "optimizer", None) is not None
    network = keras.Model(model.inputs, model.outputs, name=model.name) if compiled else model
    with atomic.temporary_path(weights_path) as temporary:
        network.save_weights(temporary)
    config_lib.save_config(config, config_path)
    return {"config": config_path, "weights": weights_path}


def load_model_dir(
    directory: str | os.PathLike[str], input_size: int | None = None
) -> tuple[keras.Model, config_lib.ExperimentConfig]:
    """Rebuilds the model described by `directory/config.json` and loads its weights.

    Args:
        directory: a model directory written by `save_model_dir`.
        input_size: square input side of the built model (250 + 16k for the
            paper model), or None for dynamic spatial dimensions.

    Returns:
        `(model, config)`.

    Raises:
        InputError: if the directory or a file is missing, the config is
            invalid, the input size is invalid, or the weights do not fit.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise errors.InputError(f"{directory}: model directory not found.")
    layout = model_dir_lib.ModelDir(directory)
    config_path, weights_path = layout.config, layout.weights
    missing = [path for path in (config_path, weights_path) if not os.path.isfile(path)]
    if missing:
        raise errors.InputError(
            f"{directory}: not a model directory, missing {', '.join(os.path.basename(p) for p in missing)} "
            f"(expected {model_dir_lib.CONFIG_FILE} and {model_dir_lib.WEIGHTS_FILE})."
        )
    try:
        config = config_lib.load_config(config_path)
    except errors.InputError as error:
        raise errors.InputError(
            f"{error} The model directory's {model_dir_lib.CONFIG_FILE} is damaged: copy it again from where the "
            "model came from (`isl train` writes it)."
        ) from None
    try:
        model = builder.build_model(config, input_size=input_size)
    except ValueError as error:
        raise errors.InputError(f"{config_path}: cannot build the model: {error}") from None
    try:
        model.load_weights(weights_path)
    except (ValueError, KeyError, OSError) as error:
        damage = weights_damage(weights_path)
        if damage:
            raise errors.InputError(
                f"{weights_path}: damaged weights file ({damage}). Copy it again from where the model came from; "
                f"a training run rewrites it from its newest checkpoint when resumed."
            ) from None
        raise errors.InputError(
            f"{weights_path}: the weights do not match the model of {config_path}: {error}"
        ) from None
    return model, config


def weights_damage(path: str) -> str | None:
    """Why a `.weights.h5` file cannot be read (truncated, not HDF5), or None.

    Opens the file and reads every dataset. A flipped bit inside the weight
    values is not found: HDF5 keeps no checksums by default.
    """
    import h5py

    problems: list[str] = []

    def read(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset) and not problems:
            try:
                item[()]
            except (OSError, ValueError, KeyError) as error:
                problems.append(f"dataset {name} unreadable: {str(error).splitlines()[0]}")

    try:
        with h5py.File(path, "r") as handle:
            handle.visititems(read)
    except (OSError, ValueError, KeyError) as error:
        return f"not a readable HDF5 file: {str(error).splitlines()[0]}"
    return problems[0] if problems else None


def read_trained_channels(directory: str | os.PathLike[str]) -> tuple[str, ...] | None:
    """The target channels whose heads were trained, from `trained_channels.json`; None when unknown."""
    import json

    path = model_dir_lib.ModelDir(directory).trained_channels
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as file:
            return tuple(json.load(file)["target_channels"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise errors.InputError(f"{path}: unreadable ({error}).") from None


def write_trained_channels(
    directory: str | os.PathLike[str], channels: config_lib.ChannelConfig, present: set[str], data_dir: str
) -> tuple[str, ...]:
    """Records which target heads get labels from a dataset whose real target channels are `present`.

    A synthetic channel counts when all its sources are present. Channels
    already recorded in `directory` (a resumed run) are kept. Returns the
    recorded channels, in head order.
    """
    import json

    trained = set(read_trained_channels(directory) or ())
    trained |= {channel for channel in channels.target_channels if channel in present}
    trained |= {
        synthetic.name
        for synthetic in channels.active_synthetic_channels
        if all(source in present for source in synthetic.sources)
    }
    ordered = tuple(channel for channel in channels.output_target_channels if channel in trained)
    path = model_dir_lib.ModelDir(directory).trained_channels
    atomic.write_text(path, json.dumps({"target_channels": list(ordered), "last_data_dir": os.path.abspath(data_dir)},
                                       indent=2) + "\n")
    return ordered


# ---------------------------------------------------------------------------
# The released TF1 checkpoint's variable names (§1.10)
# ---------------------------------------------------------------------------

_BATCH_NORM_NAMES = ("gamma", "beta", "moving_mean", "moving_variance")


def _unit_scope(layer_name: str, suffix: str) -> str:
    """`downscale_4_3_expand_rv2` -> `downscale_4_3/expand_rv2`."""
    base = layer_name[: -len(suffix)]
    for unit in ("_expand_rv2", "_reduce_rv2"):
        if base.endswith(unit):
            return base[: -len(unit)] + "/" + unit[1:]
    return base


def tf1_variable_names(model: keras.Model, config: config_lib.ExperimentConfig) -> dict[str, tuple[str, int]]:
    """Maps TF1 checkpoint variable names to `(layer name, weight index)`.

    Covers the projection (`Conv/weights`, `Conv/biases`), every module's
    `<module>/{expand,reduce}_rv2/{BatchNorm/*, Conv/weights,
    Conv2d_transpose/weights}` and every head's
    `head/<z>/<channel>/residual_v2_conv/{BatchNorm/*, Conv/weights, Conv/biases}`.
    Kernel layouts and channel orders are the same in both frameworks.
    """
    head_scopes = {
        heads_lib.head_layer_name(name): f"head/{name}/residual_v2_conv" for name in config.channels.head_names
    }
    names: dict[str, tuple[str, int]] = {}
    for layer in model.layers:
        if not layer.weights:
            continue
        name = layer.name
        if name == builder.PROJECTION_LAYER:
            names["Conv/weights"] = (name, 0)
            if len(layer.weights) > 1:
                names["Conv/biases"] = (name, 1)
            continue
        for suffix in ("_bn", "_conv"):
            if name.endswith(suffix):
                break
        else:
            raise ValueError(f"Layer {name} has weights but no TF1 name rule.")
        base = name[: -len(suffix)]
        scope = head_scopes.get(base) or _unit_scope(name, suffix)
        if suffix == "_bn":
            for index, variable in enumerate(_BATCH_NORM_NAMES):
                names[f"{scope}/BatchNorm/{variable}"] = (name, index)
        else:
            kind = "Conv2d_transpose" if isinstance(layer, keras.layers.Conv2DTranspose) else "Conv"
            names[f"{scope}/{kind}/weights"] = (name, 0)
            if len(layer.weights) > 1:
                names[f"{scope}/{kind}/biases"] = (name, 1)
    return names


def load_tf1_checkpoint(
    model: keras.Model, config: config_lib.ExperimentConfig, checkpoint_path: str
) -> dict[str, Any]:
    """Copies the released TF1 checkpoint's variables into `model`.

    Args:
        model: built with `build_model(config)`.
        config: its config (for the head names).
        checkpoint_path: a TF1 checkpoint prefix (e.g. `.../model.ckpt-984658`).

    Returns:
        `{"restored": n, "missing": [TF1 names absent from the checkpoint]}`.

    Raises:
        InputError: if the checkpoint cannot be read or a shape differs.
    """
    import tensorflow as tf  # Checkpoint reading is TF-specific.

    try:
        reader = tf.train.load_checkpoint(checkpoint_path)
    except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as error:
        raise errors.InputError(f"{checkpoint_path}: cannot read the TF1 checkpoint: {error}") from None
    available = reader.get_variable_to_shape_map()
    missing = []
    values_by_layer: dict[str, dict[int, np.ndarray]] = {}
    for tf1_name, (layer_name, index) in tf1_variable_names(model, config).items():
        if tf1_name not in available:
            missing.append(tf1_name)
            continue
        values_by_layer.setdefault(layer_name, {})[index] = reader.get_tensor(tf1_name)
    restored = 0
    for layer_name, values in values_by_layer.items():
        layer = model.get_layer(layer_name)
        weights = [np.asarray(w) for w in layer.get_weights()]
        for index, value in values.items():
            if tuple(value.shape) != tuple(weights[index].shape):
                raise errors.InputError(
                    f"{checkpoint_path}: {layer_name} weight {index} has shape {value.shape} in the "
                    f"checkpoint but {weights[index].shape} in the model."
                )
            weights[index] = value
            restored += 1
        layer.set_weights(weights)
    return {"restored": restored, "missing": missing}
