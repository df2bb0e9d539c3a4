"""Recorded output against a fresh run, for output that varies for good reasons. Pure: no I/O.

`matches` cuts both texts into numbers and the text between them (pytest's NUMBER doctest
option, Documenter.jl's doctest filters): the text between must be the same, and each pair of
numbers within a relative tolerance. `unordered` compares lines as a multiset (Go's `//
Unordered output:`). `blocks_match` applies that to the fences of two output blocks, every
other line (label, tables, figure links, end line) compared exactly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal

from runner.markers import OUTPUT_MARKERS

# A number not glued to a word (`float64`, `x1` stay text), its sign, point and exponent kept.
NUMBER = re.compile(r"((?<![\w.])[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)")
ABSOLUTE_FLOOR = Decimal("1e-12")  # numbers nearer than this match: noise around 0 (1e-17, -2e-17)


def matches(recorded: str, fresh: str, tolerance: float, unordered: bool) -> bool:
    """Whether `fresh` is `recorded` up to the tolerance (relative; 0: numbers as written) and,
    when `unordered`, the order of lines."""
    if recorded == fresh:
        return True
    if unordered:
        return _same_lines(recorded.split("\n"), fresh.split("\n"), tolerance)
    return _within(recorded, fresh, tolerance)


def blocks_match(recorded: Sequence[str], fresh: Sequence[str], tolerance: float,
                 unordered: bool) -> bool:
    """Two output blocks, as lines: the same lines outside their `runner:output` and
    `runner:stderr` fences (line endings aside), and the text in each pair of fences matching."""
    old, new = _pieces(recorded), _pieces(fresh)
    return len(old) == len(new) and all(
        a == b or (a[0] and b[0] and matches(a[1], b[1], tolerance, unordered))
        for a, b in zip(old, new, strict=True))


def _within(recorded: str, fresh: str, tolerance: float) -> bool:
    old, new = NUMBER.split(recorded), NUMBER.split(fresh)  # text, number, text, ..., text
    return (tolerance > 0 and len(old) == len(new) and old[::2] == new[::2]
            and all(_close(a, b, tolerance) for a, b in zip(old[1::2], new[1::2], strict=True)))


def _close(recorded: str, fresh: str, tolerance: float) -> bool:
    """Integers (counts, sizes) are equal or not; floats are within the tolerance, or the fresh
    one rounds to the recorded one when that one was written with fewer digits (pytest's rule)."""
    if recorded == fresh:
        return True
    if _integer(recorded) or _integer(fresh):
        return False
    old, new = Decimal(recorded), Decimal(fresh)
    try:
        gap = abs(old - new)
        if gap <= max(Decimal(repr(tolerance)) * max(abs(old), abs(new)), ABSOLUTE_FLOOR):
            return True
    except ArithmeticError:  # an exponent past what Decimal holds
        return False
    place, fresh_place = old.as_tuple().exponent, new.as_tuple().exponent  # the last digit's
    assert isinstance(place, int) and isinstance(fresh_place, int)  # finite, by NUMBER
    return place > fresh_place and gap * 2 <= Decimal(1).scaleb(place)


def _integer(number: str) -> bool:
    return not any(c in number for c in ".eE")


def _same_lines(recorded: list[str], fresh: list[str], tolerance: float) -> bool:
    """The lines as multisets: lines of one shape (their text and integers) paired in the order
    of their floats, and each pair within the tolerance."""
    old, new = _by_shape(recorded), _by_shape(fresh)
    return old.keys() == new.keys() and all(
        len(old[shape]) == len(new[shape])
        and all(a == b or _within(a, b, tolerance)
                for a, b in zip(sorted(old[shape], key=_floats), sorted(new[shape], key=_floats),
                                strict=True))
        for shape in old)


def _by_shape(lines: list[str]) -> dict[tuple[str, ...], list[str]]:
    shapes: dict[tuple[str, ...], list[str]] = {}
    for line in lines:
        tokens = NUMBER.split(line)
        shape = tuple(t if n % 2 == 0 or _integer(t) else "#" for n, t in enumerate(tokens))
        shapes.setdefault(shape, []).append(line)
    return shapes


def _floats(line: str) -> tuple[tuple[Decimal, ...], str]:
    """A line's sort key within its shape: its floats' values, then its text (for ties)."""
    return tuple(Decimal(t) for t in NUMBER.split(line)[1::2] if not _integer(t)), line


def _pieces(lines: Sequence[str]) -> list[tuple[bool, str]]:
    """A block as (False, line) for each line outside output fences (fence lines included) and
    (True, text) for the text inside each fence; an unclosed fence's text ends it."""
    pieces: list[tuple[bool, str]] = []
    closer: str | None = None  # the line that closes the open output fence
    text: list[str] = []
    for line in (raw.rstrip("\r\n") for raw in lines):
        if closer is None:
            pieces.append((False, line))
            closer, text = _closer(line), []
        elif line == closer:
            pieces += [(True, "\n".join(text)), (False, line)]
            closer = None
        else:
            text.append(line)
    return pieces if closer is None else [*pieces, (True, "\n".join(text))]


def _closer(line: str) -> str | None:
    """For a line that opens a `runner:output` or `runner:stderr` fence, the line closing it
    (its container prefix and backticks)."""
    body = line.lstrip(" \t>")
    ticks = body[:len(body) - len(body.lstrip("`"))]
    if len(ticks) < 3 or not any(word in OUTPUT_MARKERS for word in body.split()):
        return None
    return line[:len(line) - len(body)] + ticks
