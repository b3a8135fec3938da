"""`isl train`: Train a model on TFRecords (tf.distribute strategies, resumable)."""

from __future__ import annotations

from typing import Any

SUMMARY = "Train a model on TFRecords (tf.distribute strategies, resumable)."
DESCRIPTION = """
Train a model on TFRecords (tf.distribute strategies, resumable).

This command is completed by a later issue; until then it exits with code 2.
"""
IMPLEMENTED = False


def define_flags(flag_values: Any) -> None:
    """No flags yet beyond the common --json."""


def run(flag_values: Any, positional: list[str]) -> dict[str, Any]:
    raise NotImplementedError("isl train is not implemented yet.")
