"""Atomic outputs: files and folders get the user's umask, nothing half-written stays."""

from __future__ import annotations

import os
import stat

import pytest

from isl.io import atomic


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_and_folders_are_readable_as_the_umask_allows(tmp_path, umask_022):
    atomic.write_text(tmp_path / "a.json", "{}\n")
    with atomic.temporary_path(tmp_path / "b.png") as temporary:
        open(temporary, "wb").write(b"x")
    with atomic.output_directory(tmp_path / "out") as directory:
        open(os.path.join(directory, "c.txt"), "w").write("c")
    assert _mode(tmp_path / "a.json") == 0o644
    assert _mode(tmp_path / "b.png") == 0o644
    assert _mode(tmp_path / "out") == 0o755


def test_a_stricter_umask_is_respected(tmp_path):
    previous = os.umask(0o077)
    try:
        atomic.write_text(tmp_path / "a.json", "{}\n")
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "a.json") == 0o600


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic.temporary_path(tmp_path / "b.png") as temporary:
            open(temporary, "wb").write(b"x")
            raise RuntimeError("writer failed")
    assert os.listdir(tmp_path) == []
