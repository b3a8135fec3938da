"""A small progress bar and periodic status line for long work, on stderr.

Library functions take an optional `progress` callback or a `Progress`
object; the CLI decides whether to show it. Nothing here reads flags.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """A text progress bar: `label [#####.....] 12/40 3.1 it/s eta 9s`.

    Redraws at most every `min_interval` seconds. When the stream is not a
    terminal (logs, CI) it prints a plain status line every `log_interval`
    seconds instead, so long runs still show life.

    The rate and the ETA leave out the first update: the first step of a
    training run or the first tile of a prediction carries the graph tracing
    and compilation (a minute against half a second per step), and an ETA
    from it read hours. Until a second update is timed the line shows the
    elapsed time instead of an ETA.

    Args:
        total: the number of steps, or None when unknown.
        label: what is being done.
        stream: where to write (stderr by default).
        enabled: False makes every call a no-op.
        exclude_first: True (default) times the rate from the first update
            on; False from the start, counting the first update too.
    """

    def __init__(
        self,
        total: int | None,
        label: str = "",
        stream: TextIO | None = None,
        enabled: bool = True,
        min_interval: float = 0.1,
        log_interval: float = 10.0,
        exclude_first: bool = True,
    ) -> None:
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.count = 0
        self.postfix = ""
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._min_interval = min_interval if self._interactive else log_interval
        self._exclude_first = exclude_first
        self._first: tuple[int, float] | None = None

    def update(self, steps: int = 1, postfix: str = "") -> None:
        """Advances by `steps`; `postfix` is shown after the counters."""
        self.count += steps
        if self._exclude_first and self._first is None:
            self._first = (self.count, time.monotonic())
        if postfix:
            self.postfix = postfix
        now = time.monotonic()
        finished = self.total is not None and self.count >= self.total
        if self.enabled and (now - self._last_draw >= self._min_interval or finished):
            self._last_draw = now
            self._draw(now, final=False)

    def close(self) -> None:
        """Draws the final state and ends the line."""
        if self.enabled:
            self._draw(time.monotonic(), final=True)

    def rate(self, now: float) -> tuple[float, bool]:
        """Steps per second, and whether it is timed well enough for an ETA.

        With `exclude_first`, timed from the first update once a later one
        exists (before that, over the first update, and not for an ETA).
        """
        elapsed = max(now - self._start, 1e-9)
        if not self._exclude_first:
            return self.count / elapsed, self.count > 0
        if self._first is not None and self.count > self._first[0] and now > self._first[1]:
            return (self.count - self._first[0]) / (now - self._first[1]), True
        return self.count / elapsed, False

    def _draw(self, now: float, final: bool) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate, timed = self.rate(now)
        if self.total:
            fraction = min(self.count / self.total, 1.0)
            filled = int(round(24 * fraction))
            bar = "[" + "#" * filled + "." * (24 - filled) + "]"
            if not final and timed and rate > 0:
                eta = f" eta {_duration((self.total - self.count) / rate)}"
            else:
                eta = f" {elapsed:.1f}s"
            counters = f"{bar} {self.count}/{self.total}"
        else:
            eta = f" {elapsed:.1f}s"
            counters = f"{self.count}"
        line = f"{self.label} {counters} {rate:.2f}/s{eta}"
        if self.postfix:
            line += f" {self.postfix}"
        if self._interactive:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _duration(seconds: float) -> str:
    """`42s`, `12m05s` or `3h07m`."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
