"""Progress as plain lines of text, for every wait longer than a few seconds.

A notebook saved by papermill or nbmake keeps what a cell printed, but a tqdm widget is
saved in its first state (``0%|          |``), which reads as a failure, and a terminal
bar redrawn with carriage returns becomes one long line in a log file. So long loops here
print a line when they start, at most every ``every`` seconds while they run, and one
when they end: ``infer test.jsonl: 12/40 videos (30%), 8 s, about 19 s left``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO, TypeVar

Item = TypeVar("Item")

PRINT_EVERY_SECONDS = 10.0


class TextProgress:
    """Counts ``total`` units of work and prints where it is, as whole lines."""

    def __init__(self, total: int, label: str, unit: str = "item", *, enabled: bool = True,
                 every: float = PRINT_EVERY_SECONDS, start_at: int = 0, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.label, self.unit, self.enabled, self.every = total, label, unit, enabled, every
        self.done = self.started_at_count = start_at
        self._stream, self._clock = stream, clock
        self._start = self._last_print = clock()
        self._closed = False
        if enabled and total > start_at:
            self._print(f"{label}: {start_at}/{total} {unit}s" + (" (resumed)" if start_at else "") + " ...")

    def _print(self, line: str) -> None:
        print(line, file=self._stream or sys.stdout, flush=True)

    def update(self, count: int = 1, note: str = "") -> None:
        self.done += count
        now = self._clock()
        if self.enabled and self.done < self.total and now - self._last_print >= self.every:
            self._last_print = now
            elapsed = now - self._start
            rate = (self.done - self.started_at_count) / elapsed if elapsed > 0 else 0.0
            left = f", about {(self.total - self.done) / rate:.0f} s left" if rate > 0 else ""
            self._print(f"{self.label}: {self.done}/{self.total} {self.unit}s ({100 * self.done / self.total:.0f}%), "
                        f"{elapsed:.0f} s{left}" + (f"; {note}" if note else ""))

    def close(self, note: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        if self.enabled and self.done > self.started_at_count:
            self._print(f"{self.label}: {self.done}/{self.total} {self.unit}s in {self._clock() - self._start:.0f} s"
                        + (f"; {note}" if note else ""))

    def __enter__(self) -> TextProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def track(items: Iterable[Item], label: str, unit: str = "item", *, total: int | None = None,
          enabled: bool = True) -> Iterator[Item]:
    """Iterate over ``items`` with a :class:`TextProgress` (``total`` defaults to ``len(items)``)."""
    count = total if total is not None else len(items)  # type: ignore[arg-type]
    with TextProgress(count, label, unit, enabled=enabled) as progress:
        for item in items:
            yield item
            progress.update()
