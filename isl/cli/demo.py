"""`isl demo`: Run the whole pipeline on embedded synthetic data, end to end."""

from __future__ import annotations

from typing import Any

SUMMARY = "Run the whole pipeline on embedded synthetic data, end to end."
DESCRIPTION = """
Run the whole pipeline on embedded synthetic data, end to end.

This command is completed by a later issue; until then it exits with code 2.
"""
IMPLEMENTED = False


def define_flags(flag_values: Any) -> None:
    """No flags yet beyond the common --json."""


def run(flag_values: Any, positional: list[str]) -> dict[str, Any]:
    raise NotImplementedError("isl demo is not implemented yet.")
