"""Progress while a run goes on: a rich live bar on a terminal, plain lines in CI logs.

Both go to stderr, so stdout keeps only the results. A post's name is shown as it is
(`runner.visible`; no rich markup read in it): only the bar's own colours reach the terminal."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, TextIO

from runner.visible import visible

if TYPE_CHECKING:
    from rich.progress import Progress

    from runner.report import PostOutcome


def say(text: str) -> None:
    """A line on stderr; what it names (a post, a file, an error) shown as it is."""
    print(f"runner: {visible(text)}", file=sys.stderr, flush=True)


class RunProgress:
    """`on_post_done` for `run_posts`: a line (or the bar's step) per post as it is settled."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._bar: Progress | None = None

    def post_done(self, outcome: PostOutcome, done: int, total: int) -> None:
        if self._bar is None and self.stream.isatty():
            self._start_bar(total)
        name = visible(outcome.path)
        if self._bar is not None:
            self._bar.update(self._task, completed=done, description=name)
        else:
            elapsed = time.monotonic() - self.started
            print(f"[{done}/{total}] {name} ({elapsed:.1f} s)", file=self.stream, flush=True)

    def _start_bar(self, total: int) -> None:
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
                             TimeElapsedColumn(), TextColumn("{task.description}", markup=False),
                             console=Console(file=self.stream), transient=True)
        self._task = self._bar.add_task("", total=total)
        self._bar.start()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
