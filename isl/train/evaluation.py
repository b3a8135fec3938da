"""The evaluation around the loop: whole-image Pearson, the kept weights, recalibration, the panels' batch.

During `fit`, Keras evaluates the loss on `train.eval_batches` batches of the
eval split after each epoch (`train.eval_every_steps` steps). Beyond that,
`dense_pearson_callback` scores whole images (`train.eval_pearson`) on the
validation split when the dataset has one (where `train.keep_best` selects)
or on the eval split for monitoring only; after `fit`,
`finish_inference_weights` keeps the best weights and recalibrates batch
norm (`train.recalibrate_batches`), and `log_final_pearson` scores the
weights actually written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from isl import config as config_lib
from isl import errors
from isl.data import pipeline
from isl.io import model_dir as model_dir_lib
from isl.train import dense_eval
from isl.train import recalibrate as recalibrate_lib


def dense_pearson_callback(
    data_dir: str,
    config: config_lib.ExperimentConfig,
    model_dir: str,
    log: Callable[[str], None],
    recalibration_batches: Callable[[], Any] | None = None,
) -> dense_eval.DensePearson | None:
    """The whole-image Pearson callback, or None when the selection split has no usable image.

    It scores the validation split when the dataset has one, and `train.keep_best`
    selects on it. Without one it scores the evaluation split for monitoring
    only: keep_best is then skipped with a warning (the last weights are kept),
    so no weights are ever chosen on the split that is reported.
    """
    split = pipeline.selection_split(data_dir)
    try:
        images = dense_eval.load_split_images(data_dir, config, split=split)
    except errors.InputError as error:
        log(f"No whole-image evaluation ({error}).")
        return None
    if not images:
        return None
    keep_best = config.train.keep_best and split == "val"
    if config.train.keep_best and not keep_best:
        log(f"warning: train.keep_best needs a validation split, and {data_dir} has none (isl convert "
            "--val_wells / --val_region); keeping the last weights rather than choosing on the evaluation split.")
    elif keep_best:
        log("train.keep_best selects on the validation split; the evaluation split is only reported.")
    best_dir = model_dir_lib.ModelDir(model_dir).checkpoints if keep_best else None
    return dense_eval.DensePearson(
        config, images, keep_best=keep_best, log=log, best_dir=best_dir,
        recalibration_batches=recalibration_batches, split=split,
    )


def finish_inference_weights(
    model: keras.Model,
    config: config_lib.ExperimentConfig,
    model_dir: str,
    data_dir: str,
    dataset_fn: Callable[..., tf.data.Dataset],
    dense_pearson: dense_eval.DensePearson | None,
    log: Callable[[str], None],
) -> tuple[int | None, dict[str, float] | None]:
    """`train.keep_best` then `train.recalibrate_batches`, on the model's weights in place.

    Returns:
        (the step whose weights were kept or None, the recalibration report or None).
    """
    best_step = None
    if dense_pearson is not None and dense_pearson.keep_best:
        best_step = dense_pearson.restore_best(model)
        if best_step is not None:
            log(f"Kept the weights of step {best_step} (best whole-image Pearson r, median, on the "
                f"{dense_pearson.split} split: {dense_pearson.best_value:.3f}).")
    recalibration = None
    batches = config.train.recalibrate_batches
    if batches > 0:
        dataset = dataset_fn(data_dir, config, split="train", seed=config.train.seed + 7919, deterministic=False)
        recalibration = recalibrate_lib.recalibrate_batch_norm(model, dataset, batches)
        log(f"Recalibrated {recalibration['layers']} batch-norm layers on {recalibration['batches']} training "
            f"batches (mean |shift| of the moving means {recalibration['mean_shift']:.4f}).")
    return best_step, recalibration


def log_final_pearson(dense_pearson: dense_eval.DensePearson, final_step: int, log: Callable[[str], None]) -> None:
    """Evaluates the written weights' whole-image Pearson r, records it in the history and logs it."""
    final_figures = dense_pearson.evaluate()
    dense_pearson.history.append({"step": final_step, "final_weights": 1.0, **final_figures})
    log(f"Whole-image Pearson r of the written weights on the {dense_pearson.split} split (median / mean): "
        + ", ".join(
        f"{name} {final_figures.get(f'pearson_median_{name}', float('nan')):.3f} / "
        f"{final_figures.get(f'pearson_mean_{name}', float('nan')):.3f}" for name in dense_pearson.channels))


def panel_batch(
    dataset_fn: Callable[..., tf.data.Dataset], data_dir: str, config: config_lib.ExperimentConfig
) -> tuple[np.ndarray, np.ndarray] | None:
    """One fixed evaluation batch (at most 16 patches) for the image panels."""
    try:
        dataset = dataset_fn(
            data_dir, config, split="eval", seed=config.train.seed, deterministic=True,
            batch_size=min(16, config.train.batch_size),
        )
        inputs, labels = next(iter(dataset))
    except (errors.InputError, StopIteration, tf.errors.OutOfRangeError):
        return None
    return np.asarray(inputs), np.asarray(labels)
