"""The progress line's ETA: never from the slow first step (graph tracing), so it does not read hours."""

from __future__ import annotations

import io

from isl import progress as progress_lib


def _clock(monkeypatch) -> list[float]:
    clock = [100.0]
    monkeypatch.setattr(progress_lib.time, "monotonic", lambda: clock[0])
    return clock


def test_no_eta_until_a_step_after_the_first_is_timed_then_without_the_first(monkeypatch):
    clock = _clock(monkeypatch)
    stream = io.StringIO()
    bar = progress_lib.Progress(10, label="predict", stream=stream, log_interval=0.0)
    clock[0] += 30.0  # The first tile: 10 s of tracing + 20 s of work.
    bar.update(1)
    assert "eta" not in stream.getvalue().splitlines()[-1]
    assert stream.getvalue().splitlines()[-1].endswith(" 30.0s")  # The elapsed time instead.
    clock[0] += 20.0
    bar.update(1)
    assert stream.getvalue().splitlines()[-1].endswith("eta 2m40s")  # 8 more at 20 s each.


def test_training_whose_first_step_compiles_for_a_minute_gets_a_sane_first_eta(monkeypatch):
    clock = _clock(monkeypatch)
    stream = io.StringIO()
    bar = progress_lib.Progress(2000, label="train", stream=stream, log_interval=0.0)
    clock[0] += 60.0  # Step 1: compilation.
    bar.update(1)
    for _ in range(3):  # Then 0.5 s per step.
        clock[0] += 0.5
        bar.update(1)
    lines = stream.getvalue().splitlines()
    assert all("eta" not in line for line in lines[:1])
    assert lines[-1].endswith("eta 16m38s")  # 1996 steps at 2 steps/s, not 2000 at 4/61 steps/s (8.5 h).
    assert " 2.00/s" in lines[-1]


def test_durations_read_as_seconds_minutes_or_hours():
    assert [progress_lib._duration(s) for s in (0, 59.4, 61, 3599, 3600, 11230)] == [
        "0s", "59s", "1m01s", "59m59s", "1h00m", "3h07m"]
    assert progress_lib.Progress(5, exclude_first=False, enabled=False).rate(100.0)[1] is False
