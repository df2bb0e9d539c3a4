"""The runner's marker syntax as one table, as jupytext's `JUPYTEXT_FORMATS` is a table of
formats: each fence marker (`runner:KEY[=VALUE]` after a Python fence's language) is a
`MarkerSpec` row of `MARKERS`, and everything about markers is derived from the rows: reading
a fence's info string into `model.Markers` (one loop), every error message (unknown marker,
with the known ones and a near miss; missing value; value given to a flag; bad value), writing
`Markers` back as info-string words, and the README's marker table (`markers_table`).

A new marker is a row here and a field of `Markers`; what uses it reads the field.
The words of the output blocks (`runner:output`, `runner:stderr` fences) and the hidden-code
comment forms are the runner's syntax too, so they are named here. Pure: no I/O.
"""

from __future__ import annotations

import difflib
import math
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from runner.errors import PostError
from runner.model import Markers

PREFIX = "runner:"

# The output block's fences: the stream each word records (`writeback` writes them,
# `markdown`, `compare` and `notebooks` read them back).
OUTPUT_FENCES: Mapping[str, str] = {"stdout": f"{PREFIX}output", "stderr": f"{PREFIX}stderr"}
OUTPUT_MARKERS: Mapping[str, str] = {word: stream for stream, word in OUTPUT_FENCES.items()}

# Hidden code: a comment that opens with a line `<!-- runner:hidden` and ends with a line
# `-->`, or in MDX (no HTML comments) a JSX comment `{/* runner:hidden` ... `*/}`.
HIDDEN_OPEN = f"<!-- {PREFIX}hidden"
HIDDEN_CLOSE = "-->"
MDX_HIDDEN_OPEN = f"{{/* {PREFIX}hidden"
MDX_HIDDEN_CLOSE = "*/}"


# --- what a marker's value may be ------------------------------------------------------------


@dataclass(frozen=True)
class Nothing:
    """A flag: `runner:unordered`; a value given to it is an error."""

    def usage(self) -> str:
        return ""

    def problem(self, key: str, value: str | None) -> str | None:
        return None if value is None else f"marker '{PREFIX}{key}' takes no value"

    def word(self, key: str, raw: str) -> str:
        return f"{PREFIX}{key}"


@dataclass(frozen=True)
class Text:
    """Free text, as a name: `runner:env=ml`; one that is not `required` may be left out
    (`runner:skip`, `runner:skip="needs network"`)."""

    placeholder: str
    required: bool = True

    def usage(self) -> str:
        return f"={self.placeholder}" if self.required else f"[={self.placeholder}]"

    def problem(self, key: str, value: str | None) -> str | None:
        return f"marker '{PREFIX}{key}' needs a value" if self.required and not value else None

    def word(self, key: str, raw: str) -> str:
        return f"{PREFIX}{key}" + (f"={shlex.quote(raw)}" if raw or self.required else "")


@dataclass(frozen=True)
class Number(Text):
    """A number in a range, each end in or out: `runner:timeout=60`."""

    low: float = -math.inf
    high: float = math.inf
    low_in: bool = True  # whether `low` itself is a good value
    high_in: bool = True
    meaning: str = "a number"  # what a good value is, for the error message

    def holds(self, number: float) -> bool:
        """Whether the number is in the range (never NaN)."""
        above = self.low <= number if self.low_in else self.low < number
        below = number <= self.high if self.high_in else number < self.high
        return above and below

    def problem(self, key: str, value: str | None) -> str | None:
        if not value:
            return super().problem(key, value)
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if self.holds(number):
            return None
        return f"{PREFIX}{key} must be {self.meaning}, not '{value}'"


@dataclass(frozen=True)
class Choice:
    """One of a few words, each with what it means: `runner:output=none`."""

    choices: tuple[tuple[str, str], ...]  # (word, what it does)

    def usage(self) -> str:
        return "=" + "|".join(word for word, _ in self.choices)

    def problem(self, key: str, value: str | None) -> str | None:
        if not value:
            return f"marker '{PREFIX}{key}' needs a value"
        if any(value == word for word, _ in self.choices):
            return None
        listed = ", ".join(f"{word} ({does})" for word, does in self.choices)
        some = "one value" if len(self.choices) == 1 else "one of"
        return f"{PREFIX}{key} takes {some}, {listed}, not '{value}'"

    def word(self, key: str, raw: str) -> str:
        return f"{PREFIX}{key}={raw}"


@dataclass(frozen=True)
class Assignment(Text):
    """`NAME=VALUE`, a name as a shell's variable: `runner:env-var=TZ=UTC`."""

    def problem(self, key: str, value: str | None) -> str | None:
        name, equals, _ = (value or "").partition("=")
        if not value:
            return super().problem(key, value)
        if not equals or not name.isidentifier() or not name.isascii():
            return f"{PREFIX}{key} takes NAME=VALUE (NAME letters, digits, _), not '{value}'"
        if "\0" in value:
            return f"{PREFIX}{key}: an environment variable cannot hold a NUL character"
        return None


Takes = Nothing | Text | Number | Choice | Assignment

# The two ranges the project's `[tool.runner]` settings of the same name share (`config`).
TIMEOUT = Number("SECONDS", low=0, low_in=False, high_in=False,
                 meaning="a positive number of seconds (finite)")
TOLERANCE = Number("RELATIVE", low=0, high=1, high_in=False,
                   meaning="a relative tolerance from 0 (exact) below 1, like 1e-6")


# --- the table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MarkerSpec:
    """One fence marker: `runner:KEY`, what value it takes, the `Markers` field it sets (to
    `convert` of the value as written, "" for none), and what the README says of it."""

    key: str
    takes: Takes
    field: str  # of model.Markers
    convert: Callable[[str], Any]
    doc: str  # one line, Markdown, for the README's table
    examples: tuple[str, ...]  # words as an author writes them, each a valid marker
    repeats: bool = False  # may be given more than once: the field is a tuple of each value,
    # in the order written

    @property
    def usage(self) -> str:
        """`runner:timeout=SECONDS`: the marker's form, for the "known:" list."""
        return f"{PREFIX}{self.key}{self.takes.usage()}"


def _true(_: str) -> bool:
    return True


def _false(_: str) -> bool:
    return False


def _same(value: str) -> str:
    return value


def _assignment(value: str) -> tuple[str, str]:
    name, _, text = value.partition("=")
    return name, text


MARKERS: tuple[MarkerSpec, ...] = (
    MarkerSpec("skip", Text("REASON", required=False), "skip", _same,
               "do not run; reported as skipped with the reason",
               ("runner:skip", 'runner:skip="needs network"')),
    MarkerSpec("parameters", Nothing(), "parameters", _true,
               "this snippet declares the post's parameters (see `--param`)",
               ("runner:parameters",)),
    MarkerSpec("raises", Text("ERROR"), "raises", _same,
               "the snippet must raise this; its last traceback line is the output",
               ("runner:raises=FileNotFoundError",)),
    MarkerSpec("env", Text("NAME"), "env", _same, "run in this environment",
               ("runner:env=fastapi",)),
    MarkerSpec("timeout", TIMEOUT, "timeout", float,
               "seconds for this snippet, at most the run's (`--timeout`, else `[tool.runner] "
               "timeout`, 300): a marker lowers the limit, never raises it",
               ("runner:timeout=120",)),
    MarkerSpec("tolerance", TOLERANCE, "tolerance", float,
               "numbers in its text output match within this relative tolerance (default "
               "`[tool.runner] tolerance`, else 0: exact)",
               ("runner:tolerance=1e-3",)),
    MarkerSpec("unordered", Nothing(), "unordered", _true,
               "its output lines match in any order (a loop over a set or dict, threads)",
               ("runner:unordered",)),
    MarkerSpec("output", Choice((("none", "run it, record nothing"),)), "record_output", _false,
               "run it (it must not raise), record no output: a training log, say",
               ("runner:output=none",)),
    MarkerSpec("env-var", Assignment("NAME=VALUE"), "variables", _assignment,
               "its session's kernel starts with this environment variable (repeatable; "
               "where two fences of a session name the same variable, the later one's value)",
               ("runner:env-var=TF_CPP_MIN_LOG_LEVEL=3", 'runner:env-var="GREETING=hi there"'),
               repeats=True),
)

BY_KEY: Mapping[str, MarkerSpec] = {spec.key: spec for spec in MARKERS}


def spec(key: str) -> MarkerSpec:
    """The row of a marker by its key (`timeout`): a KeyError for no such marker."""
    return BY_KEY[key]


# --- info string -> Markers ------------------------------------------------------------------


def parse_markers(path: str, line: int, info: str) -> Markers:
    """`python runner:skip="needs network" runner:timeout=60` -> Markers; a bad marker is a
    one-line PostError at the fence. Words without the prefix (`title="x.py"`) are not ours."""
    try:
        words = shlex.split(info)
    except ValueError as exc:
        raise PostError(f"cannot read the fence's info string: {exc}", path, line) from exc
    values: dict[str, Any] = {}
    for word in words[1:]:
        if not word.startswith(PREFIX):
            continue
        key, equals, value = word[len(PREFIX):].partition("=")
        row = BY_KEY.get(key)
        if row is None:
            raise PostError(unknown(word), path, line)
        problem = row.takes.problem(key, value if equals else None)
        if problem is not None:
            raise PostError(problem, path, line)
        converted = row.convert(value)
        values[row.field] = (*values.get(row.field, ()), converted) if row.repeats else converted
    return Markers(**values)


def unknown(word: str) -> str:
    """The message for a `runner:` word that is no marker: a near miss named, all listed."""
    key = word[len(PREFIX):].partition("=")[0]
    close = difflib.get_close_matches(key, list(BY_KEY), n=1, cutoff=0.6)
    hint = f", did you mean '{BY_KEY[close[0]].usage}'?" if close else ""
    known = ", ".join(row.usage for row in MARKERS)
    return f"unknown marker '{word}'{hint} (known: {known})"


# --- Markers -> info string ------------------------------------------------------------------


def format_markers(markers: Markers) -> str:
    """The marker words that `parse_markers` reads back as these Markers (defaults left out),
    in the table's order: `runner:env=ml runner:timeout=60.0`."""
    defaults = Markers()
    words = [_word(row, value) for row in MARKERS
             if getattr(markers, row.field) != getattr(defaults, row.field)
             for value in (getattr(markers, row.field) if row.repeats
                           else [getattr(markers, row.field)])]
    return " ".join(words)


def _word(row: MarkerSpec, value: Any) -> str:
    """The word that sets the row's field to `value`: the value as written for text and names,
    the shortest exact float for numbers, the flag or the choice that converts to it."""
    if isinstance(row.takes, Number):
        return row.takes.word(row.key, repr(value))
    if isinstance(row.takes, Choice):
        written = next(word for word, _ in row.takes.choices if row.convert(word) == value)
        return row.takes.word(row.key, written)
    if isinstance(row.takes, Assignment):
        return row.takes.word(row.key, "=".join(value))
    return row.takes.word(row.key, "" if isinstance(value, bool) else str(value))


# --- the README's table ----------------------------------------------------------------------


def markers_table() -> str:
    """The README's marker table, in Markdown: one row a marker, its examples and its doc."""
    rows = ["| marker | meaning |", "|---|---|"]
    for row in MARKERS:
        examples = " or ".join(f"`{example}`" for example in row.examples)
        rows.append(f"| {examples} | {row.doc} |")
    return "\n".join(rows) + "\n"



TABLE_BEGIN = "<!-- markers: made from runner/markers.py by `python tools/markers_table.py` -->"
TABLE_END = "<!-- markers: end -->"


def in_readme(readme: str) -> str:
    """The README with the text between its TABLE_BEGIN and TABLE_END lines replaced by
    `markers_table()` between blank lines, so every renderer ends the comments and the table
    where they end (the same text when it is up to date: cog's `--check`)."""
    head, begin, rest = readme.partition(TABLE_BEGIN + "\n")
    _, end, tail = rest.partition(TABLE_END + "\n")
    if not begin or not end:
        raise ValueError(f"the README has no '{TABLE_BEGIN}' ... '{TABLE_END}' lines")
    return head + begin + "\n" + markers_table() + "\n" + end + tail
