"""`isl evaluate`: Score predictions against ground truth (Pearson r, calibration, panels)."""

from __future__ import annotations

from typing import Any

SUMMARY = "Score predictions against ground truth (Pearson r, calibration, panels)."
DESCRIPTION = """
Score predictions against ground truth (Pearson r, calibration, panels).

This command is completed by a later issue; until then it exits with code 2.
"""
IMPLEMENTED = False


def define_flags(flag_values: Any) -> None:
    """No flags yet beyond the common --json."""


def run(flag_values: Any, positional: list[str]) -> dict[str, Any]:
    raise NotImplementedError("isl evaluate is not implemented yet.")
