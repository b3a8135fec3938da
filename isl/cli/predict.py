"""`isl predict`: Predict fluorescence images for whole wells of any size."""

from __future__ import annotations

from typing import Any

SUMMARY = "Predict fluorescence images for whole wells of any size."
DESCRIPTION = """
Predict fluorescence images for whole wells of any size.

This command is completed by a later issue; until then it exits with code 2.
"""
IMPLEMENTED = False


def define_flags(flag_values: Any) -> None:
    """No flags yet beyond the common --json."""


def run(flag_values: Any, positional: list[str]) -> dict[str, Any]:
    raise NotImplementedError("isl predict is not implemented yet.")
