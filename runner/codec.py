"""The model's frozen dataclasses as plain JSON data and back, driven by their fields' types.

`encode(value)` gives what `json.dumps` writes; `decode(cls, data)` gives the value back, or
raises `Malformed` naming the field's path and what was wrong:
`snippet.markers.timeout: str where float | None`. One converter per type, made once from
`dataclasses.fields` and `typing.get_type_hints` and cached (`_converter`).

| annotation | as JSON | decoding accepts |
|---|---|---|
| `str`, `int`, `bool` | the same | that type only (a bool is never an int) |
| `float` | a number | a float or an int (never a bool) |
| `None`, `X \\| None`, `Optional[X]` | null, or X's form | other unions have no one form: refused |
| `Literal[...]` | the value | one of its values, of its type |
| a `StrEnum` | its value | one of its values |
| `bytes` | base64 text | base64 text only (checked) |
| `tuple[X, ...]`, `tuple[A, B]` | a list | a list (of exactly that length) |
| a dataclass | an object of its fields | exactly its fields: none missing, none unknown |
| `dict[str, X]` | an object | an object |
| `Any` | plain JSON data | the same: null, bool, int, float, str, list, object (text keys) |

Every field must be there, a default or not: each store that keeps these (the cache, the
verdicts) carries a FORMAT that is bumped when the shape changes, so an entry written before a
field was added is never read; one that lacks a field all the same is not what its FORMAT says,
and a default would stand in for a value its writer never recorded. `Any` is taken as plain
JSON data, checked both ways (a tuple, a date, a set is refused, not turned into something that
would not come back equal). A dataclass that holds itself, however deep, is not supported.

Text comes back as JSON reads it: a lone surrogate (which a kernel may send) as itself, as
`json.dumps` writes it `\\udXXX` in ASCII; but a high surrogate right before a low one (two code
points, as two stream messages that split a pair make when joined) as the one character the pair
spells, since JSON reads the escape pair so. Nothing a renderer or comparison sees changes.

Encoding a value that is not of its field's type raises `Unencodable` (a TypeError: a bug
where the value was made, named by its path), never data that would not decode.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, TypeVar, Union

T = TypeVar("T")
Change = Callable[[str], str]


class _Located(Exception):
    """What went wrong, and where: `path` is the field's (`output.parts[2].kind`, "" for the
    value itself)."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path}: {why}" if path else why)
        self.path = path
        self.why = why


class Malformed(_Located, ValueError):
    """Data that is no encoding of the type it was decoded as."""


class Unencodable(_Located, TypeError):
    """A value that is not of the type its field declares."""


@dataclass(frozen=True)
class _Converter:
    encode: Callable[[Any, str], Any]
    decode: Callable[[Any, str], Any]
    retext: Callable[[Any, Change], Any]  # the value with `change` applied to each text in it


def encode(value: object) -> Any:
    """A dataclass instance as plain JSON data."""
    kind: Any = type(value)
    return _converter(kind).encode(value, "")


def decode(cls: type[T], data: object) -> T:
    """`cls` from what `encode` gave (and `json.loads` read back); Malformed for anything else."""
    kind: Any = cls
    return typing.cast(T, _converter(kind).decode(data, ""))


def retext(value: T, change: Change) -> T:
    """A dataclass instance with `change` applied to every value its fields declare as `str`
    (however nested: in tuples, optional fields, other dataclasses); not to a `Literal`, an
    enum or what an `Any` holds, which are no free text."""
    kind: Any = type(value)
    return typing.cast(T, _converter(kind).retext(value, change))


def supported(kind: Any) -> None:
    """Raise TypeError unless every type `kind` holds has an encoding (the converter is made)."""
    _converter(kind)


def name(kind: Any) -> str:
    """A type as it is written in the model: `float | None`, `tuple[str, ...]`, `Markers`."""
    args, origin = typing.get_args(kind), typing.get_origin(kind)
    if kind is type(None) or kind is Ellipsis:
        return "None" if kind is type(None) else "..."
    if origin in (Union, types.UnionType):
        return " | ".join(name(arg) for arg in args)
    if origin is Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if args and isinstance(origin, type):
        return f"{origin.__name__}[{', '.join(name(arg) for arg in args)}]"
    return kind.__name__ if isinstance(kind, type) else repr(kind).replace("typing.", "")


def _what(data: object) -> str:
    """What a JSON value is, for a message."""
    return "null" if data is None else type(data).__name__


@functools.cache
def _converter(kind: Any) -> _Converter:
    origin = typing.get_origin(kind)
    if origin is Literal:
        return _literal(kind)
    if origin in (Union, types.UnionType):
        return _optional(kind)
    if origin is tuple:
        return _tuple(kind)
    if origin is dict:
        return _dict(kind)
    if kind is Any:
        return _ANY
    if kind in _SCALARS:
        return _SCALARS[kind]
    if isinstance(kind, type) and issubclass(kind, StrEnum):
        return _enum(kind)
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        return _dataclass(kind)
    raise TypeError(f"codec: no encoding for {name(kind)}")


# --- scalars ---------------------------------------------------------------------------------


def _same(value: Any, change: Change) -> Any:
    return value


def _scalar(kind: type, accepts: Callable[[object], bool], out: Callable[[Any], Any],
            back: Callable[[Any], Any] = lambda v: v) -> _Converter:
    """`accepts`: whether a value (or JSON value) is one; `out` makes it plain JSON data,
    `back` the model's value again."""
    def encode(value: Any, path: str) -> Any:
        if not accepts(value):
            raise Unencodable(path, f"{_what(value)} where {name(kind)}")
        return out(value)

    def decode(data: Any, path: str) -> Any:
        if not accepts(data):
            raise Malformed(path, f"{_what(data)} where {name(kind)}")
        return back(data)

    return _Converter(encode, decode, _same)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: Any, change: Change) -> Any:
    return change(value)


def _bytes() -> _Converter:
    def encode(value: Any, path: str) -> Any:
        if not isinstance(value, bytes):
            raise Unencodable(path, f"{_what(value)} where bytes")
        return base64.b64encode(value).decode("ascii")

    def decode(data: Any, path: str) -> Any:
        if not isinstance(data, str):
            raise Malformed(path, f"{_what(data)} where bytes (base64 text)")
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Malformed(path, f"not base64: {exc}") from None

    return _Converter(encode, decode, _same)


_SCALARS: dict[Any, _Converter] = {
    str: dataclasses.replace(_scalar(str, lambda v: isinstance(v, str), str.__str__),
                             retext=_text),
    int: _scalar(int, _is_int, int),
    float: _scalar(float, lambda v: _is_int(v) or isinstance(v, float), float, float),
    bool: _scalar(bool, lambda v: isinstance(v, bool), bool),
    type(None): _scalar(type(None), lambda v: v is None, lambda v: v),
    bytes: _bytes(),
}


def _literal(kind: Any) -> _Converter:
    values = typing.get_args(kind)
    if not all(type(v) in (str, int, bool, type(None)) for v in values):
        raise TypeError(f"codec: no encoding for {name(kind)}")

    def accepts(value: object) -> bool:
        return any(type(value) is type(v) and value == v for v in values)

    def encode(value: Any, path: str) -> Any:
        if not accepts(value):
            raise Unencodable(path, f"{value!r} where {name(kind)}")
        return value

    def decode(data: Any, path: str) -> Any:
        if not accepts(data):
            raise Malformed(path, f"{data!r} where {name(kind)}")
        return data

    return _Converter(encode, decode, _same)


def _enum(kind: type[StrEnum]) -> _Converter:
    def encode(value: Any, path: str) -> Any:
        if not isinstance(value, kind):
            raise Unencodable(path, f"{_what(value)} where {kind.__name__}")
        return str.__str__(value)

    def decode(data: Any, path: str) -> Any:
        if not isinstance(data, str) or data not in kind._value2member_map_:
            raise Malformed(path, f"{data!r} where {kind.__name__}")
        return kind(data)

    return _Converter(encode, decode, _same)


# --- what holds other values -----------------------------------------------------------------


def _optional(kind: Any) -> _Converter:
    """`X | None`: null, or X's encoding (X's own message names the union)."""
    arms = [arm for arm in typing.get_args(kind) if arm is not type(None)]
    if len(arms) != 1:
        raise TypeError(f"codec: no encoding for {name(kind)} (only X | None has one)")
    inner = _converter(arms[0])

    def encode(value: Any, path: str) -> Any:
        return None if value is None else _named(inner.encode, value, path, kind)

    def decode(data: Any, path: str) -> Any:
        return None if data is None else _named(inner.decode, data, path, kind)

    def retext(value: Any, change: Change) -> Any:
        return None if value is None else inner.retext(value, change)

    return _Converter(encode, decode, retext)


def _named(convert: Callable[[Any, str], Any], value: Any, path: str, kind: Any) -> Any:
    """`convert(value)`; a failure of the value itself (not of a field inside it) names `kind`."""
    try:
        return convert(value, path)
    except _Located as exc:
        if exc.path != path or " where " not in exc.why:
            raise
        raise type(exc)(path, f"{exc.why.partition(' where ')[0]} where {name(kind)}") from None


def _tuple(kind: Any) -> _Converter:
    """`tuple[X, ...]` (any length) or `tuple[A, B]` (exactly that one), as a list."""
    args = typing.get_args(kind)
    items = ([_converter(args[0])] if len(args) == 2 and args[1] is Ellipsis
             else [_converter(arg) for arg in args])
    fixed = not (len(args) == 2 and args[1] is Ellipsis)

    def each(value: Any) -> zip[tuple[_Converter, Any]]:
        return zip(items if fixed else items * len(value), value, strict=True)

    def encode(value: Any, path: str) -> Any:
        if not isinstance(value, tuple) or (fixed and len(value) != len(items)):
            raise Unencodable(path, f"{_what(value)} where {name(kind)}")
        return [c.encode(v, f"{path}[{n}]") for n, (c, v) in enumerate(each(value))]

    def decode(data: Any, path: str) -> Any:
        if not isinstance(data, list) or (fixed and len(data) != len(items)):
            what = f"list of {len(data)}" if isinstance(data, list) else _what(data)
            raise Malformed(path, f"{what} where {name(kind)}")
        return tuple(c.decode(v, f"{path}[{n}]") for n, (c, v) in enumerate(each(data)))

    def retext(value: Any, change: Change) -> Any:
        return tuple(c.retext(v, change) for c, v in each(value))

    return _Converter(encode, decode, retext)


def _dict(kind: Any) -> _Converter:
    """`dict[str, X]`, as an object."""
    key, value_kind = typing.get_args(kind)
    if key is not str:
        raise TypeError(f"codec: no encoding for {name(kind)} (only text keys)")
    inner = _converter(value_kind)

    def check(data: Any, path: str, error: type[_Located]) -> None:
        if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
            raise error(path, f"{_what(data)} where {name(kind)}")

    def encode(value: Any, path: str) -> Any:
        check(value, path, Unencodable)
        return {str.__str__(k): inner.encode(v, f"{path}[{k!r}]") for k, v in value.items()}

    def decode(data: Any, path: str) -> Any:
        check(data, path, Malformed)
        return {k: inner.decode(v, f"{path}[{k!r}]") for k, v in data.items()}

    def retext(value: Any, change: Change) -> Any:
        return {k: inner.retext(v, change) for k, v in value.items()}

    return _Converter(encode, decode, retext)


def _plain(value: Any, path: str, error: type[_Located]) -> Any:
    """`value` as plain JSON data (a copy), or `error` naming the first thing that is not."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, list):
        return [_plain(v, f"{path}[{n}]", error) for n, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {str.__str__(k): _plain(v, f"{path}[{k!r}]", error) for k, v in value.items()}
    raise error(path, f"{_what(value)} where plain JSON data (Any)")


_ANY = _Converter(lambda v, p: _plain(v, p, Unencodable), lambda d, p: _plain(d, p, Malformed),
                  _same)


def _dataclass(cls: type) -> _Converter:
    """A dataclass as the object of its fields, every one of them required."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: _converter(hints[f.name]) for f in dataclasses.fields(cls)}
    if not all(f.init for f in dataclasses.fields(cls)):
        raise TypeError(f"codec: no encoding for {cls.__name__} (a field not set by __init__)")

    def encode(value: Any, path: str) -> Any:
        if type(value) is not cls:
            raise Unencodable(path, f"{_what(value)} where {cls.__name__}")
        return {n: c.encode(getattr(value, n), _at(path, n)) for n, c in fields.items()}

    def decode(data: Any, path: str) -> Any:
        _exactly(data, fields, path, cls.__name__)
        return cls(**{n: c.decode(data[n], _at(path, n)) for n, c in fields.items()})

    def retext(value: Any, change: Change) -> Any:
        return cls(**{n: c.retext(getattr(value, n), change) for n, c in fields.items()})

    return _Converter(encode, decode, retext)


def _exactly(data: Any, fields: dict[str, _Converter], path: str, cls: str) -> None:
    """`data` is an object of exactly these fields: Malformed at the first missing or unknown."""
    if not isinstance(data, dict):
        raise Malformed(path, f"{_what(data)} where {cls}")
    missing = [n for n in fields if n not in data]
    if missing:
        raise Malformed(_at(path, missing[0]), f"missing (a field of {cls})")
    unknown = [str(n) for n in data if n not in fields]
    if unknown:
        raise Malformed(_at(path, unknown[0]), f"unknown (no field of {cls})")


def _at(path: str, field: str) -> str:
    return f"{path}.{field}" if path else field
