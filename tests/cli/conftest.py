"""Shared helper of the command-line tests: running `isl` in-process (the saved tiny model: tests/conftest.py)."""

from __future__ import annotations


def run_isl(arguments: list[str], capsys) -> tuple[int, str, str]:
    """`isl ARGUMENTS` in this process: (exit code, stdout, stderr)."""
    from isl.cli import main

    code = main.run_command(arguments)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
