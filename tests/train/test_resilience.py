"""Faults during training: a NaN batch, damaged checkpoints and shards, a full disk."""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from isl import errors
from isl.data import pipeline
from isl.io.model_dir import ModelDir
from isl.train import resilience
from isl.train import trainer
from tests.train.conftest import fast_config
from tests.train.conftest import small_config


def _digest(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _checkpoint_steps(model_dir: str) -> list[int]:
    candidates = resilience.checkpoint_candidates(os.path.join(model_dir, "checkpoints"))
    return sorted(int(p.rsplit("-", 1)[1]) for p in candidates)


def _nan_at(batch_index: int):
    """A dataset_fn whose training batch number `batch_index` (0-based) has NaN inputs."""

    def dataset_fn(data_dir, config, **kwargs):
        dataset = pipeline.build_dataset(data_dir, config, **kwargs)
        if kwargs.get("split") != "train":
            return dataset

        def poison(index, batch):
            inputs, labels = batch
            bad = tf.fill(tf.shape(inputs), float("nan"))
            return tf.where(tf.equal(index, batch_index), bad, inputs), labels

        return dataset.enumerate().map(poison)

    return dataset_fn


def test_a_nan_batch_stops_training_naming_the_step_and_keeps_the_last_good_checkpoint(records_dir, tmp_path):
    config = small_config("train.eval_every_steps=100")  # A checkpoint every 2 steps, no evaluation.
    model_dir = str(tmp_path / "model")
    logs = []
    # Batch index 4 is step 5: checkpoints 2 and 4 are good, nothing after.
    with pytest.raises(errors.InputError, match=r"became nan at step 5.*ckpt-4") as caught:
        trainer.train(config, records_dir, model_dir, 12, show_progress=False, log=logs.append,
                      dataset_fn=_nan_at(4))
    assert "run the same command to resume" in str(caught.value)
    assert _checkpoint_steps(model_dir) == [2, 4]
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints", "ckpt-4"))
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if np.issubdtype(np.asarray(value).dtype, np.floating):
            assert np.isfinite(value).all(), name
    import h5py

    with h5py.File(ModelDir(model_dir).weights) as handle:
        values = []
        handle.visititems(lambda _, item: values.append(item[()]) if isinstance(item, h5py.Dataset) else None)
    assert values and all(np.isfinite(value).all() for value in values if np.asarray(value).dtype.kind == "f")

    # Without the bad batch, the same command resumes from the last good step.
    result = trainer.train(config, records_dir, model_dir, 6, show_progress=False, log=logs.append)
    assert (result.resumed_from_step, result.final_step) == (4, 6)


@pytest.fixture
def two_checkpoints(trained_model_dir, tmp_path):
    """A copy of the session's trained model (checkpoints 8 and 10)."""
    model_dir = str(tmp_path / "model")
    shutil.copytree(trained_model_dir[0], model_dir)
    assert _checkpoint_steps(model_dir) == [8, 10]
    return model_dir


@pytest.mark.parametrize("damage", ["truncate_index", pytest.param("corrupt_data", marks=pytest.mark.slow)])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one_and_says_so(
    records_dir, two_checkpoints, damage
):
    model_dir = two_checkpoints
    prefix = os.path.join(model_dir, "checkpoints", "ckpt-10")
    if damage == "truncate_index":
        path = prefix + ".index"
        with open(path, "r+b") as handle:
            handle.truncate(os.path.getsize(path) // 2)
    else:
        path = glob.glob(prefix + ".data-*")[0]
        with open(path, "r+b") as handle:
            data = bytearray(handle.read())
            for offset in range(0, len(data), 97):
                data[offset] ^= 0xFF
            handle.seek(0)
            handle.write(data)
    reader = tf.train.load_checkpoint(prefix[:-2] + "8")
    names = [name for name in reader.get_variable_to_shape_map() if name.startswith("optimizer/_variables/")]
    adam_slots = {name: reader.get_tensor(name) for name in names}
    restored = {}
    logs = []
    import keras

    class RecordOptimizer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            restored["step"] = int(self.model.optimizer.iterations.numpy())
            restored["slots"] = {v.path: v.numpy() for v in self.model.optimizer.variables}

    result = trainer.train(small_config("train.learning_rate=0.003"), records_dir, model_dir, 12,
                           show_progress=False, log=logs.append, extra_callbacks=[RecordOptimizer()])
    text = "\n".join(logs)
    assert "ckpt-10 is damaged" in text and "falling back to the previous one" in text
    assert "Resuming from the older checkpoint" in text and result.resumed_from_step == 8
    assert restored["step"] == 8
    # The optimizer state came back from ckpt-8 exactly (Adam's slots included).
    saved_slot_values = sorted(float(np.sum(np.abs(v))) for v in adam_slots.values() if np.ndim(v) > 0)
    restored_values = sorted(float(np.sum(np.abs(v))) for v in restored["slots"].values() if np.ndim(v) > 0)
    assert len(saved_slot_values) == len(restored_values) > 0
    np.testing.assert_allclose(saved_slot_values, restored_values, rtol=1e-6)
    assert result.final_step == 12


def test_every_checkpoint_damaged_exits_with_what_to_do(records_dir, two_checkpoints):
    for path in glob.glob(os.path.join(two_checkpoints, "checkpoints", "ckpt-*.index")):
        with open(path, "wb") as handle:
            handle.write(b"garbage")
    with pytest.raises(errors.InputError, match=r"every checkpoint is damaged.*delete it to train again"):
        trainer.train(small_config(), records_dir, two_checkpoints, 12, show_progress=False, log=lambda _: None)


def test_leftovers_of_a_killed_save_are_removed_and_never_restored(tmp_path):
    directory = tmp_path / "checkpoints"
    (directory / "ckpt-6_temp").mkdir(parents=True)
    (directory / "ckpt-6_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x")
    (directory / "ckpt-4.index").write_bytes(b"i")
    (directory / "ckpt-4.data-00000-of-00001").write_bytes(b"d")
    (directory / "ckpt-6.data-00000-of-00001").write_bytes(b"partial")  # No index: incomplete.
    (directory / "ckpt-6.index.tempstate123").write_bytes(b"t")
    assert resilience.checkpoint_candidates(str(directory)) == [str(directory / "ckpt-4")]
    removed = resilience.remove_partial_checkpoints(str(directory))
    assert sorted(os.path.basename(p) for p in removed) == [
        "ckpt-6.data-00000-of-00001", "ckpt-6.index.tempstate123", "ckpt-6_temp"
    ]
    assert sorted(os.listdir(directory)) == ["ckpt-4.data-00000-of-00001", "ckpt-4.index"]


def _damage_shard(records_dir: str, tmp_path, how: str) -> tuple[str, str]:
    copy = str(tmp_path / "records")
    shutil.copytree(records_dir, copy)
    shard = sorted(glob.glob(os.path.join(copy, "train-*")))[0]
    with open(shard, "r+b") as handle:
        data = bytearray(handle.read())
        if how == "truncate":
            handle.truncate(len(data) - 1000)
        else:  # Flip bytes inside the first record's data: only the CRC sees it.
            for offset in range(100, 1100):
                data[offset] ^= 0x5A
            handle.seek(0)
            handle.write(data)
    return copy, shard


def test_a_truncated_shard_is_named_before_training_starts(records_dir, tmp_path):
    from isl.data import pipeline

    copy, shard = _damage_shard(records_dir, tmp_path, "truncate")
    with pytest.raises(errors.InputError, match=r"damaged TFRecord shard \(truncated.*isl convert") as caught:
        pipeline.build_dataset(copy, fast_config(), split="train")
    assert str(caught.value).startswith(shard)


def test_a_corrupted_record_stops_training_naming_the_shard(records_dir, tmp_path):
    copy, shard = _damage_shard(records_dir, tmp_path, "corrupt")
    with pytest.raises(errors.InputError, match=r"damaged TFRecord shard \(.*corrupted record") as caught:
        trainer.train(small_config(), copy, str(tmp_path / "model"), 4, show_progress=False, log=lambda _: None)
    assert str(caught.value).startswith(shard)


@pytest.mark.slow
def test_a_full_disk_while_saving_leaves_nothing_half_written(records_dir, tmp_path, monkeypatch):
    import keras

    model_dir = str(tmp_path / "model")
    trainer.train(fast_config(), records_dir, model_dir, 2, show_progress=False, log=lambda _: None)
    weights = ModelDir(model_dir).weights
    before = _digest(weights)
    original = keras.Model.save_weights

    def full_disk(self, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"\x89HDF\r\n half")  # What a writer manages before the disk fills.
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(keras.Model, "save_weights", full_disk)
    with pytest.raises(errors.InputError, match=r"no space left on device while saving step 4.*ckpt-4"):
        trainer.train(fast_config(), records_dir, model_dir, 6, show_progress=False, log=lambda _: None)
    monkeypatch.setattr(keras.Model, "save_weights", original)
    assert _digest(weights) == before  # The previous inference weights, whole.
    leftovers = [name for name in os.listdir(model_dir) if name.startswith(".tmp-")]
    assert leftovers == []
    assert _checkpoint_steps(model_dir) == [2, 4]


def test_a_full_disk_inside_the_checkpoint_writer_removes_its_partial_files(records_dir, tmp_path, monkeypatch):
    from tensorflow.python.ops import gen_io_ops

    model_dir = str(tmp_path / "model")

    def full_disk(*args, **kwargs):  # The shard is written to ckpt-2_temp/, the merge fails.
        raise tf.errors.ResourceExhaustedError(None, None, "ckpt-2.index: No space left on device")

    monkeypatch.setattr(gen_io_ops, "merge_v2_checkpoints", full_disk)
    with pytest.raises(errors.InputError, match=r"no space left on device while saving step 2.*checkpoint is none"):
        trainer.train(small_config(), records_dir, model_dir, 4, show_progress=False, log=lambda _: None)
    assert os.listdir(os.path.join(model_dir, "checkpoints")) == []
    assert not os.path.exists(ModelDir(model_dir).weights)
