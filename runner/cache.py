"""Execution cache: a session's results, keyed by everything that decides them.

The key hashes the session's code and markers (not its line numbers: moving a snippet down the
post does not change what it prints), the environment's lock hash, the runner's version and the
per-snippet timeout. Only sessions whose every snippet passed (or was skipped on purpose) are
stored, as jupyter-cache does: a failure is always run again. Each entry is one JSON file written
by an atomic rename under a file lock, so two runs at once never see half an entry; an entry that
cannot be read back is deleted with a warning and the session runs.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from filelock import FileLock

from runner import __version__
from runner.atomic import write_atomic
from runner.model import EnvSpec, Output, Part, Session, SnippetResult

FORMAT = 1


def session_key(session: Session, env: EnvSpec, timeout: float, beside: str = "") -> str:
    """`beside`: a digest of the files beside the post, which its snippets may read."""
    recipe = {
        "beside": beside,
        "format": FORMAT, "runner": __version__, "env": env.name, "lock": env.lock_hash,
        "timeout": timeout, "kernel_env": env.kernel_env, "network": session.network,
        "overrides": session.overrides, "limits": [env.memory_mb, env.processes],
        "snippets": [[s.code, s.hidden, asdict(s.markers)] for s in session.snippets],
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def digest(paths: Sequence[Path]) -> str:
    hashed = hashlib.sha256()
    for path in paths:
        with contextlib.suppress(OSError):
            hashed.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return hashed.hexdigest()


def load(folder: Path, key: str, session: Session,
         warn: Callable[[str], None]) -> tuple[SnippetResult, ...] | None:
    path = _entry(folder, key)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["key"] != key or len(data["snippets"]) != len(session.snippets):
            raise ValueError("entry does not match its key")
        return tuple(_result(snippet, session.env, item)
                     for snippet, item in zip(session.snippets, data["snippets"], strict=True))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warn(f"discarding a corrupt cache entry {path}: {exc}")
        path.unlink(missing_ok=True)
        return None


def store(folder: Path, key: str, results: Sequence[SnippetResult]) -> None:
    if any(r.status == "failed" or r.not_run_after is not None for r in results):
        return
    path = _entry(folder, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps({"key": key, "snippets": [_item(r) for r in results]})
    with FileLock(str(path) + ".lock"):
        write_atomic(path, data.encode("utf-8"))


def _entry(folder: Path, key: str) -> Path:
    return folder / key[:2] / f"{key}.json"


def _item(result: SnippetResult) -> dict[str, Any]:
    output = result.output
    return {
        "status": result.status, "reason": result.reason, "duration_s": result.duration_s,
        "stdout": output.stdout, "stderr": output.stderr,
        "parts": [{"kind": p.kind, "text": p.text, "html": p.html,
                   "png": base64.b64encode(p.png).decode()} for p in output.parts],
    }


def _result(snippet: Any, env: str, item: dict[str, Any]) -> SnippetResult:
    if item["status"] not in ("passed", "skipped"):
        raise ValueError(f"status {item['status']!r} is never stored")
    parts = tuple(Part(p["kind"], p["text"], p["html"], base64.b64decode(p["png"]))
                  for p in item["parts"])
    output = Output(str(item["stdout"]), str(item["stderr"]), parts)
    result = SnippetResult(snippet, env, item["status"], output, reason=item["reason"],
                           duration_s=float(item["duration_s"]))
    return replace(result, cached=True)
