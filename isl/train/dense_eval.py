"""The paper's metric during training: Pearson r of whole predicted images.

The evaluation loss of `fit` scores 8-px (or wider) patches; the paper and
users judge whole images. At every evaluation, `DensePearson` predicts each
image of the validation split (or, without one, the eval split) densely (the tiled, exact method of `isl predict`,
reflect borders, inference-mode batch norm) and computes, per target
channel, Pearson r between the truth and the predicted median and mean over
the labelled pixels of all eval images together. The values join Keras's
epoch logs as `val_pearson_median_<CHANNEL>`, `val_pearson_mean_<CHANNEL>`
and `val_pearson_median` (the mean over channels), so `TrainingLog` writes
them to TensorBoard (`logs/eval`) and `logs/training.csv`. With
`train.keep_best` the callback also keeps a copy of the weights with the
best `val_pearson_median`, which `train` puts in the model directory at the
end.

An eval image comes from the eval shards exactly as converted: for a region
split (`isl convert --eval_region`) that is the held-out band alone, so its
edges get reflected context rather than the training image's (`isl
evaluate` on a whole-well prediction gives slightly different figures).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from isl import config as config_lib
from isl import errors
from isl.data import crops
from isl.data import decoder
from isl.data import pipeline
from isl.infer import predict as predict_lib
from isl.infer import regression
from isl.io import atomic
from isl.io import model_dir as model_dir_lib
from isl.model import builder
from isl.model import geometry as geometry_lib
from isl.model import unet_regression
from isl.train import callbacks as callbacks_lib
from isl.train import recalibrate as recalibrate_lib

STATISTICS = ("median", "mean")
# Memory for one tile of the dense evaluation, while training holds its own.
TILE_MEMORY_BYTES = 1.5e9
# Pixels per band of rows when target statistics read the training wells.
BAND_PIXELS = 2**20
# The U-Net regression predicts an image whole up to this many pixels (the sample's 128 x 1024 validation band),
# else in tiles of REGRESSION_TILE output pixels a side, each with `regression.context_pixels` (128 for the
# recipe) of real image around it: memory grows with the pixels of one pass, about 2.3 KB per pixel for the
# recipe's U-Net (a 2048 x 256 band whole: 1.2 GB more than training alone; a 512² tile pass: about 0.6 GB).
REGRESSION_WHOLE_PIXELS = 384 * 384
REGRESSION_TILE = 256


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


@dataclasses.dataclass(frozen=True)
class SplitImage:
    """One well of a converted split (eval or train), decoded.

    Attributes:
        name: the well name.
        stack: `[num_source_z, height, width]` float32 in [0, 1].
        targets: channel -> (values `[height, width]` float32 in [0, 1],
            mask `[height, width]` bool), output target channels present in
            the well (synthetic ones computed from their sources).
        embedding: the hybrid's `[height, width, E]` float32 frozen-core
            embedding from the record, or None.
    """

    name: str
    stack: np.ndarray
    targets: dict[str, tuple[np.ndarray, np.ndarray]]
    embedding: np.ndarray | None = None


def load_split_images(
    data_dir: str, config: config_lib.ExperimentConfig, max_images: int = 16, split: str = "eval"
) -> list[SplitImage]:
    """A split's wells as numpy arrays (at most `max_images`).

    Raises:
        InputError: when the folder has no shards of that split.
    """
    files = pipeline.list_shards(data_dir, split)
    images = []
    for serialized in tf.data.TFRecordDataset(files).take(max_images):
        decoded = decoder.decode(serialized)
        stack = np.moveaxis(decoded["inputs"].numpy(), -1, 0).astype(np.float32) / float(decoded["input_max_value"])
        names = [name.decode() for name in decoded["target_channels"].numpy()]
        maxima = decoded["target_max_values"].numpy()
        values = decoded["targets"].numpy()
        real = {
            name: (values[..., index].astype(np.float32) / float(maxima[index]), np.ones(values.shape[:2], bool))
            for index, name in enumerate(names)
            if name in config.channels.target_channels
        }
        for synthetic in config.channels.active_synthetic_channels:
            if all(source in real for source in synthetic.sources):
                mean = sum(real[source][0] for source in synthetic.sources) / len(synthetic.sources)
                real[synthetic.name] = (mean, np.ones(values.shape[:2], bool))
        embedding = decoded["embedding"].numpy().astype(np.float32) if decoded["embedding"].shape[-1] else None
        images.append(SplitImage(decoded["name"].numpy().decode(), stack, real, embedding))
    return images


def target_statistics(
    data_dir: str, config: config_lib.ExperimentConfig, max_images: int = 64
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per output target channel, mean and standard deviation of the training targets.

    The first `max_images` training wells are read in bands of rows
    (`isl.data.crops.read_rows`, about `BAND_PIXELS` pixels each) and their
    moments pooled (`Moments`), so memory is one band whatever the image
    size; the figures equal `pooled_statistics` of the whole images to
    float64 rounding. Channels absent from the training split get mean 0 and
    std 1.

    Raises:
        InputError: when the folder has no training shards.
    """
    names = config.channels.output_target_channels
    moments = {name: Moments() for name in names}
    infos = [info for path in pipeline.list_shards(data_dir, "train") for info in crops.index_shard(path)]
    for info in infos[:max_images]:
        rows = max(1, int(BAND_PIXELS // max(info.width, 1)))
        for row0 in range(0, info.height, rows):
            band = crops.read_rows(info, "targets", row0, min(info.height, row0 + rows))
            real = {
                name: band[..., index].astype(np.float32) / float(info.target_max_values[index])
                for index, name in enumerate(info.target_channels)
                if name in config.channels.target_channels
            }
            for synthetic in config.channels.active_synthetic_channels:
                if all(source in real for source in synthetic.sources):
                    real[synthetic.name] = sum(real[source] for source in synthetic.sources) / len(synthetic.sources)
            for name in names:
                if name in real:
                    moments[name].add(real[name].ravel())
    means = tuple(moments[name].mean_x if moments[name].count else 0.0 for name in names)
    stds = tuple(float(max(moments[name].std_x, 1e-6)) if moments[name].count else 1.0 for name in names)
    return means, stds


class Moments:
    """Running count, means and centred (co-)moments of values x (and y), merged batch by batch in float64.

    Batches combine by Chan et al.'s pairwise update, so the results equal
    the two-pass figures over all values concatenated to float64 rounding,
    with memory of one batch.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean_x = self.mean_y = 0.0
        self.xx = self.yy = self.xy = 0.0

    def add(self, x: np.ndarray, y: np.ndarray | None = None) -> None:
        """Adds 1-D values `x` (and paired `y`, same length)."""
        n = int(x.size)
        if n == 0:
            return
        x = x.astype(np.float64)
        y = x if y is None else y.astype(np.float64)
        mean_x, mean_y = float(x.mean()), float(y.mean())
        dx, dy = x - mean_x, y - mean_y
        xx, yy, xy = float(np.dot(dx, dx)), float(np.dot(dy, dy)), float(np.dot(dx, dy))
        total = self.count + n
        delta_x, delta_y = mean_x - self.mean_x, mean_y - self.mean_y
        weight = self.count * n / total
        self.xx += xx + delta_x * delta_x * weight
        self.yy += yy + delta_y * delta_y * weight
        self.xy += xy + delta_x * delta_y * weight
        self.mean_x += delta_x * n / total
        self.mean_y += delta_y * n / total
        self.count = total

    @property
    def std_x(self) -> float:
        """Population standard deviation of x."""
        return math.sqrt(max(self.xx, 0.0) / self.count) if self.count else math.nan

    @property
    def pearson(self) -> float:
        """Pearson r of x and y; NaN for fewer than 2 values or a constant side (as `metrics.pearson`)."""
        denominator = math.sqrt(self.xx * self.yy)
        if self.count < 2 or denominator == 0:
            return math.nan
        return self.xy / denominator


def pooled_statistics(labelled_values: list[list[np.ndarray]]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per channel, mean and standard deviation (at least 1e-6) of its labelled values pooled over images.

    Args:
        labelled_values: per channel, the labelled pixel values of each image (any shapes); a channel with
            no images gets mean 0 and std 1.
    """
    means, stds = [], []
    for values in labelled_values:
        if not values:
            means.append(0.0)
            stds.append(1.0)
            continue
        pooled = np.concatenate([value.ravel() for value in values]).astype(np.float64)
        means.append(float(pooled.mean()))
        stds.append(float(max(pooled.std(), 1e-6)))
    return tuple(means), tuple(stds)


def pearson_of_predictions(
    images: list[SplitImage], predictions: list[dict[str, np.ndarray]], channels: tuple[str, ...]
) -> dict[str, float]:
    """Pearson r per statistic and channel over all images' labelled pixels.

    Args:
        images: the eval images.
        predictions: per image, statistic -> `[height, width, len(channels)]`.
        channels: the predicted channels, in the predictions' last-axis order.

    Returns:
        `pearson_<statistic>_<CHANNEL>` for every channel with labels, and
        `pearson_<statistic>` (their mean; NaN channels, e.g. a constant
        prediction, are left out of the mean and reported as NaN).
    """
    moments: dict[tuple[str, str], Moments] = {}
    for image, prediction in zip(images, predictions):
        add_image_moments(moments, image, prediction, channels)
    return pearson_figures(moments, channels)


def add_image_moments(
    moments: dict[tuple[str, str], Moments],
    image: SplitImage,
    prediction: dict[str, np.ndarray],
    channels: tuple[str, ...],
) -> None:
    """Adds one image's labelled (prediction, truth) pairs to `moments[(statistic, channel)]`."""
    for statistic in STATISTICS:
        for index, channel in enumerate(channels):
            if channel not in image.targets:
                continue
            values, mask = image.targets[channel]
            moments.setdefault((statistic, channel), Moments()).add(prediction[statistic][..., index][mask],
                                                                    values[mask])


def pearson_figures(moments: dict[tuple[str, str], Moments], channels: tuple[str, ...]) -> dict[str, float]:
    """`pearson_of_predictions`'s figures from the pooled moments."""
    results: dict[str, float] = {}
    for statistic in STATISTICS:
        per_channel = []
        for channel in channels:
            if (statistic, channel) not in moments:
                continue
            value = moments[(statistic, channel)].pearson
            results[f"pearson_{statistic}_{channel}"] = value
            per_channel.append(value)
        finite = [value for value in per_channel if math.isfinite(value)]
        if per_channel:
            results[f"pearson_{statistic}"] = float(np.mean(finite)) if finite else float("nan")
    return results


class DensePearson(keras.callbacks.Callback):
    """Whole-image Pearson r of one split's images after every epoch (evaluation).

    Args:
        config: the experiment config (geometry, vocabulary, precision).
        images: from `load_split_images`.
        keep_best: keep a copy of the weights with the best mean median r
            (`train` passes it only for the validation split).
        log: receives one line per evaluation.
        best_dir: with `keep_best`, where the best weights are written
            (`best.weights.h5`, `best.json`), so a resumed run keeps them;
            None holds them in memory only.
        recalibration_batches: a function returning an iterator of training
            batches; with `config.train.eval_recalibrate_batches` > 0 the
            scored copy's batch-norm statistics are recalibrated on that many
            of them first (the training model is not touched).
        split: the split `images` come from ("val" or "eval"), named in the log.
    """

    def __init__(
        self,
        config: config_lib.ExperimentConfig,
        images: list[SplitImage],
        keep_best: bool = False,
        log: Callable[[str], None] | None = None,
        best_dir: str | None = None,
        recalibration_batches: Callable[[], Any] | None = None,
        split: str = "eval",
    ) -> None:
        super().__init__()
        self.split = split
        self.recalibration_batches = recalibration_batches
        self._recalibration_iterator = None
        if not images:
            raise errors.InputError("Dense evaluation needs at least one eval image.")
        self.config = config
        self.images = images
        self.keep_best = keep_best
        self.log = log or (lambda message: None)
        present = set().union(*(image.targets for image in images))
        self.channels = tuple(name for name in config.channels.output_target_channels if name in present)
        first_target = config.channels.num_input_heads
        self.head_indices = tuple(
            first_target + config.channels.output_target_channels.index(name) for name in self.channels
        )
        self.geometry = geometry_lib.geometry(config.model)
        self._inference_model: keras.Model | None = None
        self._run_function = None
        self.best_value = -math.inf
        self.best_step: int | None = None
        self.best_weights: list[np.ndarray] | None = None
        self.history: list[dict[str, float]] = []
        self.best_dir = best_dir
        if keep_best and best_dir:
            info = _read_json(os.path.join(best_dir, model_dir_lib.BEST_INFO_FILE))
            if info and os.path.isfile(os.path.join(best_dir, model_dir_lib.BEST_WEIGHTS_FILE)):
                self.best_value, self.best_step = float(info["pearson_median"]), int(info["step"])

    def _store_best(self, step: int, value: float, figures: dict[str, float]) -> None:
        self.best_value, self.best_step = value, step
        if not self.best_dir:
            self.best_weights = [np.array(weight) for weight in self.model.get_weights()]
            return

        os.makedirs(self.best_dir, exist_ok=True)
        path = os.path.join(self.best_dir, model_dir_lib.BEST_WEIGHTS_FILE)
        temporary = path + ".partial.weights.h5"
        self.model.save_weights(temporary)
        os.replace(temporary, path)
        atomic.write_text(
            os.path.join(self.best_dir, model_dir_lib.BEST_INFO_FILE),
            json.dumps({"step": step, "pearson_median": value, **figures}, indent=2) + "\n",
        )

    def restore_best(self, model: keras.Model) -> int | None:
        """Loads the best weights into `model`; returns their step (None if there are none)."""
        if self.best_step is None:
            return None
        if self.best_dir:
            model.load_weights(os.path.join(self.best_dir, model_dir_lib.BEST_WEIGHTS_FILE))
        elif self.best_weights is not None:
            model.set_weights(self.best_weights)
        return self.best_step

    def _network(self) -> Any:
        """A variable-size inference model holding the training model's current weights."""
        if self._inference_model is None:
            self._inference_model = builder.build_model(self.config, input_size=None)
            if self.config.model.architecture != "unet_regression":
                network = predict_lib.Network.from_keras(self._inference_model, self.head_indices)
                self._run_function = predict_lib.make_run_function(network, STATISTICS)
        self._inference_model.set_weights(self.model.get_weights())
        count = self.config.train.eval_recalibrate_batches
        if count > 0 and self.recalibration_batches is not None:
            if self._recalibration_iterator is None:
                self._recalibration_iterator = iter(self.recalibration_batches())
            recalibrate_lib.recalibrate_batch_norm(self._inference_model, self._recalibration_iterator, count)
        return self._run_function

    def evaluate(self) -> dict[str, float]:
        """Predicts every eval image and returns the Pearson figures."""
        if not self.channels:
            return {}
        if self.config.model.architecture == "unet_regression":
            return self._evaluate_regression()
        run_function = self._network()
        tile_size = predict_lib.auto_tile_size(
            self.geometry, self.config.model, len(self.channels), memory_budget_bytes=TILE_MEMORY_BYTES
        )
        moments: dict[tuple[str, str], Moments] = {}
        for image in self.images:
            prediction = predict_lib.predict_image(
                None,
                image.stack,
                self.geometry,
                self.config.channels.num_z_values,
                channel_names=self.channels,
                statistics=STATISTICS,
                border_mode="reflect",
                tile_size=tile_size,
                run_function=run_function,
            )
            add_image_moments(moments, image, prediction.statistics, self.channels)
            del prediction
        return pearson_figures(moments, self.channels)

    def _evaluate_regression(self) -> dict[str, float]:
        self._network()
        moments: dict[tuple[str, str], Moments] = {}
        all_channels = self.config.channels.output_target_channels
        columns = [all_channels.index(name) for name in self.channels]
        for image in self.images:
            values = self._regression_prediction(image.stack, image.embedding)[..., columns]
            add_image_moments(moments, image, {"median": values, "mean": values}, self.channels)
            del values
        return pearson_figures(moments, self.channels)

    def _regression_prediction(self, stack: np.ndarray, embedding: np.ndarray | None = None) -> np.ndarray:
        """`[H, W, T]` U-Net prediction of a `[Z, H, W]` stack (and a hybrid's `[H, W, E]` embedding): whole when
        small, else in tiles with context.

        A tile sees `regression.context_pixels` of real image around it and
        reflection beyond (as `isl predict --region`), so a tiled image's
        pixels can differ slightly from one whole pass.
        """
        if unet_regression.input_embedding_size(self.config.model) and embedding is None:
            raise errors.InputError("The hybrid (model.hybrid_features) scores on records that carry the embedding "
                                    "(isl convert --embed_with); these do not.")
        return regression.predict_tiled(self._inference_model, stack, self.config,
                                         whole_pixels=REGRESSION_WHOLE_PIXELS, tile=REGRESSION_TILE,
                                         embedding=embedding)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        start = time.monotonic()
        figures = self.evaluate()
        step = callbacks_lib.global_step(self.model)
        if logs is not None:
            logs.update({f"val_{name}": value for name, value in figures.items()})
        self.history.append({"step": step, **figures})
        value = figures.get("pearson_median", float("nan"))
        marker = ""
        if self.keep_best and math.isfinite(value) and value > self.best_value:
            self._store_best(step, value, figures)
            marker = " (best so far)"
        channels = ", ".join(
            f"{name.split('_')[0]} {figures.get(f'pearson_median_{name}', float('nan')):.3f}"
            f"/{figures.get(f'pearson_mean_{name}', float('nan')):.3f}"
            for name in self.channels
        )
        self.log(
            f"Step {step}: whole-image Pearson r ({self.split} split) median/mean {channels}; "
            f"mean of medians {value:.3f}{marker} "
            f"({time.monotonic() - start:.0f} s)"
        )
