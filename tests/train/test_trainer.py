"""Training: loss goes down, the model dir is complete, resume keeps the step and optimizer state."""

from __future__ import annotations

import csv
import glob
import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

from isl import config as config_lib
from isl import errors
from isl.model import builder
from isl.model import losses
from isl.train import callbacks as callbacks_lib
from isl.train import checkpoints as checkpoints_lib
from isl.train import schedule as schedule_lib
from isl.train import trainer
from tests.train.conftest import fast_config
from tests.train.conftest import small_config


def _event_tags(directory: str) -> set[str]:
    tags = set()
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_a_few_steps_reduce_the_loss(trained_model_dir):
    _, result, recorded = trained_model_dir
    assert result.final_step == 10 and result.resumed_from_step == 0
    assert recorded["after"] < recorded["before"] - 0.01, recorded


def test_model_dir_holds_config_weights_checkpoints_and_logs(trained_model_dir):
    model_dir, result, _ = trained_model_dir
    saved = config_lib.load_config(os.path.join(model_dir, "config.json"))
    assert saved == small_config("train.learning_rate=0.003")
    assert os.path.isfile(os.path.join(model_dir, "model.weights.h5"))
    # keep_checkpoints=2 of the saves at steps 2, 4, ..., 10.
    indexes = sorted(glob.glob(os.path.join(model_dir, "checkpoints", "ckpt-*.index")))
    assert [os.path.basename(path) for path in indexes] == ["ckpt-10.index", "ckpt-8.index"]
    with open(os.path.join(model_dir, "logs", "training.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in rows] == [5, 10]
    head = callbacks_lib.metric_name("MAXPROJECT/DAPI_CONFOCAL")
    assert {"loss", "val_loss", head, "val_" + head} <= set(rows[0])
    assert float(rows[-1]["val_loss"]) > 0
    train_tags = _event_tags(os.path.join(model_dir, "logs", "train"))
    assert {"loss", head, "steps_per_second"} <= train_tags
    eval_tags = _event_tags(os.path.join(model_dir, "logs", "eval"))
    assert {"loss", head} <= eval_tags
    assert any(tag.startswith("median_vs_truth/MAXPROJECT_") for tag in eval_tags)
    # The per-head losses of the result are the evaluation's.
    assert set(result.eval_losses) >= {"loss", head}
    # The weights file is the final model: it equals the last checkpoint.
    from_file = builder.build_model(saved)
    from_file.load_weights(os.path.join(model_dir, "model.weights.h5"))
    from_checkpoint = builder.build_model(saved)
    tf.train.Checkpoint(model=from_checkpoint).restore(
        os.path.join(model_dir, "checkpoints", "ckpt-10")
    ).expect_partial()
    for left, right in zip(from_file.weights, from_checkpoint.weights):
        np.testing.assert_array_equal(left.numpy(), right.numpy(), err_msg=left.path)


def test_sigterm_saves_then_same_command_resumes_then_finished_run_does_nothing(records_dir, tmp_path):
    config = small_config("train.checkpoint_every_steps=100")
    model_dir = str(tmp_path / "model")
    seen: dict[str, object] = {}

    class SendSigterm(keras.callbacks.Callback):
        sent = False

        def on_train_batch_end(self, batch, logs=None):
            if callbacks_lib.global_step(self.model) == 3:
                os.kill(os.getpid(), signal.SIGTERM)
                SendSigterm.sent = True

        def on_test_begin(self, logs=None):
            # The epoch (5 steps) ends after the signal: its evaluation must not run.
            seen["evaluated_after_signal"] = SendSigterm.sent

    first = trainer.train(config, records_dir, model_dir, 6, show_progress=False, extra_callbacks=[SendSigterm()])
    assert not seen.get("evaluated_after_signal")
    # The handler runs once Python regains control: the save happens at the
    # end of step 3 or of the step after it.
    stopped = first.final_step
    assert first.interrupted and stopped in (3, 4)
    checkpoint = checkpoints_lib.latest_checkpoint(model_dir)
    assert checkpoint.endswith(f"ckpt-{stopped}")
    saved_slots = {
        name: tf.train.load_variable(checkpoint, name)
        for name, _ in tf.train.list_variables(checkpoint)
        if name.startswith("optimizer/_variables/")
    }
    assert saved_slots and any(np.abs(value).sum() > 0 for value in saved_slots.values())

    class Inspect(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen["step"] = callbacks_lib.global_step(self.model)
            optimizer = self.model.optimizer
            seen["slots"] = {
                f"optimizer/_variables/{index}/.ATTRIBUTES/VARIABLE_VALUE": variable.numpy()
                for index, variable in enumerate(optimizer.variables)
            }

    second = trainer.train(config, records_dir, model_dir, 6, show_progress=False, extra_callbacks=[Inspect()])
    assert (second.resumed_from_step, second.final_step, second.interrupted) == (stopped, 6, False)
    assert seen["step"] == stopped
    for name, value in saved_slots.items():
        np.testing.assert_array_equal(seen["slots"][name], value, err_msg=name)

    messages: list[str] = []
    third = trainer.train(config, records_dir, model_dir, 6, show_progress=False, log=messages.append)
    assert third.already_finished and third.final_step == 6
    assert any("already finished" in message for message in messages)
    assert third.eval_losses.get("loss") == second.eval_losses.get("loss")


def test_resume_with_a_different_vocabulary_is_refused(trained_model_dir, records_dir):
    model_dir, _, _ = trained_model_dir
    config = small_config("train.learning_rate=0.003", "channels.num_z_values=13")
    with pytest.raises(errors.InputError, match="different 'channels'"):
        trainer.train(config, records_dir, model_dir, 20, show_progress=False)


def test_a_head_with_no_labels_gets_exactly_zero_gradient_and_does_not_move():
    config = fast_config()
    channels = config.channels
    model = builder.build_model(config, input_size=42)
    loss = losses.ISLLoss(channels)
    rng = np.random.default_rng(0)
    inputs = rng.random((4, 42, 42, channels.num_input_features), np.float32)
    labels = np.ones((4, 8, 8, channels.num_heads, 2), np.float32)
    labels[..., 0] = rng.random(labels.shape[:-1])
    absent = channels.head_names.index("MAXPROJECT/CELLMASK_CONFOCAL")
    labels[..., absent, :] = 0.0
    head_layers = [layer for layer in model.layers if layer.name.startswith("head_MAXPROJECT_CELLMASK_CONFOCAL")]
    head_variables = [variable for layer in head_layers for variable in layer.trainable_variables]
    assert head_variables
    with tf.GradientTape() as tape:
        value = loss(labels, model(inputs, training=True))
    gradients = tape.gradient(value, model.trainable_variables)
    by_path = {variable.path: gradient for variable, gradient in zip(model.trainable_variables, gradients)}
    for variable in head_variables:
        assert np.all(by_path[variable.path].numpy() == 0.0), variable.path
    present = next(layer for layer in model.layers
                   if layer.name.startswith("head_MAXPROJECT_DAPI_CONFOCAL") and layer.name.endswith("_conv"))
    assert np.abs(by_path[present.kernel.path].numpy()).max() > 0
    # One faithful Adam step leaves the unlabeled head exactly where it was.
    before = [variable.numpy().copy() for variable in head_variables]
    optimizer = schedule_lib.make_optimizer(config.train)
    optimizer.apply(gradients, model.trainable_variables)
    for variable, value in zip(head_variables, before):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_faithful_optimizer_is_tf1_adam():
    optimizer = schedule_lib.make_optimizer(config_lib.TrainConfig())
    assert isinstance(optimizer, keras.optimizers.Adam)
    assert (float(optimizer.learning_rate), optimizer.beta_1, optimizer.beta_2, optimizer.epsilon) == (
        pytest.approx(1e-4), 0.9, 0.999, 1e-8)
    assert optimizer.clipnorm is None and optimizer.clipvalue is None and optimizer.global_clipnorm is None
    assert not optimizer.weight_decay


def test_bad_arguments_are_input_errors(records_dir, tmp_path):
    config = fast_config()
    with pytest.raises(errors.InputError, match="--steps"):
        trainer.train(config, records_dir, str(tmp_path / "m"), 0)
    with pytest.raises(errors.InputError, match="--data_dir"):
        trainer.train(config, str(tmp_path / "missing"), str(tmp_path / "m"), 5)
