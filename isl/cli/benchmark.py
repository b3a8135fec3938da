"""`isl benchmark`: Measure speed and memory: 'isl benchmark data|model|predict'."""

from __future__ import annotations

from typing import Any

SUMMARY = "Measure speed and memory: 'isl benchmark data|model|predict'."
DESCRIPTION = """
Measure speed and memory: 'isl benchmark data|model|predict'.

This command is completed by a later issue; until then it exits with code 2.
"""
IMPLEMENTED = False


def define_flags(flag_values: Any) -> None:
    """No flags yet beyond the common --json."""


def run(flag_values: Any, positional: list[str]) -> dict[str, Any]:
    raise NotImplementedError("isl benchmark is not implemented yet.")
