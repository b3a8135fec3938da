"""The peer baseline: a U-Net regression as fnet and CARE train it (not in the paper).

`model.architecture="unet_regression"` builds what label-free prediction
tools (the Allen Institute's fnet, CSBDeep/CARE) train: a U-Net with 'same'
convolutions that maps the transmitted-light stack to one value per target
channel and pixel, trained with the mean squared error on per-channel
standardized targets. No 256-bin heads, no distribution: its prediction is
one image per channel (written as both the median and the mean statistic,
so `isl evaluate` scores it like the paper's model).

    input [b, n, n, 2Z] (value/mask per z, as the concordance model takes)
      -> levels x (2 x [3x3 conv 'same' -> BN -> ReLU], 2x2 max pool)
      -> bottleneck 2 x [conv -> BN -> ReLU]
      -> levels x (2x2 transposed conv stride 2, concat skip, 2 x [conv -> BN -> ReLU])
      -> 1x1 conv, linear -> [b, n, n, T] float32 (standardized values)

Geometry (`isl.model.geometry`): input = output = `model.output_size`, a
multiple of 2**unet_levels (128 for the `unet` recipe), border 0: training
patches are random 128 x 128 crops, and whole images are predicted in one
pass after reflection padding to a multiple of 2**unet_levels.

The hybrid (`model.hybrid_features`, not in the paper): the input has E
more channels after the 2Z transmitted-light ones, a frozen paper
network's core embedding of the same pixels; the network standardises them
with `model.hybrid_embedding_mean` / `hybrid_embedding_std` (constants of
the training records) before the first convolution.

Standardization: `model.regression_target_mean` / `regression_target_std`
(one value per output target channel) are measured on the training split
when training starts and recorded in config.json; prediction maps the
network's output back with them and clips to [0, 1].
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from isl import config as config_lib
from isl.model import blocks
from isl.model import unet as unet_lib

ARCHITECTURE = "unet_regression"
OUTPUT_LAYER = "regression_output"


def check_size(model_config: config_lib.ModelConfig, size: int) -> None:
    """Raises ValueError unless `size` pools exactly through every level."""
    factor = 2**model_config.unet_levels
    if size < factor or size % factor:
        raise ValueError(
            f"Output size {size} is not valid for the U-Net regression: it must be a positive multiple "
            f"of 2**unet_levels = {factor}."
        )


def build_regression_model(
    config: config_lib.ExperimentConfig, settings: blocks.BlockSettings, input_size: int | None = None
) -> keras.Model:
    """`[batch, n, n, 2Z (+ E)]` float32 -> `[batch, n, n, T]` float32 standardized target values.

    With `model.hybrid_features`, the last E = `hybrid_embedding_size` input channels are the frozen network's
    embedding, standardised here with the config's per-feature mean and std.
    """
    model_config = config.model
    if input_size is not None:
        check_size(model_config, input_size)
    light = config.channels.num_input_features
    inputs = keras.Input(shape=(input_size, input_size, light + input_embedding_size(model_config)),
                         dtype="float32", name="transmitted_light")
    features = inputs
    if model_config.hybrid_features:
        if not model_config.hybrid_embedding_mean:
            raise ValueError("model.hybrid_features: the embedding's mean and std are not in the config "
                             "(isl train fills them in from the records).")
        mean = ops.convert_to_tensor(model_config.hybrid_embedding_mean, "float32")
        std = ops.convert_to_tensor(model_config.hybrid_embedding_std, "float32")
        features = keras.layers.Concatenate(name="hybrid_input")(
            [inputs[..., :light], (inputs[..., light:] - mean) / std])
    skips = []
    filters = model_config.unet_filters
    for level in range(model_config.unet_levels):
        features = unet_lib._conv_unit(features, filters * 2**level, settings, f"unet_down{level}_a")
        features = unet_lib._conv_unit(features, filters * 2**level, settings, f"unet_down{level}_b")
        skips.append(features)
        features = keras.layers.MaxPooling2D(2, **settings.layer_kwargs(f"unet_pool{level}"))(features)
    bottom = filters * 2**model_config.unet_levels
    features = unet_lib._conv_unit(features, bottom, settings, "unet_bottom_a")
    features = unet_lib._conv_unit(features, bottom, settings, "unet_bottom_b")
    for level in reversed(range(model_config.unet_levels)):
        features = keras.layers.Conv2DTranspose(
            filters * 2**level, 2, strides=2, **settings.layer_kwargs(f"unet_up{level}_transpose")
        )(features)
        features = keras.layers.Concatenate(**settings.layer_kwargs(f"unet_up{level}_concat"))([features, skips[level]])
        features = unet_lib._conv_unit(features, filters * 2**level, settings, f"unet_up{level}_a")
        features = unet_lib._conv_unit(features, filters * 2**level, settings, f"unet_up{level}_b")
    count = config.channels.num_target_heads * (2 if model_config.regression_spread else 1)  # Means, log-spreads.
    outputs = keras.layers.Conv2D(count, 1, name=OUTPUT_LAYER, dtype="float32")(features)
    return keras.Model(inputs, outputs, name="isl_unet_regression")


def input_embedding_size(model_config: config_lib.ModelConfig) -> int:
    """E, the embedding channels the hybrid's input carries after the transmitted light (0: not a hybrid)."""
    return model_config.hybrid_embedding_size if model_config.hybrid_features else 0


@keras.saving.register_keras_serializable(package="isl")
class RegressionLoss(keras.losses.Loss):
    """Masked mean squared error on standardized targets (or, with a spread output, their Gaussian NLL).

    `y_true` is the pipeline's labels `[b, o, o, heads, 2]` (value, mask;
    input heads first, then the targets); `y_pred` is `[b, o, o, T]`. Each
    target value v becomes (v - mean) / std; the loss is the mean of the
    squared errors over the labelled (mask != 0) target pixels. A model with
    `model.regression_spread` gives `[b, o, o, 2T]` (means, then log-spreads):
    the loss is then `isl.model.losses.gaussian_nll` over the same pixels.

    `foreground_weight` a > 0 (`train.regression_foreground_weight`) weights
    each labelled pixel by `1 + a * max(z, 0)`, z its standardized target,
    and takes the weighted mean: the sparse bright structures (nuclei, axons)
    count more than the background, whose z is <= 0 and weight 1.
    """

    def __init__(
        self,
        num_input_heads: int,
        means: tuple[float, ...],
        stds: tuple[float, ...],
        foreground_weight: float = 0.0,
        name: str = "mse_standardized",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        if len(means) != len(stds) or not means:
            raise ValueError("RegressionLoss needs one mean and one std per target channel.")
        self.num_input_heads = int(num_input_heads)
        self.means = tuple(float(value) for value in means)
        self.stds = tuple(float(value) for value in stds)
        self.foreground_weight = float(foreground_weight)

    def call(self, y_true, y_pred):
        labels = ops.cast(y_true, "float32")[..., self.num_input_heads :, :]
        values, masks = labels[..., 0], labels[..., 1]
        standardized = (values - ops.convert_to_tensor(self.means)) / ops.convert_to_tensor(self.stds)
        weights = ops.cast(ops.not_equal(masks, 0.0), "float32")
        if self.foreground_weight:
            weights = weights * (1.0 + self.foreground_weight * ops.maximum(standardized, 0.0))
        y_pred = ops.cast(y_pred, "float32")
        count = len(self.means)
        if y_pred.shape[-1] == 2 * count:  # A mean and a log-spread per channel (model.regression_spread).
            from isl.model import losses

            return losses.gaussian_nll(standardized, y_pred[..., :count], y_pred[..., count:], weights)
        squared = ops.square(y_pred - standardized) * weights
        return ops.sum(squared) / ops.maximum(ops.sum(weights), 1.0)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(num_input_heads=self.num_input_heads, means=list(self.means), stds=list(self.stds),
                      foreground_weight=self.foreground_weight)
        return config


def destandardized_spread(values: Any, model_config: config_lib.ModelConfig) -> Any:
    """Network output `[..., 2T]` (`model.regression_spread`) -> the predicted spread `[..., T]` in intensity units
    (numpy): `exp(log-spread) * std`, the log-spread clipped as in training."""
    import numpy as np

    from isl.model import losses

    stds = np.asarray(model_config.regression_target_std, np.float32)
    log_spread = np.clip(np.asarray(values, np.float32)[..., len(stds) : 2 * len(stds)], *losses.LOG_SPREAD_RANGE)
    return np.exp(log_spread) * stds


def destandardize(values: Any, model_config: config_lib.ModelConfig, clip: bool = True) -> Any:
    """Network output `[..., T]` (or `[..., 2T]`: the means are used) -> intensities in [0, 1] (numpy;
    unclipped with `clip=False`)."""
    import numpy as np

    means = np.asarray(model_config.regression_target_mean, np.float32)
    stds = np.asarray(model_config.regression_target_std, np.float32)
    values = np.asarray(values, np.float32)[..., : len(means)] * stds + means
    return np.clip(values, 0.0, 1.0) if clip else values
