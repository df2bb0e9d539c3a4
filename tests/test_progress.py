"""Progress lines and the live bar: a post's name shown as it is, the bar's own colours kept."""

from __future__ import annotations

import io
import re

from runner.progress import RunProgress
from runner.report import PostOutcome

NAME = "posts/\x1b]52;c;ZXZpbA==\x07[bold red]x\x1b[32m\u202e.md"  # OSC 52, markup, colour, RLO
SHOWN = "posts/\\x1b]52;c;ZXZpbA==\\x07[bold red]x\\x1b[32m\\u202e.md"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_line_shows_the_posts_name_as_it_is() -> None:
    log = io.StringIO()
    RunProgress(log).post_done(PostOutcome(NAME, "passed"), 1, 2)
    assert log.getvalue().startswith(f"[1/2] {SHOWN} (")
    assert re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]", log.getvalue()) is None


def test_the_bar_keeps_its_colours_and_shows_the_name_as_it_is() -> None:
    terminal = Terminal()
    progress = RunProgress(terminal)
    progress.post_done(PostOutcome(NAME, "passed"), 1, 1)
    progress.close()
    drawn = terminal.getvalue()
    assert "\x1b[" in drawn  # rich's own: the bar is drawn in colour
    assert SHOWN[:30] in drawn and "[bold red]x" in drawn  # the name's markup is text
    assert "\x1b]52" not in drawn and "\u202e" not in drawn and "x\x1b[32m" not in drawn
