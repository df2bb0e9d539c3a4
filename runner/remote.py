"""A second backend: kernels of a Jupyter server, over its REST and websocket API (as mystmd's
JUPYTER_BASE_URL reaches them).

A session gets a kernel of its env's kernelspec on the server (POST /api/kernels) in a folder
of its own there (the contents API; the files beside the post uploaded into it: their bytes,
not their modes). Its snippets go one by one over the kernel's channels websocket as
`execute_request`s (protocol 5.3, the server's JSON form); their iopub outputs become results
through the runner's own output collection, as a local kernel's do. A snippet past its timeout
is interrupted; the session stops at the first failure; the kernel and folder are deleted.
Not here: the local sandbox, limits, warm kernels, --deadline, the kernel-side output budget.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import hashlib
import json
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from nbformat import NotebookNode
from nbformat.v4 import output_from_msg
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from runner import __version__, decides
from runner.atomic import read_regular
from runner.beside import BESIDE_MAX_BYTES, Beside
from runner.config import DEFAULT_MAX_BYTES
from runner.execute import collect_output
from runner.model import EnvSpec, ErrorKind, Output, Part, Session, Snippet, SnippetResult
from runner.notebooks import session_notebook
from runner.portable import Places, portable
from runner.writeback import ANSI

INTERRUPT_GRACE = 5.0  # seconds an interrupted snippet has to reply
STOP_TRIES = 20  # DELETEs of a kernel, half a second apart
MAX_MESSAGE = 32 << 20  # bytes of one websocket message; more closes the connection
_OUTPUTS = frozenset({"stream", "execute_result", "display_data", "error"})
_CELL_LINE = re.compile(r"Cell In\[(\d+)\], line (\d+)")  # IPython's name for a cell's frame


class _Closed(Exception):
    """The kernel died (the server restarts it), or its channels closed."""


@dataclass
class _Gathered:
    """What the kernel sent in answer to one request."""

    line: int = 0  # the post line before its cell's first line (a traceback's line 1 is after)
    outputs: list[NotebookNode] = field(default_factory=list)
    reply: dict[str, Any] | None = None
    idle: bool = False
    size: int = 0  # bytes of output messages


class JupyterServer:
    """Kernels of the Jupyter server at `url` (token auth); `kernels`: env name -> the name of
    the kernelspec on the server that runs that env. `timeout`: seconds per snippet, unless its
    `runner:timeout` says less; `jobs`: sessions at once."""

    def __init__(self, url: str, token: str, kernels: Mapping[str, str], timeout: float = 300,
                 jobs: int = 4, max_output: int = DEFAULT_MAX_BYTES) -> None:
        self.url, self.token, self.kernels = url.rstrip("/"), token, dict(kernels)
        self.timeout, self.max_output = timeout, max_output
        self.turns = asyncio.Semaphore(jobs)
        self.refused: dict[str, tuple[str, str]] = {}  # env -> (error kind, why)
        self.running: set[str] = set()  # kernel ids

    def decides(self, env: EnvSpec) -> Mapping[str, Any]:
        return {"format": decides.FORMAT, "runner": __version__, "backend": "jupyter-server",
                "url": self.url, "kernel": self.kernels.get(env.name), "env": env.name,
                "lock": env.lock_hash}

    async def prepare(self, sessions: Sequence[Session]) -> None:
        needed = {session.env for session in sessions}
        try:
            found = (await self._api("GET", "/api/kernelspecs"))["kernelspecs"]
        except Exception as exc:
            why = f"the Jupyter server at {self.url} does not answer: {exc}"
            self.refused = {env: (ErrorKind.KERNEL, why) for env in needed}
            return
        for env in needed:
            name = self.kernels.get(env)
            if name is None or name not in found:
                self.refused[env] = (ErrorKind.ENV, f"the Jupyter server at {self.url} has no "
                                     f"kernelspec {name!r} for the env {env}")

    async def run(self, session: Session, beside: Beside) -> tuple[SnippetResult, ...]:
        if session.env in self.refused:
            return _all_failed(session, [], *self.refused[session.env])
        results: list[SnippetResult] = []
        folder, kernel = f"runner-{uuid.uuid4().hex}", ""
        async with self.turns:
            try:
                await self._upload(folder, beside)
                kernel = (await self._api("POST", "/api/kernels", {
                    "name": self.kernels[session.env], "path": folder}))["id"]
                self.running.add(kernel)
                channels = f"/api/kernels/{kernel}/channels?session_id={uuid.uuid4().hex}"
                socket = await websocket_connect(self._request(channels, ws=True),
                                                 max_message_size=MAX_MESSAGE)
                try:
                    await _Kernel(self, kernel, socket, session).run(results)
                finally:
                    socket.close()
            except Exception as exc:  # no kernel, or it died between snippets
                return _all_failed(session, results, ErrorKind.KERNEL,
                                   f"{type(exc).__name__}: {exc}".strip())
            finally:
                await self._stop(kernel, folder, beside)
        return tuple(results)

    async def close(self) -> None:
        for kernel in list(self.running):
            await self._stop(kernel, "", None)

    async def _upload(self, folder: str, beside: Beside) -> None:
        """The session's folder on the server, with the files beside the post in it (those
        whose bytes still hash as the cache key was made from)."""
        await self._api("PUT", f"/api/contents/{folder}", {"type": "directory"})
        for name, sha, _mode in beside.files:
            data = _unchanged(beside, name, sha)
            if data is not None:
                await self._api("PUT", f"/api/contents/{folder}/{quote(name)}", {
                    "type": "file", "format": "base64", "content": base64.b64encode(data).decode()})

    async def _stop(self, kernel: str, folder: str, beside: Beside | None) -> None:
        """Delete the kernel (asked again while the server refuses: it may be restarting one
        that died), then the session's folder, whatever is left of them."""
        for _ in range(STOP_TRIES if kernel else 0):
            try:
                await self._api("DELETE", f"/api/kernels/{kernel}")
                break
            except HTTPClientError as exc:
                if exc.code == 404:
                    break
                await asyncio.sleep(0.5)
            except Exception:  # no server
                break
        self.running.discard(kernel)
        files = beside.files if beside is not None and folder else ()
        for path in [f"{folder}/{quote(name)}" for name, *_ in files] + [folder] * bool(folder):
            with contextlib.suppress(Exception):  # already gone (removed by a snippet)
                await self._api("DELETE", f"/api/contents/{path}")

    def _request(self, path: str, method: str = "GET", body: Any = None,
                 ws: bool = False) -> HTTPRequest:
        url = re.sub(r"^http", "ws", self.url) if ws else self.url
        return HTTPRequest(url + path, method, headers={"Authorization": f"token {self.token}"},
                           body=None if body is None else json.dumps(body),
                           request_timeout=60)

    async def _api(self, method: str, path: str, body: Any = None) -> Any:
        answer = await AsyncHTTPClient().fetch(self._request(path, method, body))
        return json.loads(answer.body) if answer.body else None


class _Kernel:
    """One session's kernel on the server, reached over its channels websocket."""

    def __init__(self, server: JupyterServer, kernel: str, socket: WebSocketClientConnection,
                 session: Session) -> None:
        self.server, self.kernel, self.socket, self.session = server, kernel, socket, session
        self.id = uuid.uuid4().hex
        self.counts: dict[int, int] = {}  # execution count -> its cell's post line
        self.places = Places(session.post)

    async def run(self, results: list[SnippetResult]) -> None:
        """A result for each snippet, in order: skipped, run, or not run after a failure."""
        session, env = self.session, self.session.env
        notebook = session_notebook(session)
        await self._places(notebook.cells)
        cells = iter(notebook.cells)
        failed: int | None = None
        for snippet in session.snippets:
            if snippet.markers.skip is not None:
                results.append(SnippetResult(snippet, env, "skipped",
                                             reason=snippet.markers.skip or "marked runner:skip"))
                continue
            cell = next(cells)
            planned = next((f for f in session.failures if f[0] == snippet.line), None)
            if failed is not None:
                results.append(SnippetResult.not_run(snippet, env, failed))
                continue
            result, going = ((SnippetResult.failed(snippet, env, *planned[1:]), True) if planned
                             else await self._snippet(snippet, cell))
            results.append(result)
            if result.status == "failed" and not (going and session.keep_going):
                failed = snippet.line

    async def _places(self, cells: list[NotebookNode]) -> None:
        """Where the kernel is (its env, HOME, temp and working folders, each cell's compiled
        file name): output naming them is made portable, as a local kernel's is."""
        sources = [cell.source for cell in cells]
        # the post's environment variables (runner:env-var): a local kernel starts with them
        given = self.session.variables
        code = f"__import__('os').environ.update({given!r})" if given else ""
        msg_id = await self._send(code, {
            "env": "__import__('sys').prefix", "python": "__import__('sys').base_prefix",
            "home": "__import__('os').path.expanduser('~')", "scratch": "__import__('os').getcwd()",
            "tmp": "__import__('tempfile').gettempdir()",
            "cells": f"[get_ipython().compile.get_code_name(s, s, 0) for s in {sources!r}]"})
        reply = (await self._gather(msg_id, time.monotonic() + self.server.timeout)).reply or {}
        found = {name: ast.literal_eval(value["data"]["text/plain"]) for name, value
                 in reply.get("user_expressions", {}).items() if value.get("status") == "ok"}
        lines = [int(cell.metadata["runner"]["line"]) for cell in cells]
        self.places = Places(self.session.post, tuple(zip(found.pop("cells", []), lines,
                                                          strict=False)), **found)

    async def _snippet(self, snippet: Snippet, cell: NotebookNode) -> tuple[SnippetResult, bool]:
        """The snippet run: its result, and whether the kernel can go on."""
        env, started = self.session.env, time.monotonic()
        limit = float(snippet.markers.timeout or self.server.timeout)
        msg_id, got = await self._send(cell.source), _Gathered(int(cell.metadata["runner"]["line"]))
        try:
            await self._gather(msg_id, started + limit, got)
        except TimeoutError:
            await self.server._api("POST", f"/api/kernels/{self.kernel}/interrupt", {})
            try:
                await self._gather(msg_id, time.monotonic() + INTERRUPT_GRACE, got)
                line = self._line(_raised(got) or ("", "", []))
            except (TimeoutError, _Closed):
                line = None
            where = f" at line {line}" if line else ""
            return SnippetResult.failed(snippet, env, ErrorKind.TIMEOUT,
                                        f"timed out after {limit:g} s{where}",
                                        line or snippet.code_line,
                                        duration_s=time.monotonic() - started), False
        except _Closed as exc:
            return SnippetResult.failed(snippet, env, ErrorKind.DEAD_KERNEL, str(exc),
                                        snippet.code_line,
                                        duration_s=time.monotonic() - started), False
        return self._result(snippet, got, time.monotonic() - started), True

    def _result(self, snippet: Snippet, got: _Gathered, duration: float) -> SnippetResult:
        """Passed, raised what it must (its last line the exception, as a local run writes
        it), or failed with the exception's type, message and post line."""
        env, expected = self.session.env, snippet.markers.raises
        output = collect_output(got.outputs, self.places)
        raised = _raised(got)
        if got.size > self.server.max_output:
            return SnippetResult.failed(snippet, env, ErrorKind.OUTPUT_LOST,
                                        f"output past {self.server.max_output:,} bytes",
                                        snippet.code_line, output=output, duration_s=duration)
        if raised is None and expected is not None:
            return SnippetResult.failed(snippet, env, ErrorKind.DID_NOT_RAISE, f"expected "
                                        f"{expected} to be raised, nothing was", output=output,
                                        duration_s=duration)
        if raised is None:
            return SnippetResult(snippet, env, "passed", output, duration_s=duration)
        name, value, trace = raised
        if name == expected:
            last = portable(f"{name}: {value}" if value else name, self.places) + "\n"
            parts = (*output.parts, Part("text", last)) if output.parts else ()
            return SnippetResult(snippet, env, "passed",
                                 Output(output.stdout + last, output.stderr, parts),
                                 duration_s=duration)
        return SnippetResult.failed(snippet, env, name, portable(value, self.places),
                                    self._line(raised) or snippet.line,
                                    ANSI.sub("", "\n".join(trace)), output, duration)

    def _line(self, raised: tuple[str, str, list[str]]) -> int | None:
        """The post line of the deepest frame of the traceback that is in one of this
        session's cells (IPython names it `Cell In[N], line L`)."""
        for match in reversed(list(_CELL_LINE.finditer(ANSI.sub("", "\n".join(raised[2]))))):
            if int(match[1]) in self.counts:
                return self.counts[int(match[1])] + int(match[2])
        return None

    async def _send(self, code: str, expressions: dict[str, str] | None = None) -> str:
        """An execute_request on the shell channel (silent, with `expressions`); its id."""
        msg_id, date = uuid.uuid4().hex, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        await self.socket.write_message(json.dumps({
            "channel": "shell", "parent_header": {}, "metadata": {},
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "runner",
                       "session": self.id, "date": date, "version": "5.3"},
            "content": {"code": code, "silent": bool(expressions), "store_history": True,
                        "user_expressions": expressions or {}, "allow_stdin": False,
                        "stop_on_error": True}, "buffers": []}))
        return msg_id

    async def _gather(self, msg_id: str, deadline: float,
                      got: _Gathered | None = None) -> _Gathered:
        """The request's outputs until its reply and the kernel's `idle` after it; TimeoutError
        past `deadline`."""
        got = got or _Gathered()
        while got.reply is None or not got.idle:
            raw = await asyncio.wait_for(self.socket.read_message(),
                                         max(deadline - time.monotonic(), 0))
            if raw is None:
                raise _Closed(f"the kernel's channels closed ({self.socket.close_reason})")
            msg = json.loads(raw)
            kind, content = msg["msg_type"], msg["content"]
            state = content.get("execution_state") if kind == "status" else None
            if state in ("restarting", "dead"):  # the server's word, to no request
                raise _Closed(f"the kernel died while running this snippet (the server: {state})")
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if kind == "execute_reply":
                got.reply = content
            elif state is not None:
                got.idle = state == "idle"
            elif kind == "execute_input" and isinstance(content.get("execution_count"), int):
                self.counts[content["execution_count"]] = got.line
            elif kind == "clear_output":
                got.outputs.clear()
            elif kind in _OUTPUTS and got.size <= self.server.max_output:
                got.size += len(raw)
                got.outputs.append(output_from_msg(msg))  # type: ignore[no-untyped-call]
        return got


def _raised(got: _Gathered) -> tuple[str, str, list[str]] | None:
    """What the request raised (name, message, traceback), by its reply; None: it passed."""
    shown = next((o for o in got.outputs if o.output_type == "error"), None)
    content = got.reply or {}
    if content.get("status") == "ok":
        return None if shown is None else (shown.ename, shown.evalue, list(shown.traceback))
    if content.get("status") != "error":
        return ErrorKind.ABORTED, f"the kernel's reply says {content.get('status')!r}", []
    return (str(content.get("ename")), str(content.get("evalue", "")),
            list(map(str, content.get("traceback") or [])))


def _unchanged(beside: Beside, name: str, sha: str) -> bytes | None:
    """The bytes of a file beside the post, when they are still those its key was made from."""
    try:
        data = read_regular(beside.folder / name, BESIDE_MAX_BYTES, follow_symlinks=False)
    except (OSError, ValueError):  # gone, or swapped for a link, since
        return None
    return data if hashlib.sha256(data).hexdigest() == sha else None


def _all_failed(session: Session, done: list[SnippetResult], kind: str,
                message: str) -> tuple[SnippetResult, ...]:
    """The results so far, and every other snippet of the session failed for one reason."""
    ran = {id(result.snippet) for result in done}
    return (*done, *(SnippetResult.failed(s, session.env, kind, message)
                     for s in session.snippets if id(s) not in ran))
