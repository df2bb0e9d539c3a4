"""Sessions -> results: the only module that talks to Jupyter kernels (through nbclient).

Each session gets its environment's own kernel, started in a fresh scratch folder, and runs its
snippets as the cells of one notebook, in post order. nbclient races each cell's reply against
the output stream and a liveness poll; its timeout and dead-kernel errors are turned into failed
results here. What comes out is always a result per snippet, never an exception.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import errno
import json
import math
import os
import re
import signal
import stat
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import IO, Any

import zmq
import zmq.asyncio
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import ensure_async
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat import NotebookNode, from_dict
from zmq.utils.monitor import parse_monitor_message

from runner.atomic import remove_tree
from runner.beside import Beside, copy_beside, read_beside
from runner.config import DEFAULT_MAX_BYTES, DEFAULT_MAX_LINE_CHARS
from runner.envs import BuiltEnv, kernel_env
from runner.forkserver import take_back
from runner.images import png_problem
from runner.model import ErrorKind, Output, Part, Session, Snippet, SnippetResult
from runner.notebooks import session_notebook
from runner.portable import Places, portable
from runner.provisioner import ForkedKernel, ForkProvisioner
from runner.writeback import ANSI

_CELL_FILE = re.compile(r" \([^()]*\.py, line \d+\)$")
# Evaluated in the kernel after a cell failed: the traceback's frames, the SyntaxError's place,
# and IPython's map from each cell's compiled file name to its execution count.
_TRACE = (
    "(lambda sys, tb: __import__('json').dumps({"
    "'frames': [[f.f_code.co_filename, n] for f, n in tb.walk_tb(sys.last_traceback)]"
    " if getattr(sys, 'last_traceback', None) else [],"
    "'syntax': [sys.last_value.filename, sys.last_value.lineno]"
    " if isinstance(getattr(sys, 'last_value', None), SyntaxError) else None,"
    "'cells': dict(getattr(get_ipython().compile, '_filename_map', {}))}))"
    "(__import__('sys'), __import__('traceback'))"
)


NOTE_ROOM = 200  # bytes beyond the budget for the kernel's note of what it cut
INTERRUPT_GRACE = 5.0  # seconds an interrupted snippet has to stop before its kernel is killed
IOPUB_TIMEOUT = 60  # seconds output may keep arriving after a snippet's reply
RETRY_WAIT = 1.0  # seconds for libzmq's retry of a connection that ended (else: refused)


def _node(msg: dict[str, Any], budget: _Budget) -> NotebookNode | None:
    """An output node from an iopub message, or None (not an output, or over the budget).
    Only what the runner records is kept (text, HTML, a checked PNG; the cell's first error):
    nothing else a message brings is held while the cell runs."""
    kind, content = msg["msg_type"], msg["content"]
    if kind == "stream":
        text = _within(budget, content["text"])
        return _as_node({"output_type": "stream", "name": content["name"], "text": text})
    if kind in ("display_data", "execute_result"):
        data = {key: value for key, value in content.get("data", {}).items() if key in _KEPT}
        if any(key.startswith("image/") for key in content.get("data", {})):
            budget.images += 1
            if budget.images > budget.limits.max_images:
                budget.cut += sum(len(str(v)) for v in data.values())
                return None
        if "image/png" in data:
            problem = _png_problem(data["image/png"], budget)
            if problem:
                data = {"text/plain": f"[image/png dropped by the runner: {problem}]"}
        for key in ("text/plain", "text/html"):
            if key in data:
                data[key] = _within(budget, _joined(data[key]))
        if not any(data.values()):
            return None
        node = {"output_type": kind, "data": data, "metadata": {}}
        if kind == "execute_result":
            node["execution_count"] = content.get("execution_count")
        return _as_node(node)
    if kind == "error" and not budget.errors:
        budget.errors += 1
        return _as_node({"output_type": "error", "ename": content["ename"],
                         "evalue": content["evalue"], "traceback": content["traceback"]})
    return None


_KEPT = ("text/plain", "text/html", "image/png")  # the data of a display the runner records


def _mib(size: int) -> str:
    return f"{size / 2**20:.3g} MiB"


def _png_problem(value: object, budget: _Budget) -> str:
    """Why a display's image/png is no figure ("" when it is one, counted in the budget): its
    size is known from its base64 before it is decoded (over the per-image or the snippet's
    limit), and what it decodes to must be a PNG that Pillow reads (`images.png_problem`)."""
    limits, text = budget.limits, _joined(value) if isinstance(value, (str, list)) else ""
    size = len(text) * 3 // 4
    if size > limits.max_image:
        return f"{size:,} bytes, over the {_mib(limits.max_image)} a figure may have"
    if budget.image_bytes + size > limits.max_images_bytes:
        return f"over the {_mib(limits.max_images_bytes)} a snippet's figures may have"
    try:
        png = base64.b64decode(text)
    except ValueError:
        return "not a PNG"
    problem = png_problem(png, limits.max_pixels)
    if not problem:
        budget.image_bytes += len(png)
    return problem


def _as_node(output: dict[str, Any]) -> NotebookNode:
    node: NotebookNode = from_dict(output)  # type: ignore[no-untyped-call]
    return node


def _within(budget: _Budget, text: str) -> str:
    """`text`, or as much of it as the budget still has room for (the rest counted as cut)."""
    size = len(text.encode("utf-8", "surrogateescape"))
    room = budget.limits.max_bytes + budget.room - budget.used
    if size <= room:
        budget.used += size
        return text
    kept = text.encode("utf-8", "surrogateescape")[:max(room, 0)].decode("utf-8", "ignore")
    budget.used = budget.limits.max_bytes + budget.room
    budget.cut += size - len(kept.encode("utf-8", "surrogateescape"))
    return kept


class _Stop(Exception):
    """The session cannot go on (timeout, dead kernel): the snippets after this one do not run."""

    def __init__(self, result: SnippetResult):
        self.result = result


@dataclass(frozen=True)
class KernelSetup:
    """How a run starts its kernels: the same for all of its sessions."""

    timeout: float  # seconds per snippet, unless its runner:timeout says otherwise
    kernels_dir: Path | None = None  # holds the kernelspec to start (a warm one); None: the env's
    variables: tuple[tuple[str, str], ...] | None = None  # the kernel's environment; None:
    # `kernel_env(env)`
    workspace: Path | None = None  # the run's own folder: scratch and sockets go in it, and
    # go with it even when the run is stopped by a signal
    stop_in_background: bool = False  # return before the kernel has ended (`kernels_stopped`)
    sandbox: bool = False  # the kernelspec starts kernels in bubblewrap (see sandbox.py)
    output: OutputLimits = field(default_factory=lambda: OutputLimits())


@dataclass(frozen=True)
class Deadline:
    """The whole run's limit (--deadline): cells end by it."""

    at: float  # time.monotonic() by which the run ends
    seconds: float  # its length, for the message


# Kernels being stopped in the background, so the next session need not wait for one to end.
# A reference is kept until each is done (asyncio keeps only weak ones); `kernels_stopped()`
# waits for them all.
_stopping: set[asyncio.Task[None]] = set()


async def kernels_stopped() -> None:
    """Wait until every kernel `run_session` started has ended and its folders are gone."""
    while _stopping:
        await asyncio.gather(*_stopping, return_exceptions=True)


async def run_session(session: Session, env: BuiltEnv, setup: KernelSetup,
                      deadline: Deadline | None = None,
                      turn: contextlib.AbstractAsyncContextManager[Any] | None = None,
                      beside: Beside | None = None) -> tuple[SnippetResult, ...]:
    """Run every snippet of the session in one kernel of `env`; a result for each snippet.
    Then the kernel is stopped and its scratch folder removed: before this returns, or with
    `setup.stop_in_background` in a task, so the next session need not wait for it. With
    `turn` (a semaphore of the run's jobs), the kernel starts and is set up at once and its
    cells wait for their turn: the next session's kernel gets ready while this one's cells
    run. `beside`: the files beside the post its kernel gets copies of (default: found now)."""
    results: list[SnippetResult] = []
    clock = _Clock()
    # The session's folder: all a sandboxed kernel sees of the run (its scratch folder, its
    # connection file and sockets), removed with the session.
    folder = Path(tempfile.mkdtemp(prefix="runner-session-", dir=setup.workspace))
    scratch = Path(tempfile.mkdtemp(prefix=f"runner-{session.env}-", dir=folder))
    copy_beside(read_beside(Path(session.post).parent) if beside is None else beside, scratch)
    sockets = folder / "ipc"
    sockets.mkdir()
    # Opened before the kernel exists: the folder a crash file is read in, wherever the
    # kernel moves its name.
    ipc = os.open(sockets, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    # The kernel's own log (not the snippets' output, which comes over iopub) is kept out of
    # the terminal; its tail explains a kernel that would not start.
    log = tempfile.TemporaryFile(mode="w+", prefix="runner-kernel-")  # noqa: SIM115
    client: _Client | None = None
    try:
        notebook = session_notebook(session)
        client = _client(notebook, env, setup, sockets)
        variables = _variables(session, env, setup, folder)
        client.setup = _setup_request(notebook, sockets / "crash", setup.output)
        client.clock = clock.lap("prepare")
        async with client.async_setup_kernel(cwd=str(scratch), env=variables,
                                             stdout=log, stderr=log, cleanup_kc=False):
            clock.lap("handshake")
            places = await _start(client, session, env, notebook, scratch)
            if setup.sandbox:  # its sockets and crash file are made: no more files of the
                take_back(ipc)  # kernel's on the run folder's disk
            clock.lap("setup request")
            async with turn or contextlib.nullcontext():
                clock.lap("turn")
                live = _Live(client, session, places, ipc, setup.timeout, deadline)
                await _run_cells(live, notebook, results)
                clock.lap("cells")
    except Exception as exc:  # the kernel would not start, or died between cells
        tail = " / ".join(_tail(log.fileno()).decode(errors="replace").strip().splitlines()[-3:])
        reason = f"{type(exc).__name__}: {exc}".strip() + (f" (kernel log: {tail})" if tail else "")
        done = {id(r.snippet) for r in results}
        results += [SnippetResult.failed(s, session.env, ErrorKind.KERNEL, reason)
                    for s in session.snippets if id(s) not in done]
    finally:
        os.close(ipc)
        task = asyncio.ensure_future(_stop(client, log, folder))
        _stopping.add(task)
        task.add_done_callback(_stopping.discard)
        if not setup.stop_in_background:
            await task
        clock.lap("stop")
        clock.write(session)
    return tuple(results)


class _Clock:
    """Where a session's time goes (RUNNER_PROFILE=FILE: one JSON line per session, appended;
    the bench prints their means): laps named by the phase that just ended."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> _Clock:
        now = time.monotonic()
        self.laps[name] = self.laps.get(name, 0.0) + now - self.last
        self.last = now
        return self

    def write(self, session: Session) -> None:
        path = os.environ.get("RUNNER_PROFILE")
        if path:
            with contextlib.suppress(OSError), open(path, "a") as out:
                out.write(json.dumps({"post": session.post, "env": session.env,
                                      **self.laps}) + "\n")


def _variables(session: Session, env: BuiltEnv, setup: KernelSetup,
               folder: Path) -> dict[str, str]:
    """The kernel's environment, and what its launcher and sandbox need to know
    (RUNNER_KERNEL_LIMITS, read by forkserver.py)."""
    variables = dict(setup.variables if setup.variables is not None else kernel_env(env))
    variables["RUNNER_KERNEL_LIMITS"] = json.dumps(
        {"memory_mb": env.spec.memory_mb, "processes": env.spec.processes,
         "network": session.network, "sandbox": setup.sandbox, "session": str(folder),
         "workspace": str(folder.parent),
         # the post's own (runner:env-var), set in the kernel once it is in its sandbox:
         # never in the environment of the launcher or of bubblewrap, outside it
         "variables": session.variables})
    if setup.sandbox:
        variables["TMPDIR"] = "/tmp"  # the host's TMPDIR is not in the sandbox
    return variables


async def _stop(client: _Client | None, log: IO[str], folder: Path) -> None:
    """Stop the kernel (nothing of it survives), then remove what the session left."""
    try:
        if client is not None and client.km is not None:
            await client._async_cleanup_kernel()
    finally:
        log.close()
        await asyncio.to_thread(remove_tree, folder)


@dataclass
class _Live:
    """A session while its kernel runs: what its cells need to know."""

    client: _Client
    session: Session
    places: Places
    ipc: int  # the session's ipc folder (open), where a crash's traceback lands (faulthandler)
    timeout: float
    deadline: Deadline | None


async def _run_cells(live: _Live, notebook: NotebookNode, results: list[SnippetResult]) -> None:
    session = live.session
    cells = iter(enumerate(notebook.cells))
    stopped: SnippetResult | None = None
    for snippet in session.snippets:
        if snippet.markers.skip is not None:
            results.append(SnippetResult(snippet, session.env, "skipped",
                                         reason=snippet.markers.skip or "marked runner:skip"))
            continue
        index, cell = next(cells)
        if stopped is not None:
            results.append(SnippetResult.not_run(snippet, session.env, stopped.snippet.line))
            continue
        planned = next((f for f in session.failures if f[0] == snippet.line), None)
        try:
            result = (SnippetResult.failed(snippet, session.env, planned[1], planned[2],
                                           planned[3]) if planned
                      else await _run_cell(live, snippet, cell, index))
        except _Stop as stop:  # the kernel is gone or stuck: nothing more can run
            results.append(stop.result)
            stopped = stop.result
            continue
        results.append(result)
        if result.status == "failed" and not session.keep_going:
            stopped = result


async def _run_cell(live: _Live, snippet: Snippet, cell: NotebookNode,
                    index: int) -> SnippetResult:
    started = time.monotonic()
    limit, deadline = float(snippet.markers.timeout or live.timeout), live.deadline
    bound = deadline is not None and deadline.at - started < limit  # the run's deadline first
    if deadline is not None and bound:
        limit = max(deadline.at - started, 0.001)
    cell.metadata["runner"]["timeout"] = limit
    # output still arriving after the reply is waited for, up to the run's deadline at most
    live.client.iopub_timeout = IOPUB_TIMEOUT if deadline is None else max(
        1, min(IOPUB_TIMEOUT, math.ceil(deadline.at - started)))
    live.client.budget = _Budget(live.client.output_limits, room=NOTE_ROOM)
    live.client.reply = None
    try:
        await live.client.async_execute_cell(cell, index)
        if live.client.refused:  # once its output had come: no more can be recorded
            raise DeadKernelError(live.client.refused)
    except CellTimeoutError as exc:
        if "IOPub" in str(exc):  # the reply came, its output did not finish in time
            raise _Stop(SnippetResult.failed(
                snippet, live.session.env, ErrorKind.OUTPUT_LOST,
                f"output was still arriving {live.client.iopub_timeout} s after the snippet "
                "ended: it could not all be recorded", snippet.code_line,
                duration_s=time.monotonic() - started)) from None
        line = await _interrupted_at(live, cell)
        where = f" at line {line}" if line else ""
        message = (f"the run's deadline of {deadline.seconds:g} s was reached{where}"
                   if deadline is not None and bound else f"timed out after {limit:g} s{where}")
        raise _Stop(SnippetResult.failed(
            snippet, live.session.env, ErrorKind.DEADLINE if bound else ErrorKind.TIMEOUT,
            message, line or snippet.code_line, duration_s=time.monotonic() - started)) from None
    except DeadKernelError:
        if live.client.refused:
            raise _Stop(SnippetResult.failed(
                snippet, live.session.env, ErrorKind.OUTPUT_LOST, live.client.refused,
                snippet.code_line, duration_s=time.monotonic() - started)) from None
        line = _crash_line(live)
        raise _Stop(SnippetResult.failed(
            snippet, live.session.env, ErrorKind.DEAD_KERNEL,
            f"the kernel died while running this snippet ({await _death(live.client)})"
            + (f" at line {line}" if line else ""), line or snippet.code_line,
            duration_s=time.monotonic() - started)) from None
    return await _result(live, snippet, cell, time.monotonic() - started)


async def _result(live: _Live, snippet: Snippet, cell: NotebookNode,
                  duration: float) -> SnippetResult:
    """A cell that ran -> its snippet's result: passed, raised what it must, or failed."""
    env = live.session.env
    output = collect_output(cell.outputs, live.places, live.client.budget)
    error = _raised(live.client.reply, cell.outputs)
    expected = snippet.markers.raises
    if error is None and expected is None:
        return SnippetResult(snippet, env, "passed", output, duration_s=duration)
    if error is None:
        return SnippetResult.failed(snippet, env, ErrorKind.DID_NOT_RAISE,
                                    f"expected {expected} to be raised, nothing was",
                                    output=output, duration_s=duration)
    if expected is not None and error.replied and error.ename == expected:
        final = portable(f"{error.ename}: {error.evalue}" if error.evalue else error.ename,
                         live.places)
        return SnippetResult(snippet, env, "passed",
                             Output(output.stdout + final + "\n", output.stderr,
                                    (*output.parts, Part("text", final + "\n"))
                                    if output.parts else ()),
                             duration_s=duration)
    line = await _error_line(live.client, live.session, cell)
    traceback = ANSI.sub("", "\n".join(error.traceback))
    message = _CELL_FILE.sub("", error.evalue)  # the cell's temp file means nothing to a reader
    return SnippetResult.failed(snippet, env, error.ename, message, line, traceback,
                                output, duration)


@dataclass(frozen=True)
class _Raised:
    """What a cell raised: the exception's name and message, and its traceback's lines."""

    ename: str
    evalue: str
    traceback: tuple[str, ...]
    replied: bool  # the execute_reply says so (not only an error output)


def _raised(reply: dict[str, Any] | None, outputs: list[NotebookNode]) -> _Raised | None:
    """What the cell raised, or None when it passed. The execute_reply's status is the truth: a
    hidden block can silence IPython's traceback (showtraceback, set_custom_exc,
    showsyntaxerror) or clear the error output (clear_output in a post_run_cell hook), but
    ipykernel still replies "error" ("aborted": it did not run the cell), with the exception's
    own name. An error output fails a cell too. No reply: the cell was blank, nothing ran.

    Not proof against the kernel itself: its process is the post's, and code that rewrites
    ipykernel's reply (or clears the ExecutionResult a post_run_cell hook is handed) still
    makes a failing snippet pass. Only what IPython shows is no longer the verdict."""
    shown = next((o for o in outputs if o.output_type == "error"), None)
    content = reply.get("content") if reply is not None else {"status": "ok"}
    if not isinstance(content, dict):
        content = {"status": "malformed"}
    status = content.get("status")
    if status == "ok":
        return None if shown is None else _Raised(
            str(shown.ename), str(shown.evalue), tuple(map(str, shown.traceback)), False)
    if status != "error":
        return _Raised(ErrorKind.ABORTED, f"the kernel's reply to this snippet says {status!r}",
                       (), True)
    # ipykernel names no exception for an error in a display formatter (NoneType): its error
    # output does
    named = shown if shown is not None and content.get("ename") in (None, "NoneType") else content
    traceback = content.get("traceback") or (shown.traceback if shown is not None else [])
    return _Raised(str(named.get("ename")), str(named.get("evalue", "")),
                   tuple(map(str, traceback)) if isinstance(traceback, list) else (), True)


async def _interrupted_at(live: _Live, cell: NotebookNode) -> int | None:
    """Interrupt a snippet that ran out of time; the post line of the statement it was in
    (from the KeyboardInterrupt's traceback), or None when the interrupt did not land in time
    (a C call that holds the GIL): then the kernel is killed as it is."""
    client = live.client
    try:
        assert client.km is not None
        await ensure_async(client.km.interrupt_kernel())
        return await asyncio.wait_for(_error_line(client, live.session, cell), INTERRUPT_GRACE)
    except Exception:
        return None


def _crash_line(live: _Live) -> int | None:
    """The post line a dead kernel was running, where its crash left a traceback (Python's
    faulthandler, on SIGSEGV, SIGFPE, SIGABRT, SIGBUS, SIGILL). The file is the kernel's: only
    a regular file is read (not through a link, never waiting: a FIFO opens at once and is
    refused), and only its end, where the last crash is."""
    try:
        handle = os.open("crash", _READ_ONLY, dir_fd=live.ipc)
    except OSError:
        return None
    try:
        text = _tail(handle).decode(errors="replace")
    except OSError:
        return None
    finally:
        os.close(handle)
    cells = dict(live.places.cells)
    for match in re.finditer(r'File "([^"]+)", line (\d+)', text.split("Fatal Python")[-1]):
        if match[1] in cells:
            return cells[match[1]] + int(match[2])  # most recent call first
    return None


_READ_ONLY = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
TAIL_BYTES = 64 * 1024  # what is read of a file a kernel writes: its end


def _tail(handle: int, size: int = TAIL_BYTES) -> bytes:
    """The last `size` bytes of the regular file open as `handle` (pread: its offset, which a
    kernel writing to it shares, does not move); anything else raises OSError."""
    info = os.fstat(handle)
    if not stat.S_ISREG(info.st_mode):
        raise OSError(errno.EINVAL, "not a regular file")
    return os.pread(handle, size, max(info.st_size - size, 0))


async def _death(client: NotebookClient) -> str:
    """How the kernel's process ended: its exit status, or the signal that killed it."""
    process = getattr(getattr(client.km, "provisioner", None), "process", None)
    code = None
    for _ in range(50):  # it has just died: give the exit status a moment to arrive
        code = process.poll() if process is not None else None
        if code is not None:
            break
        await asyncio.sleep(0.01)
    if code is None:
        return "exit status unknown"
    number = -code if code < 0 else code - 128 if code > 128 else 0
    if number:
        try:
            return f"killed by signal {number}, {signal.Signals(number).name}"
        except ValueError:
            pass
    return f"exit status {code}"


def collect_output(outputs: list[NotebookNode], places: Places | None = None,
                   budget: _Budget | None = None) -> Output:
    """Text, tables and figures in the order they came; stderr apart; every text portable
    (`portable.py`), long lines cut, and a last line saying how much the budget cut."""
    parts: list[Part] = []
    stderr: list[str] = []
    for output in outputs:
        if output.output_type == "stream" and output.name == "stderr":
            stderr.append(output.text)
        elif output.output_type == "stream":
            parts.append(Part("text", output.text))
        elif output.output_type in ("execute_result", "display_data"):
            parts += _display_part(output.get("data", {}))
    if budget is not None and budget.cut:
        parts.append(Part("text", f"\n... [{budget.cut:,} more bytes of output cut by the runner:"
                                  f" max-output-bytes is {budget.limits.max_bytes:,}]\n"))
    merged: list[Part] = []
    for part in parts:  # neighbouring text is one part
        if merged and part.kind == "text" == merged[-1].kind:
            merged[-1] = Part("text", merged[-1].text + part.text)
        else:
            merged.append(part)
    merged = [_shaped(part, places, budget) for part in merged]
    stdout = "".join(p.text if p.kind == "text" else p.text + "\n" for p in merged)
    rich = any(p.kind != "text" for p in merged)
    return Output(stdout, _shaped(Part("text", "".join(stderr)), places, budget).text,
                  tuple(merged) if rich else ())


def _shaped(part: Part, places: Places | None, budget: _Budget | None) -> Part:
    text, html = part.text, part.html
    if places is not None:
        text, html = portable(text, places), portable(html, places)
    if budget is not None:
        text = _cut_lines(text, budget.limits.max_line)
    return Part(part.kind, text, html, part.png)


def _cut_lines(text: str, max_line: int) -> str:
    """Lines longer than `max_line` characters cut, each with a note of how much."""
    if len(text) <= max_line or all(len(line) <= max_line for line in text.split("\n")):
        return text
    return "\n".join(line if len(line) <= max_line else
                     f"{line[:max_line]} ... [{len(line) - max_line:,} more characters cut by "
                     f"the runner: max-line-chars is {max_line:,}]"
                     for line in text.split("\n"))


@dataclass(frozen=True)
class OutputLimits:
    """How much of a snippet's output is kept: text bytes in all, and characters a line."""

    max_bytes: int = DEFAULT_MAX_BYTES  # [tool.runner] max-output-bytes
    max_line: int = DEFAULT_MAX_LINE_CHARS  # [tool.runner] max-line-chars
    max_images: int = 50  # figures a snippet may record
    max_image: int = 10 << 20  # bytes a figure (a PNG) may have
    max_images_bytes: int = 50 << 20  # bytes the figures of a snippet may have in all
    max_pixels: int = 40_000_000  # pixels a figure may have (comparing one decodes it)
    max_message: int = 32 << 20  # bytes a part of a message from the kernel may have; more:
    # ZMQ refuses it before it is read (zmq.MAXMSGSIZE), and the snippet fails

    @property
    def frame_cap(self) -> int:
        """MAXMSGSIZE: `max_message`, or room for a message of text as large as the budget
        (JSON escapes take up to 6 bytes a character)."""
        return max(self.max_message, 8 * self.max_bytes)


@dataclass
class _Budget:
    """What one cell's output has used of its limits, counted as it streams in."""

    limits: OutputLimits
    room: int = 0  # bytes past the limit still taken (the kernel's own note of what it cut)
    used: int = 0
    cut: int = 0  # text bytes dropped
    images: int = 0
    image_bytes: int = 0  # of the figures kept
    errors: int = 0  # error outputs kept (the first only)


def _display_part(data: dict[str, Any]) -> list[Part]:
    text = _joined(data.get("text/plain", ""))
    if "image/png" in data:
        return [Part("image", text, png=base64.b64decode(_joined(data["image/png"])))]
    html = _joined(data.get("text/html", ""))
    if 'class="dataframe"' in html:
        return [Part("table", text, html=html)]
    return [Part("text", text + "\n")] if text else []


def _joined(value: str | list[str]) -> str:
    return value if isinstance(value, str) else "".join(value)


async def _error_line(client: NotebookClient, session: Session, cell: NotebookNode) -> int | None:
    """The post line of the deepest traceback frame that lies in one of this session's cells."""
    assert client.kc is not None
    try:
        msg_id = client.kc.execute("", silent=True, store_history=False,
                                   user_expressions={"trace": _TRACE})
        reply = await client.async_wait_for_reply(msg_id)
        data = reply["content"]["user_expressions"]["trace"]["data"]["text/plain"]  # type: ignore[index]
        trace: dict[str, Any] = json.loads(ast.literal_eval(data))
    except Exception:  # no map: the failing snippet is still named by its fence line
        return None
    counts = {c.execution_count: c for c in client.nb.cells if c.get("execution_count")}
    places = [*trace["frames"], *([trace["syntax"]] if trace["syntax"] else [])]
    for filename, lineno in reversed(places):
        owner = counts.get(trace["cells"].get(filename))
        if owner is not None and lineno:
            return int(owner.metadata["runner"]["line"]) + int(lineno)
    return None


def _client(notebook: NotebookNode, env: BuiltEnv, setup: KernelSetup,
            sockets: Path) -> _Client:
    specs = KernelSpecManager(kernel_dirs=[str(setup.kernels_dir or env.kernels_dir)],
                              ensure_native_kernel=False)
    manager = _Manager(kernel_name=env.kernel_name, kernel_spec_manager=specs,
                       context=_zmq_context())
    manager.provisioner = ForkProvisioner(kernel_id="", kernel_spec=manager.kernel_spec,
                                          parent=manager)
    # Unix sockets, not TCP: a kernel without network (its own empty network namespace) can
    # still talk to the runner, and nothing else on the machine can talk to the kernel.
    manager.transport = "ipc"
    manager.ip = str(sockets / "kernel")
    manager.connection_file = str(sockets / "kernel.json")  # not in a runtime folder of all

    def cell_timeout(cell: NotebookNode) -> float:
        return float(cell.metadata.get("runner", {}).get("timeout") or setup.timeout)

    # Output that arrives after the reply is waited for (IOPUB_TIMEOUT), and a snippet whose
    # output is still arriving then fails: output is never dropped in silence.
    return _Client(notebook, setup.output, km=manager, kernel_name=env.kernel_name,
                   timeout=max(1, math.ceil(setup.timeout)), timeout_func=cell_timeout,
                   allow_errors=True, record_timing=False, startup_timeout=120,
                   shutdown_kernel="immediate", raise_on_iopub_timeout=True,
                   iopub_timeout=IOPUB_TIMEOUT)


class _Manager(AsyncKernelManager):
    """jupyter_client's kernel manager; waiting for a forked kernel to end is waiting for the
    status its fork server sends, not polling every 0.1 s (a tenth of a second at the end of
    every run)."""

    async def _async_wait(self, pollinterval: float = 0.1) -> None:
        kernel = getattr(self.provisioner, "process", None)
        if isinstance(kernel, ForkedKernel):
            await kernel.ended()
        else:
            await super()._async_wait(pollinterval)


_CONTEXT: list[zmq.asyncio.Context] = []


def _zmq_context() -> zmq.asyncio.Context:
    """One ZMQ context for the kernel managers of all of the runner's kernels (each manager
    would make one, and start and stop its I/O thread, per session)."""
    if not _CONTEXT:
        _CONTEXT.append(zmq.asyncio.Context())
    return _CONTEXT[0]


class _Client(NotebookClient):
    """nbclient's client with a quicker readiness check and bounded output.

    jupyter_client's `wait_for_ready` ends by waiting for 0.2 s of silence on iopub, once per
    kernel; here the kernel is ready as soon as its reply to the first request (the session's
    setup request, else `kernel_info`) has come and iopub has carried that request's status
    (which proves the subscription is live). Until then it asks `kernel_info` again, as
    jupyter_client does.

    Output is counted against the cell's budget as it streams in: past it, messages are
    dropped at once (counted), so a flood of output keeps the runner's memory bounded; and
    output nodes are made without nbformat's per-output schema validation (1.4 ms each: the
    runner's whole cost on a flood of `display()` calls).

    Every message is the kernel's, and the kernel is the post's: a part of one over
    `OutputLimits.frame_cap` is refused by ZMQ before it is read (MAXMSGSIZE); libzmq then
    drops that connection for good (a protocol error is never retried), which a monitor of
    the socket sees (`_watched`): from then on the kernel counts as gone, and the snippet
    fails (`refused`). Each cell's execute_reply is kept (`reply`): its status, not the
    output IPython shows, says whether the cell failed (`_raised`)."""

    def __init__(self, notebook: NotebookNode, limits: OutputLimits, **kwargs: Any) -> None:
        super().__init__(notebook, **kwargs)
        self.output_limits = limits
        self.budget = _Budget(limits)
        self.clock = _Clock()
        # The session's setup request (its user expressions), the kernel's first request (see
        # `_until_ready`); its id, and its reply once it has come.
        self.setup: dict[str, str] | None = None
        self.setup_id: str | None = None
        self.setup_reply: dict[str, Any] | None = None
        self.reply: dict[str, Any] | None = None  # the last cell's execute_reply
        self.refused = ""  # why a message from the kernel was refused ("": none was)
        # each watched socket, its monitor (a PAIR socket) and the task reading it
        self.watchers: list[tuple[zmq.asyncio.Socket, zmq.asyncio.Socket,
                                  asyncio.Task[None]]] = []

    def output(self, outs: list[NotebookNode], msg: dict[str, Any], display_id: str | None,
               cell_index: int) -> NotebookNode | None:
        """nbclient's `output` (an output hook, a delayed clear, display ids), with the
        budget and a node made from the message as it is."""
        parent = msg["parent_header"].get("msg_id")
        if self.output_hook_stack[parent]:
            self.output_hook_stack[parent][-1].output(outs, msg, display_id, cell_index)
            return None
        out = _node(msg, self.budget)
        if out is None:
            return None
        if self.clear_before_next_output:
            outs[:] = []
            self.clear_display_id_mapping(cell_index)
            self.clear_before_next_output = False
        if display_id:
            self._display_id_map.setdefault(display_id, {}).setdefault(cell_index, []).append(
                len(outs))
        outs.append(out)
        return out

    @contextlib.asynccontextmanager
    async def async_setup_kernel(self, **kwargs: Any) -> AsyncIterator[None]:
        """nbclient's, less its SIGINT/SIGTERM handlers and atexit hook: they would swallow a
        signal meant for the whole run. The runner handles signals itself (cli)."""
        cleanup_kc = kwargs.pop("cleanup_kc", self.owns_km)
        if self.km is None:
            self.km = self.create_kernel_manager()
        if not self.km.has_kernel:
            await self.async_start_new_kernel(**kwargs)
            self.clock.lap("launch")
        if self.kc is None:
            await self.async_start_new_kernel_client()
        try:
            yield
        finally:
            if cleanup_kc:
                await self._async_cleanup_kernel()

    async def async_start_new_kernel_client(self) -> Any:
        assert self.km is not None
        self.kc = self.km.client()
        # Its own context, as jupyter_client makes it (iopub on the shared one lost messages
        # of a display() flood under load). No high-water mark on the runner's side: ZMQ's
        # I/O thread takes every message the kernel sends as it comes (a kernel's PUB socket
        # drops messages, silently, once 1000 wait for a slow reader). A socket connected
        # before its kernel has bound retries after 5 ms, not ZMQ's 100 ms: the handshake
        # waits on it. No stdin (input() fails at once) and no heartbeat thread: the kernel's
        # process tells whether it is alive.
        self.kc.context.setsockopt(zmq.RCVHWM, 0)
        self.kc.context.setsockopt(zmq.RECONNECT_IVL, 5)
        # No message part over the cap is ever read (ZMQ refuses it as its size arrives).
        # No control channel: the runner sends nothing on it, and what came would never be
        # read (the kernel can send there: it knows the client's identity from its requests).
        self.kc.context.setsockopt(zmq.MAXMSGSIZE, self.output_limits.frame_cap)
        self.kc.start_channels(stdin=False, hb=False, control=False)
        for name, channel in (("iopub", self.kc.iopub_channel), ("shell", self.kc.shell_channel)):
            monitor = channel.socket.get_monitor_socket(
                zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED)
            self.watchers.append((channel.socket, monitor,
                                  asyncio.ensure_future(self._watched(monitor, name))))
        try:
            await asyncio.wait_for(self._until_ready(), self.startup_timeout)
        except BaseException:
            await self._async_cleanup_kernel()
            raise
        self.kc.allow_stdin = False
        return self.kc

    async def _watched(self, monitor: zmq.asyncio.Socket, channel: str) -> None:
        """Set `refused` when the kernel's connection to this socket ends and is not retried.
        libzmq ends a connection on a message part over MAXMSGSIZE (or one it cannot decode)
        as a protocol error, which it never retries; when the kernel ends or closes its
        socket, the retry is scheduled at once (EVENT_CONNECT_RETRIED right after
        EVENT_DISCONNECTED). The monitor is closed by `_async_cleanup_kernel`, after the
        socket stops sending it events: a monitor closed first leaves libzmq's I/O thread, and
        `disable_monitor`, waiting on it for good (libzmq#3575, pyzmq#1020)."""
        while True:
            if parse_monitor_message(await monitor.recv_multipart())["event"] != (
                    zmq.EVENT_DISCONNECTED):
                continue
            try:
                await asyncio.wait_for(monitor.recv_multipart(), RETRY_WAIT)
            except TimeoutError:
                self.refused = (
                    f"the kernel sent a message the runner refused (a part over "
                    f"{_mib(self.output_limits.frame_cap)}, or malformed) on its "
                    f"{channel} channel: the snippet's output cannot all be recorded")
                return

    async def _async_check_alive(self) -> None:
        """nbclient's liveness check (each second while a cell runs): a kernel whose message
        was refused is gone to the runner, its connection is (nbclient then ends the cell,
        DeadKernelError, and `_run_cell` says why)."""
        if self.refused:
            raise DeadKernelError(self.refused)
        await super()._async_check_alive()

    async def _check_raise_for_error(self, cell: NotebookNode, cell_index: int,
                                     exec_reply: dict[str, Any] | None) -> None:
        """Keep the cell's execute_reply, which decides whether it failed (`_raised`)."""
        self.reply = exec_reply

    def _update_display_id(self, display_id: str, msg: dict[str, Any]) -> None:
        """nbclient's update of the outputs shown under a display id, with the new data made
        as every output is (`_node`: what is kept, the budget)."""
        shown: dict[int, list[int]] = self._display_id_map.get(display_id, {})
        node = _node({**msg, "msg_type": "display_data"}, self.budget) if shown else None
        if node is None:
            return
        for cell_index, indices in shown.items():
            outputs = self.nb.cells[cell_index].outputs
            for index in indices:
                outputs[index]["data"] = node["data"]
                outputs[index]["metadata"] = node["metadata"]

    def handle_comm_msg(self, outs: list[NotebookNode], msg: dict[str, Any],
                        cell_index: int) -> None:
        """Comm messages (widgets) are not recorded: nbclient would keep every widget's
        state for the session, and let an Output widget take the cell's output."""

    async def _async_cleanup_kernel(self) -> None:
        """nbclient's, once the watch of the sockets has ended: each socket stops sending
        its monitor events, then the monitor is closed (in that order: see `_watched`)."""
        for socket, _, watcher in self.watchers:
            socket.disable_monitor()
            watcher.cancel()
        await asyncio.gather(*(watcher for *_, watcher in self.watchers),
                             return_exceptions=True)
        for _, monitor, _ in self.watchers:
            monitor.close(linger=0)
        self.watchers.clear()
        await super()._async_cleanup_kernel()

    async def _until_ready(self) -> None:
        """The first request is the session's setup request, where there is one: its reply
        and its status on iopub tell that the kernel is ready as well as kernel_info's would,
        and a light session's kernel then answers one request less (about 10 ms of CPU, both
        sides). kernel_info is asked only when they have not both come (and again each second
        without a reply); a request sent before the kernel has bound waits in ZMQ's queue."""
        assert self.kc is not None
        sent: set[str] = set()
        while True:
            if self.setup is not None and self.setup_id is None:
                msg_id = self.setup_id = self.kc.execute(
                    "", silent=True, store_history=False, user_expressions=self.setup)
            else:
                msg_id = self.kc.kernel_info()
            sent.add(msg_id)
            try:
                reply = await ensure_async(self.kc.shell_channel.get_msg(timeout=1))
            except Empty:
                if not await ensure_async(self.km.is_alive()):  # type: ignore[union-attr]
                    raise RuntimeError("kernel died before replying to kernel_info") from None
                continue
            if reply["parent_header"].get("msg_id") == self.setup_id:
                self.setup_reply = reply
            deadline = time.monotonic() + 0.05
            while time.monotonic() < deadline:
                try:
                    message = await ensure_async(self.kc.iopub_channel.get_msg(timeout=0.01))
                except Empty:
                    continue
                if message["parent_header"].get("msg_id") in sent:
                    if reply["msg_type"] == "kernel_info_reply":
                        self.kc._handle_kernel_info_reply(reply)
                    return


# %pip and its kind, wherever they are (an install line at the start of a line is made `pass`
# by the planner, which checks it against the env's lock): an error that says why.
_NO_INSTALL_MAGICS = """
def _refuse(line):
    raise RuntimeError("installing is not done at run time: the env is pinned; add the "
                       "package to envs/ENV/requirements.in and lock it")
for _name in ("pip", "conda", "mamba", "micromamba", "uv"):
    get_ipython().register_magic_function(_refuse, "line", _name)
"""


# The budget applied where output is made, too: past it, print and its kind write nothing
# (fast, and nothing to carry), and each cell ends with the same note the runner writes. The
# runner's own budget (a little larger, for the note) stays for output made otherwise.
_KERNEL_BUDGET = """
import sys
state = [LIMIT, 0]
def cap(stream):
    write = stream.write
    def capped(text):
        size = len(text.encode("utf-8", "surrogateescape"))
        if size <= state[0]:
            state[0] -= size
            return write(text)
        kept = text.encode("utf-8", "surrogateescape")[:max(state[0], 0)].decode("utf-8",
                                                                                "ignore")
        state[0], state[1] = 0, state[1] + size - len(kept.encode("utf-8", "surrogateescape"))
        if kept:
            write(kept)
        return len(text)
    stream.write = capped
    return write
out = cap(sys.stdout)
cap(sys.stderr)
def note(*args):
    if state[1]:
        out(f"\\n... [{state[1]:,} more bytes of output cut by the runner: "
            f"max-output-bytes is {LIMIT:,}]\\n")
    state[0], state[1] = LIMIT, 0
get_ipython().events.register("post_run_cell", note)
"""


# A figure's plain text is its title (the suptitle, else the first axes title), which the
# post's alt text is made from; untitled, matplotlib's repr. The inline backend pops every
# printer for Figure when it is set up (at the first pyplot import, in a cell), so the printer
# is put back before each cell and after it, before the backend's own post_execute shows the
# figures (this hook is registered first).
_FIGURE_TITLES = """
import sys
def title(figure, p, cycle):
    texts = [getattr(getattr(figure, "_suptitle", None), "get_text", str)()]
    texts += [axes.get_title(loc) for axes in figure.get_axes()
              for loc in ("center", "left", "right")]
    p.text(next((text.strip() for text in texts if text and text.strip()), repr(figure)))
def ensure(*args):
    module = sys.modules.get("matplotlib.figure")
    plain = get_ipython().display_formatter.formatters["text/plain"]
    if module is not None and plain.type_printers.get(module.Figure) is not title:
        plain.for_type(module.Figure, title)
get_ipython().events.register("pre_execute", ensure)
get_ipython().events.register("post_execute", ensure)
"""


def _setup_request(notebook: NotebookNode, crashes: Path,
                   limits: OutputLimits) -> dict[str, str]:
    """The user expressions of the one request before the first cell: the kernel must run in
    the env (no other `python3` kernelspec may stand in for it); a crash must leave a traceback
    (faulthandler); and the places its output may name, to be made portable (each cell's
    compiled file name among them)."""
    sources = [cell.source for cell in notebook.cells]
    return {
        "prefix": "__import__('sys').prefix",
        "python": "__import__('sys').base_prefix",
        "home": "__import__('os').path.expanduser('~')",
        "tmp": "__import__('tempfile').gettempdir()",
        # the kernel's fd 2 is ipykernel's pipe to iopub, which a crash never empties
        "faults": f"__import__('faulthandler').enable(open({str(crashes)!r}, 'w'))",
        "cells": f"[get_ipython().compile.get_code_name(s, s, 0) for s in {sources!r}]",
        "installers": f"exec({_NO_INSTALL_MAGICS!r}, {{'get_ipython': get_ipython}})",
        "figures": f"exec({_FIGURE_TITLES!r}, {{'get_ipython': get_ipython}})",
        "budget": f"exec({_KERNEL_BUDGET!r}, {{'get_ipython': get_ipython, "
                  f"'LIMIT': {limits.max_bytes}}})",
    }


async def _start(client: _Client, session: Session, env: BuiltEnv, notebook: NotebookNode,
                 scratch: Path) -> Places:
    """The reply to the setup request (`_setup_request`, sent first by `_until_ready`): the
    places, once the kernel is known to run in the env."""
    assert client.kc is not None and client.setup_id is not None
    reply = client.setup_reply or await client.async_wait_for_reply(client.setup_id)
    assert reply is not None
    found = {name: value.get("data", {}).get("text/plain")
             for name, value in reply["content"]["user_expressions"].items()}
    prefix = ast.literal_eval(found["prefix"])
    if Path(prefix).resolve() != env.prefix.resolve():
        raise RuntimeError(f"kernel runs in {prefix}, not in the env {env.prefix}")
    names = ast.literal_eval(found["cells"] or "[]")
    lines = [int(cell.metadata["runner"]["line"]) for cell in notebook.cells]
    return Places(session.post, tuple(zip(names, lines, strict=False)), str(scratch), prefix,
                  ast.literal_eval(found["python"]), ast.literal_eval(found["home"]),
                  ast.literal_eval(found["tmp"]), os.path.expanduser("~"))
