"""Transfer learning: restore a trained network into a model with a new vocabulary.

Weights are copied layer by layer, matched by layer name (names are stable:
see `isl.model.heads.head_layer_name` and the block names in
`isl.model.blocks`). A layer is skipped, and reported, when

* the source has no layer of that name (a new label's head, e.g. a user's
  own channel);
* any of its weights has a different shape (the input projection when the
  number of z values differs: it is re-learned, as the released code meant
  `restore_inputs` to do, isl_reference.md §8.2 #8);
* it is a head and `restore_heads` is False (the original's
  `--norestore_logits`).

As in the released code (§4), only the model's weights move, batch-norm
moving statistics included: fine-tuning starts at step 0 with a fresh
optimizer. `freeze_core` then makes the core untrainable, leaving the input
projection and the heads to learn.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import keras

from isl import config as config_lib
from isl import errors
from isl.io import model_dir as model_dir_lib
from isl.model import builder

HEAD_PREFIX = "head_"
LOGITS_LAYER = "logits"
PROJECTION_MARKER = "projection"


@dataclasses.dataclass
class TransferReport:
    """What `transfer_weights` did, by layer name."""

    source: str = ""
    restored: list[str] = dataclasses.field(default_factory=list)
    skipped_shape: list[str] = dataclasses.field(default_factory=list)
    skipped_absent: list[str] = dataclasses.field(default_factory=list)
    skipped_heads: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """One human-readable paragraph (printed by `isl train`)."""
        lines = [f"Restored {len(self.restored)} layers from {self.source}."]
        if self.skipped_shape:
            lines.append(
                f"Re-learned (shape differs) {len(self.skipped_shape)}: {', '.join(self.skipped_shape)}."
            )
        if self.skipped_absent:
            lines.append(
                f"New (absent from the source) {len(self.skipped_absent)}: "
                f"{', '.join(_heads_only(self.skipped_absent))}."
            )
        if self.skipped_heads:
            lines.append(f"Heads left at initialisation (--restore_heads=false): {len(self.skipped_heads)}.")
        return " ".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _heads_only(names: list[str]) -> list[str]:
    """Collapses `head_X_bn/_act/_conv` into `head_X` for short reports."""
    collapsed: list[str] = []
    for name in names:
        for suffix in ("_bn", "_act", "_conv"):
            if name.startswith(HEAD_PREFIX) and name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        if name not in collapsed:
            collapsed.append(name)
    return collapsed


def is_head_layer(name: str) -> bool:
    """Heads are the layers named `head_*` (and the weightless `logits` stack)."""
    return name.startswith(HEAD_PREFIX) or name == LOGITS_LAYER


def _input_consumers(model: keras.Model) -> set[str]:
    """Names of the layers that read the model input directly."""
    inputs = {id(tensor) for tensor in model.inputs}
    names = set()
    for layer in model.layers:
        for node in getattr(layer, "_inbound_nodes", []):
            if any(id(tensor) in inputs for tensor in getattr(node, "input_tensors", [])):
                names.add(layer.name)
    return names


def is_projection_layer(model: keras.Model, name: str) -> bool:
    """The input projection: named `*projection*`, or a weighted layer on the input."""
    if PROJECTION_MARKER in name:
        return True
    return name in _input_consumers(model) and bool(model.get_layer(name).weights)


def _weighted_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if layer.weights]


def transfer_weights(target: keras.Model, source: keras.Model, restore_heads: bool = True) -> TransferReport:
    """Copies `source`'s weights into `target` by layer name; see module docstring."""
    report = TransferReport()
    source_layers = {layer.name: layer for layer in _weighted_layers(source)}
    for layer in _weighted_layers(target):
        name = layer.name
        if is_head_layer(name) and not restore_heads:
            report.skipped_heads.append(name)
            continue
        source_layer = source_layers.get(name)
        if source_layer is None:
            report.skipped_absent.append(name)
            continue
        target_shapes = [tuple(weight.shape) for weight in layer.weights]
        source_shapes = [tuple(weight.shape) for weight in source_layer.weights]
        if target_shapes != source_shapes:
            report.skipped_shape.append(name)
            continue
        for target_weight, source_weight in zip(layer.weights, source_layer.weights):
            target_weight.assign(keras.ops.convert_to_numpy(source_weight))
        report.restored.append(name)
    return report


def load_source_model(
    path: str,
    build_model_fn: Callable[[config_lib.ExperimentConfig], keras.Model] | None = None,
) -> tuple[keras.Model, config_lib.ExperimentConfig]:
    """Builds the trained network at `path` (a model dir or a `.weights.h5`).

    A `.weights.h5` file needs the `config.json` it was trained with beside
    it (every model dir has one), because layers are matched by name and
    the file alone does not say which vocabulary it holds.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        directory, weights_path = path, model_dir_lib.ModelDir(path).weights
    elif os.path.isfile(path):
        directory, weights_path = os.path.dirname(os.path.abspath(path)), path
    else:
        raise errors.InputError(f"--restore_from {path}: no such model directory or weights file.")
    config_path = model_dir_lib.ModelDir(directory).config
    if not os.path.isfile(config_path):
        raise errors.InputError(
            f"--restore_from {path}: {config_path} is missing; the source's config is needed "
            "to rebuild its layers (pass a model directory written by `isl train`)."
        )
    if not os.path.isfile(weights_path):
        raise errors.InputError(f"--restore_from {path}: {weights_path} is missing.")
    source_config = config_lib.load_config(config_path)
    if build_model_fn is None:
        build_model_fn = builder.build_model
    model = build_model_fn(source_config)
    try:
        model.load_weights(weights_path)
    except (ValueError, OSError) as error:
        raise errors.InputError(
            f"--restore_from {path}: {weights_path} does not match {config_path} ({error})."
        ) from None
    return model, source_config


def restore_from(
    target: keras.Model,
    path: str,
    restore_heads: bool = True,
    build_model_fn: Callable[[config_lib.ExperimentConfig], keras.Model] | None = None,
) -> TransferReport:
    """Loads the network at `path` and copies what fits into `target`."""
    source, _ = load_source_model(path, build_model_fn=build_model_fn)
    report = transfer_weights(target, source, restore_heads=restore_heads)
    report.source = os.fspath(path)
    if not report.restored:
        raise errors.InputError(
            f"--restore_from {path}: no layer of the source fits this model "
            "(different architecture?). Nothing was restored."
        )
    return report


def freeze_core(model: keras.Model) -> list[str]:
    """Makes every core layer untrainable (not the projection, not the heads).

    Frozen batch-norm layers run in inference mode (Keras semantics), so the
    core's moving statistics stay as restored. Returns the frozen names.
    """
    frozen = []
    consumers = _input_consumers(model)
    for layer in _weighted_layers(model):
        name = layer.name
        if is_head_layer(name) or PROJECTION_MARKER in name or name in consumers:
            continue
        layer.trainable = False
        frozen.append(name)
    return frozen
