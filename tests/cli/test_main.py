"""Tests for the `isl` dispatcher."""

from __future__ import annotations

import json
import subprocess
import sys

from isl.cli import main


def test_top_level_help_lists_every_command(capsys):
    assert main.run_command(["--help"]) == 0
    output = capsys.readouterr().out
    for name in main.COMMANDS:
        assert f"  {name} " in output


def test_command_help_explains_flags(capsys):
    for name in main.COMMANDS:
        assert main.run_command([name, "--help"]) == 0
        output = capsys.readouterr().out
        assert f"usage: isl {name}" in output
        assert "json:" in output


def test_unknown_command_and_bad_flag_exit_2(capsys):
    assert main.run_command(["nope"]) == 2
    assert main.run_command(["describe", "--no_such_flag=1"]) == 2
    assert "no_such_flag" in capsys.readouterr().err


def test_python_dash_m_runs_the_same_entry_point():
    completed = subprocess.run(
        [sys.executable, "-m", "isl", "--help"], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0
    assert "convert" in completed.stdout


def test_help_into_a_closed_pipe_ends_quietly():
    import subprocess
    import sys

    # `true` exits before isl writes, so every write meets a closed pipe.
    command = f"{sys.executable} -m isl --help | true; echo ${{PIPESTATUS[0]}}"
    finished = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in finished.stderr and "BrokenPipeError" not in finished.stderr, finished.stderr
    assert finished.stdout.strip() in ("0", "141")
