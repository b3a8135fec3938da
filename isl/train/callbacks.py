"""Keras callbacks and metrics for `isl train`.

* `PerHeadLosses`: every head's loss as one metric, so Keras reports (and
  aggregates over replicas) the loss of each head for training and
  evaluation batches.
* `StopAtStep`: ends `fit` when the global step reaches the total.
* `PeriodicCheckpoint`: saves the resumable state every N steps and/or M
  minutes, on SIGTERM (then raises `TrainingInterrupted` out of `fit`, at the
  next training or evaluation batch) and at the end.
* `ProgressCallback`: a progress bar over the whole run with loss and steps/s.
* `TrainingLog`: TensorBoard scalars (total and per-head losses, steps/s)
  and a CSV log, both indexed by the global step so resumed runs continue
  the same curves.
* `ImagePanels`: TensorBoard images of the median prediction next to the
  truth for a few target heads on a fixed evaluation batch.
* `NonFiniteLoss`: stops training at the first NaN or infinite loss and
  records the step (the trainer then saves nothing from it).

The global step is always `model.optimizer.iterations`, which the checkpoint
restores; nothing here counts steps itself.
"""

from __future__ import annotations

import csv
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from isl.io import model_dir as model_dir_lib
from isl.model import losses


def sanitize_name(head_name: str) -> str:
    """A head name usable as a metric name and TensorBoard tag (`/` -> `_`)."""
    return head_name.replace("/", "_").replace(" ", "_")


def metric_name(head_name: str) -> str:
    """The metric (and log column) name of one head's loss."""
    return "head_" + sanitize_name(head_name)


def global_step(model: keras.Model) -> int:
    """The number of optimizer steps taken so far (restored with checkpoints)."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


class PerHeadLosses(keras.metrics.Metric):
    """Mean loss of every head over the batches in which it has labels.

    One metric for all heads (one loss evaluation per batch); its result is
    a dict `{head_<z>_<channel>: mean}` that Keras flattens into the logs
    (`val_head_...` for evaluation). The per-batch value of a head is
    `per_head_losses(labels, logits)` (masked cross-entropy / ln 256).
    Batches where the head's mask is all zero are left out of its mean, so
    a label present in few wells is not diluted by zeros (the released
    code's streaming mean included them).

    Args:
        head_names: all head names, in head order.
        per_head_loss_fn: `(labels, logits) -> [num_heads]`; defaults to
            `isl.model.losses.per_head_losses`.
    """

    def __init__(
        self,
        head_names: Sequence[str],
        per_head_loss_fn: Callable[[Any, Any], Any] | None = None,
        name: str = "head_losses",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.head_names = tuple(head_names)
        self.metric_names = tuple(metric_name(head) for head in self.head_names)
        if per_head_loss_fn is None:
            per_head_loss_fn = losses.per_head_losses
        self._per_head_loss_fn = per_head_loss_fn
        count = len(self.head_names)
        self.total = self.add_variable(shape=(count,), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(count,), initializer="zeros", name="count")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        """y_true: `[batch, out, out, heads, 2]`; y_pred: `[batch, out, out, heads, classes]`."""
        losses = keras.ops.cast(self._per_head_loss_fn(y_true, keras.ops.cast(y_pred, "float32")), "float32")
        present = keras.ops.cast(keras.ops.max(y_true[..., 1], axis=(0, 1, 2)) > 0, "float32")
        self.total.assign_add(losses * present)
        self.count.assign_add(present)

    def result(self) -> dict[str, Any]:
        means = keras.ops.divide_no_nan(self.total, self.count)
        return {name: means[index] for index, name in enumerate(self.metric_names)}

    def get_config(self) -> dict[str, Any]:
        return {"head_names": list(self.head_names), "name": self.name}


class StopAtStep(keras.callbacks.Callback):
    """Stops training once the global step reaches `total_steps`."""

    def __init__(self, total_steps: int) -> None:
        super().__init__()
        self.total_steps = total_steps

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if global_step(self.model) >= self.total_steps:
            self.model.stop_training = True


class TrainingInterrupted(Exception):
    """Raised out of `fit` once a termination signal was acted on.

    Keras runs the end-of-epoch validation even after `stop_training` is set
    mid-epoch; with the paper model that pass took minutes on CPU and looked
    like a hang after SIGTERM. Raising skips it (and the image panels); the
    trainer catches this and finishes the run's bookkeeping.
    """

    def __init__(self, step: int, signum: int) -> None:
        super().__init__(f"stopped by signal {signum} at step {step}")
        self.step = step
        self.signum = signum


class TerminationSignal:
    """Turns SIGTERM into a flag that training polls.

    Installed only from the main thread; elsewhere it is inert. Use as a
    context manager so the previous handlers come back afterwards. A second
    signal while the first is being acted on (e.g. during the final save)
    ends the process at once with the signal's default action.
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGTERM,)) -> None:
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum

    def __enter__(self) -> TerminationSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class PeriodicCheckpoint(keras.callbacks.Callback):
    """Saves the training state periodically, on SIGTERM and at the end.

    Args:
        save: `save(step)` writes one checkpoint (and the inference weights).
        every_steps: save when the global step is a multiple of this (0: off).
        every_minutes: save when this many minutes passed since the last
            save (0: off).
        termination: a `TerminationSignal`; when it fired, save and stop.
    """

    def __init__(
        self,
        save: Callable[[int], None],
        every_steps: int = 0,
        every_minutes: float = 0.0,
        termination: TerminationSignal | None = None,
    ) -> None:
        super().__init__()
        self._save = save
        self.every_steps = every_steps
        self.every_minutes = every_minutes
        self.termination = termination
        self.last_saved_step = -1
        self._last_save_time = time.monotonic()
        self.interrupted = False

    def save_now(self, step: int) -> None:
        if step != self.last_saved_step:
            self._save(step)
            self.last_saved_step = step
        self._last_save_time = time.monotonic()

    def _stop_if_signalled(self) -> None:
        """Saves and raises `TrainingInterrupted` once the termination signal fired."""
        if self.termination is None or self.termination.received is None:
            return
        step = global_step(self.model)
        self.save_now(step)
        self.interrupted = True
        self.model.stop_training = True
        raise TrainingInterrupted(step, self.termination.received)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._stop_if_signalled()
        step = global_step(self.model)
        due_steps = self.every_steps > 0 and step % self.every_steps == 0
        due_time = (
            self.every_minutes > 0
            and time.monotonic() - self._last_save_time >= 60.0 * self.every_minutes
        )
        if due_steps or due_time:
            self.save_now(step)

    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
        # A signal during the periodic evaluation (64 batches in the paper
        # preset, minutes on CPU) stops at the next evaluation batch.
        self._stop_if_signalled()


class ProgressCallback(keras.callbacks.Callback):
    """Drives an `isl.progress.Progress` over the steps of this call.

    The bar counts the steps run by this call (`total_steps - initial_step`);
    the postfix shows the global step, the running loss and steps/s.
    """

    def __init__(self, progress: Any, initial_step: int, total_steps: int) -> None:
        super().__init__()
        self.progress = progress
        self.initial_step = initial_step
        self.total_steps = total_steps
        self._last_step = initial_step
        self._last_time = time.monotonic()
        self._rate = 0.0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        step = global_step(self.model)
        now = time.monotonic()
        if now - self._last_time >= 1.0:
            self._rate = (step - self._last_step) / (now - self._last_time)
            self._last_step, self._last_time = step, now
        postfix = f"step {step}/{self.total_steps}"
        if logs and "loss" in logs:
            postfix += f" loss {float(logs['loss']):.4f}"
        if self._rate:
            postfix += f" {self._rate:.2f} steps/s"
        self.progress.update(step - self.initial_step - self.progress.count, postfix=postfix)

    def on_train_end(self, logs: dict | None = None) -> None:
        self.progress.close()


def _metadata(plugin_name: str, data_class: int) -> bytes:
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin_name),
        data_class=data_class,
    ).SerializeToString()


def write_scalar(tag: str, value: float, step: int) -> None:
    """A TensorBoard scalar through the default writer.

    Written with the core `tf.summary.write` op and the scalars plugin's
    metadata, so the `tensorboard` package is not needed to write logs
    (only to view them).
    """
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=_metadata("scalars", 1))


def write_image(tag: str, image: np.ndarray, step: int) -> None:
    """A TensorBoard image (`[height, width]` in [0, 1]) through the default writer."""
    pixels = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)[:, :, np.newaxis]
    encoded = tf.image.encode_png(pixels)
    tensor = tf.stack([tf.as_string(pixels.shape[1]), tf.as_string(pixels.shape[0]), encoded])
    tf.summary.write(tag, tensor, step=step, metadata=_metadata("images", 3))


def _to_float(value: Any) -> float:
    return float(keras.ops.convert_to_numpy(value))


class TrainingLog(keras.callbacks.Callback):
    """TensorBoard scalars and a CSV log, indexed by the global step.

    Training scalars (`loss`, every `head_*`, `steps_per_second`) go to
    `LOG_DIR/train` every `every_steps` steps; evaluation scalars (the
    `val_*` entries Keras adds after each epoch) go to `LOG_DIR/eval`. One
    CSV row per evaluation lands in `LOG_DIR/training.csv` (appended to on
    resume; the header is written once).
    """

    def __init__(self, log_dir: str, every_steps: int = 10) -> None:
        super().__init__()
        self.log_dir = log_dir
        self.every_steps = max(1, every_steps)
        self.csv_path = os.path.join(log_dir, model_dir_lib.TRAINING_CSV)
        self._writers: dict[str, Any] = {}
        self._start_time = time.monotonic()
        self._last_step: int | None = None
        self._last_time = time.monotonic()
        self.last_logs: dict[str, float] = {}

    def _writer(self, name: str) -> Any:
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(os.path.join(self.log_dir, name))
        return self._writers[name]

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._last_step = global_step(self.model)
        self._last_time = time.monotonic()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        step = global_step(self.model)
        if step % self.every_steps or not logs:
            return
        now = time.monotonic()
        scalars = {name: _to_float(value) for name, value in logs.items()}
        if self._last_step is not None and now > self._last_time:
            scalars["steps_per_second"] = (step - self._last_step) / (now - self._last_time)
        self._last_step, self._last_time = step, now
        with self._writer("train").as_default():
            for name, value in scalars.items():
                write_scalar(name, value, step)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        step = global_step(self.model)
        scalars = {name: _to_float(value) for name, value in (logs or {}).items()}
        self.last_logs = dict(scalars)
        evaluation = {name[4:]: value for name, value in scalars.items() if name.startswith("val_")}
        if evaluation:
            with self._writer("eval").as_default():
                for name, value in evaluation.items():
                    write_scalar(name, value, step)
        self._append_csv(step, scalars)
        for writer in self._writers.values():
            writer.flush()

    def _append_csv(self, step: int, scalars: dict[str, float]) -> None:
        row: dict[str, Any] = {"step": step, "wall_seconds": round(time.monotonic() - self._start_time, 3)}
        for name in ("loss", "val_loss"):
            if name in scalars:
                row[name] = scalars[name]
        row.update(sorted(scalars.items(), key=lambda item: item[0].startswith("val_")))
        header: list[str] | None = None
        if os.path.exists(self.csv_path):
            with open(self.csv_path, newline="", encoding="utf-8") as handle:
                header = next(csv.reader(handle), None)
        os.makedirs(self.log_dir, exist_ok=True)
        with open(self.csv_path, "a", newline="", encoding="utf-8") as handle:
            if not header:
                header = list(row)
                csv.writer(handle).writerow(header)
            csv.writer(handle).writerow([row.get(column, "") for column in header])

    def on_train_end(self, logs: dict | None = None) -> None:
        for writer in self._writers.values():
            writer.flush()


def median_of_logits(logits: np.ndarray) -> np.ndarray:
    """Median of each pixel's distribution in [0, 1]: `[..., classes]` -> `[...]`.

    The index of the first class whose cumulative probability is >= 0.5,
    divided by `classes - 1` (isl_reference.md §2).
    """
    logits = logits.astype(np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    below = (np.cumsum(probabilities, axis=-1) < 0.5).sum(axis=-1)
    return np.minimum(below, logits.shape[-1] - 1) / (logits.shape[-1] - 1)


def _tile(patches: np.ndarray, columns: int) -> np.ndarray:
    """`[n, h, w]` -> one `[rows * h, columns * w]` grid (missing cells black)."""
    count, height, width = patches.shape
    rows = -(-count // columns)
    grid = np.zeros((rows * height, columns * width), np.float32)
    for index in range(count):
        row, column = divmod(index, columns)
        grid[row * height : (row + 1) * height, column * width : (column + 1) * width] = patches[index]
    return grid


class ImagePanels(keras.callbacks.Callback):
    """TensorBoard image panels: median prediction | truth, per target head.

    Every `every_epochs` evaluations, runs the model (inference mode) on one
    fixed evaluation batch and writes, for up to `max_heads` target heads
    that have labels in that batch, a grid of the batch's output patches:
    the predicted median on the left, the masked truth on the right,
    enlarged `zoom` times.

    Args:
        log_dir: TensorBoard directory; panels go to `log_dir/eval`.
        batch: `(inputs, labels)` NumPy arrays of one batch.
        head_names: all head names, in head order.
        first_target_head: index of the first target head.
    """

    def __init__(
        self,
        log_dir: str,
        batch: tuple[np.ndarray, np.ndarray],
        head_names: Sequence[str],
        first_target_head: int,
        max_heads: int = 3,
        every_epochs: int = 1,
        zoom: int = 4,
    ) -> None:
        super().__init__()
        self.log_dir = log_dir
        self.inputs, self.labels = batch
        self.head_names = tuple(head_names)
        masks = self.labels[..., 1].reshape(-1, self.labels.shape[-2])
        present = [
            index
            for index in range(first_target_head, len(self.head_names))
            if masks[:, index].max() > 0
        ]
        self.heads = present[:max_heads]
        self.every_epochs = max(1, every_epochs)
        self.zoom = zoom
        self._writer: Any = None
        self.panels_written = 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not self.heads or (epoch + 1) % self.every_epochs:
            return
        logits = keras.ops.convert_to_numpy(self.model(self.inputs, training=False))
        step = global_step(self.model)
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "eval"))
        columns = int(np.ceil(np.sqrt(len(self.inputs))))
        with self._writer.as_default():
            for index in self.heads:
                predicted = median_of_logits(logits[..., index, :])
                truth = self.labels[..., index, 0] * (self.labels[..., index, 1] > 0)
                left = _tile(predicted.astype(np.float32), columns)
                right = _tile(truth.astype(np.float32), columns)
                separator = np.full((left.shape[0], 1), 0.5, np.float32)
                panel = np.concatenate([left, separator, right], axis=1)
                panel = np.kron(panel, np.ones((self.zoom, self.zoom), np.float32))
                write_image("median_vs_truth/" + sanitize_name(self.head_names[index]), panel, step)
        self._writer.flush()
        self.panels_written += 1


class NonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first step whose loss is NaN or infinite.

    Keras's `loss` log is the running mean of the epoch, so it turns
    non-finite at the first bad step and stays so. `step` and `value` record
    that step (None while the loss is finite); the caller must not save the
    model after it (its weights took the bad update).
    """

    def __init__(self) -> None:
        super().__init__()
        self.step: int | None = None
        self.value: float | None = None

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.step is not None or not logs or "loss" not in logs:
            return
        value = _to_float(logs["loss"])
        if not math.isfinite(value):
            self.step, self.value = global_step(self.model), value
            self.model.stop_training = True
