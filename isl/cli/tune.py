"""`isl tune`: Search block hyperparameters with Keras Tuner."""

from __future__ import annotations

from typing import Any

SUMMARY = "Search block hyperparameters with Keras Tuner."
DESCRIPTION = """
Search block hyperparameters with Keras Tuner.

This command is completed by a later issue; until then it exits with code 2.
"""
IMPLEMENTED = False


def define_flags(flag_values: Any) -> None:
    """No flags yet beyond the common --json."""


def run(flag_values: Any, positional: list[str]) -> dict[str, Any]:
    raise NotImplementedError("isl tune is not implemented yet.")
