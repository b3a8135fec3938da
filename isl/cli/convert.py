"""`isl convert`: Convert folders of microscope images into sharded TFRecords."""

from __future__ import annotations

from typing import Any

SUMMARY = "Convert folders of microscope images into sharded TFRecords."
DESCRIPTION = """
Convert folders of microscope images into sharded TFRecords.

This command is completed by a later issue; until then it exits with code 2.
"""
IMPLEMENTED = False


def define_flags(flag_values: Any) -> None:
    """No flags yet beyond the common --json."""


def run(flag_values: Any, positional: list[str]) -> dict[str, Any]:
    raise NotImplementedError("isl convert is not implemented yet.")
