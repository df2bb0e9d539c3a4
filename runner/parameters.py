"""Parameters, papermill's idea: a post declares values in a snippet marked `runner:parameters`
(plain assignments, `EPOCHS = 10`), and a run may override them (`--param EPOCHS=1`) so heavy
examples run small in CI. The override is added to the parameters cell the kernel runs, never
to the post, and the cell prints the values used. Pure: no I/O.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping

from runner.errors import UsageError
from runner.model import Post, Session, Snippet


def parse_overrides(items: list[str]) -> dict[str, str]:
    """`NAME=VALUE` words -> {NAME: VALUE}; the value is a Python literal (`1`, `'small'`)."""
    overrides = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise UsageError(f"--param wants NAME=VALUE, not {item!r}")
        try:
            ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise UsageError(f"--param {name}: {value!r} is not a Python literal") from None
        overrides[name] = value
    return overrides


def declared(snippet: Snippet) -> list[str]:
    """The names a parameters snippet assigns at its top level."""
    try:
        tree = ast.parse(snippet.code)
    except SyntaxError:
        return []
    return [target.id for node in tree.body if isinstance(node, ast.Assign | ast.AnnAssign)
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(target, ast.Name)]


def applicable(post: Post, overrides: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The overrides this post declares parameters for (a run may set those of other posts)."""
    names = {name for s in post.snippets if s.markers.parameters for name in declared(s)}
    return tuple((name, value) for name, value in sorted(overrides.items()) if name in names)


def injected(session: Session, snippet: Snippet) -> str:
    """What follows the parameters snippet's code in its cell when the run overrides values."""
    if not snippet.markers.parameters or not session.overrides:
        return ""
    mine = [(n, v) for n, v in session.overrides if n in declared(snippet)]
    if not mine:
        return ""
    assignments = "\n".join(f"{name} = {value}" for name, value in mine)
    shown = ", ".join(f"{name}={value}" for name, value in mine)
    return (f"\n\n# Injected by the runner: parameters given for this run\n{assignments}\n"
            f"print({f'parameters overridden for this run: {shown}'!r})")
