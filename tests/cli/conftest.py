"""Shared helpers of the command-line tests: running `isl` in-process, and one saved tiny model."""

from __future__ import annotations

import pytest


def run_isl(arguments: list[str], capsys) -> tuple[int, str, str]:
    """`isl ARGUMENTS` in this process: (exit code, stdout, stderr)."""
    from isl.cli import main

    code = main.run_command(arguments)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A model folder of the untrained `tiny` preset (config.json + model.weights.h5); tests must not write into it."""
    from isl import presets
    from isl.model import builder
    from isl.model import saving

    directory = str(tmp_path_factory.mktemp("tiny_model"))
    config = presets.get_preset("tiny")
    saving.save_model_dir(builder.build_model(config), config, directory)
    return directory
