"""runner.markers: the table of fence markers and what is made from it (parsing, errors,
formatting back, the README's table). No kernel."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.errors import PostError
from runner.markdown import parse
from runner.markers import (
    MARKERS,
    PREFIX,
    TABLE_BEGIN,
    TABLE_END,
    Assignment,
    Choice,
    MarkerSpec,
    Nothing,
    Number,
    Text,
    format_markers,
    in_readme,
    markers_table,
    parse_markers,
)
from runner.model import Markers

README = Path(__file__).resolve().parent.parent / "README.md"
TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)


def raw_values(row: MarkerSpec) -> st.SearchStrategy[str]:
    """Values as an author may write them for this row, each valid."""
    takes = row.takes
    if isinstance(takes, Nothing):
        return st.just("")
    if isinstance(takes, Number):
        numbers = st.floats(takes.low, takes.high, exclude_min=not takes.low_in,
                            exclude_max=not takes.high_in, allow_nan=False,
                            allow_infinity=False)
        return st.builds(lambda x, how: how.format(x), numbers,
                         st.sampled_from(["{!r}", "{:e}", "{:.17g}", "{!r:0>30}"])).filter(
            lambda written: takes.holds(float(written)))
    if isinstance(takes, Choice):
        return st.sampled_from([word for word, _ in takes.choices])
    if isinstance(takes, Assignment):
        names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
        return st.builds(lambda name, value: f"{name}={value}", names, TEXT)
    assert isinstance(takes, Text)
    return TEXT.filter(bool) if takes.required else TEXT


def written(row: MarkerSpec, raw: str) -> str:
    """The word for `raw`, quoted as shlex reads it (a flag: the bare key)."""
    if isinstance(row.takes, Nothing):
        return f"{PREFIX}{row.key}"
    return f"{PREFIX}{row.key}={shlex.quote(raw)}"


def field_value(row: MarkerSpec, raw: str) -> Any:
    """What the row's field holds once `raw` is given to it once."""
    return (row.convert(raw),) if row.repeats else row.convert(raw)


# --- the table itself ------------------------------------------------------------------------


def test_each_field_of_markers_is_set_by_one_row() -> None:
    fields = sorted(field.name for field in dataclasses.fields(Markers))
    assert sorted(row.field for row in MARKERS) == fields
    assert len({row.key for row in MARKERS}) == len(MARKERS)


@pytest.mark.parametrize("row", MARKERS, ids=[row.key for row in MARKERS])
def test_each_example_is_a_valid_marker_that_sets_its_field(row: MarkerSpec) -> None:
    assert row.examples and "\n" not in row.doc and "|" not in row.doc
    for example in row.examples:
        markers = parse_markers("p.md", 1, f"python {example}")
        assert getattr(markers, row.field) != getattr(Markers(), row.field)
        assert dataclasses.replace(markers, **{row.field: getattr(Markers(), row.field)}) \
            == Markers()  # it sets its own field and no other


# --- info string -> Markers, and back --------------------------------------------------------


@given(st.data())
def test_a_valid_word_of_each_row_parses_to_what_the_row_says(data: st.DataObject) -> None:
    for row in MARKERS:
        raw = data.draw(raw_values(row), label=row.key)
        info = f'python title="x.py" {written(row, raw)} hl_lines="1 2"'
        assert parse_markers("p.md", 3, info) == Markers(**{row.field: field_value(row, raw)})


def markers_values() -> st.SearchStrategy[Markers]:
    """Markers with each row's field left alone or set from a valid value."""
    def one(row: MarkerSpec) -> st.SearchStrategy[Any]:
        if row.repeats:
            return st.lists(raw_values(row).map(row.convert), max_size=3).map(tuple)
        return st.one_of(st.just(getattr(Markers(), row.field)), raw_values(row).map(row.convert))

    return st.builds(lambda values: Markers(**values),
                     st.fixed_dictionaries({row.field: one(row) for row in MARKERS}))


@given(markers_values())
def test_markers_formatted_back_parse_to_the_same_markers(markers: Markers) -> None:
    words = format_markers(markers)
    assert parse_markers("p.md", 1, f"python {words}") == markers
    assert ("\n" not in words) and (words == "") == (markers == Markers())


def test_format_markers_writes_what_an_author_writes() -> None:
    assert format_markers(Markers()) == ""
    assert format_markers(Markers(skip="", env="ml", timeout=60.0, record_output=False)) == (
        "runner:skip runner:env=ml runner:timeout=60.0 runner:output=none")
    assert format_markers(Markers(skip="needs network")) == "runner:skip='needs network'"


@given(st.text(max_size=40))
def test_any_info_string_is_markers_or_one_post_error(tail: str) -> None:
    try:
        parse_markers("posts/x.md", 9, f"python {PREFIX}{tail}")
    except PostError as error:
        assert str(error).startswith("posts/x.md:9: ") and error.line == 9


def test_a_repeatable_marker_keeps_each_value_in_the_order_written() -> None:
    markers = parse_markers("p.md", 1, 'python runner:env-var=B=2 runner:env-var="A=x = y" '
                                       "runner:env-var=B= runner:env-var=C==")
    assert markers.variables == (("B", "2"), ("A", "x = y"), ("B", ""), ("C", "="))
    assert format_markers(markers) == ("runner:env-var=B=2 runner:env-var='A=x = y' "
                                       "runner:env-var=B= runner:env-var=C==")
    # a name given again: the session's kernel gets the later value; skipped snippets none
    post = parse("p.md", "```python runner:env-var=B=1\n```\n"
                         "```python runner:skip runner:env-var=B=skipped\n```\n"
                         "```python runner:env-var=B=3 runner:env-var=A=4\n```\n")
    from runner.model import Session
    assert Session("p.md", "sklearn", post.snippets).variables == {"B": "3", "A": "4"}


@pytest.mark.parametrize("bad", ["A", "=1", "1A=2", "A-B=1", "É=1", "A B=1"])
def test_an_env_var_marker_needs_a_name_and_a_value(bad: str) -> None:
    assert f"runner:env-var takes NAME=VALUE (NAME letters, digits, _), not '{bad}'" in error(
        f"python runner:env-var={shlex.quote(bad)}")


def test_an_env_var_cannot_hold_a_nul() -> None:
    """(markdown-it reads a NUL in a post as U+FFFD: this is for any other caller.)"""
    with pytest.raises(PostError, match="cannot hold a NUL"):
        parse_markers("p.md", 1, "python runner:env-var='A=x\0y'")


# --- the errors, each made from the table ----------------------------------------------------


def error(info: str) -> str:
    with pytest.raises(PostError) as caught:
        parse("posts/x.md", f"# T\n\n```{info}\nx = 1\n```\n")
    assert caught.value.line == 3
    return str(caught.value)


def test_an_unknown_marker_lists_every_row_and_names_a_near_miss() -> None:
    message = error("python runner:envs=ml")
    assert message.startswith("posts/x.md:3: unknown marker 'runner:envs=ml', did you mean "
                              "'runner:env=NAME'? (known: ")
    for row in MARKERS:
        assert row.usage in message
    assert "did you mean" not in error("python runner:bogus")
    assert "'runner:timeout=SECONDS'" in error("python runner:timout=5")


@pytest.mark.parametrize("row", [r for r in MARKERS if isinstance(r.takes, Nothing)],
                         ids=lambda row: row.key)
def test_a_flag_given_a_value(row: MarkerSpec) -> None:
    assert error(f"python {PREFIX}{row.key}=yes") == (
        f"posts/x.md:3: marker '{PREFIX}{row.key}' takes no value")


@pytest.mark.parametrize("row", [r for r in MARKERS if isinstance(r.takes, Choice)
                                 or (isinstance(r.takes, Text) and r.takes.required)],
                         ids=lambda row: row.key)
@pytest.mark.parametrize("suffix", ["", "="])
def test_a_marker_that_needs_a_value_without_one(row: MarkerSpec, suffix: str) -> None:
    assert error(f"python {PREFIX}{row.key}{suffix}") == (
        f"posts/x.md:3: marker '{PREFIX}{row.key}' needs a value")


@pytest.mark.parametrize("row", [r for r in MARKERS if isinstance(r.takes, Number)],
                         ids=lambda row: row.key)
@pytest.mark.parametrize("bad", ["soon", "nan", "inf", "-inf", "-1", "1e400", "0x10"])
def test_a_number_out_of_its_range(row: MarkerSpec, bad: str) -> None:
    assert isinstance(row.takes, Number)  # each of these is out of both ranges, or no float
    message = error(f"python {PREFIX}{row.key}={bad}")
    assert message == f"posts/x.md:3: {PREFIX}{row.key} must be {row.takes.meaning}, not '{bad}'"


def test_a_choice_not_among_its_words() -> None:
    assert error("python runner:output=stderr") == (
        "posts/x.md:3: runner:output takes one value, none (run it, record nothing), "
        "not 'stderr'")


def test_flags_accept_no_value_where_they_used_to_ignore_it() -> None:
    assert parse_markers("p.md", 1, "python runner:parameters") == Markers(parameters=True)
    with pytest.raises(PostError, match="takes no value"):
        parse_markers("p.md", 1, "python runner:parameters=yes")


# --- the README ------------------------------------------------------------------------------


def test_the_readme_marker_table_is_the_tables_rendering() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split(TABLE_BEGIN + "\n", 1)[1].split(TABLE_END + "\n", 1)[0]
    assert section == "\n" + markers_table() + "\n", (
        "the README's marker table is not runner/markers.py's: run python tools/markers_table.py")
    assert in_readme(text) == text


def test_a_drifted_readme_table_is_rewritten() -> None:
    text = README.read_text(encoding="utf-8")
    drifted = text.replace("| run in this environment |", "| run somewhere |")
    assert drifted != text and in_readme(drifted) == text
    assert markers_table().count("\n") == len(MARKERS) + 2
    with pytest.raises(ValueError, match="markers: end"):
        in_readme(text.replace(TABLE_END, "gone"))
