"""Progress while a run goes on: a rich live bar on a terminal, plain lines in CI logs.

Both go to stderr, so stdout keeps only the results."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.progress import Progress


class RunProgress:
    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total, self.done = total, 0
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._bar: Progress | None = None
        if self.stream.isatty() and total:
            # rich only on a terminal: CI logs do not pay for its import
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(TextColumn("posts"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.description}"),
                                 console=Console(file=self.stream), transient=True)
            self._task = self._bar.add_task("", total=total)
            self._bar.start()

    def post_done(self, path: str) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, description=path)
        else:
            elapsed = time.monotonic() - self.started
            print(f"[{self.done}/{self.total}] {path} ({elapsed:.1f} s)", file=self.stream,
                  flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
