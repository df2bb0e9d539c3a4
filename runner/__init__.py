"""Keep the code in a blog true: run every Python snippet of a post and write back its output.

`run_posts(paths, config, options)` is the whole job as one call (the CLI and the pytest plugin
are layers over it); importing this package imports nothing else until a name is used, so
`python -m runner --version` stays quick."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Options", "PostOutcome", "Run", "SnippetResult", "async_run_posts", "run_posts"]

if TYPE_CHECKING:
    from runner.model import SnippetResult
    from runner.report import PostOutcome, Run
    from runner.run import Options, async_run_posts, run_posts

_WHERE = {"Options": "runner.run", "run_posts": "runner.run", "async_run_posts": "runner.run",
          "PostOutcome": "runner.report", "Run": "runner.report",
          "SnippetResult": "runner.model"}


def __getattr__(name: str) -> Any:
    """The public names, imported on first use (PEP 562)."""
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'runner' has no attribute {name!r}")
