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

    Args:
        total: the number of steps, or None when unknown.
        label: what is being done.
        stream: where to write (stderr by default).
        enabled: False makes every call a no-op.
    """

    def __init__(
        self,
        total: int | None,
        label: str = "",
        stream: TextIO | None = None,
        enabled: bool = True,
        min_interval: float = 0.1,
        log_interval: float = 10.0,
        exclude_first: bool = False,
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
        # With exclude_first, the rate leaves out the first update (e.g. a
        # run that includes graph tracing) once later steps have a time.
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

    def _draw(self, now: float, final: bool) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = self.count / elapsed
        if self._first is not None and self.count > self._first[0] and now > self._first[1]:
            rate = (self.count - self._first[0]) / (now - self._first[1])
        if self.total:
            fraction = min(self.count / self.total, 1.0)
            filled = int(round(24 * fraction))
            bar = "[" + "#" * filled + "." * (24 - filled) + "]"
            remaining = (self.total - self.count) / rate if rate > 0 else float("inf")
            eta = f" eta {remaining:.0f}s" if not final and remaining != float("inf") else f" {elapsed:.1f}s"
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
