"""A small U-Net core: the baseline of the real-data reproduction (issue 8).

Not part of the paper. Label-free prediction tools (e.g. the Allen Institute's
fnet, CSBDeep/CARE) predict fluorescence with a U-Net; this one is built from
the same Keras layers and plugs into the same heads, loss, data pipeline,
trainer, tiled prediction and evaluation as the concordance model, so a
comparison trained on the same split under the same budget shows what the
paper's architecture buys.

Geometry: the model takes the same patches as the concordance model
(`250 + 16k` -> `8 + 16k`, border 121, from `isl.model.geometry`), so
nothing downstream changes. Of each input it uses only the centre
`output + 2 * unet_context` pixels (128 for an 8-px output with context 60):

    input [b, H, W, 2Z] -> centre crop [b, o + 2c, o + 2c, 2Z]
      -> levels x (2 x [3x3 conv 'same' -> BN -> ReLU], 2x2 max pool)
      -> bottleneck 2 x [conv -> BN -> ReLU]
      -> levels x (2x2 transposed conv stride 2, concat skip, 2 x [conv -> BN -> ReLU])
      -> centre crop [b, o, o, F] = the embedding -> heads

`o + 2c` must be a multiple of 2**levels, so pooling is exact. Every output
pixel is at least `c` pixels from the crop edge, in training and in tiled
prediction alike, so the zero padding of the 'same' convolutions affects
both the same way.
"""

from __future__ import annotations

import keras

from isl import config as config_lib
from isl.model import blocks

EMBEDDING_LAYER = "embedding"


def _conv_unit(features: keras.KerasTensor, filters: int, settings: blocks.BlockSettings,
               name: str) -> keras.KerasTensor:
    """3x3 'same' convolution -> batch norm -> ReLU, `[b, n, n, *]` -> `[b, n, n, filters]`."""
    features = keras.layers.Conv2D(
        filters, 3, padding="same", use_bias=False, **settings.layer_kwargs(f"{name}_conv")
    )(features)
    features = keras.layers.BatchNormalization(
        momentum=settings.batch_norm_momentum,
        epsilon=settings.batch_norm_epsilon,
        **settings.layer_kwargs(f"{name}_bn"),
    )(features)
    return keras.layers.ReLU(**settings.layer_kwargs(f"{name}_relu"))(features)


def check_unet(model_config: config_lib.ModelConfig, output_size: int, border: int) -> int:
    """The side of the centre crop the U-Net works on; raises ValueError when invalid."""
    crop = output_size + 2 * model_config.unet_context
    factor = 2 ** model_config.unet_levels
    if model_config.unet_context > border:
        raise ValueError(
            f"model.unet_context {model_config.unet_context} exceeds the patch border {border}."
        )
    phase = 2 ** (model_config.num_scales - 1)
    if phase % factor:
        raise ValueError(
            f"2**unet_levels = {factor} must divide the patch phase {phase} (2**(num_scales-1)), so every "
            "valid output size pools exactly."
        )
    if crop % factor:
        raise ValueError(
            f"U-Net crop {output_size} + 2 x {model_config.unet_context} = {crop} is not a multiple of "
            f"2**unet_levels = {factor}; choose unet_context so it is."
        )
    return crop


def build_unet_core(
    inputs: keras.KerasTensor,
    model_config: config_lib.ModelConfig,
    settings: blocks.BlockSettings,
    border: int,
) -> keras.KerasTensor:
    """The U-Net core.

    Args:
        inputs: `[batch, H, W, 2Z]`, H = W = output + 2 * border (or None).
        model_config: `unet_levels`, `unet_filters`, `unet_context`.
        settings: batch-norm constants and dtype policy.
        border: the patch border of the shared geometry (121).

    Returns:
        The embedding `[batch, H - 2*border, W - 2*border, unet_filters]`.
    """
    trim = border - model_config.unet_context
    features = keras.layers.Cropping2D(trim, **settings.layer_kwargs("unet_crop_input"))(inputs) if trim else inputs
    skips = []
    filters = model_config.unet_filters
    for level in range(model_config.unet_levels):
        features = _conv_unit(features, filters * 2**level, settings, f"unet_down{level}_a")
        features = _conv_unit(features, filters * 2**level, settings, f"unet_down{level}_b")
        skips.append(features)
        features = keras.layers.MaxPooling2D(2, **settings.layer_kwargs(f"unet_pool{level}"))(features)
    bottom = filters * 2**model_config.unet_levels
    features = _conv_unit(features, bottom, settings, "unet_bottom_a")
    features = _conv_unit(features, bottom, settings, "unet_bottom_b")
    for level in reversed(range(model_config.unet_levels)):
        features = keras.layers.Conv2DTranspose(
            filters * 2**level, 2, strides=2, **settings.layer_kwargs(f"unet_up{level}_transpose")
        )(features)
        features = keras.layers.Concatenate(**settings.layer_kwargs(f"unet_up{level}_concat"))([features, skips[level]])
        features = _conv_unit(features, filters * 2**level, settings, f"unet_up{level}_a")
        features = _conv_unit(features, filters * 2**level, settings, f"unet_up{level}_b")
    features = keras.layers.Cropping2D(model_config.unet_context, **settings.layer_kwargs("unet_crop_output"))(features)
    return keras.layers.Identity(**settings.layer_kwargs(EMBEDDING_LAYER))(features)
