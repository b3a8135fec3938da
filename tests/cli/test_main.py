"""Tests for the `isl` dispatcher."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from isl.cli import main


def test_top_level_help_lists_every_command(capsys):
    assert main.run_command(["--help"]) == 0
    output = capsys.readouterr().out
    for name in main.COMMANDS:
        assert f"  {name} " in output


def test_command_help_explains_flags(capsys):
    for name in main.COMMANDS:
        assert main.run_command([name, "--help"]) == 0
        output = capsys.readouterr().out
        assert f"usage: isl {name}" in output
        assert "json:" in output


def test_unknown_command_and_bad_flag_exit_2(capsys):
    assert main.run_command(["nope"]) == 2
    assert main.run_command(["describe", "--no_such_flag=1"]) == 2
    assert "no_such_flag" in capsys.readouterr().err


def test_python_dash_m_runs_the_same_entry_point():
    completed = subprocess.run(
        [sys.executable, "-m", "isl", "--help"], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0
    assert "convert" in completed.stdout


def test_help_into_a_closed_pipe_ends_quietly():
    import subprocess
    import sys

    # `true` exits before isl writes, so every write meets a closed pipe.
    command = f"{sys.executable} -m isl --help | true; echo ${{PIPESTATUS[0]}}"
    finished = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in finished.stderr and "BrokenPipeError" not in finished.stderr, finished.stderr
    assert finished.stdout.strip() in ("0", "141")


def test_sigterm_in_a_command_exits_143_keeps_finished_outputs_and_removes_half_written_ones(tmp_path, monkeypatch,
                                                                                             capsys):
    import os
    import signal
    import types

    from isl.io import atomic

    command = types.ModuleType("fake_isl_command")
    command.SUMMARY = command.DESCRIPTION = "Writes two files; SIGTERM arrives during the second."
    command.define_flags = lambda flag_values: None
    command.stopped_hint = lambda flag_values: f"Finished files are in {tmp_path}."

    def run(flag_values, positional):
        atomic.write_text(str(tmp_path / "first.txt"), "done\n")
        with atomic.temporary_path(str(tmp_path / "second.txt")) as temporary:
            open(temporary, "w").write("half")
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # The handler runs at the next bytecode.
                pass
        raise AssertionError("SIGTERM did not stop the command")

    command.run = run
    monkeypatch.setitem(sys.modules, "fake_isl_command", command)
    monkeypatch.setitem(main.COMMANDS, "fake", "fake_isl_command")
    previous = signal.getsignal(signal.SIGTERM)
    assert main.run_command(["fake"]) == main.EXIT_TERMINATED == 143
    assert signal.getsignal(signal.SIGTERM) == previous  # The handler is restored.
    assert f"isl fake: stopped by SIGTERM. Finished files are in {tmp_path}." in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["first.txt"]


def test_the_sigterm_watcher_ends_a_command_stuck_in_native_code_after_its_grace(monkeypatch, capsys):
    import os
    import signal
    import threading

    exits = []
    monkeypatch.setattr(main.os, "_exit", exits.append)
    for handled, expected in ((False, [143]), (True, [])):
        read_fd, write_fd = os.pipe()
        os.write(write_fd, bytes([signal.SIGCHLD, signal.SIGTERM]))
        done = threading.Event()
        if handled:
            done.set()  # The main thread's handler ran in time.
        watcher = threading.Thread(target=main._watch_for_sigterm, args=(read_fd, 0.05, lambda: "isl x: stopped", done))
        watcher.start()
        watcher.join(5)
        os.close(write_fd)
        assert exits == expected
        exits.clear()
    assert "isl x: stopped" in capsys.readouterr().err


def test_a_failed_command_removes_the_empty_output_folders_it_made_and_keeps_finished_files(tmp_path, monkeypatch,
                                                                                          capsys):
    import types

    from isl import errors

    command = types.ModuleType("fake_isl_writer")
    command.SUMMARY = command.DESCRIPTION = "Makes its output folder, maybe writes a file, then fails."
    command.OUTPUT_FLAGS = ("output_dir",)

    def define_flags(flag_values):
        from absl import flags

        flags.DEFINE_string("output_dir", None, "Output.", flag_values=flag_values)
        flags.DEFINE_bool("write", False, "Write a file first.", flag_values=flag_values)

    def run(flag_values, positional):
        os.makedirs(os.path.join(flag_values.output_dir, "well_A1"))
        if flag_values.write:
            open(os.path.join(flag_values.output_dir, "well_A1", "done.png"), "w").close()
        raise errors.InputError("bad well")

    command.define_flags, command.run = define_flags, run
    monkeypatch.setitem(sys.modules, "fake_isl_writer", command)
    monkeypatch.setitem(main.COMMANDS, "fake", "fake_isl_writer")
    assert main.run_command(["fake", f"--output_dir={tmp_path}/new/out"]) == 2
    assert "bad well" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []  # new/out/well_A1 and the new/ above it are gone.
    assert main.run_command(["fake", f"--output_dir={tmp_path}/out", "--write"]) == 2
    assert os.listdir(tmp_path / "out" / "well_A1") == ["done.png"]
    (tmp_path / "kept").mkdir()
    assert main.run_command(["fake", f"--output_dir={tmp_path}/kept"]) == 2
    assert (tmp_path / "kept").is_dir()  # It was there before the command.


def test_help_cites_only_what_the_repository_holds(capsys):
    import importlib
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[2]
    texts = [main._top_level_help()]
    for name, module_name in main.COMMANDS.items():
        module = importlib.import_module(module_name)
        texts.append(main._command_help(name, module, main.make_flag_values(module)))
    text = "\n".join(texts)
    assert "isl_reference" not in text and "../shared" not in text  # Nor this project's own data folder.
    # Repository paths named in help (checkpoints, docs, data/README.md, isl/...) exist.
    cited = set(re.findall(r"(?<![\w./-])((?:checkpoints|docs|isl)/[\w./-]*\w|data/README\.md)", text))
    assert "checkpoints/condition_b_sample" in cited
    missing = sorted(path for path in cited if not (root / path).exists())
    assert not missing, missing


def test_command_help_into_head_ends_quietly():
    command = f"{sys.executable} -m isl predict --help | head -1; echo ${{PIPESTATUS[0]}}"
    finished = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in finished.stderr and "BrokenPipeError" not in finished.stderr, finished.stderr
    first, status = finished.stdout.strip().splitlines()
    assert first == "usage: isl predict [--flag=value ...]" and status in ("0", "141")


class _RecordingLibc:
    """A C library stand-in whose `mallopt` records its calls and succeeds (returns 1)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return 1


def test_configure_allocator_sets_arenas_and_a_fixed_mmap_threshold():
    libc = _RecordingLibc()
    chosen = main.configure_allocator(environ={}, libc=libc)
    assert chosen == {"MALLOC_ARENA_MAX": 2, "MALLOC_MMAP_THRESHOLD_": 1 << 20}
    assert libc.calls == [(-8, 2), (-3, 1 << 20)]  # glibc's M_ARENA_MAX and M_MMAP_THRESHOLD


def test_configure_allocator_leaves_a_tunable_the_user_set():
    libc = _RecordingLibc()
    chosen = main.configure_allocator(environ={"MALLOC_ARENA_MAX": "8"}, libc=libc)
    assert chosen == {"MALLOC_MMAP_THRESHOLD_": 1 << 20}
    assert libc.calls == [(-3, 1 << 20)]


def test_configure_allocator_reports_nothing_when_mallopt_refuses():
    class Refusing(_RecordingLibc):
        def mallopt(self, parameter: int, value: int) -> int:
            super().mallopt(parameter, value)
            return 0

    assert main.configure_allocator(environ={}, libc=Refusing()) == {}


def test_configure_allocator_on_glibc_sets_both_in_a_real_process():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    result = subprocess.run([sys.executable, "-c", "from isl.cli import main; print(main.configure_allocator())"],
                            capture_output=True, text=True, env=environment, check=True)
    assert result.stdout.strip() == "{'MALLOC_ARENA_MAX': 2, 'MALLOC_MMAP_THRESHOLD_': 1048576}"
