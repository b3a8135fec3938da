"""Atomic writes: the user's umask; under SIGKILL the final name holds the old or the new output, never a part."""

from __future__ import annotations

import os
import stat
import signal
import subprocess
import sys
import textwrap

import pytest

from isl.io import atomic

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _killed(code: str) -> None:
    """Runs `code` in a fresh Python that SIGKILLs itself where the code says `die()`."""
    prelude = "import os, signal\nfrom isl.io import atomic\ndef die():\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    process = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=REPOSITORY_ROOT,
                             env={**os.environ, "PYTHONPATH": REPOSITORY_ROOT}, timeout=60)
    assert process.returncode == -signal.SIGKILL


def _tree(path) -> dict[str, bytes]:
    return {
        os.path.relpath(os.path.join(root, name), path): open(os.path.join(root, name), "rb").read()
        for root, _, names in os.walk(path) for name in names
    }


def test_a_file_writer_killed_mid_write_leaves_the_old_file_and_the_next_write_cleans_up(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")
    _killed(f"""
        with atomic.temporary_path({str(target)!r}) as temporary:
            open(temporary, "w").write("half of the new")
            die()
    """)
    assert target.read_text() == "old"
    leftovers = [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")]
    assert len(leftovers) == 1
    atomic.write_text(target, "new")
    assert sorted(os.listdir(tmp_path)) == ["summary.json"] and target.read_text() == "new"


@pytest.mark.parametrize("moment", ["while_writing", "between_the_renames"])
def test_a_folder_writer_killed_anywhere_leaves_the_previous_output(tmp_path, moment):
    target = tmp_path / "records"
    target.mkdir()
    (target / "train-00000-of-00001.tfrecord").write_bytes(b"old shard")
    (target / "dataset.json").write_text("{}")
    before = _tree(target)
    kill = "die()" if moment == "while_writing" else "pass"
    _killed(f"""
        real_replace = os.replace
        calls = []
        def replace(source, destination):
            calls.append(destination)
            real_replace(source, destination)
            if {moment == "between_the_renames"} and len(calls) == 1:
                die()  # The old output is renamed aside, the new one not yet in place.
        os.replace = replace
        with atomic.output_directory({str(target)!r}) as temporary:
            open(os.path.join(temporary, "train-00000-of-00001.tfrecord"), "wb").write(b"new, half")
            {kill}
    """)
    if moment == "between_the_renames":
        assert not target.exists()  # The kill's window ...
        assert atomic.recover_previous(target)  # ... which the next writer (or a reader) undoes.
    assert _tree(target) == before
    atomic.remove_leftovers(target)
    assert sorted(os.listdir(tmp_path)) == ["records"]


def test_the_next_output_directory_recovers_and_cleans_before_writing(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "saved_model.pb").write_bytes(b"old")
    os.replace(target, tmp_path / "export.old-.tmp-export-abcd1234")  # As a kill between renames leaves it.
    (tmp_path / ".tmp-export-wxyz9876").mkdir()  # A killed writer's folder.
    with atomic.output_directory(target) as temporary:
        assert sorted(os.listdir(tmp_path)) == sorted(["export", os.path.basename(temporary)])
        assert (target / "saved_model.pb").read_bytes() == b"old"
        open(os.path.join(temporary, "saved_model.pb"), "wb").write(b"new")
    assert sorted(os.listdir(tmp_path)) == ["export"] and (target / "saved_model.pb").read_bytes() == b"new"


def test_a_full_disk_inside_a_writer_leaves_nothing_and_raises(tmp_path):
    import errno

    target = tmp_path / "out"
    target.mkdir()
    (target / "a.png").write_bytes(b"old")
    with pytest.raises(OSError) as caught:
        with atomic.output_directory(target) as temporary:
            open(os.path.join(temporary, "a.png"), "wb").write(b"new")
            raise OSError(errno.ENOSPC, "No space left on device", os.path.join(temporary, "b.png"))
    assert caught.value.errno == errno.ENOSPC
    assert sorted(os.listdir(tmp_path)) == ["out"] and (target / "a.png").read_bytes() == b"old"



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
