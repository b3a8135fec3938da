"""`isl export`: Export a trained model as a TensorFlow SavedModel with serving signatures."""

from __future__ import annotations

from typing import Any

SUMMARY = "Export a trained model as a TensorFlow SavedModel with serving signatures."
DESCRIPTION = """
Export a trained model as a TensorFlow SavedModel with serving signatures.

This command is completed by a later issue; until then it exits with code 2.
"""
IMPLEMENTED = False


def define_flags(flag_values: Any) -> None:
    """No flags yet beyond the common --json."""


def run(flag_values: Any, positional: list[str]) -> dict[str, Any]:
    raise NotImplementedError("isl export is not implemented yet.")
