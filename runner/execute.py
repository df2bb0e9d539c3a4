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
import fnmatch
import json
import math
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import IO, Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import ensure_async
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat import NotebookNode

from runner.envs import BuiltEnv
from runner.markdown import POST_SUFFIXES
from runner.model import ErrorKind, Output, Part, Session, Snippet, SnippetResult
from runner.notebooks import session_notebook
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
                      deadline: Deadline | None = None) -> tuple[SnippetResult, ...]:
    """Run every snippet of the session in one kernel of `env`; a result for each snippet.
    Then the kernel is stopped and its scratch folder removed: before this returns, or with
    `setup.stop_in_background` in a task, so the next session need not wait for it."""
    results: list[SnippetResult] = []
    # The session's folder: all a sandboxed kernel sees of the run (its scratch folder, its
    # connection file and sockets), removed with the session.
    folder = Path(tempfile.mkdtemp(prefix="runner-session-", dir=setup.workspace))
    scratch = Path(tempfile.mkdtemp(prefix=f"runner-{session.env}-", dir=folder))
    copy_beside(Path(session.post).parent, scratch)
    sockets = folder / "ipc"
    sockets.mkdir()
    # The kernel's own log (not the snippets' output, which comes over iopub) is kept out of
    # the terminal; its tail explains a kernel that would not start.
    log = tempfile.TemporaryFile(mode="w+", prefix="runner-kernel-")  # noqa: SIM115
    client: _Client | None = None
    try:
        notebook = session_notebook(session)
        client = _client(notebook, env, setup.timeout, setup.kernels_dir or env.kernels_dir,
                         sockets)
        variables = _variables(session, env, setup, folder)
        async with client.async_setup_kernel(cwd=str(scratch), env=variables,
                                             stdout=log, stderr=log, cleanup_kc=False):
            await _check_prefix(client, env)
            await _run_cells(client, session, notebook, results, setup.timeout, deadline)
    except Exception as exc:  # the kernel would not start, or died between cells
        log.seek(0)
        tail = " / ".join(log.read().strip().splitlines()[-3:])
        reason = f"{type(exc).__name__}: {exc}".strip() + (f" (kernel log: {tail})" if tail else "")
        done = {id(r.snippet) for r in results}
        results += [SnippetResult.failed(s, session.env, ErrorKind.KERNEL, reason)
                    for s in session.snippets if id(s) not in done]
    finally:
        task = asyncio.ensure_future(_stop(client, log, folder))
        _stopping.add(task)
        task.add_done_callback(_stopping.discard)
        if not setup.stop_in_background:
            await task
    return tuple(results)


def _variables(session: Session, env: BuiltEnv, setup: KernelSetup,
               folder: Path) -> dict[str, str]:
    """The kernel's environment, and what its launcher and sandbox need to know
    (RUNNER_KERNEL_LIMITS, read by forkserver.py)."""
    variables = dict(setup.variables if setup.variables is not None else kernel_env(env))
    variables["RUNNER_KERNEL_LIMITS"] = json.dumps(
        {"memory_mb": env.spec.memory_mb, "processes": env.spec.processes,
         "network": session.network, "sandbox": setup.sandbox, "session": str(folder),
         "workspace": str(folder.parent)})
    if setup.sandbox:
        variables["TMPDIR"] = "/tmp"  # the host's TMPDIR is not in the sandbox
    return variables


BESIDE_MAX_BYTES = 10 * 2**20


def files_beside(folder: Path) -> list[Path]:
    """The files beside a post that its snippets see (data it reads: a CSV, a JSON): not posts,
    folders, hidden or large files."""
    found = []
    with contextlib.suppress(OSError):
        for path in sorted(folder.iterdir()):
            with contextlib.suppress(OSError):
                if (path.is_file() and not path.name.startswith(".")
                        and path.suffix not in POST_SUFFIXES
                        and path.stat().st_size <= BESIDE_MAX_BYTES):
                    found.append(path)
    return found


def copy_beside(folder: Path, scratch: Path) -> None:
    """Copies, so a snippet finds them where its post is, and what it writes to them stays in
    its scratch folder."""
    for path in files_beside(folder):
        with contextlib.suppress(OSError):
            shutil.copy2(path, scratch / path.name)


async def _stop(client: _Client | None, log: IO[str], folder: Path) -> None:
    """Stop the kernel (nothing of it survives), then remove what the session left."""
    try:
        if client is not None and client.km is not None:
            await client._async_cleanup_kernel()
    finally:
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


async def _run_cells(client: NotebookClient, session: Session, notebook: NotebookNode,
                     results: list[SnippetResult], timeout: float,
                     deadline: Deadline | None) -> None:
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
        try:
            result = await _run_cell(client, session, snippet, cell, index,
                                     float(snippet.markers.timeout or timeout), deadline)
        except _Stop as stop:
            result = stop.result
        results.append(result)
        if result.status == "failed":
            stopped = result


async def _run_cell(client: NotebookClient, session: Session, snippet: Snippet,
                    cell: NotebookNode, index: int, limit: float,
                    deadline: Deadline | None) -> SnippetResult:
    started = time.monotonic()
    bound = deadline is not None and deadline.at - started < limit  # the run's deadline first
    if deadline is not None and bound:
        limit = max(deadline.at - started, 0.001)
    cell.metadata["runner"]["timeout"] = limit
    try:
        await client.async_execute_cell(cell, index)
    except CellTimeoutError:
        message = (f"the run's deadline of {deadline.seconds:g} s was reached"
                   if deadline is not None and bound else f"timed out after {limit:g} s")
        raise _Stop(SnippetResult.failed(
            snippet, session.env, ErrorKind.DEADLINE if bound else ErrorKind.TIMEOUT, message,
            duration_s=time.monotonic() - started)) from None
    except DeadKernelError:
        raise _Stop(SnippetResult.failed(
            snippet, session.env, ErrorKind.DEAD_KERNEL,
            f"the kernel died while running this snippet ({await _death(client)})",
            duration_s=time.monotonic() - started)) from None
    return await _result(client, session, snippet, cell, time.monotonic() - started)


async def _result(client: NotebookClient, session: Session, snippet: Snippet,
                  cell: NotebookNode, duration: float) -> SnippetResult:
    """A cell that ran -> its snippet's result: passed, raised what it must, or failed."""
    output = collect_output(cell.outputs)
    error = next((o for o in cell.outputs if o.output_type == "error"), None)
    expected = snippet.markers.raises
    if error is None and expected is None:
        return SnippetResult(snippet, session.env, "passed", output, duration_s=duration)
    if error is None:
        return SnippetResult.failed(snippet, session.env, ErrorKind.DID_NOT_RAISE,
                                    f"expected {expected} to be raised, nothing was",
                                    output=output, duration_s=duration)
    if expected is not None and error.ename == expected:
        final = f"{error.ename}: {error.evalue}" if error.evalue else error.ename
        return SnippetResult(snippet, session.env, "passed",
                             Output(output.stdout + final + "\n", output.stderr,
                                    (*output.parts, Part("text", final + "\n"))
                                    if output.parts else ()),
                             duration_s=duration)
    line = await _error_line(client, session, cell)
    traceback = ANSI.sub("", "\n".join(error.traceback))
    message = _CELL_FILE.sub("", error.evalue)  # the cell's temp file means nothing to a reader
    return SnippetResult.failed(snippet, session.env, error.ename, message, line, traceback,
                                output, duration)


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


def collect_output(outputs: list[NotebookNode]) -> Output:
    """Text, tables and figures in the order they came; stderr apart."""
    parts: list[Part] = []
    stderr: list[str] = []
    for output in outputs:
        if output.output_type == "stream" and output.name == "stderr":
            stderr.append(output.text)
        elif output.output_type == "stream":
            parts.append(Part("text", output.text))
        elif output.output_type in ("execute_result", "display_data"):
            parts += _display_part(output.get("data", {}))
    merged: list[Part] = []
    for part in parts:  # neighbouring text is one part
        if merged and part.kind == "text" == merged[-1].kind:
            merged[-1] = Part("text", merged[-1].text + part.text)
        else:
            merged.append(part)
    stdout = "".join(p.text if p.kind == "text" else p.text + "\n" for p in merged)
    rich = any(p.kind != "text" for p in merged)
    return Output(stdout, "".join(stderr), tuple(merged) if rich else ())


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


def _client(notebook: NotebookNode, env: BuiltEnv, timeout: float,
            kernels_dir: Path, sockets: Path) -> _Client:
    specs = KernelSpecManager(kernel_dirs=[str(kernels_dir)], ensure_native_kernel=False)
    manager = AsyncKernelManager(kernel_name=env.kernel_name, kernel_spec_manager=specs)
    # Unix sockets, not TCP: a kernel without network (its own empty network namespace) can
    # still talk to the runner, and nothing else on the machine can talk to the kernel.
    manager.transport = "ipc"
    manager.ip = str(sockets / "kernel")
    manager.connection_file = str(sockets / "kernel.json")  # not in a runtime folder of all

    def cell_timeout(cell: NotebookNode) -> float:
        return float(cell.metadata.get("runner", {}).get("timeout") or timeout)

    return _Client(notebook, km=manager, kernel_name=env.kernel_name,
                   timeout=max(1, math.ceil(timeout)), timeout_func=cell_timeout,
                   allow_errors=True, record_timing=False, startup_timeout=120,
                   shutdown_kernel="immediate")


class _Client(NotebookClient):
    """nbclient's client with a quicker readiness check. jupyter_client's `wait_for_ready` ends
    by waiting for 0.2 s of silence on iopub, once per kernel; here the kernel is ready as soon
    as its reply to `kernel_info` has come and iopub has carried that request's status (which
    proves the subscription is live). Until then it asks again, as jupyter_client does."""

    @contextlib.asynccontextmanager
    async def async_setup_kernel(self, **kwargs: Any) -> AsyncIterator[None]:
        """nbclient's, less its SIGINT/SIGTERM handlers and atexit hook: they would swallow a
        signal meant for the whole run. The runner handles signals itself (cli)."""
        cleanup_kc = kwargs.pop("cleanup_kc", self.owns_km)
        if self.km is None:
            self.km = self.create_kernel_manager()
        if not self.km.has_kernel:
            await self.async_start_new_kernel(**kwargs)
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
        self.kc.start_channels()
        try:
            await asyncio.wait_for(self._until_ready(), self.startup_timeout)
        except BaseException:
            await self._async_cleanup_kernel()
            raise
        self.kc.allow_stdin = False
        return self.kc

    async def _until_ready(self) -> None:
        assert self.kc is not None
        sent: set[str] = set()
        while True:
            msg_id = self.kc.kernel_info()
            sent.add(msg_id)
            try:
                reply = await ensure_async(self.kc.shell_channel.get_msg(timeout=1))
            except Empty:
                if not await ensure_async(self.km.is_alive()):  # type: ignore[union-attr]
                    raise RuntimeError("kernel died before replying to kernel_info") from None
                continue
            deadline = time.monotonic() + 0.05
            while time.monotonic() < deadline:
                try:
                    message = await ensure_async(self.kc.iopub_channel.get_msg(timeout=0.01))
                except Empty:
                    continue
                if message["parent_header"].get("msg_id") in sent:
                    self.kc._handle_kernel_info_reply(reply)
                    return


# What a kernel gets of the caller's environment (tox's passenv): nothing else, so tokens and
# keys in the shell that runs the runner never reach a snippet. [tool.runner] passenv adds.
PASSENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_*", "TZ", "TERM",
           "TMPDIR", "OPENBLAS_*", "OMP_*", "MKL_*")


def kernel_env(env: BuiltEnv, passenv: Sequence[str] = ()) -> dict[str, str]:
    """The allowed part of the caller's environment, the env's own bin/ first on PATH, and the
    env's kernel-env settings."""
    allowed = (*PASSENV, *passenv)
    variables = {name: value for name, value in os.environ.items()
                 if any(fnmatch.fnmatchcase(name, pattern) for pattern in allowed)}
    variables["VIRTUAL_ENV"] = str(env.prefix)
    variables["PATH"] = os.pathsep.join([str(env.prefix / "bin"), variables.get("PATH", "")])
    variables.update(env.spec.kernel_env)
    return variables


async def _check_prefix(client: NotebookClient, env: BuiltEnv) -> None:
    """Make sure the kernel runs in the env: no other `python3` kernelspec may stand in for it."""
    assert client.kc is not None
    msg_id = client.kc.execute("", silent=True, store_history=False,
                               user_expressions={"prefix": "__import__('sys').prefix"})
    reply = await client.async_wait_for_reply(msg_id)
    assert reply is not None
    prefix = ast.literal_eval(reply["content"]["user_expressions"]["prefix"]["data"]["text/plain"])
    if Path(prefix).resolve() != env.prefix.resolve():
        raise RuntimeError(f"kernel runs in {prefix}, not in the env {env.prefix}")
