"""Macro-architecture: assembles the multi-scale network from a config.

`build_model(config)` builds the concordance model of the paper (or the
older fovea model, or any size the config describes) as one flat Keras
functional graph:

    input [batch, H, W, 2Z]  (z-major value/mask interleaved)
      -> projection (1x1 conv with bias, optional)
      -> for each tower s: centre crop -> s down blocks -> in-scale modules
         -> s up blocks
      -> concatenate towers (0..S-1) -> upper tower of in-scale modules
      -> embedding [batch, h, w, E]
      -> one head per (z, channel) -> logits [batch, h, w, num_heads, C]

Every crop size, module count and depth comes from `isl.model.geometry`
(sizes) and the depth schedule in `isl.model.blocks`; nothing is tabulated.
The network is fully convolutional: crops are a fixed number of pixels per
side, so with `input_size=None` one model takes every valid input side
`250 + 16k` and returns `8 + 16k` outputs (for the paper model).

Phase rule: the network is shift-equivariant by `geometry.phase` = 2**(S-1)
input pixels (16 for the paper model), not by its 8-pixel output. Shifting
the input by 16 shifts the output by 16; the outputs of a 266-px input at
rows/columns [16a, 16a + 8) equal those of the 250-px patch at offset 16a,
while rows [8, 16) are the network evaluated at a different phase of its
stride-2 layers and do not equal the 250-px patch at offset 8.

Mixed precision: `config.train.mixed_precision = "bfloat16"` gives every
layer the "mixed_bfloat16" policy (bfloat16 compute, float32 variables;
batch norm computes in float32); otherwise layers follow the global Keras
policy. The logits are float32 either way.
"""

from __future__ import annotations

import keras

from isl import config as config_lib
from isl.model import blocks
from isl.model import geometry as geometry_lib
from isl.model import heads as heads_lib
from isl.model import layers as isl_layers
from isl.model import unet as unet_lib
from isl.model import unet_regression

INPUT_NAME = "transmitted_light"
PROJECTION_LAYER = "projection"
MERGE_LAYER = "merge"
EMBEDDING_LAYER = "embedding"

_POLICIES = {
    "": None,
    "bfloat16": "mixed_bfloat16",
    "mixed_bfloat16": "mixed_bfloat16",
    "float16": "mixed_float16",
    "mixed_float16": "mixed_float16",
}


def dtype_policy_name(config: config_lib.ExperimentConfig) -> str | None:
    """The Keras dtype policy the layers get, or None for the global policy."""
    try:
        return _POLICIES[config.train.mixed_precision]
    except KeyError:
        raise ValueError(
            f"train.mixed_precision must be '' or 'bfloat16'. Received: {config.train.mixed_precision!r}"
        ) from None


def build_core(
    inputs: keras.KerasTensor,
    model_config: config_lib.ModelConfig,
    settings: blocks.BlockSettings,
) -> keras.KerasTensor:
    """The core network: projection, towers, merge, upper tower.

    Args:
        inputs: `[batch, H, W, 2Z]`, H = W = 250 + 16k (paper model) or None.
        model_config: macro- and micro-architecture hyperparameters.
        settings: batch-norm constants, dtype policy, optional records list.

    Returns:
        The embedding `[batch, H - 2*border, W - 2*border, E]`.
    """
    reference = geometry_lib.reference_geometry(model_config)
    concordance = model_config.architecture == "concordance"
    rule = blocks.BlockDepthRule(
        base_depth=model_config.base_depth,
        expansion_factor=model_config.expansion_factor,
        up_depth_offset=model_config.up_depth_offset,
    )
    features = inputs
    if model_config.projection_depth:
        features = keras.layers.Conv2D(
            model_config.projection_depth,
            1,
            use_bias=True,
            kernel_initializer="glorot_uniform",
            **settings.layer_kwargs(PROJECTION_LAYER),
        )(features)

    # Three passes over the towers (down blocks, lower in-scale modules, up
    # blocks), the released code's creation order, so the module table lists
    # modules as Appendix B does.
    tower_outputs = []
    for tower in reference.towers:
        scale = tower.scale
        crop = (reference.input_size - tower.crop_size) // 2
        outputs = features
        if crop:
            outputs = isl_layers.CenterCrop2D(crop, **settings.layer_kwargs(f"tower_{scale}_crop"))(outputs)
        for index, size in enumerate(tower.down_sizes):
            outputs = blocks.down_block(
                outputs,
                depth_size=size,
                down_kernel=model_config.down_kernel,
                in_scale_kernel=model_config.in_scale_kernel,
                add_in_scale_module=concordance,
                rule=rule,
                settings=settings,
                name=f"downscale_{scale}_{index}",
            )
        tower_outputs.append(outputs)
    for tower in reference.towers:
        outputs = tower_outputs[tower.scale]
        for index, size in enumerate(tower.lower_sizes):
            outputs = blocks.in_scale_module(
                outputs,
                depth_size=size,
                kernel_size=model_config.in_scale_kernel,
                rule=rule,
                settings=settings,
                name=f"lower_scale_{tower.scale}_recursion_{index}",
            )
        tower_outputs[tower.scale] = outputs
    for tower in reference.towers:
        outputs = tower_outputs[tower.scale]
        for index, size in enumerate(tower.up_sizes):
            outputs = blocks.up_block(
                outputs,
                depth_size=size,
                up_kernel=model_config.up_kernel,
                in_scale_kernel=model_config.in_scale_kernel,
                overlap_crop=geometry_lib.UP_BLOCK_CROP if concordance else 0,
                add_in_scale_module=concordance,
                rule=rule,
                settings=settings,
                name=f"upscale_{tower.scale}_{index}",
            )
        tower_outputs[tower.scale] = outputs

    if len(tower_outputs) > 1:
        merged = keras.layers.Concatenate(axis=-1, **settings.layer_kwargs(MERGE_LAYER))(tower_outputs)
    else:
        merged = tower_outputs[0]
    size = reference.merge_size
    for index in range(model_config.upper_tower_modules):
        size -= model_config.in_scale_kernel - 1
        merged = blocks.in_scale_module(
            merged,
            depth_size=size,
            kernel_size=model_config.in_scale_kernel,
            rule=rule,
            settings=settings,
            name=f"upper_recursion_{index}",
        )
    return keras.layers.Identity(**settings.layer_kwargs(EMBEDDING_LAYER))(merged)


def build_model(
    config: config_lib.ExperimentConfig,
    input_size: int | None = None,
    *,
    records: list[blocks.ModuleRecord] | None = None,
) -> keras.Model:
    """Builds the full network: core and one head per (z, channel).

    Args:
        config: the experiment config (model hyperparameters, vocabulary,
            `train.mixed_precision`).
        input_size: the square input side (250 + 16k for the paper model),
            or None for dynamic spatial dimensions (fully convolutional).
        records: if a list, one `blocks.ModuleRecord` per module is appended
            (Appendix B's columns), for `isl describe` and tests.

    Returns:
        A Keras model from `[batch, H, W, 2 * num_z_values]` float32 to
        `[batch, H - 2*border, W - 2*border, num_heads, num_classes]` float32
        logits, heads in `config.channels.head_names` order.

    Raises:
        ValueError: for an input side the network cannot take, or an
            inconsistent config.
    """
    config.validate()
    model_config = config.model
    if input_size is not None:
        geometry_lib.output_size_for_input(model_config, input_size)
    settings = blocks.BlockSettings(
        batch_norm_momentum=model_config.batch_norm_momentum,
        batch_norm_epsilon=model_config.batch_norm_epsilon,
        activation=model_config.activation,
        dtype=dtype_policy_name(config),
        records=records,
        fused=bool(getattr(config.train, "fused_elementwise", False)),
        eigen_odd_depths=bool(getattr(config.train, "fast_batch_norm", False)),
    )
    if model_config.architecture == "unet_regression":
        return unet_regression.build_regression_model(config, settings, input_size)
    inputs = keras.Input(
        shape=(input_size, input_size, config.channels.num_input_features),
        dtype="float32",
        name=INPUT_NAME,
    )
    if model_config.architecture == "unet":
        reference = geometry_lib.reference_geometry(model_config)
        unet_lib.check_unet(model_config, reference.output_size, reference.border)
        embedding = unet_lib.build_unet_core(inputs, model_config, settings, reference.border)
    else:
        embedding = build_core(inputs, model_config, settings)
    logits = heads_lib.add_heads(embedding, config.channels, model_config.num_classes, settings)
    return keras.Model(inputs, logits, name=f"isl_{model_config.architecture}")


def core_model(model: keras.Model) -> keras.Model:
    """The core of a built model alone: input -> embedding `[b, h, w, E]`.

    Shares layers (and weights) with `model`; for transfer learning and
    embedding export.
    """
    return keras.Model(model.input, model.get_layer(EMBEDDING_LAYER).output, name=f"{model.name}_core")
