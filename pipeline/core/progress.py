"""Progress for long work: a rich bar on a terminal, periodic log lines elsewhere.

Cluster jobs are watched through `ray job logs` and nightly cron mail, where a redrawn bar is noise;
there the same progress goes to the log every few seconds as `done/total, rate, ETA`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

log = logging.getLogger("pipeline.core.progress")
T = TypeVar("T")


def format_eta(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class ProgressReporter:
    """Counts units of work and reports them; `update(extra=...)` appends a status text."""

    def __init__(self, description: str, total: int, unit: str = "it", log_every_s: float = 5.0):
        self.description, self.total, self.unit = description, total, unit
        self.done = 0
        self._start = self._last_log = time.monotonic()
        self._log_every_s = log_every_s
        self._bar: Progress | None = None
        if sys.stderr.isatty():
            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), TextColumn("{task.fields[extra]}"),
                transient=False,
            )
            self._task = self._bar.add_task(description, total=total, rate="", extra="")
            self._bar.start()

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self._start
        return self.done / elapsed if elapsed > 0 else 0.0

    def summary(self, extra: str = "") -> str:
        rate = self.rate
        eta = format_eta((self.total - self.done) / rate) if rate > 0 else "?"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        text = f"{self.description}: {self.done}/{self.total} ({pct:.0f}%), {rate:.2f} {self.unit}/s, ETA {eta}"
        return f"{text}, {extra}" if extra else text

    def update(self, advance: int = 1, extra: str = "") -> None:
        self.done += advance
        now = time.monotonic()
        if self._bar is not None:
            self._bar.update(self._task, advance=advance, rate=f"{self.rate:.2f} {self.unit}/s", extra=extra)
        elif now - self._last_log >= self._log_every_s or self.done >= self.total:
            self._last_log = now
            log.info(self.summary(extra))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(items: Iterable[T], description: str, total: int, unit: str = "it") -> Iterator[T]:
    """Iterate `items` while reporting progress."""
    with ProgressReporter(description, total, unit) as reporter:
        for item in items:
            yield item
            reporter.update()
