"""The progress line's ETA leaves out a slow first step (graph tracing) once later steps are timed."""

from __future__ import annotations

import io

from isl import progress as progress_lib


def test_eta_from_the_first_step_then_without_it(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress_lib.time, "monotonic", lambda: clock[0])
    stream = io.StringIO()
    bar = progress_lib.Progress(10, label="predict", stream=stream, log_interval=0.0, exclude_first=True)
    clock[0] += 30.0  # The first tile: 10 s of tracing + 20 s of work.
    bar.update(1)
    assert stream.getvalue().splitlines()[-1].endswith("eta 270s")  # 9 more at the first tile's pace.
    clock[0] += 20.0
    bar.update(1)
    assert stream.getvalue().splitlines()[-1].endswith("eta 160s")  # 8 more at 20 s each.
