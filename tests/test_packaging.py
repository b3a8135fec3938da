"""Packaging: one version source, the linter's settings, and the code passing them."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

import isl

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_version_has_one_source_that_setup_py_reads():
    assert 'version="' not in (ROOT / "setup.py").read_text()
    completed = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, capture_output=True,
                               text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip().splitlines()[-1] == isl.__version__


def test_ruff_is_configured_and_run_by_ci():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+.
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]
    assert settings["line-length"] == 120
    assert {"E", "W", "F"} <= set(settings["lint"]["select"])
    assert "ruff check isl tests scripts" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is in the [test] extra; not installed here")
def test_the_code_passes_ruff():
    completed = subprocess.run(["ruff", "check", "isl", "tests", "scripts"], cwd=ROOT, capture_output=True,
                               text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout[-3000:]
