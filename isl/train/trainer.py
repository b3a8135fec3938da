"""Training with Keras `fit` under a tf.distribute strategy, resumable: the loop and its parts.

`train(...)` is the loop; each part has its own module:

* `isl.train.state`: the run's plan (arguments checked, config resolved from
  the data, checkpoint to resume found) and the model built, restored and
  compiled under `strategy.scope()`;
* `isl.train.schedule`: the faithful optimizer (Adam 1e-4, TF1 defaults
  beta1 0.9, beta2 0.999, epsilon 1e-8; no decay, no clipping,
  isl_reference.md §4) and the optional learning-rate schedule;
* `isl.train.step`: the loss per replica (`ReplicaScaledLoss` over `ISLLoss`)
  and the compiled training step;
* `isl.train.evaluation`: whole-image Pearson, the kept best weights,
  batch-norm recalibration and the panels' batch;
* `isl.train.checkpoints`: saving the training state and refusing what
  cannot resume (`isl.train.resilience`: damaged checkpoints and shards).

Resumability. The training state (model weights, batch-norm statistics,
optimizer slots and `optimizer.iterations`, the global step) is a
`tf.train.Checkpoint` under `MODEL_DIR/checkpoints/`, written every
`train.checkpoint_every_steps` steps and/or `train.checkpoint_every_minutes`
minutes, on SIGTERM and at the end; the last `train.keep_checkpoints` are
kept. Each save also refreshes `MODEL_DIR/model.weights.h5` (inference
weights). Started again with the same arguments, `train` restores the newest
checkpoint and continues to `total_steps`; a finished run does nothing.

Epochs. The paper has none. Here one Keras epoch is
`train.eval_every_steps` steps: after each, the evaluation loss (total and
per head) is computed on `train.eval_batches` batches of the eval split.

Determinism (what `train.seed` gives). The seed fixes the initial weights
(`keras.utils.set_random_seed`), the data pipeline's shuffling and
augmentation seeds, and thus the sequence of batches of an uninterrupted run
on one device with a deterministic pipeline (`build_dataset(deterministic=True)`). It does not make
floating-point reductions bit-exact (oneDNN and multi-threaded kernels
reorder sums), and a resumed run seeds its data pipeline with
`seed + resumed step`, so it does not replay the batches it already saw:
a resumed run is reproducible given the same interruption points, not
identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from isl import config as config_lib
from isl import errors
from isl.io import atomic
from isl.io import model_dir as model_dir_lib
from isl.model import geometry as geometry_lib
from isl.model import saving
from isl.progress import Progress
from isl.train import callbacks as callbacks_lib
from isl.train import checkpoints
from isl.train import dense_eval
from isl.train import evaluation
from isl.train import resilience
from isl.train import state as state_lib
from isl.train.checkpoints import CheckpointSaver
from isl.train.state import ModelState
from isl.train.state import Run

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    """What a call to `train` did.

    Attributes:
        model_dir: the model directory.
        final_step: the global step at the end.
        resumed_from_step: the step restored from a checkpoint (0 if fresh).
        already_finished: True when the run had already reached its steps.
        interrupted: True when SIGTERM stopped it (a checkpoint was saved).
        losses: final training losses: `loss` and `head_<z>_<channel>`.
        eval_losses: final evaluation losses, same keys (empty without eval).
        wall_seconds: time spent in this call.
        steps_per_second: training speed of this call.
        labelled_pixels_per_second, labelled_pixels_per_cpu_second: output
            pixels supervised per second of wall time and per CPU-second of
            this process (batch x output_size^2 per step).
        pearson: the last whole-image Pearson figures (`train.eval_pearson`).
        pearson_split: the split they were computed on: "val" when the
            dataset has a validation split (keep_best selects on it), else "eval".
        best_step: with `train.keep_best`, the step whose weights were kept.
        recalibration: the batch-norm recalibration report, when run.
        transfer: the transfer-learning report, when weights were restored.
        frozen_layers: layers made untrainable by `freeze_core`.
    """

    model_dir: str
    final_step: int
    resumed_from_step: int
    already_finished: bool = False
    interrupted: bool = False
    losses: dict[str, float] = dataclasses.field(default_factory=dict)
    eval_losses: dict[str, float] = dataclasses.field(default_factory=dict)
    wall_seconds: float = 0.0
    steps_per_second: float = 0.0
    transfer: dict[str, Any] | None = None
    frozen_layers: list[str] = dataclasses.field(default_factory=list)
    labelled_pixels_per_second: float = 0.0
    labelled_pixels_per_cpu_second: float = 0.0
    pearson: dict[str, float] = dataclasses.field(default_factory=dict)
    pearson_split: str = ""
    best_step: int | None = None
    recalibration: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def train(
    config: config_lib.ExperimentConfig,
    data_dir: str,
    model_dir: str,
    total_steps: int,
    strategy: tf.distribute.Strategy | None = None,
    restore_from: str | None = None,
    restore_heads: bool = True,
    freeze_core: bool = False,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
    extra_callbacks: list[keras.callbacks.Callback] | None = None,
    build_model_fn: Callable[..., keras.Model] | None = None,
    dataset_fn: Callable[..., tf.data.Dataset] | None = None,
) -> TrainResult:
    """Trains (or resumes training of) a model to `total_steps` global steps.

    The steps, in order: plan the run (check the arguments, resolve the
    config, find a checkpoint to resume), prepare the model directory, build
    the model (restored, compiled), then fit with the checkpointing
    callbacks, finish the inference weights and write the summary.

    Args:
        config: the fully resolved experiment config.
        data_dir: TFRecords written by `isl convert` (train and eval shards).
        model_dir: where config, weights, checkpoints and logs go.
        total_steps: the global step to reach (a resumed run continues to it).
        strategy: from `isl.train.strategy.make_strategy`; default: one device.
        restore_from: a model dir or `.weights.h5` to fine-tune from; used only
            when `model_dir` has no checkpoint yet (as Slim's `init_fn`).
        restore_heads: False leaves every head at its initialisation.
        freeze_core: make the core untrainable (projection and heads learn).
        show_progress: draw a progress bar on stderr (chief only).
        log: receives human-readable status lines (default: `logging`).
        extra_callbacks: more Keras callbacks (e.g. for tests).
        build_model_fn, dataset_fn: replace the model builder and the data
            pipeline (the Mirrored parity check starts both sides from the
            same weights and a fixed batch).

    Returns:
        A `TrainResult`.
    """
    run = state_lib.plan_run(
        config, data_dir, model_dir, total_steps, strategy, log or logger.info, build_model_fn, dataset_fn)
    state_lib.prepare_model_dir(run, restore_from if restore_heads and not run.resume_path else None)
    state = state_lib.build_model(run, restore_from, restore_heads, freeze_core)
    if state.resumed_from_step >= total_steps:
        return _already_finished(run, state)
    if state.resume_path:
        run.log(f"Resuming {run.model_dir} from step {state.resumed_from_step} ({state.resume_path}).")
    saver = CheckpointSaver(
        state.model, state.checkpoint, run.config, run.model_dir, run.strategy,
        (state.resumed_from_step, state.resume_path),
    )
    train_data, eval_data = _datasets(run, state.resumed_from_step)
    callbacks = _fit_callbacks(run, state, saver, eval_data is not None, show_progress, extra_callbacks)
    fit_seconds, fit_cpu_seconds = _fit(run, state, saver, callbacks, train_data, eval_data)
    final_step, best_step, recalibration = _finish(run, state, saver, callbacks)
    return _write_result(
        run, state, callbacks, final_step, fit_seconds, fit_cpu_seconds, best_step, recalibration
    )


def _already_finished(run: Run, state: ModelState) -> TrainResult:
    """The result of a run that had already reached `total_steps`: its last summary, nothing trained."""
    summary = checkpoints.read_summary(run.model_dir)
    run.log(
        f"{run.model_dir} already finished: step {state.resumed_from_step} >= --steps={run.total_steps}. "
        "Nothing to do (raise --steps to train further)."
    )
    return TrainResult(
        model_dir=run.model_dir,
        final_step=state.resumed_from_step,
        resumed_from_step=state.resumed_from_step,
        already_finished=True,
        losses=summary.get("losses", {}),
        eval_losses=summary.get("eval_losses", {}),
        wall_seconds=time.monotonic() - run.start_time,
    )


def _datasets(run: Run, resumed_from_step: int) -> tuple[Any, Any]:
    """(training data, evaluation data or None), split over the replicas.

    The training pipeline is seeded with `seed + resumed step`; without eval
    shards, training goes on without evaluation.
    """
    seed = run.config.train.seed
    train_data = _distributed_dataset(run, "train", seed + resumed_from_step, deterministic=False)
    eval_data = None
    try:
        eval_data = _distributed_dataset(run, "eval", seed, deterministic=True)
    except errors.InputError as error:
        run.log(f"No evaluation data ({error}); training without evaluation.")
    return train_data, eval_data


def _distributed_dataset(run: Run, split: str, seed: int, deterministic: bool) -> Any:
    """One split's pipeline; under several replicas or workers, the global batch split through InputContext."""
    strategy = run.strategy
    if strategy.num_replicas_in_sync == 1 and not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return run.dataset_fn(run.data_dir, run.config, split=split, seed=seed, deterministic=deterministic)
    return strategy.distribute_datasets_from_function(
        lambda context: run.dataset_fn(
            run.data_dir, run.config, split=split, input_context=context, seed=seed, deterministic=deterministic
        )
    )


@dataclasses.dataclass
class _Callbacks:
    """The callbacks of `fit`, in order (`all`), and those read after it.

    Attributes:
        in_order: every callback, in the order Keras calls them.
        termination: catches SIGTERM during `fit`.
        checkpointer: saves periodically, on SIGTERM and at the end.
        training_log: TensorBoard scalars and the last logs.
        dense_pearson: the whole-image Pearson callback (chief, with eval data), or None.
    """

    in_order: list[keras.callbacks.Callback]
    termination: callbacks_lib.TerminationSignal
    checkpointer: callbacks_lib.PeriodicCheckpoint
    training_log: callbacks_lib.TrainingLog
    dense_pearson: dense_eval.DensePearson | None


def _fit_callbacks(
    run: Run,
    state: ModelState,
    saver: CheckpointSaver,
    has_eval_data: bool,
    show_progress: bool,
    extra_callbacks: list[keras.callbacks.Callback] | None,
) -> _Callbacks:
    """NaN/Inf stop, step limit and checkpoints for every process; Pearson, logs, panels and progress for the chief."""
    train_config = run.config.train
    log_dir = model_dir_lib.ModelDir(run.model_dir).logs
    termination = callbacks_lib.TerminationSignal()
    checkpointer = callbacks_lib.PeriodicCheckpoint(
        saver.save,
        every_steps=train_config.checkpoint_every_steps,
        every_minutes=train_config.checkpoint_every_minutes,
        termination=termination,
    )
    training_log = callbacks_lib.TrainingLog(log_dir, every_steps=min(10, train_config.eval_every_steps))
    fit_callbacks: list[keras.callbacks.Callback] = [
        saver.non_finite, callbacks_lib.StopAtStep(run.total_steps), checkpointer
    ]
    dense_pearson = None
    if run.chief and has_eval_data and train_config.eval_pearson:
        dense_pearson = evaluation.dense_pearson_callback(
            run.data_dir, run.config, run.model_dir, run.log,
            lambda: run.dataset_fn(
                run.data_dir, run.config, split="train", seed=train_config.seed + 104729, deterministic=False
            ),
        )
        if dense_pearson is not None:
            fit_callbacks.append(dense_pearson)  # Before TrainingLog: it adds to the epoch logs.
    if run.chief:
        fit_callbacks += _chief_callbacks(run, state, training_log, log_dir, has_eval_data, show_progress)
    fit_callbacks += list(extra_callbacks or [])
    return _Callbacks(fit_callbacks, termination, checkpointer, training_log, dense_pearson)


def _chief_callbacks(
    run: Run,
    state: ModelState,
    training_log: callbacks_lib.TrainingLog,
    log_dir: str,
    has_eval_data: bool,
    show_progress: bool,
) -> list[keras.callbacks.Callback]:
    """The training log, the image panels (classification models with eval data) and the progress bar."""
    chief_callbacks: list[keras.callbacks.Callback] = [training_log]
    if has_eval_data and not run.regression:
        panel_batch = evaluation.panel_batch(run.dataset_fn, run.data_dir, run.config)
        if panel_batch is not None:
            chief_callbacks.append(
                callbacks_lib.ImagePanels(
                    log_dir, panel_batch, run.config.channels.head_names,
                    first_target_head=run.config.channels.num_input_heads,
                )
            )
    progress = Progress(run.total_steps - state.resumed_from_step, label="train", enabled=show_progress)
    chief_callbacks.append(callbacks_lib.ProgressCallback(progress, state.resumed_from_step, run.total_steps))
    return chief_callbacks


def _fit(
    run: Run, state: ModelState, saver: CheckpointSaver, callbacks: _Callbacks, train_data: Any, eval_data: Any
) -> tuple[float, float]:
    """Runs Keras `fit` from the resumed step to `total_steps`, one epoch per `train.eval_every_steps`.

    A SIGTERM ends it early (its checkpoint is saved already); a damaged
    shard is named with the last good checkpoint.

    Returns:
        (wall seconds, CPU seconds of this process) spent in `fit`.

    Raises:
        InputError: when the loss became NaN/Inf.
    """
    train_config = run.config.train
    steps_per_epoch = max(1, min(train_config.eval_every_steps, run.total_steps))
    remaining = run.total_steps - state.resumed_from_step
    epochs = math.ceil(remaining / steps_per_epoch)
    fit_start = time.monotonic()
    fit_cpu_start = time.process_time()
    with callbacks.termination, resilience.naming_damaged_shards(run.data_dir, saver.last_good):
        try:
            state.model.fit(
                train_data,
                epochs=epochs,
                steps_per_epoch=steps_per_epoch,
                validation_data=eval_data,
                validation_steps=train_config.eval_batches if eval_data is not None else None,
                callbacks=callbacks.in_order,
                shuffle=False,  # The pipeline shuffles; Keras cannot shuffle a tf.data.
                verbose=0,
            )
        except callbacks_lib.TrainingInterrupted:
            # Saved already; skip the epoch's evaluation, close bars and logs.
            for callback in callbacks.in_order:
                if isinstance(callback, (callbacks_lib.ProgressCallback, callbacks_lib.TrainingLog)):
                    callback.on_train_end()
    saver.refuse_non_finite()
    return time.monotonic() - fit_start, time.process_time() - fit_cpu_start


def _finish(
    run: Run, state: ModelState, saver: CheckpointSaver, callbacks: _Callbacks
) -> tuple[int, int | None, dict[str, float] | None]:
    """Saves the final checkpoint, then (unless interrupted) keeps the best weights and recalibrates.

    The checkpoint keeps the training state for a later resume; what follows
    changes only the inference weights of the model dir.

    Returns:
        (the final global step, the step whose weights were kept or None,
        the recalibration report or None).
    """
    final_step = callbacks_lib.global_step(state.model)
    callbacks.checkpointer.save_now(final_step)
    if not run.chief:
        shutil.rmtree(saver.directory, ignore_errors=True)
    if callbacks.checkpointer.interrupted:
        return final_step, None, None
    dense_pearson = callbacks.dense_pearson
    best_step, recalibration = evaluation.finish_inference_weights(
        state.model, run.config, run.model_dir, run.data_dir, run.dataset_fn, dense_pearson, run.log
    )
    if run.chief and (best_step is not None or recalibration is not None):
        saving.save_model_dir(state.model, run.config, run.model_dir)
        if dense_pearson is not None:
            evaluation.log_final_pearson(dense_pearson, final_step, run.log)
    return final_step, best_step, recalibration


def _write_result(
    run: Run,
    state: ModelState,
    callbacks: _Callbacks,
    final_step: int,
    fit_seconds: float,
    fit_cpu_seconds: float,
    best_step: int | None,
    recalibration: dict[str, float] | None,
) -> TrainResult:
    """The `TrainResult`; the chief writes it to `logs/summary.json`."""
    trained_steps = final_step - state.resumed_from_step
    output_size = geometry_lib.geometry(run.config.model).output_size
    labelled_pixels = trained_steps * run.config.train.batch_size * output_size**2
    losses, eval_losses = _split_logs(callbacks.training_log.last_logs) if run.chief else ({}, {})
    dense_pearson = callbacks.dense_pearson
    interrupted = callbacks.checkpointer.interrupted
    result = TrainResult(
        model_dir=run.model_dir,
        final_step=final_step,
        resumed_from_step=state.resumed_from_step,
        interrupted=interrupted,
        losses=losses,
        eval_losses=eval_losses,
        wall_seconds=time.monotonic() - run.start_time,
        steps_per_second=trained_steps / fit_seconds if fit_seconds > 0 else 0.0,
        transfer=state.transfer.to_dict() if state.transfer else None,
        frozen_layers=state.frozen,
        labelled_pixels_per_second=labelled_pixels / fit_seconds if fit_seconds > 0 else 0.0,
        labelled_pixels_per_cpu_second=labelled_pixels / fit_cpu_seconds if fit_cpu_seconds > 0 else 0.0,
        pearson=dict(dense_pearson.history[-1]) if dense_pearson is not None and dense_pearson.history else {},
        pearson_split=dense_pearson.split if dense_pearson is not None else "",
        best_step=best_step,
        recalibration=recalibration,
    )
    if run.chief:
        atomic.write_text(
            model_dir_lib.ModelDir(run.model_dir).summary,
            json.dumps(result.to_dict(), indent=2, default=float) + "\n",
        )
    if interrupted:
        run.log(f"Stopped by signal at step {final_step}; checkpoint saved. Run the same command to resume.")
    return result


def _split_logs(logs: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """Keras's epoch logs as (training losses, evaluation losses without the `val_` prefix)."""
    train = {name: value for name, value in logs.items() if not name.startswith("val_")}
    evaluation = {name[4:]: value for name, value in logs.items() if name.startswith("val_")}
    return train, evaluation
