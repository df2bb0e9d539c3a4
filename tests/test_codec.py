"""The codec (`runner.codec`): the model's dataclasses as plain JSON data and back, strict about
what it reads, and complete: every dataclass the stores keep round-trips with every field set."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner import cache, codec, verdicts
from runner.model import ErrorInfo, ErrorKind, Markers, Output, Part, Snippet, SnippetResult
from runner.report import PostOutcome

# What the stores keep (cache entries, verdicts): every dataclass reachable from these must
# have an encoding, and round-trip with every field set.
STORED: tuple[type, ...] = (SnippetResult, cache.Entry, verdicts.Verdict)

TEXT = st.one_of(st.text(), st.text(st.characters(exclude_categories=[])),  # lone surrogates
                 st.text(alphabet="p.md:3\n\r\t\x00\x1b\ud800\udfffé⏎ "))


def _json(value: object) -> Any:
    """`value` encoded, through JSON text as a store writes and reads it."""
    return json.loads(json.dumps(codec.encode(value)))


def _arms(kind: Any) -> tuple[Any, ...]:
    return typing.get_args(kind)


def _is_union(kind: Any) -> bool:
    return typing.get_origin(kind) in (typing.Union, types.UnionType)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# --- values of any field's type, generated -----------------------------------------------------


def strategy(kind: Any) -> st.SearchStrategy[Any]:
    """Every value of `kind` the model may hold (every field of a dataclass, not only those
    without a default); floats without NaN, which equals nothing."""
    scalars: dict[Any, st.SearchStrategy[Any]] = {
        str: TEXT, int: st.integers(), bool: st.booleans(), bytes: st.binary(),
        float: st.floats(allow_nan=False), type(None): st.none()}
    origin = typing.get_origin(kind)
    if kind in scalars:
        return scalars[kind]
    if origin is Literal:
        return st.sampled_from(_arms(kind))
    if _is_union(kind):
        return st.one_of(*(strategy(arm) for arm in _arms(kind)))
    if origin is tuple and _arms(kind)[1:] == (Ellipsis,):
        return st.lists(strategy(_arms(kind)[0]), max_size=3).map(tuple)
    if origin is tuple:
        return st.tuples(*(strategy(arm) for arm in _arms(kind)))
    if isinstance(kind, type) and issubclass(kind, StrEnum):
        return st.sampled_from(list(kind))
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        hints = _hints(kind)
        return st.builds(kind, **{f.name: strategy(hints[f.name])
                                  for f in dataclasses.fields(kind)})
    raise TypeError(f"no strategy for {codec.name(kind)}")


def _paired(text: str) -> str:
    """`text` as JSON reads it back: a high surrogate right before a low one (two code points
    in a `str`, as two stream messages that split a pair make) is one character."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


@settings(max_examples=300, deadline=None)
@given(strategy(SnippetResult))
def test_a_result_round_trips_through_json(result: SnippetResult) -> None:
    """Every value comes back equal; text with a split surrogate pair comes back joined (JSON
    itself reads `\\ud800\\udc00` as U+10000, and a lone surrogate as itself)."""
    assert codec.decode(SnippetResult, _json(result)) == codec.retext(result, _paired)


def test_a_split_surrogate_pair_comes_back_as_the_character_it_spells() -> None:
    split = Output("lone \ud800 end", "pair \ud800\udc00", (Part("text", "\udfff\ud800"),))
    assert codec.decode(Output, _json(split)) == Output(
        "lone \ud800 end", "pair \U00010000", (Part("text", "\udfff\ud800"),))


@settings(max_examples=50, deadline=None)
@given(strategy(cache.Entry), strategy(verdicts.Verdict))
def test_what_the_stores_keep_round_trips_through_json(entry: cache.Entry,
                                                       verdict: verdicts.Verdict) -> None:
    assert codec.decode(cache.Entry, _json(entry)) == codec.retext(entry, _paired)
    assert codec.decode(verdicts.Verdict, _json(verdict)) == codec.retext(verdict, _paired)


@settings(max_examples=100, deadline=None)
@given(strategy(SnippetResult))
def test_retext_changes_every_free_text_and_nothing_else(result: SnippetResult) -> None:
    """`retext` reaches each `str` however nested, and leaves kinds, statuses, numbers, bytes."""
    def upper(text: str) -> str:
        return "<" + text + ">"

    changed = codec.retext(result, upper)
    assert changed.snippet.code == upper(result.snippet.code)
    assert changed.snippet.markers.variables == tuple(
        (upper(n), upper(v)) for n, v in result.snippet.markers.variables)
    assert changed.output.parts == tuple(
        Part(p.kind, upper(p.text), upper(p.html), p.png) for p in result.output.parts)
    assert changed.reason == (None if result.reason is None else upper(result.reason))
    assert changed.error == (None if result.error is None else ErrorInfo(
        upper(result.error.type), upper(result.error.message), result.error.post_line,
        upper(result.error.traceback)))
    assert (changed.status, changed.duration_s, changed.cached, changed.not_run_after) == (
        result.status, result.duration_s, result.cached, result.not_run_after)


# --- every dataclass the stores keep, with every field set ------------------------------------


def reachable(roots: tuple[type, ...]) -> list[type]:
    """The dataclasses `roots` hold, however deep (through unions, tuples, dicts)."""
    found: list[type] = []

    def visit(kind: Any) -> None:
        if isinstance(kind, type) and dataclasses.is_dataclass(kind) and kind not in found:
            found.append(kind)
            for hint in _hints(kind).values():
                visit(hint)
        for arg in _arms(kind):
            visit(arg)

    for root in roots:
        visit(root)
    return found


def sample(kind: Any, avoid: object = dataclasses.MISSING) -> Any:
    """A value of `kind` that is not `avoid` (a field's default), each field of a dataclass so
    set; TypeError for a type no test here knows (a new field of a new kind of type)."""
    plain: dict[Any, list[Any]] = {str: ["x é \ud800"], int: [7, 8], float: [2.5, 3.5],
                                   bool: [True, False], bytes: [b"\x89PNG\x00"]}
    if kind in plain:
        return next(v for v in plain[kind] if v != avoid)
    origin = typing.get_origin(kind)
    if origin is Literal:
        return next(v for v in _arms(kind) if v != avoid)
    if _is_union(kind):  # X | None: an X, never None
        return sample(next(arm for arm in _arms(kind) if arm is not type(None)))
    if origin is tuple:
        arms = _arms(kind)
        return ((sample(arms[0]), sample(arms[0])) if arms[1:] == (Ellipsis,)
                else tuple(sample(arm) for arm in arms))
    if isinstance(kind, type) and issubclass(kind, StrEnum):
        return next(v for v in kind if v != avoid)
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        hints = _hints(kind)
        return kind(**{f.name: sample(hints[f.name], f.default) for f in dataclasses.fields(kind)})
    raise TypeError(f"no sample of {codec.name(kind)}: give it one here, and an encoding")


@pytest.mark.parametrize("cls", reachable(STORED), ids=lambda cls: cls.__name__)
def test_every_stored_dataclass_round_trips_with_every_field_set(cls: type) -> None:
    """A new field of a type the codec cannot encode fails here, not every lookup in silence;
    and one that is not written or read back fails the equality."""
    codec.supported(cls)
    value = sample(cls)
    for field in dataclasses.fields(cls):
        assert getattr(value, field.name) != field.default, field.name
    assert codec.decode(cls, _json(value)) == value


def test_the_walk_reaches_every_model_dataclass_a_result_holds() -> None:
    assert {SnippetResult, Snippet, Markers, Output, Part, ErrorInfo} <= set(reachable(STORED))


def test_a_kept_verdict_accounts_for_every_field_of_an_outcome() -> None:
    """A replayed outcome is `Kept`'s fields, the path, and defaults for what a kept pass never
    has: a new field of PostOutcome must be added to `Kept` (with its type) or to this list."""
    never_kept = {"path", "error", "error_line", "diff", "written", "parameters", "fresh"}
    outcome, kept = _hints(PostOutcome), _hints(verdicts.Kept)
    assert set(outcome) == set(kept) | never_kept and not set(kept) & never_kept
    assert all(kept[name] == outcome[name] for name in kept if name != "status")
    full = sample(verdicts.Kept)
    full = dataclasses.replace(full, snippets=tuple(  # a pass: no snippet is left not run
        dataclasses.replace(r, not_run_after=None) for r in full.snippets))
    back = codec.decode(verdicts.Kept, _json(full)).outcome("p.md")
    assert back == PostOutcome("p.md", "passed", stamp_stale=True, snippets=tuple(
        dataclasses.replace(r, snippet=dataclasses.replace(r.snippet, path="p.md"), cached=True)
        for r in full.snippets))


@dataclass(frozen=True)
class Tagged:
    names: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...] = ()
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def test_a_tuple_of_text_field_round_trips() -> None:
    """The old verdicts' isinstance check raised on `tuple[str, ...]` (every verdict a miss)."""
    value = Tagged(("a", "b"), (("A", "1"),), {"k": [1, 2.5, None, {"x": True}]})
    back = codec.decode(Tagged, _json(value))
    assert back == value and type(back.names) is tuple and type(back.pairs[0]) is tuple
    markers = Markers(variables=(("A", "1"), ("B", "")))
    assert codec.decode(Markers, _json(markers)) == markers


# --- strict decoding ---------------------------------------------------------------------------


def _good() -> dict[str, Any]:
    snippet = Snippet("p.md", 3, "print(1)\n", Markers(timeout=2.0))
    result = SnippetResult(snippet, "sklearn", "failed",
                           Output("1\n", "", (Part("image", "fig", png=b"\x89PNG"),)),
                           ErrorInfo(ErrorKind.TIMEOUT, "slow", 4), duration_s=1.0)
    data: dict[str, Any] = _json(result)
    return data


def _damaged(change: Any) -> dict[str, Any]:
    data = _good()
    change(data)
    return data


@pytest.mark.parametrize(("change", "path", "why"), [
    (lambda d: d.pop("env"), "env", "missing (a field of SnippetResult)"),
    (lambda d: d["snippet"]["markers"].pop("skip"), "snippet.markers.skip", "missing"),
    (lambda d: d["output"].update(since=1), "output.since", "unknown (no field of Output)"),
    (lambda d: d["snippet"].update(line="3"), "snippet.line", "str where int"),
    (lambda d: d["snippet"].update(line=True), "snippet.line", "bool where int"),
    (lambda d: d.update(duration_s=True), "duration_s", "bool where float"),
    (lambda d: d["snippet"]["markers"].update(timeout="2"), "snippet.markers.timeout",
     "str where float | None"),
    (lambda d: d["error"].update(post_line=4.0), "error.post_line", "float where int | None"),
    (lambda d: d.update(status="stale"), "status", "'stale' where Literal"),
    (lambda d: d["output"]["parts"][0].update(kind="video"), "output.parts[0].kind",
     "'video' where Literal"),
    (lambda d: d["output"]["parts"][0].update(png="not base64!"), "output.parts[0].png",
     "not base64"),
    (lambda d: d["output"]["parts"][0].update(png=[1]), "output.parts[0].png",
     "list where bytes"),
    (lambda d: d["output"].update(parts={}), "output.parts", "dict where tuple[Part, ...]"),
    (lambda d: d["snippet"]["markers"].update(variables=[["A"]]),
     "snippet.markers.variables[0]", "list of 1 where tuple[str, str]"),
    (lambda d: d["snippet"]["markers"].update(variables=[["A", 1]]),
     "snippet.markers.variables[0][1]", "int where str"),
    (lambda d: d["snippet"].update(output=[1, 2]), "snippet.output", "list where Region | None"),
    (lambda d: d.update(error="boom"), "error", "str where ErrorInfo | None"),
])
def test_decoding_names_the_field_and_what_was_wrong(change: Any, path: str, why: str) -> None:
    assert codec.decode(SnippetResult, _good()).output.parts[0].png == b"\x89PNG"
    with pytest.raises(codec.Malformed) as raised:
        codec.decode(SnippetResult, _damaged(change))
    assert raised.value.path == path and raised.value.why.startswith(why), str(raised.value)
    assert isinstance(raised.value, ValueError)  # the stores' misses catch it as one


def test_an_enum_decodes_as_its_member_and_refuses_other_text() -> None:
    @dataclass(frozen=True)
    class Kinded:
        kind: ErrorKind

    back = codec.decode(Kinded, {"kind": "TimeoutError"})
    assert back.kind is ErrorKind.TIMEOUT
    with pytest.raises(codec.Malformed, match="kind: 'Timeout' where ErrorKind"):
        codec.decode(Kinded, {"kind": "Timeout"})


def test_not_an_object_at_the_top_is_malformed_without_a_path() -> None:
    data: object
    for data in (None, [], "x", 1):
        with pytest.raises(codec.Malformed) as raised:
            codec.decode(Output, data)
        assert raised.value.path == "" and raised.value.why.endswith("where Output")


def test_any_is_plain_json_data_both_ways() -> None:
    assert codec.decode(Tagged, {"names": [], "pairs": [], "extra": {"a": [1, {"b": None}]}}) \
        == Tagged((), (), {"a": [1, {"b": None}]})
    with pytest.raises(codec.Unencodable, match=r"extra\['a'\]: tuple where plain JSON"):
        codec.encode(Tagged((), extra={"a": (1, 2)}))


# --- encoding refuses what would not come back -------------------------------------------------


@pytest.mark.parametrize(("value", "path"), [
    (Output(stdout=b"1"), "stdout"),  # type: ignore[arg-type]
    (Output(parts=[Part("text")]), "parts"),  # type: ignore[arg-type]
    (Output(parts=(Part("video"),)), "parts[0].kind"),  # type: ignore[arg-type]
    (Output(parts=(Part("image", png="x"),)), "parts[0].png"),  # type: ignore[arg-type]
    (Markers(timeout=True), "timeout"),
    (Markers(variables=(("A",),)), "variables[0]"),  # type: ignore[arg-type]
])
def test_encoding_a_value_of_the_wrong_type_names_its_field(value: object, path: str) -> None:
    with pytest.raises(codec.Unencodable) as raised:
        codec.encode(value)
    assert raised.value.path == path
    assert isinstance(raised.value, TypeError)


def test_a_type_with_no_encoding_is_refused_when_its_converter_is_made() -> None:
    @dataclass(frozen=True)
    class Unsupported:
        many: list[str]

    @dataclass(frozen=True)
    class Either:
        value: int | str

    for cls in (Unsupported, Either):
        with pytest.raises(TypeError, match="no encoding"):
            codec.supported(cls)
