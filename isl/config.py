"""Typed experiment configuration: channels, data, model and training.

Every size, depth and vocabulary the project uses comes from an
`ExperimentConfig`. Configurations layer in a fixed order (see
`isl.presets.resolve_config`): a named preset from `isl.presets`, then an optional
training recipe (`isl.presets.RECIPES`), then a JSON file, then
`key=value` overrides with dotted keys such as `model.base_depth=200`.

Defaults equal the released In Silico Labeling system (Christiansen et al.,
Cell 2018; `isl_reference.md` §1.11, §3.2, §4). Options beyond the paper are
off by default and documented in BUILD_NOTES.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from typing import Any

from isl import errors

# The paper's channel vocabulary (isl_reference.md §3.2), in head order.
PAPER_INPUT_MODALITIES = ("BRIGHTFIELD", "PHASE_CONTRAST", "DIC")
PAPER_INPUT_CHANNEL = "TRANSMISSION"
# Transmitted-light modalities recognised by name in any model's data, whether
# or not its vocabulary takes them: a well of another modality is then named
# in the error, and mapped only on request (`data.channel_map`).
TRANSMITTED_LIGHT_MODALITIES = PAPER_INPUT_MODALITIES
PAPER_TARGET_CHANNELS = (
    "DAPI_CONFOCAL",
    "DAPI_WIDEFIELD",
    "CELLMASK_CONFOCAL",
    "TUJ1_WIDEFIELD",
    "NFH_CONFOCAL",
    "MAP2_CONFOCAL",
    "ISLET_WIDEFIELD",
    "DEAD_CONFOCAL",
)
TARGET_Z = "MAXPROJECT"
LR_SCHEDULES = ("constant", "cosine")
ARCHITECTURES = ("concordance", "fovea", "unet", "unet_regression")


@dataclasses.dataclass(frozen=True)
class SyntheticChannel:
    """A target channel computed from other target channels.

    Its value is the mean of the source values and its mask the geometric
    mean of the source masks, sqrt(prod(masks)) for two sources, which acts as
    a logical AND (isl_reference.md §2, NEURITE_CONFOCAL).
    """

    name: str
    sources: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ChannelConfig:
    """The channel vocabulary: configuration, not code.

    Attributes:
        input_modalities: transmitted-light modalities accepted as inputs.
            All of them are summed into one input channel (the paper assumes
            exactly one is present per well).
        input_channel: the name of that summed channel.
        target_channels: real fluorescence channels, in head order.
        synthetic_channels: channels computed from real ones, appended after
            `target_channels` when all their sources are in the vocabulary.
        num_z_values: the number of z values fed to the network; they are
            `round(linspace(0, 1, num_z_values), 4)`.
    """

    input_modalities: tuple[str, ...] = PAPER_INPUT_MODALITIES
    input_channel: str = PAPER_INPUT_CHANNEL
    target_channels: tuple[str, ...] = PAPER_TARGET_CHANNELS
    synthetic_channels: tuple[SyntheticChannel, ...] = (
        SyntheticChannel("NEURITE_CONFOCAL", ("NFH_CONFOCAL", "MAP2_CONFOCAL")),
    )
    num_z_values: int = 26

    @property
    def z_values(self) -> tuple[float, ...]:
        """The network's z values, `round(linspace(0, 1, n), 4)`."""
        count = self.num_z_values
        if count == 1:
            return (0.0,)
        return tuple(round(index / (count - 1), 4) for index in range(count))

    @property
    def active_synthetic_channels(self) -> tuple[SyntheticChannel, ...]:
        """Synthetic channels whose sources are all real target channels."""
        return tuple(
            synthetic
            for synthetic in self.synthetic_channels
            if all(source in self.target_channels for source in synthetic.sources)
        )

    @property
    def output_target_channels(self) -> tuple[str, ...]:
        """Target head channels: real ones, then the active synthetic ones."""
        return self.target_channels + tuple(
            synthetic.name for synthetic in self.active_synthetic_channels
        )

    def is_transmitted_light(self, name: str) -> bool:
        """True for one of this vocabulary's input modalities or a known transmitted-light modality."""
        return name in self.input_modalities or name in TRANSMITTED_LIGHT_MODALITIES

    @property
    def num_input_heads(self) -> int:
        return self.num_z_values

    @property
    def num_target_heads(self) -> int:
        return len(self.output_target_channels)

    @property
    def num_heads(self) -> int:
        return self.num_input_heads + self.num_target_heads

    @property
    def head_names(self) -> tuple[str, ...]:
        """Stable head names, `<z>/<channel>`, as the TF1 checkpoint's scopes.

        Input heads come first (one per z value, e.g. `0.04/TRANSMISSION`),
        then target heads (e.g. `MAXPROJECT/DAPI_CONFOCAL`).
        """
        input_heads = tuple(f"{z:g}/{self.input_channel}" for z in self.z_values)
        target_heads = tuple(f"{TARGET_Z}/{c}" for c in self.output_target_channels)
        return input_heads + target_heads

    @property
    def num_input_features(self) -> int:
        """Depth of the network input: value and mask per z, interleaved."""
        return 2 * self.num_z_values

    def validate(self) -> None:
        if self.num_z_values < 1:
            raise ValueError(f"num_z_values must be >= 1. Received: {self.num_z_values}")
        names = list(self.input_modalities) + list(self.target_channels)
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"Channels listed twice in the vocabulary: {duplicated}")
        for synthetic in self.synthetic_channels:
            if synthetic.name in names:
                raise ValueError(
                    f"Synthetic channel {synthetic.name} is also a real channel."
                )
            if not synthetic.sources:
                raise ValueError(f"Synthetic channel {synthetic.name} has no sources.")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Macro- and micro-architecture hyperparameters (isl_reference.md §1).

    The builder derives every crop size, module count and depth from these
    values; nothing is tabulated.

    Attributes:
        architecture: "concordance" (the released model), "fovea" (§1.8),
            "unet" (a small U-Net core under the paper's heads and loss, not
            in the paper; `isl.model.unet`: it takes the concordance fields'
            patch geometry and ignores the other concordance fields), or
            "unet_regression" (the fnet/CARE-style peer baseline: a U-Net
            regression trained with MSE on standardized targets, no
            256-bin heads; `isl.model.unet_regression`).
        num_scales: number of towers; tower s works at 1/2**s resolution.
        projection_depth: features of the initial 1x1 projection with bias;
            0 feeds the raw value/mask stack to the towers (paper-style input,
            an option beyond the released code, §8.2 #1).
        base_depth: depth multiplier of the depth schedule (§1.5).
        expansion_factor: expansion/reduction ratio, 211/39 in the paper.
        up_depth_offset: the transposed-convolution modules use
            base_depth - up_depth_offset (the released code's quirk: 4).
        lower_modules_scale_0: in-scale modules in the lower part of tower 0.
        lower_modules_step: tower s has lower_modules_scale_0 - step * s.
        upper_tower_modules: in-scale modules after the tower merge.
        in_scale_kernel: kernel of the in-scale expansion (3).
        down_kernel: kernel of the down-scale expansion (4, stride 2).
        up_kernel: kernel of the transposed-convolution expansion (4 with
            overlap in the concordance model, 2 in the fovea model).
        activation: the dual pre-activation, "relu_tanh" in the paper.
        output_size: side of the training output patch; 8 in the paper,
            8 + 16k for the larger-output option.
        num_classes: intensity bins of each head's distribution.
        batch_norm_momentum: moving-average decay of batch norm.
        batch_norm_epsilon: batch norm epsilon.
        unet_levels, unet_filters, unet_context: the U-Net baseline's pooling
            levels, first-level filters (doubled per level) and the context in
            pixels it reads on each side of the output.
        regression_target_mean, regression_target_std: "unet_regression"
            only: per output target channel, the training targets' mean and
            standard deviation (filled in by `isl train`).
        regression_spread: "unet_regression" only: the U-Net also predicts a
            log-spread per target channel (outputs `[..., 2T]`: T standardized
            means, then T log-spreads) and trains on the Gaussian negative
            log-likelihood (`isl.model.losses.gaussian_nll`) instead of the MSE
            (recipe `unet_regression_spread`; not in the paper).
        hybrid_features: "unet_regression" only: a frozen model folder with
            256-bin heads (the paper's network) whose core embedding (E
            features per pixel, `isl.infer.embedder.Embedder`) feeds the U-Net
            as E extra input channels after the transmitted light (the hybrid;
            not in the paper). "" (default): off. The records must carry that
            embedding (`isl convert --embed_with`); `isl predict` computes it.
        hybrid_fingerprint, hybrid_embedding_size, hybrid_embedding_mean,
            hybrid_embedding_std: the hybrid's frozen folder's fingerprint
            (`isl.io.calibration_file.fingerprint`), E, and the training
            embedding's per-feature mean and std the network standardises it
            with (filled in by `isl train` from the records' dataset.json).
    """

    architecture: str = "concordance"
    num_scales: int = 5
    projection_depth: int = 16
    base_depth: int = 400
    expansion_factor: float = 211 / 39
    up_depth_offset: int = 4
    lower_modules_scale_0: int = 18
    lower_modules_step: int = 4
    upper_tower_modules: int = 14
    in_scale_kernel: int = 3
    down_kernel: int = 4
    up_kernel: int = 4
    activation: str = "relu_tanh"
    output_size: int = 8
    num_classes: int = 256
    batch_norm_momentum: float = 0.999
    batch_norm_epsilon: float = 1e-3
    unet_levels: int = 4
    unet_filters: int = 32
    unet_context: int = 60
    regression_target_mean: tuple[float, ...] = ()
    regression_target_std: tuple[float, ...] = ()
    regression_spread: bool = False
    hybrid_features: str = ""
    hybrid_fingerprint: str = ""
    hybrid_embedding_size: int = 0
    hybrid_embedding_mean: tuple[float, ...] = ()
    hybrid_embedding_std: tuple[float, ...] = ()

    def validate(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"model.architecture must be one of {', '.join(ARCHITECTURES)}. "
                f"Received: {self.architecture!r}"
            )
        if len(self.regression_target_mean) != len(self.regression_target_std):
            raise ValueError("model.regression_target_mean and regression_target_std must have equal lengths.")
        if any(value <= 0 for value in self.regression_target_std):
            raise ValueError("model.regression_target_std must be > 0.")
        if self.hybrid_features and self.architecture != "unet_regression":
            raise ValueError("model.hybrid_features needs model.architecture=unet_regression (the U-Net takes the "
                             "frozen network's embedding as extra input channels).")
        if self.hybrid_embedding_mean and len(self.hybrid_embedding_mean) != self.hybrid_embedding_size or \
                len(self.hybrid_embedding_std) != len(self.hybrid_embedding_mean) or \
                any(value <= 0 for value in self.hybrid_embedding_std):
            raise ValueError("model.hybrid_embedding_mean and hybrid_embedding_std need one value per embedding "
                             "feature (hybrid_embedding_size), the stds > 0.")
        for name in ("num_scales", "base_depth", "num_classes", "output_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1. Received: {getattr(self, name)}")
        if self.projection_depth < 0:
            raise ValueError(
                f"model.projection_depth must be >= 0. Received: {self.projection_depth}"
            )


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Training and evaluation data pipeline (isl_reference.md §3.5, §3.6).

    Attributes:
        crop_size: side of the random crop taken per example (520).
        patch_stride: stride of the patches extracted from the crop (256);
            a 520 crop gives 2x2 patches of the network input size.
        pad_border: zero-pad every image (mask 0) by the network border
            (121 px) before cropping, as the paper's TFRecord path did, so
            border pixels can be trained. False copies the PNG path.
        flip: per-example random left-right flip.
        rotate: one random k*90 degree rotation per batch.
        corrupt_offset_std, corrupt_multiplier_std, corrupt_noise_std:
            sigma of the optional input corruption; 0 switches a part off.
        shuffle_buffer: examples held by the shuffle buffer.
        rotate_per_example: draw the k * 90 degree rotation for every patch
            instead of once per batch, so together with the per-example flip
            each patch gets one of the 8 dihedral transforms (an option beyond
            the paper; the `cpu` recipe).
        normalization: the transmitted-light normalisation the data was
            converted with (`isl.data.normalization`: none, paper,
            percentile); `isl train` copies it from dataset.json and
            `isl predict` applies it to its inputs.
        channel_map: `FROM=TO` pairs applied to the channel names of image
            files before they are matched with the vocabulary, e.g.
            `BRIGHTFIELD=PHASE_CONTRAST` (a model trained on phase contrast
            reads a bright-field stack as phase contrast, only on request) or
            `HOECHST=DAPI_CONFOCAL` (`isl.data.channel_map`). Recorded like
            `normalization`: convert writes it to dataset.json, train copies
            it, and every command reading wells with the model applies it.
    """

    crop_size: int = 520
    patch_stride: int = 256
    pad_border: bool = True
    flip: bool = True
    rotate: bool = True
    corrupt_offset_std: float = 0.0
    corrupt_multiplier_std: float = 0.0
    corrupt_noise_std: float = 0.0
    shuffle_buffer: int = 64
    rotate_per_example: bool = False
    normalization: str = "none"
    channel_map: tuple[str, ...] = ()

    def validate(self) -> None:
        for pair in self.channel_map:
            source, _, target = pair.partition("=")
            if not source.strip() or not target.strip():
                raise ValueError(f"data.channel_map entries must be FROM=TO. Received: {pair!r}")
        if self.crop_size < 1 or self.patch_stride < 1:
            raise ValueError("data.crop_size and data.patch_stride must be >= 1.")
        if self.normalization not in ("none", "paper", "percentile"):
            raise ValueError(
                f"data.normalization must be none, paper or percentile. Received: {self.normalization!r}"
            )
        for name in ("corrupt_offset_std", "corrupt_multiplier_std", "corrupt_noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"data.{name} must be >= 0.")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (isl_reference.md §4).

    Attributes:
        optimizer: "adam" (the paper), "momentum" or "adagrad".
        learning_rate: 1e-4 in the paper.
        batch_size: the global batch, 16 patches in the paper.
        mixed_precision: "" (float32, the paper) or "bfloat16".
        checkpoint_every_steps: periodic checkpoint interval in steps.
        checkpoint_every_minutes: periodic checkpoint interval in minutes.
        keep_checkpoints: how many recent checkpoints to keep.
        eval_every_steps: evaluation-loss interval in steps.
        eval_batches: batches per evaluation (1024 examples / 16 in the paper).
        seed: random seed.
        sync_batch_norm: with several replicas, batch norm uses the
            statistics of the global batch (as on one device); False keeps
            per-replica statistics.
        fused_elementwise: run the dual activation, the units' concats and
            the residual pad-and-add (forward and gradient) as small
            XLA-fused functions (TensorFlow backend): same functions, fewer
            passes over memory on CPU (BUILD_NOTES.md, Model).
        jit_compile: XLA-compile the whole training step (Keras
            `compile(jit_compile=...)`).
        fast_batch_norm: batch norm layers whose depth has no vectorised
            oneDNN kernel (not a multiple of 16 in bfloat16, 8 in float32)
            run TF's Eigen kernel of the same op (same algorithm).
        lr_schedule: "constant" (the paper) or "cosine": linear warmup over
            `warmup_steps`, then cosine decay to
            `final_learning_rate_fraction * learning_rate` at
            `schedule_steps`.
        warmup_steps: linear warmup steps of the "cosine" schedule.
        schedule_steps: the step where the cosine schedule ends; 0 uses the
            run's `--steps` (resolved and recorded in config.json).
        final_learning_rate_fraction: the cosine schedule's last rate, as a
            fraction of `learning_rate`.
        eval_pearson: at every evaluation, also predict the eval split's whole
            images densely (as `isl predict` does) and log Pearson r of the
            median and of the mean per target channel.
        keep_best: the model directory's inference weights at the end are
            those of the evaluation with the best mean Pearson r (median,
            target channels); needs `eval_pearson` and eval data.
        recalibrate_batches: after training, replace the batch-norm moving
            statistics by their average over this many training batches
            (what `isl recalibrate` does); 0 keeps the moving averages.
        eval_recalibrate_batches: the whole-image evaluation scores a copy
            of the weights whose batch-norm statistics are recalibrated on
            this many training batches first, so `keep_best` compares what
            the end of training would write even while the moving averages
            still lag fast-changing weights; 0 scores the moving averages.
        regression_foreground_weight: "unet_regression" only: each labelled
            target pixel's squared error (or NLL) is weighted by
            `1 + weight * max(z, 0)`, z its standardized target, and the loss
            is the weighted mean: pixels brighter than the channel's mean
            (the sparse foreground: nuclei, axons) count more. 0 (the
            default) is the plain masked MSE. Not in the paper.
    """

    optimizer: str = "adam"
    learning_rate: float = 1e-4
    batch_size: int = 16
    mixed_precision: str = ""
    checkpoint_every_steps: int = 1000
    checkpoint_every_minutes: float = 3.0
    keep_checkpoints: int = 5
    eval_every_steps: int = 1000
    eval_batches: int = 64
    seed: int = 0
    sync_batch_norm: bool = True
    fused_elementwise: bool = False
    jit_compile: bool = False
    fast_batch_norm: bool = False
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    schedule_steps: int = 0
    final_learning_rate_fraction: float = 0.0
    eval_pearson: bool = True
    keep_best: bool = False
    recalibrate_batches: int = 0
    eval_recalibrate_batches: int = 0
    regression_foreground_weight: float = 0.0

    def validate(self) -> None:
        if not (self.regression_foreground_weight >= 0 and math.isfinite(self.regression_foreground_weight)):
            raise ValueError(
                f"train.regression_foreground_weight must be >= 0. Received: {self.regression_foreground_weight}"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"train.lr_schedule must be one of {', '.join(LR_SCHEDULES)}. Received: {self.lr_schedule!r}"
            )
        for name in ("warmup_steps", "schedule_steps", "recalibrate_batches", "eval_recalibrate_batches"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0. Received: {getattr(self, name)}")
        if not 0.0 <= self.final_learning_rate_fraction <= 1.0:
            raise ValueError(
                "train.final_learning_rate_fraction must be in [0, 1]. "
                f"Received: {self.final_learning_rate_fraction}"
            )
        if self.keep_best and not self.eval_pearson:
            raise ValueError("train.keep_best needs train.eval_pearson=true (it keeps the best eval Pearson r).")
        if self.optimizer not in ("adam", "momentum", "adagrad"):
            raise ValueError(
                f"train.optimizer must be adam, momentum or adagrad. Received: {self.optimizer!r}"
            )
        if self.mixed_precision not in ("", "bfloat16", "mixed_bfloat16", "float16", "mixed_float16"):
            raise ValueError(
                f"train.mixed_precision must be '' or 'bfloat16'. Received: {self.mixed_precision!r}"
            )
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1. Received: {self.batch_size}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"train.learning_rate must be > 0. Received: {self.learning_rate}")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything needed to rebuild a model and its training run."""

    name: str = "paper"
    recipe: str = ""
    channels: ChannelConfig = dataclasses.field(default_factory=ChannelConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def validate(self) -> ExperimentConfig:
        """Raises ValueError on an inconsistent config; returns self."""
        self.channels.validate()
        self.model.validate()
        self.data.validate()
        self.train.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


# --------------------------------------------------------------------------
# Conversion between dicts and dataclasses
# --------------------------------------------------------------------------


def _from_value(field_type: Any, value: Any, path: str) -> Any:
    """Converts a JSON value into the annotated field type."""
    origin = typing.get_origin(field_type)
    if dataclasses.is_dataclass(field_type):
        if not isinstance(value, dict):
            raise ValueError(f"{path} must be an object. Received: {value!r}")
        return _dataclass_from_dict(field_type, value, path)
    if origin is tuple:
        (element_type, *_) = typing.get_args(field_type)
        if isinstance(value, str):
            value = [item for item in value.split(",") if item]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path} must be a list. Received: {value!r}")
        return tuple(
            _from_value(element_type, item, f"{path}[{index}]")
            for index, item in enumerate(value)
        )
    if field_type is bool:
        if isinstance(value, str):
            lowered = value.lower()
            if lowered in ("true", "1", "yes"):
                return True
            if lowered in ("false", "0", "no"):
                return False
            raise ValueError(f"{path} must be true or false. Received: {value!r}")
        return bool(value)
    if field_type is int:
        try:
            converted = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{path} must be an integer. Received: {value!r}") from None
        if converted != int(converted):
            raise ValueError(f"{path} must be an integer. Received: {value!r}")
        return int(converted)
    if field_type is float:
        if isinstance(value, str) and "/" in value:
            numerator, denominator = value.split("/", 1)
            return float(numerator) / float(denominator)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{path} must be a number. Received: {value!r}") from None
    if field_type is str:
        return str(value)
    return value


def _dataclass_from_dict(cls: type, values: dict[str, Any], path: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"Unknown config key(s) {', '.join(path + '.' + k if path else k for k in unknown)}. "
            f"Known keys: {', '.join(sorted(known))}"
        )
    kwargs = {
        name: _from_value(hints[name], value, f"{path}.{name}" if path else name)
        for name, value in values.items()
    }
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any], base: ExperimentConfig | None = None) -> ExperimentConfig:
    """Builds a config from a (possibly partial) nested dict over `base`."""
    merged = _deep_merge((base or ExperimentConfig()).to_dict(), values)
    return _dataclass_from_dict(ExperimentConfig, merged, "").validate()


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _deep_merge(result[key], value)
        else:
            result[key] = value
    return result


def apply_overrides(config: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """Applies `section.key=value` overrides (e.g. `model.base_depth=200`).

    A value that parses as JSON (numbers, lists, objects, true/false) is used
    as such; anything else is taken as a string.
    """
    update: dict[str, Any] = {}
    for override in overrides:
        if "=" not in override:
            raise errors.InputError(
                f"Override {override!r} is not of the form section.key=value."
            )
        key, raw_value = override.split("=", 1)
        try:
            value = json.loads(raw_value)
        except json.JSONDecodeError:
            value = raw_value
        node = update
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    try:
        return config_from_dict(update, base=config)
    except ValueError as error:
        raise errors.InputError(f"Bad --set override: {error}") from None


def load_config(path: str | os.PathLike[str], base: ExperimentConfig | None = None) -> ExperimentConfig:
    """Reads a JSON config file (full or partial) over `base`.

    A file written by `isl tune` (`{"config": {...}, ...}`) is accepted too.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
    except FileNotFoundError:
        raise errors.InputError(f"{path}: config file not found.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise errors.InputError(f"{path}: not valid JSON ({error}).") from None
    if isinstance(values, dict) and "config" in values and isinstance(values["config"], dict):
        values = values["config"]
    if not isinstance(values, dict):
        raise errors.InputError(f"{path}: a config must be a JSON object.")
    try:
        return config_from_dict(values, base=base)
    except ValueError as error:
        raise errors.InputError(f"{path}: {error}") from None


def save_config(config: ExperimentConfig, path: str | os.PathLike[str]) -> None:
    """Writes the fully resolved config as JSON, atomically."""
    from isl.io import atomic  # Local import: keeps this module dependency-free.

    atomic.write_text(path, config.to_json() + "\n")
