"""`isl tune` fails loudly and early: data checked before the first trial, all-failed searches exit non-zero."""

from __future__ import annotations

import os

import pytest

from isl import errors
from isl.cli import main
from isl.data import convert
from isl.data import synthetic
from isl import presets
from isl.train import tuning
from tests.train import tuning_helpers


@pytest.fixture(scope="module")
def records_without_eval(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("no_eval"))
    wells = os.path.join(root, "wells")
    synthetic.write_synthetic_dataset(wells, num_wells=2, size=100, num_z=13, seed=0)
    output = os.path.join(root, "records")
    convert.convert([wells], output, presets.get_preset("tiny").channels, num_shards=1, eval_every=0)
    return output


def test_tune_without_eval_shards_exits_2_before_any_trial(records_without_eval, tmp_path, capsys):
    tuner_dir = tmp_path / "search"
    code = main.run_command(["tune", f"--data_dir={records_without_eval}", f"--tuner_dir={tuner_dir}",
                             "--preset=tiny", "--max_trials=2", "--steps_per_trial=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no non-empty eval shards" in err and "Traceback" not in err
    assert not tuner_dir.exists()  # Nothing started, nothing written.


def test_tune_scores_trials_on_the_validation_split_when_there_is_one(tmp_path_factory, tmp_path):
    """Train + val shards and no eval shards: the pre-flight asks for the val split, not eval."""
    root = str(tmp_path_factory.mktemp("val_only"))
    wells = os.path.join(root, "wells")
    synthetic.write_synthetic_dataset(wells, num_wells=2, size=40, num_z=13, seed=0)
    output = os.path.join(root, "records")
    channels = presets.get_preset("tiny").channels
    convert.convert([wells], output, channels, num_shards=1, eval_every=0, val_wells=["A2"])
    from isl.data import pipeline

    assert pipeline.selection_split(output) == "val" and pipeline.selection_split(str(tmp_path)) == "eval"
    asked = []

    def check_dataset(data_dir, config, splits=("train", "eval")):
        asked.append(tuple(splits))
        raise errors.InputError("stop before any trial")

    import unittest.mock

    with unittest.mock.patch.object(pipeline, "check_dataset", check_dataset):
        with pytest.raises(errors.InputError, match="stop before any trial"):
            tuning.run_search(presets.get_preset("tiny"), output, str(tmp_path / "search"), max_trials=1,
                              steps_per_trial=1)
    assert asked == [("train", "val")]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return tuning_helpers.tiny_tfrecords(str(tmp_path_factory.mktemp("tune_faults")))


def test_tune_with_images_too_small_for_the_geometry_exits_2(records, tmp_path, capsys):
    tuner_dir = tmp_path / "search"
    code = main.run_command(["tune", f"--data_dir={records}", f"--tuner_dir={tuner_dir}",
                             "--preset=tiny", "--set=data.crop_size=400"])
    err = capsys.readouterr().err
    assert code == 2
    assert "smaller than the 400-px crop" in err and not tuner_dir.exists()


def test_a_search_whose_every_trial_failed_raises_the_first_trials_error(records, tmp_path):
    failures = []

    def broken_compile(model, config):
        failures.append(1)
        raise ValueError(f"compile failure number {len(failures)}")

    with pytest.raises(errors.RunFailed,
                       match=r"every trial failed; the first failed trial's error: compile failure number 1 "):
        tuning.run_search(tuning_helpers.small_config(), records, str(tmp_path / "search"), max_trials=1,
                          steps_per_trial=1, compile_fn=broken_compile)
    assert len(failures) == 1


def test_the_cli_exits_1_with_one_line_when_a_run_failed(records_without_eval, tmp_path, capsys, monkeypatch):
    def failed(*args, **kwargs):
        raise errors.RunFailed("search: every trial failed; the first failed trial's error: boom")

    monkeypatch.setattr(tuning, "run_search", failed)
    code = main.run_command(["tune", f"--data_dir={records_without_eval}", f"--tuner_dir={tmp_path / 's'}"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        "isl tune: error: search: every trial failed; the first failed trial's error: boom")
