"""`isl tune` flag handling (the full command runs in tests/train/test_tuning.py's distributed test)."""

from __future__ import annotations

import importlib.util

import pytest

from isl.cli import main


def _run(arguments, capsys):
    code = main.run_command(["tune", *arguments])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--tuner_dir=T"], "--data_dir is required"),
        (["--data_dir=/no/such/dir", "--tuner_dir=T"], "no such directory"),
        (["--data_dir=D", "--tuner_dir=T", "--search_space={not json"], "not valid JSON"),
        (["--data_dir=D", "--tuner_dir=T", '--search_space={"no_such_field": [1, 2]}'], "Unknown hyperparameter"),
        (["--data_dir=D", "--tuner_dir=T", '--search_space={"base_depth": {"min": 8}}'], "min and max"),
        (["--data_dir=D", "--tuner_dir=T", "--search_space=@/no/such/file.json"], "cannot read"),
        (["--data_dir=D", "--tuner_dir=T", "--objective=val_accuracy"], "minimise or maximise"),
        (["--data_dir=D", "--tuner_dir=T", "--max_trials=0"], "must be >= 1"),
        (["--data_dir=D", "--tuner_dir=T", "--tuner=grid"], "tuner"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(tmp_path, capsys, arguments, message):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    arguments = [
        argument.replace("=D", f"={data_dir}").replace("=T", f"={tmp_path / 'search'}") for argument in arguments
    ]
    code, err = _run(arguments, capsys)
    assert code == 2
    assert message in err


@pytest.mark.skipif(
    importlib.util.find_spec("sklearn") is not None and importlib.util.find_spec("scipy") is not None,
    reason="scipy and scikit-learn are installed",
)
def test_bayesian_without_scipy_and_sklearn_says_what_to_install(tmp_path, capsys):
    code, err = _run([f"--data_dir={tmp_path}", f"--tuner_dir={tmp_path / 'search'}", "--tuner=bayesian"], capsys)
    assert code == 2
    assert "scikit-learn" in err


def test_help_lists_the_search_flags(capsys):
    assert main.run_command(["tune", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--data_dir", "--tuner_dir", "--preset", "--tuner", "--max_trials", "--steps_per_trial",
                 "--search_space", "--objective", "--strategy", "KERASTUNER_TUNER_ID"):
        assert flag in out
