"""`isl train` flags: help, required flags, config layering, bad values exit 2."""

from __future__ import annotations

import json

from isl.cli import main
from isl.cli import train as train_command


def _flags(*arguments: str):
    flag_values = main.make_flag_values(train_command)
    flag_values(["isl train", *arguments])
    return flag_values


def test_help_lists_the_flags(capsys):
    assert main.run_command(["train", "--help"]) == 0
    output = capsys.readouterr().out
    for flag in ("--data_dir", "--model_dir", "--preset", "--config", "--set", "--steps", "--strategy",
                 "--mixed_precision", "--restore_from", "--restore_heads", "--freeze_core",
                 "--checkpoint_every_steps", "--seed"):
        assert flag in output, flag


def test_config_layers_preset_then_file_then_set_then_flags(tmp_path):
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({"train": {"learning_rate": 0.01, "seed": 5, "batch_size": 4}}))
    config = train_command.resolve(_flags(
        "--preset=tiny", f"--config={config_file}", "--set=train.learning_rate=0.02",
        "--set=model.output_size=24", "--seed=9", "--mixed_precision=bfloat16", "--checkpoint_every_steps=7",
    ))
    assert config.model.base_depth == 24  # preset
    assert config.train.batch_size == 4  # file
    assert config.train.learning_rate == 0.02  # --set over the file
    assert config.model.output_size == 24
    assert (config.train.seed, config.train.mixed_precision, config.train.checkpoint_every_steps) == (9, "bfloat16", 7)
    paper = train_command.resolve(_flags())
    assert (paper.train.learning_rate, paper.train.batch_size, paper.train.optimizer) == (1e-4, 16, "adam")


def test_missing_and_bad_flags_exit_2(tmp_path, capsys):
    assert main.run_command(["train", f"--model_dir={tmp_path}/m", "--steps=3"]) == 2
    assert "--data_dir is required" in capsys.readouterr().err
    arguments = [f"--data_dir={tmp_path}", f"--model_dir={tmp_path}/m", "--steps=3", "--preset=tiny"]
    assert main.run_command(["train", *arguments, "--strategy=horovod"]) == 2
    assert "Unknown strategy" in capsys.readouterr().err
    assert main.run_command(["train", *arguments, "--set=train.optimizer=rmsprop"]) == 2
    assert "optimizer" in capsys.readouterr().err
    assert main.run_command(["train", *arguments, "--preset=nope"]) == 2
    assert "Unknown preset" in capsys.readouterr().err
    assert main.run_command(["train", *arguments, "--steps=lots"]) == 2


def test_a_failed_run_leaves_no_model_folder_and_keeps_what_was_there(tmp_path, capsys):
    # No train shards: training fails after writing config.json and trained_channels.json.
    records = tmp_path / "records"
    records.mkdir()
    arguments = [f"--data_dir={records}", "--steps=1", "--preset=tiny", "--noprogress"]
    assert main.run_command(["train", *arguments, f"--model_dir={tmp_path}/runs/b"]) == 2
    assert "train shards" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["records"]  # Neither runs/b nor runs.
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    assert main.run_command(["train", *arguments, f"--model_dir={existing}"]) == 2
    assert sorted(path.name for path in existing.iterdir()) == ["notes.txt"]


def test_train_prints_its_expected_memory_and_refuses_a_batch_that_does_not_fit_what_is_free(tmp_path, capsys,
                                                                                               monkeypatch):
    import collections

    import psutil

    records = tmp_path / "records"
    records.mkdir()
    arguments = [f"--data_dir={records}", "--steps=1", "--preset=condition_b", "--recipe=unet_regression",
                 "--noprogress", f"--model_dir={tmp_path}/m"]
    memory = collections.namedtuple("memory", "available total")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: memory(2.2e9, 24e9))
    assert main.run_command(["train", *arguments]) == 2
    error = capsys.readouterr().err
    assert "Expected peak memory: about 2.8 GB (batch 8 per device" in error
    assert "--set train.batch_size=4 fits" in error and "2.2 GB available" in error
    assert not (tmp_path / "m").exists()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: memory(1.0e9, 24e9))
    assert main.run_command(["train", *arguments, "--set=train.batch_size=1"]) == 2
    assert "no batch fits" in capsys.readouterr().err
    # With room, the estimate is printed and training goes on (to the missing shards here).
    monkeypatch.setattr(psutil, "virtual_memory", lambda: memory(20e9, 24e9))
    assert main.run_command(["train", *arguments]) == 2
    error = capsys.readouterr().err
    assert "Expected peak memory: about 2.8 GB" in error and "train shards" in error
    from isl import presets

    assert train_command.expected_peak_bytes(presets.resolve_config("paper", recipe="cpu"), 4) > 11e9  # the step
