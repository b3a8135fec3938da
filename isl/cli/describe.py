"""`isl describe`: Print a model's per-module geometry, parameter counts and FLOPs."""

from __future__ import annotations

from typing import Any

SUMMARY = "Print a model's per-module geometry, parameter counts and FLOPs."
DESCRIPTION = """
Print a model's per-module geometry, parameter counts and FLOPs.

This command is completed by a later issue; until then it exits with code 2.
"""
IMPLEMENTED = False


def define_flags(flag_values: Any) -> None:
    """No flags yet beyond the common --json."""


def run(flag_values: Any, positional: list[str]) -> dict[str, Any]:
    raise NotImplementedError("isl describe is not implemented yet.")
